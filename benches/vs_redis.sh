#!/usr/bin/env bash
# dynkv vs redis-server throughput/latency comparison with redis-benchmark.
#
# Usage: benches/vs_redis.sh            (after `cargo build --release`)
#        DYNKV_BIN=target/pgo/dynkv benches/vs_redis.sh
#                                       (after benches/pgo_build.sh: the profile-guided
#                                       build, which the README's figures measure)
#
# Environment:
#   DYNKV_BIN   dynkv binary (default: <repo>/target/release/dynkv)
#   DYNKV_CMD   optional override for the command that starts the "dynkv" side,
#               run with `bash -c` and PORT, DIR, FSYNC (always|no) exported, e.g.
#               to sanity-check this script with redis-server on both sides:
#                 DYNKV_CMD='exec redis-server --bind 127.0.0.1 --port $PORT --save "" --dir $DIR \
#                   --appendonly $([ $FSYNC = always ] && echo yes || echo no) --appendfsync always' \
#                   benches/vs_redis.sh
#   BENCH_N     requests per redis-benchmark run (default: 100000 for -P 1; for -P 16,
#               1000000 against one server and 200000 against the cluster, so that
#               every run lasts about a second: a 0.2 s run is mostly start-up and noise)
#   BENCH_CLIENTS  concurrent connections (default 50)
#   BENCH_KEYSPACE  spread the requests over this many random keys (redis-benchmark -r);
#               default: redis-benchmark's single key, on which dynkv's group commit
#               combines the writes of one batch into one stored version
#   BENCH_REPEAT  runs per cell (default 1); redis-server and dynkv take turns run by
#               run; each side's median-rps run is reported, and the ratio is the median
#               of the paired runs' ratios (steadier than a ratio of medians on a VM whose
#               speed drifts)
#   BENCH_PIN=1 pin servers to the last CPU and redis-benchmark to the others with
#               taskset (on small machines the client otherwise steals the server's cores)
#   TMPDIR      where the temporary data dirs go (use a real disk for fsync numbers)
#   BENCH_OUT   CSV output path (default: <repo>/benches/results/vs_redis.csv)
#
# Scenarios:
#   no-persist    redis --save '' --appendonly no        vs dynkv --fsync no
#   fsync-always  redis --appendonly yes --appendfsync always  vs dynkv --fsync always
#   cluster-<scenario>  dynkv 3-node cluster (N=3 R=2 W=2, the scenario's fsync), benchmarked
#                 through one node; its redis column is the scenario's redis-server result
#                 (BENCH_CLUSTER=0 skips these rows; DYNKV_CMD skips them too)
# Each runs `redis-benchmark -t set,get -n N -c 50 -P 1` and `-P 16` with --csv.
# Targets are reported in the footer, never asserted.
set -euo pipefail
export LC_ALL=C

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
DYNKV_BIN="${DYNKV_BIN:-$REPO_ROOT/target/release/dynkv}"
DYNKV_CMD="${DYNKV_CMD:-}"
CLIENTS="${BENCH_CLIENTS:-50}"
KEYSPACE_ARGS=()
if [[ -n "${BENCH_KEYSPACE:-}" ]]; then KEYSPACE_ARGS=(-r "$BENCH_KEYSPACE"); fi
N_P1="${BENCH_N:-100000}"
N_P16="${BENCH_N:-1000000}"
N_CLUSTER_P16="${BENCH_N:-200000}"
OUT="${BENCH_OUT:-$REPO_ROOT/benches/results/vs_redis.csv}"
HOST=127.0.0.1
RUN_TIMEOUT="${BENCH_TIMEOUT:-900}"
REPEAT="${BENCH_REPEAT:-1}"
SERVER_PIN=()
CLIENT_PIN=()
if [[ "${BENCH_PIN:-0}" == 1 ]]; then
    command -v taskset >/dev/null 2>&1 || die "BENCH_PIN=1 needs taskset (util-linux)"
    ncpu="$(nproc)"
    (( ncpu >= 2 )) || die "BENCH_PIN=1 needs at least 2 CPUs"
    SERVER_PIN=(taskset -c "$((ncpu - 1))")
    CLIENT_PIN=(taskset -c "0-$((ncpu - 2))")
