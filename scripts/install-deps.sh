#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, if it is missing:
# the store servers the tests start themselves (redis-server, redis-sentinel,
# etcd, Postgres), protoc for etcd-client's build, promtool for the alert
# rules' tests, and the PyPI package kubernetes-validate (it ships the
# Kubernetes API schemas, so the manifest check needs no network). Idempotent
# and quick when everything is already there.
set -euo pipefail

need=()
command -v redis-server   >/dev/null 2>&1 || need+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
command -v redis-cli      >/dev/null 2>&1 || need+=(redis-tools)
command -v etcd           >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl        >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc         >/dev/null 2>&1 || need+=(protobuf-compiler)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need+=(postgresql); fi
command -v openssl        >/dev/null 2>&1 || need+=(openssl)
command -v promtool       >/dev/null 2>&1 || need+=(prometheus)
command -v setpriv        >/dev/null 2>&1 || need+=(util-linux)
[[ -x /usr/sbin/pgbouncer ]] || need+=(pgbouncer)
command -v python3        >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version  >/dev/null 2>&1 || need+=(python3-pip)

if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/install-deps.sh: missing packages: ${need[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Pinned: the version fixes the set of Kubernetes schemas the manifests are
# checked against (scripts/check-deploy.py).
KUBERNETES_VALIDATE=1.37.0
if ! python3 -c "import kubernetes_validate.version as v, sys; sys.exit(v.__version__ != '$KUBERNETES_VALIDATE')" 2>/dev/null; then
  echo "installing: kubernetes-validate==$KUBERNETES_VALIDATE (PyPI)"
  # --break-system-packages: Debian's own python3 refuses pip installs
  # without it (PEP 668); a python3 of its own (pyenv) ignores it.
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --break-system-packages "kubernetes-validate==$KUBERNETES_VALIDATE"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/install-deps.sh: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
id postgres >/dev/null 2>&1 || {
  echo "scripts/install-deps.sh: no 'postgres' user; the postgresql package creates it" >&2
  exit 1
}
