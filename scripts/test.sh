#!/usr/bin/env bash
# Runs every test of dynkv on a fresh Debian machine with a Rust toolchain: installs what
# the tests need (redis-tools and redis-server from Debian, redis-py and pytest from PyPI),
# checks formatting and lints, runs the Rust unit and integration tests, then the
# black-box compatibility suites against a real dynkv with real third-party clients.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (Debian)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# redis-server is only a tool for tests and benchmarks: never leave Debian's service running.
if command -v systemctl >/dev/null 2>&1; then as_root systemctl stop redis-server >/dev/null 2>&1 || true; fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import redis, pytest' >/dev/null 2>&1; then
  echo "== installing redis-py and pytest (PyPI)"
  "$PY" -m pip install -q 'redis>=5' 'pytest>=7'
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test
echo "== compat: redis-cli suite"
cargo build --quiet
export DYNKV_BIN="$PWD/target/debug/dynkv"
bash compat/redis_cli_suite.sh
echo "== compat: redis-py suite"
"$PY" -m pytest -q -p no:cacheprovider compat