fi

die() { echo "error: $*" >&2; exit 1; }

for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found in PATH (install redis-server / redis-tools)"
done
if [[ -z "$DYNKV_CMD" ]]; then
    [[ -x "$DYNKV_BIN" ]] || die "dynkv binary not found at '$DYNKV_BIN'. Run 'cargo build --release' in $REPO_ROOT first (or set DYNKV_BIN)."
fi

TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/dynkv-bench.XXXXXX")"
PIDS=()

stop_pid() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]:-}"; do [[ -n "$pid" ]] && stop_pid "$pid"; done
    rm -rf "$TMP_ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

source "$REPO_ROOT/scripts/free_port.sh"

wait_ready() {  # PID PORT LOG
    local pid="$1" port="$2" log="$3"
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "server on port $port exited during startup"; }
        [[ "$(redis-cli -h "$HOST" -p "$port" ping 2>/dev/null || true)" == "PONG" ]] && return 0
        sleep 0.1
    done
    cat "$log" >&2
    die "server on port $port did not answer PING within 15s"
}

STARTED_PID=""
start_redis() {  # PORT DIR persist(no|always)
    local port="$1" dir="$2" mode="$3" log="$2.log"
    mkdir -p "$dir"
    local persist=(--appendonly no)
    [[ "$mode" == always ]] && persist=(--appendonly yes --appendfsync always)
    "${SERVER_PIN[@]}" redis-server --bind "$HOST" --port "$port" --save '' "${persist[@]}" --dir "$dir" \
        --logfile "" >"$log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_ready "$STARTED_PID" "$port" "$log"
}

start_dynkv() {  # PORT DIR fsync(no|always)
    local port="$1" dir="$2" mode="$3" log="$2.log"
    mkdir -p "$dir"
    if [[ -n "$DYNKV_CMD" ]]; then
        PORT="$port" DIR="$dir" FSYNC="$mode" "${SERVER_PIN[@]}" bash -c "$DYNKV_CMD" >"$log" 2>&1 &
    else
        "${SERVER_PIN[@]}" "$DYNKV_BIN" server --bind "$HOST" --port "$port" --data-dir "$dir" --fsync "$mode" >"$log" 2>&1 &
    fi
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_ready "$STARTED_PID" "$port" "$log"
}

# bench PORT PIPELINE N -> prints CSV rows "TEST,rps,p50,p99" (SET and GET);
# with BENCH_REPEAT=k runs k times and keeps, per test, the run with the median rps.
bench() {
    local all="" i
    for i in $(seq 1 "$REPEAT"); do all+="$(bench_once "$@")"$'\n'; done
    median_runs "$all"
}

# median_runs RUNS -> per test, the run (of "TEST,rps,p50,p99" lines) with the median rps.
median_runs() {
    local t
    for t in SET GET; do
        grep "^$t," <<<"$1" | sort -t, -k2,2g | awk -v k="$REPEAT" 'NR == int((k + 1) / 2)'
    done
}

# median_ratio TEST REDIS_RUNS DYNKV_RUNS -> the median over the paired runs (the i-th
# redis run with the i-th dynkv run) of dynkv rps / redis rps.
median_ratio() {
    paste -d, <(grep "^$1," <<<"$2" | cut -d, -f2) <(grep "^$1," <<<"$3" | cut -d, -f2) \
        | awk -F, '$1 > 0 {print $2 / $1}' | sort -g | awk -v k="$REPEAT" 'NR == int((k + 1) / 2)'
}

