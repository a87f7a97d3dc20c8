#!/usr/bin/env bash
# A chaos run: scripts/chaos.sh STORE SECONDS [extra leader-chaos run flags]
#
# STORE is redis, etcd or postgres (or etcd-cluster: three members, store
# faults hit the cluster leader). Builds the leader-chaos binary, then runs
# 5 elector processes against a private store server for SECONDS while
# injecting random faults (kill -9 / SIGSTOP of the leader, SIGSTOP / kill +
# restart of the store, a blackholed or slowed link), and checks the history.
# Exits non-zero on any violation (1) or when setup fails (2).
# Extra flags go to `leader-chaos run` (e.g. --seed 42, --log-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
    echo "usage: scripts/chaos.sh redis|etcd|postgres|etcd-cluster SECONDS [--seed N] [--log-dir DIR]" >&2
    exit 2
fi
store="$1"
seconds="$2"
shift 2
case "$store" in
    redis | etcd | postgres | etcd-cluster) ;;
    *)
        echo "chaos.sh: unknown store '$store' (redis, etcd, postgres or etcd-cluster)" >&2
        exit 2
        ;;
esac
case "$seconds" in
    '' | *[!0-9]*)
        echo "chaos.sh: SECONDS must be a whole number, got '$seconds'" >&2
        exit 2
        ;;
esac

cargo build -p leader-chaos --bin leader-chaos --quiet
target_dir="${CARGO_TARGET_DIR:-target}"
echo "== chaos: $store for ${seconds}s"
exec "$target_dir/debug/leader-chaos" run --store "$store" --seconds "$seconds" "$@"
