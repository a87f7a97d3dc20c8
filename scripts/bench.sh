#!/usr/bin/env bash
# Runs the benchmarks (bench/, crate leader-bench) and prints markdown tables.
#
#   scripts/bench.sh            # the full run quoted in docs/benchmarks.md (about 6-8 minutes)
#   scripts/bench.sh --quick    # every section scaled down: under a minute after the build
#   scripts/bench.sh --only latency,failover   # some sections (latency, failover, peers, scale, idle)
#
# The program starts its own private redis-server, etcd and Postgres on free
# loopback ports (through leader-testkit) and stops them at the end. Release
# build in CARGO_TARGET_DIR (default: target-bench, so that it does not fight
# debug builds over target/).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-bench}"
cargo build --release -p leader-bench --quiet
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
exec "$CARGO_TARGET_DIR/release/leader-bench" "$@"
