#!/usr/bin/env bash
# The one test command: installs what is missing on a fresh Debian machine,
# then runs every test of the workspace. Store tests start their own private
# redis-server, etcd and Postgres processes on free loopback ports, so no
# running service is needed. Set LEADER_TEST_REDIS_URL, LEADER_TEST_ETCD_URL or
# LEADER_TEST_POSTGRES_URL to run the store suites against servers of your own
# (e.g. the docker-compose.yml at the root).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# A missing server binary fails its tests (there is no skip mode).
export RUST_BACKTRACE=1

echo "== alert rules: promtool check and unit tests"
promtool check rules deploy/prometheus/leader-election-rules.yml
promtool test rules deploy/prometheus/leader-election-rules.test.yml
echo "== Kubernetes manifests (schemas, offline) and runbook links"
scripts/check-deploy.py

echo "== build the examples (their tests run the example binaries)"
cargo build --workspace --all-features --examples

echo "== cargo test --workspace --all-features"
cargo test --workspace --all-features --all-targets --no-fail-fast
echo "== the facade with every store feature off"
cargo test -p leader --no-default-features
echo "== doc tests"
cargo test --workspace --all-features --doc
echo "== chaos runs: 5 elector processes under random faults, 60 s per store"
scripts/chaos.sh redis 60
scripts/chaos.sh etcd 60
scripts/chaos.sh postgres 60