bench_once() {
    local port="$1" pipeline="$2" n="$3" raw
    raw="$(timeout "$RUN_TIMEOUT" "${CLIENT_PIN[@]}" redis-benchmark -h "$HOST" -p "$port" -t set,get -n "$n" \
        -c "$CLIENTS" -P "$pipeline" "${KEYSPACE_ARGS[@]}" --csv 2>&1)" || {
        echo "redis-benchmark failed on port $port (P=$pipeline):" >&2; echo "$raw" >&2; return 1; }
    # --csv columns (redis-benchmark 7): test,rps,avg,min,p50,p95,p99,max
    local header
    header="$(grep -m1 '^"test"' <<<"$raw" || true)"
    [[ "$header" == '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"' ]] \
        || { echo "unexpected redis-benchmark --csv header: $header" >&2; echo "$raw" >&2; return 1; }
    grep -E '^"(SET|GET)"' <<<"$raw" | tr -d '"' | awk -F, '{print $1 "," $2 "," $5 "," $7}'
}

ROWS=()   # scenario,test,pipeline,n,redis_rps,dynkv_rps,ratio,r_p50,r_p99,d_p50,d_p99

run_scenario() {  # NAME MODE(no|always)
    local name="$1" mode="$2"
    local rport dport rpid dpid
    rport="$(free_port)"
    start_redis "$rport" "$TMP_ROOT/$name-redis" "$mode"; rpid="$STARTED_PID"
    dport="$(free_port)"
    start_dynkv "$dport" "$TMP_ROOT/$name-dynkv" "$mode"; dpid="$STARTED_PID"
    # warm-up (not recorded): first connections, allocator, page cache
    local port
    for port in "$rport" "$dport"; do
        timeout "$RUN_TIMEOUT" "${CLIENT_PIN[@]}" redis-benchmark -h "$HOST" -p "$port" -t set,get -n 10000 \
            -c "$CLIENTS" -P 16 -q >/dev/null 2>&1 || die "warm-up against port $port failed"
    done
    local p n rres dres test i rruns druns
    for p in 1 16; do
        if [[ "$p" == 1 ]]; then n="$N_P1"; else n="$N_P16"; fi
        # The two servers take turns, run by run, so that a machine whose speed drifts
        # (a VM's neighbours) moves both sides of each ratio alike.
        echo ">> $name: redis-server and dynkv in turn, $REPEAT each  -P $p -n $n -c $CLIENTS" >&2
        rruns=""; druns=""
        for i in $(seq 1 "$REPEAT"); do
            rruns+="$(bench_once "$rport" "$p" "$n")"$'\n'
            druns+="$(bench_once "$dport" "$p" "$n")"$'\n'
        done
        rres="$(median_runs "$rruns")"
        dres="$(median_runs "$druns")"
        REDIS_RES["$name,$p"]="$rres"
        for test in SET GET; do
            local rl dl ratio
            rl="$(grep "^$test," <<<"$rres" || true)"
            dl="$(grep "^$test," <<<"$dres" || true)"
            [[ -n "$rl" && -n "$dl" ]] || die "missing $test result (redis: '$rres', dynkv: '$dres')"
            ratio="$(median_ratio "$test" "$rruns" "$druns")"
            ROWS+=("$(awk -F, -v s="$name" -v t="$test" -v p="$p" -v n="$n" -v rl="$rl" -v dl="$dl" -v q="$ratio" 'BEGIN {
                split(rl, r, ","); split(dl, d, ",");
                printf "%s,%s,%s,%s,%.2f,%.2f,%.3f,%.3f,%.3f,%.3f,%.3f", s, t, p, n, r[2], d[2], q, r[3], r[4], d[3], d[4]
            }')")
        done
    done
    stop_pid "$rpid"
    stop_pid "$dpid"
}

