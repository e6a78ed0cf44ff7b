#!/usr/bin/env bash
# A profile-guided release build of dynkv: target/pgo/dynkv.
#
# Usage: benches/pgo_build.sh
#
# 1. builds dynkv instrumented (-Cprofile-generate) into target/pgo-gen;
# 2. runs it as a single node under a training load: redis-benchmark SET, GET and MSET
#    (values of 3 and 100 bytes, one key and 10,000 random keys, -P 1, 8 and 32, 20
#    connections), with fsync no and then fsync always, and a redis-cli session over
#    the other commands (expiry, SCAN, SIBLINGS, RESOLVE, INFO); the node is stopped with
#    SIGTERM so that it writes its profile;
# 3. merges the profiles with the toolchain's llvm-profdata (rustup's llvm-tools
#    component, installed here if missing) and builds again with -Cprofile-use into
#    target/pgo-use, copying the binary to target/pgo/dynkv.
#
# The training load is not the benchmark's: other value sizes, keys, pipeline depths and
# connection counts. The compiler learns which paths are hot and lays out the code so that
# they run straight through and close together. Needs redis-server's tools (redis-cli,
# redis-benchmark).
set -euo pipefail
export LC_ALL=C

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
TARGET="$REPO_ROOT/target"
PROFILES="$TARGET/pgo-profiles"
HOST=127.0.0.1

die() { echo "error: $*" >&2; exit 1; }
for tool in redis-benchmark redis-cli cargo rustc; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found in PATH"
done

sysroot="$(rustc --print sysroot)"
host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
    command -v rustup >/dev/null 2>&1 || die "llvm-profdata not found at $profdata and no rustup to install llvm-tools"
    rustup component add llvm-tools >&2
fi
[[ -x "$profdata" ]] || die "llvm-profdata not found at $profdata"

echo ">> instrumented build (target/pgo-gen)" >&2
rm -rf "$PROFILES"
mkdir -p "$PROFILES"
(cd "$REPO_ROOT" && RUSTFLAGS="-Cprofile-generate=$PROFILES" \
    cargo build --release --locked --target-dir "$TARGET/pgo-gen" >&2)
gen_bin="$TARGET/pgo-gen/release/dynkv"

TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/dynkv-pgo.XXXXXX")"
PID=""
cleanup() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
    rm -rf "$TMP_ROOT"
}
trap cleanup EXIT

source "$REPO_ROOT/scripts/free_port.sh"

train() {  # FSYNC
    local mode="$1" port dir="$TMP_ROOT/$1"
    port="$(free_port)"
    mkdir -p "$dir"
    "$gen_bin" server --bind "$HOST" --port "$port" --data-dir "$dir" --fsync "$mode" \
        --metrics-addr off >"$dir.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 150); do
        [[ "$(redis-cli -h "$HOST" -p "$port" ping 2>/dev/null || true)" == PONG ]] && break
        kill -0 "$PID" 2>/dev/null || { cat "$dir.log" >&2; die "training node exited"; }
        sleep 0.1
    done
    echo ">> training, fsync $mode" >&2
    local p d keys
    for p in 1 8 32; do
        for d in 3 100; do
            for keys in "" "-r 10000"; do
                # shellcheck disable=SC2086
                redis-benchmark -h "$HOST" -p "$port" -t set,get,mset -n 20000 -c 20 -P "$p" \
                    -d "$d" $keys -q >/dev/null
            done
        done
    done
    {
        echo "SET session:1 a EX 100"
        echo "GET session:1"
        echo "TTL session:1"
        echo "SET hot v1"
        echo "SIBLINGS hot"
        echo "MGET hot session:1 missing"
        echo "APPEND hot more"
        echo "GETRANGE hot 0 3"
        echo "EXPIRE hot 100"
        echo "PERSIST hot"
        echo "SCAN 0 COUNT 100"
        echo "DEL session:1"
        echo "EXISTS hot session:1"
        echo "DBSIZE"
        echo "INFO"
    } | redis-cli -h "$HOST" -p "$port" >/dev/null
    kill -TERM "$PID"
    wait "$PID" || die "training node did not stop cleanly (see $dir.log)"
    PID=""
}
train no
train always

ls "$PROFILES"/*.profraw >/dev/null 2>&1 || die "no profiles written to $PROFILES"
"$profdata" merge -o "$PROFILES/merged.profdata" "$PROFILES"/*.profraw

echo ">> optimized build (target/pgo-use)" >&2
(cd "$REPO_ROOT" && RUSTFLAGS="-Cprofile-use=$PROFILES/merged.profdata -Cllvm-args=-pgo-warn-missing-function=false" \
    cargo build --release --locked --target-dir "$TARGET/pgo-use" >&2)
mkdir -p "$TARGET/pgo"
cp "$TARGET/pgo-use/release/dynkv" "$TARGET/pgo/dynkv"
echo "$TARGET/pgo/dynkv"