# The 3-node cluster row: three dynkv nodes joined into one cluster (N=3, R=2, W=2,
# fsync as in the scenario), redis-benchmark against ONE of them (with N=3 of 3 nodes
# every node is a replica of every key, so it coordinates everything itself: each SET
# waits for one more durable copy on a peer, each GET for one peer's answer). Rows get
# scenario "cluster-<scenario>"; their redis column repeats the scenario's single
# redis-server numbers (measured just before) for reference. Set BENCH_CLUSTER=0 to skip.
declare -A REDIS_RES=()
start_dynkv_cluster() {  # NAME MODE -> CLUSTER_PORTS, CLUSTER_PIDS
    local name="$1" mode="$2" i p
    CLUSTER_PORTS=()
    CLUSTER_PIDS=()
    while (( ${#CLUSTER_PORTS[@]} < 3 )); do
        p="$(free_port)"
        for i in "${CLUSTER_PORTS[@]:-}"; do
            [[ -n "$i" ]] && (( p == i || p == i + 10000 || p + 10000 == i )) && continue 2
        done
        CLUSTER_PORTS+=("$p")
    done
    local seeds secret
    seeds="$(printf "$HOST:%s," "${CLUSTER_PORTS[@]}")"; seeds="${seeds%,}"
    secret="bench-$$-$RANDOM$RANDOM"
    for i in 0 1 2; do
        local port="${CLUSTER_PORTS[$i]}" dir="$TMP_ROOT/$name-cluster-$i"
        mkdir -p "$dir"
        "${SERVER_PIN[@]}" "$DYNKV_BIN" server --bind "$HOST" --port "$port" --data-dir "$dir" --fsync "$mode" \
            --seeds "$seeds" --cluster-secret "$secret" --n 3 --r 2 --w 2 >"$dir.log" 2>&1 &
        CLUSTER_PIDS+=("$!")
        PIDS+=("$!")
    done
    for i in 0 1 2; do
        wait_ready "${CLUSTER_PIDS[$i]}" "${CLUSTER_PORTS[$i]}" "$TMP_ROOT/$name-cluster-$i.log"
    done
    local tries known
    for tries in $(seq 1 150); do
        known=0
        for i in 0 1 2; do
            redis-cli -h "$HOST" -p "${CLUSTER_PORTS[$i]}" cluster info 2>/dev/null | tr -d '\r' \
                | grep -qx 'cluster_known_nodes:3' && known=$((known + 1))
        done
        (( known == 3 )) && return 0
        sleep 0.1
    done
    for i in 0 1 2; do cat "$TMP_ROOT/$name-cluster-$i.log" >&2; done
    die "the 3-node dynkv cluster did not converge (cluster_known_nodes:3) within 15s"
}

run_cluster_row() {  # NAME MODE (the scenario whose redis-server numbers are the reference)
    local name="$1" mode="$2"
    if [[ -n "$DYNKV_CMD" ]]; then
        echo ">> cluster-$name: skipped (DYNKV_CMD overrides the single dynkv server only)" >&2
        return 0
    fi
    start_dynkv_cluster "$name" "$mode"
    local port="${CLUSTER_PORTS[0]}"
    timeout "$RUN_TIMEOUT" "${CLIENT_PIN[@]}" redis-benchmark -h "$HOST" -p "$port" -t set,get -n 10000 \
        -c "$CLIENTS" -P 16 -q >/dev/null 2>&1 || die "warm-up against the cluster (port $port) failed"
    local p n cres rres test
    for p in 1 16; do
        if [[ "$p" == 1 ]]; then n="$N_P1"; else n="$N_CLUSTER_P16"; fi
        echo ">> cluster-$name: dynkv 3-node cluster (N=3 R=2 W=2) via one node  -P $p -n $n -c $CLIENTS" >&2
        cres="$(bench "$port" "$p" "$n")"
        rres="${REDIS_RES[$name,$p]}"
        for test in SET GET; do
            local rl cl
            rl="$(grep "^$test," <<<"$rres" || true)"
            cl="$(grep "^$test," <<<"$cres" || true)"
            [[ -n "$rl" && -n "$cl" ]] || die "missing cluster $test result (redis: '$rres', cluster: '$cres')"
            ROWS+=("$(awk -F, -v s="cluster-$name" -v t="$test" -v p="$p" -v n="$n" -v rl="$rl" -v dl="$cl" 'BEGIN {
                split(rl, r, ","); split(dl, d, ",");
                ratio = (r[2] > 0) ? d[2] / r[2] : 0;
                printf "%s,%s,%s,%s,%.2f,%.2f,%.3f,%.3f,%.3f,%.3f,%.3f", s, t, p, n, r[2], d[2], ratio, r[3], r[4], d[3], d[4]
            }')")
        done
    done
    local pid
    for pid in "${CLUSTER_PIDS[@]}"; do stop_pid "$pid"; done
}

echo "# dynkv vs redis-server: $(redis-benchmark --version 2>/dev/null | head -n1), $(redis-server --version | awk '{print $3}')" >&2
echo "# data dirs under $TMP_ROOT ($(df -PT "$TMP_ROOT" | awk 'NR == 2 {print $2 " on " $1}'))" >&2
echo "# host: $(uname -srm), $(nproc 2>/dev/null || echo ?) cores, clients=$CLIENTS, repeat=$REPEAT, pin=${BENCH_PIN:-0}, keyspace=${BENCH_KEYSPACE:-1}, date=$(date -u +%FT%TZ)" >&2
if [[ -n "$DYNKV_CMD" ]]; then echo "# dynkv side: DYNKV_CMD override ($DYNKV_CMD)" >&2
else echo "# dynkv side: $DYNKV_BIN" >&2; fi

run_scenario no-persist no
if [[ "${BENCH_CLUSTER:-1}" != 0 ]]; then run_cluster_row no-persist no; fi
run_scenario fsync-always always
if [[ "${BENCH_CLUSTER:-1}" != 0 ]]; then run_cluster_row fsync-always always; fi

mkdir -p "$(dirname "$OUT")"
{
    echo "scenario,test,pipeline,requests,redis_ops_per_sec,dynkv_ops_per_sec,ratio_dynkv_over_redis,redis_p50_ms,redis_p99_ms,dynkv_p50_ms,dynkv_p99_ms"
    printf '%s\n' "${ROWS[@]}"
} >"$OUT"

echo
printf '%-21s %-4s %3s %13s %13s %7s %15s %15s\n' scenario test P "redis ops/s" "dynkv ops/s" ratio "redis p50/p99" "dynkv p50/p99"
printf '%s\n' "${ROWS[@]}" | awk -F, '{
    printf "%-21s %-4s %3s %13.0f %13.0f %6.2fx %15s %15s\n", $1, $2, $3, $5, $6, $7, $8 "/" $9, $10 "/" $11
}'
if printf '%s\n' "${ROWS[@]}" | grep -q '^cluster-'; then
    echo "cluster-* rows: dynkv 3-node cluster (N=3 R=2 W=2, same fsync) through one node; redis column = that scenario's single redis-server"
fi
echo
echo "Targets (reported, not asserted):"
printf '%s\n' "${ROWS[@]}" | awk -F, '
    function report(label, ratio, target) {
        printf "  %-46s %6.3fx  target >= %.1fx  %s\n", label, ratio, target, (ratio >= target ? "MET" : "MISSED")
    }
    $1 ~ /^cluster-/                         { printf "  %-46s %6.3fx  (dynkv 3-node cluster, no target)\n", $2 " " $1 " P=" $3 " vs redis-server", $7; next }
    $2 == "GET"                              { report("GET " $1 " P=" $3 " vs redis-server", $7, 1.0) }
    $2 == "SET" && $1 == "fsync-always"      { report("SET fsync=always P=" $3 " vs appendfsync always", $7, 1.0) }
    $2 == "SET" && $1 == "no-persist"        { report("SET fsync=no P=" $3 " vs redis no persistence", $7, 0.8) }
'
echo
echo "CSV written to $OUT"
