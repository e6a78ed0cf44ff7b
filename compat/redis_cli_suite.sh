#!/usr/bin/env bash
# Black-box compatibility suite: drives a freshly started dynkv with redis-cli
# and compares exact output.
#
# Usage: compat/redis_cli_suite.sh
#   DYNKV_BIN   path to the dynkv binary (default: <repo>/target/debug/dynkv)
#   COMPAT_TARGET=redis   development aid only: run the same checks against a
#               real redis-server instead (dynkv-specific checks are then
#               expected to fail).
#
# Output: one "ok - name" / "not ok - name" line per check, then
# "N passed, M failed". Exit status is non-zero if any check failed.
set -euo pipefail
export LC_ALL=C

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
DYNKV_BIN="${DYNKV_BIN:-$REPO_ROOT/target/debug/dynkv}"
COMPAT_TARGET="${COMPAT_TARGET:-dynkv}"
HOST=127.0.0.1

die() { echo "FATAL: $*" >&2; echo "0 passed, 1 failed"; exit 2; }

command -v redis-cli >/dev/null 2>&1 \
    || die "redis-cli not found in PATH (install redis-tools)"
if [[ "$COMPAT_TARGET" == "redis" ]]; then
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found in PATH"
else
    [[ -x "$DYNKV_BIN" ]] \
        || die "dynkv binary not found or not executable at '$DYNKV_BIN' (run 'cargo build' in $REPO_ROOT or set DYNKV_BIN)"
fi

PASSED=0
FAILED=0
PIDS=()
TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/dynkv-cli-suite.XXXXXX")"

cleanup() {
    local pid
    for pid in "${PIDS[@]:-}"; do
        [[ -n "$pid" ]] || continue
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP_ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

source "$REPO_ROOT/scripts/free_port.sh"

# start_server PORT DATADIR [extra args...]; appends pid to PIDS, waits for PONG.
start_server() {
    local port="$1" dir="$2"; shift 2
    mkdir -p "$dir"
    local log="$dir.log"
    if [[ "$COMPAT_TARGET" == "redis" ]]; then
        local extra=()
        if [[ "${1:-}" == "--requirepass" ]]; then extra=(--requirepass "$2"); fi
        redis-server --bind "$HOST" --port "$port" --save '' --appendonly no \
            --dir "$dir" "${extra[@]}" >"$log" 2>&1 &
    else
        "$DYNKV_BIN" server --bind "$HOST" --port "$port" --data-dir "$dir" "$@" >"$log" 2>&1 &
    fi
    local pid=$!
    PIDS+=("$pid")
    local i out
    for i in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "server on port $port exited early; log:" >&2; cat "$log" >&2
            die "server failed to start"
        fi
        out="$(timeout 5 redis-cli -h "$HOST" -p "$port" ping 2>/dev/null || true)"
        # An instance with requirepass answers NOAUTH, which still means "up".
        if [[ "$out" == "PONG" || "$out" == NOAUTH* ]]; then return 0; fi
        sleep 0.1
    done
    echo "log:" >&2; cat "$log" >&2
    die "server on port $port did not answer PING within 10s"
}

ok()     { PASSED=$((PASSED + 1)); echo "ok - $1"; }
not_ok() {
    FAILED=$((FAILED + 1)); echo "not ok - $1"
    if [[ $# -ge 3 ]]; then
        echo "#   expected: $(printf '%q' "$2" | cut -c1-400)"
        echo "#   actual:   $(printf '%q' "$3" | cut -c1-400)"
    elif [[ $# -eq 2 ]]; then
        echo "#   $2"
    fi
}
# expect NAME EXPECTED ACTUAL
expect() {
    if [[ "$2" == "$3" ]]; then ok "$1"; else not_ok "$1" "$2" "$3"; fi
}
# expect_range NAME LO HI ACTUAL  (ACTUAL may be "(integer) N" or "N")
expect_range() {
    local v="${4#(integer) }"
    if [[ "$v" =~ ^-?[0-9]+$ ]] && (( v >= $2 && v <= $3 )); then ok "$1"
    else not_ok "$1" "integer in [$2, $3]" "$4"; fi
}
expect_prefix() {
    if [[ "$3" == "$2"* ]]; then ok "$1"; else not_ok "$1" "$2..." "$3"; fi
}

PORT="$(free_port)"
start_server "$PORT" "$TMP_ROOT/data"

# r: default (raw, since stdout is not a tty) output; n: --no-raw (typed) output
# (every call is bounded by a timeout so a hung server fails checks instead of hanging)
CLI_TIMEOUT="${CLI_TIMEOUT:-20}"
r() { timeout "$CLI_TIMEOUT" redis-cli -h "$HOST" -p "$PORT" "$@" 2>&1 || true; }
n() { timeout "$CLI_TIMEOUT" redis-cli -h "$HOST" -p "$PORT" --no-raw "$@" 2>&1 || true; }

expect "flushall" "OK" "$(n flushall)"
expect "ping" "PONG" "$(n ping)"
expect "ping with message" '"hello"' "$(n ping hello)"
expect "echo" '"hi there"' "$(n echo 'hi there')"
expect "select 0" "OK" "$(n select 0)"

# --- SET / GET -------------------------------------------------------------
expect "set" "OK" "$(n set str:a hello)"
expect "get" '"hello"' "$(n get str:a)"
expect "get missing is nil" "(nil)" "$(n get str:missing)"
expect "set overwrites" "OK" "$(n set str:a 'hello world')"
expect "get overwritten value" '"hello world"' "$(n get str:a)"
expect "type string" "string" "$(r type str:a)"
expect "type none" "none" "$(r type str:missing)"
expect "set binary-ish value roundtrip" '"a\x00b"' "$(printf 'SET str:bin "a\\x00b"\nGET str:bin\n' | n | tail -n1)"

# --- SET EX / PX / TTL -----------------------------------------------------
expect "set ex" "OK" "$(n set ttl:a v ex 100)"
expect_range "ttl after set ex in [98,100]" 98 100 "$(n ttl ttl:a)"
expect_range "pttl after set ex in [98000,100000]" 98000 100000 "$(n pttl ttl:a)"
expect "set px" "OK" "$(n set ttl:b v px 50000)"
expect_range "ttl after set px in [48,50]" 48 50 "$(n ttl ttl:b)"
expect "setex" "OK" "$(n setex ttl:c 30 v)"
expect_range "ttl after setex in [28,30]" 28 30 "$(n ttl ttl:c)"
expect "set ex 0 is an error" "(error) ERR invalid expire time in 'set' command" "$(n set ttl:d v ex 0)"
expect "set keepttl" "OK" "$(n set ttl:a v2 keepttl)"
expect_range "ttl kept after keepttl" 98 100 "$(n ttl ttl:a)"
expect "plain set clears ttl" "OK" "$(n set ttl:a v3)"
expect "ttl -1 after plain set" "(integer) -1" "$(n ttl ttl:a)"

# --- NX / XX / GET ---------------------------------------------------------
expect "set nx on new key" "OK" "$(n set nx:a 1 nx)"
expect "set nx on existing key" "(nil)" "$(n set nx:a 2 nx)"
expect "value unchanged after failed nx" '"1"' "$(n get nx:a)"
expect "set xx on missing key" "(nil)" "$(n set nx:b 1 xx)"
expect "xx did not create key" "(integer) 0" "$(n exists nx:b)"
expect "set xx on existing key" "OK" "$(n set nx:a 3 xx)"
expect "value after xx" '"3"' "$(n get nx:a)"
expect "set nx xx together is syntax error" "(error) ERR syntax error" "$(n set nx:a 1 nx xx)"
expect "set get returns old value" '"3"' "$(n set nx:a 4 get)"
expect "set get on missing returns nil" "(nil)" "$(n set nx:c 1 get)"
expect "setnx existing" "(integer) 0" "$(n setnx nx:a 9)"
expect "setnx new" "(integer) 1" "$(n setnx nx:d 9)"
expect "getset" '"4"' "$(n getset nx:a 5)"
expect "getdel" '"5"' "$(n getdel nx:a)"
expect "getdel removed key" "(nil)" "$(n get nx:a)"

# --- MSET / MGET -----------------------------------------------------------
expect "mset" "OK" "$(n mset m:a 1 m:b 2 m:c 3)"
expect "mget" $'1) "1"\n2) "2"\n3) (nil)\n4) "3"' "$(n mget m:a m:b m:missing m:c)"
expect "mget raw" $'1\n2\n\n3' "$(r mget m:a m:b m:missing m:c)"
expect "mset odd args is arity error" "(error) ERR wrong number of arguments for 'mset' command" "$(n mset m:a 1 m:b)"
expect "msetnx with existing key" "(integer) 0" "$(n msetnx m:a x m:new y)"
expect "msetnx wrote nothing" "(nil)" "$(n get m:new)"
expect "msetnx all new" "(integer) 1" "$(n msetnx m:new y m:new2 z)"

# --- DEL / EXISTS ----------------------------------------------------------
n mset d:a 1 d:b 2 d:c 3 >/dev/null
expect "exists counts keys" "(integer) 3" "$(n exists d:a d:b d:c d:missing)"
expect "exists counts duplicates" "(integer) 2" "$(n exists d:a d:a)"
expect "del counts deleted" "(integer) 2" "$(n del d:a d:b d:missing)"
expect "exists after del" "(integer) 0" "$(n exists d:a d:b)"
expect "unlink" "(integer) 1" "$(n unlink d:c d:missing)"
expect "del missing" "(integer) 0" "$(n del d:c)"

# --- APPEND / STRLEN / GETRANGE / SETRANGE ---------------------------------
expect "append creates" "(integer) 5" "$(n append s:a Hello)"
expect "append extends" "(integer) 11" "$(n append s:a ' World')"
expect "strlen" "(integer) 11" "$(n strlen s:a)"
expect "strlen missing" "(integer) 0" "$(n strlen s:missing)"
expect "getrange prefix" '"Hello"' "$(n getrange s:a 0 4)"
expect "getrange negative" '"World"' "$(n getrange s:a -5 -1)"
expect "getrange whole" '"Hello World"' "$(n getrange s:a 0 -1)"
expect "getrange out of range" '""' "$(n getrange s:a 20 30)"
expect "getrange missing key" '""' "$(n getrange s:missing 0 -1)"
expect "setrange" "(integer) 11" "$(n setrange s:a 6 Redis)"
expect "get after setrange" '"Hello Redis"' "$(n get s:a)"
expect "setrange pads with zero bytes" "(integer) 4" "$(n setrange s:pad 3 x)"
expect "padded value" '"\x00\x00\x00x"' "$(n get s:pad)"
expect "setrange negative offset" "(error) ERR offset is out of range" "$(n setrange s:a -1 x)"

# --- EXPIRE / PERSIST / TTL ------------------------------------------------
n set e:a v >/dev/null
expect "ttl no expiry is -1" "(integer) -1" "$(n ttl e:a)"
expect "pttl no expiry is -1" "(integer) -1" "$(n pttl e:a)"
expect "ttl missing is -2" "(integer) -2" "$(n ttl e:missing)"
expect "pttl missing is -2" "(integer) -2" "$(n pttl e:missing)"
expect "expire existing" "(integer) 1" "$(n expire e:a 100)"
expect_range "ttl after expire" 98 100 "$(n ttl e:a)"
expect "expire missing" "(integer) 0" "$(n expire e:missing 100)"
expect "expire nx on key with ttl" "(integer) 0" "$(n expire e:a 200 nx)"
expect "expire gt larger" "(integer) 1" "$(n expire e:a 200 gt)"
expect "expire lt larger" "(integer) 0" "$(n expire e:a 300 lt)"
expect "expire non-integer" "(error) ERR value is not an integer or out of range" "$(n expire e:a abc)"
expect "persist" "(integer) 1" "$(n persist e:a)"
expect "ttl after persist" "(integer) -1" "$(n ttl e:a)"
expect "persist again" "(integer) 0" "$(n persist e:a)"
expect "expiretime no ttl" "(integer) -1" "$(n expiretime e:a)"
expect "expiretime missing" "(integer) -2" "$(n expiretime e:missing)"
expect "pexpire short" "(integer) 1" "$(n pexpire e:a 100)"
sleep 0.3
expect "expired key is gone (get)" "(nil)" "$(n get e:a)"
expect "expired key is gone (exists)" "(integer) 0" "$(n exists e:a)"
expect "expired key ttl -2" "(integer) -2" "$(n ttl e:a)"
n set e:b v >/dev/null
expect "expire 0 deletes" "(integer) 1" "$(n expire e:b 0)"
expect "key deleted by expire 0" "(integer) 0" "$(n exists e:b)"

# --- SCAN via redis-cli --scan, KEYS ----------------------------------------
{
    printf 'MSET'
    for i in $(seq 1 300); do printf ' scan:%d v' "$i"; done
    for i in $(seq 1 50); do printf ' other:%d v' "$i"; done
    printf '\n'
} | r >/dev/null
expected_scan="$(for i in $(seq 1 300); do echo "scan:$i"; done | sort)"
expect "scan --pattern full iteration" "$expected_scan" "$(r --scan --pattern 'scan:*' | sort -u)"
# manual_scan PATTERN COUNT [TYPE t]: iterate SCAN cursor by cursor (redis-cli 7.0 has no --count)
manual_scan() {
    local cursor=0 out iters=0
    while :; do
        out="$(r scan "$cursor" match "$1" count "$2" "${@:3}")"
        cursor="$(head -n1 <<<"$out")"
        tail -n +2 <<<"$out" | sed '/^$/d'
        iters=$((iters + 1))
        [[ "$cursor" =~ ^[0-9]+$ ]] || { echo "bad cursor: $cursor"; return; }
        [[ "$cursor" == 0 || $iters -gt 100000 ]] && break
    done
}
expect "scan match count 7 cursor iteration" "$expected_scan" "$(manual_scan 'scan:*' 7 | sort -u)"
expect "scan type string" "$expected_scan" "$(manual_scan 'scan:*' 50 type string | sort -u)"
expect "scan type other than string is empty" "" "$(manual_scan 'scan:*' 50 type list | sort -u)"
expect "scan --pattern no match" "" "$(r --scan --pattern 'nomatch:*')"
scan_all="$(r --scan | sort -u)"
expect "scan without pattern sees scan:* and other:*" "350" \
    "$(grep -cE '^(scan|other):' <<<"$scan_all" || true)"
first_reply="$(r scan 0 count 10)"
first_cursor="$(head -n1 <<<"$first_reply")"
if [[ "$first_cursor" =~ ^[0-9]+$ ]]; then ok "scan cursor is a decimal integer"
else not_ok "scan cursor is a decimal integer" "[0-9]+" "$first_cursor"; fi
expect "keys pattern" "$(for i in $(seq 1 50); do echo "other:$i"; done | sort)" "$(r keys 'other:*' | sort)"
expect "keys ? pattern" "$(for i in 1 2 3 4 5 6 7 8 9; do echo "other:$i"; done)" "$(r keys 'other:?' | sort)"
expect "keys no match" "(empty array)" "$(n keys 'nomatch:*')"

# --- SIBLINGS / RESOLVE (dynkv-specific) -----------------------------------
sib_ctx()    { head -n1 <<<"$1"; }
sib_values() { tail -n +2 <<<"$1" | sed '/^$/d' | sort; }
n del sib:k >/dev/null
n set sib:k a >/dev/null
out="$(r siblings sib:k)"
ctx1="$(sib_ctx "$out")"
expect "siblings single value" "a" "$(sib_values "$out")"
if [[ -n "$ctx1" ]]; then ok "siblings returns a context"; else not_ok "siblings returns a context" "$out"; fi
expect "siblings reply shape" $'1) "'"$ctx1"$'"\n2) 1) "a"' "$(n siblings sib:k)"
n set sib:k b >/dev/null
expect "resolve with stale context" "OK" "$(r resolve sib:k "$ctx1" c)"
out="$(r siblings sib:k)"
expect "stale resolve creates two siblings" $'b\nc' "$(sib_values "$out")"
expect "get returns latest written sibling" "c" "$(r get sib:k)"
ctx2="$(sib_ctx "$out")"
expect "resolve with fresh context" "OK" "$(r resolve sib:k "$ctx2" d)"
out="$(r siblings sib:k)"
expect "fresh resolve collapses siblings" "d" "$(sib_values "$out")"
expect "get after resolve" "d" "$(r get sib:k)"
ctx3="$(sib_ctx "$out")"
expect "resolve with EX" "OK" "$(r resolve sib:k "$ctx3" e EX 100)"
expect_range "ttl after resolve EX" 98 100 "$(n ttl sib:k)"
expect "get after resolve EX" "e" "$(r get sib:k)"
out="$(r siblings sib:missing)"
if [[ -n "$(sib_ctx "$out")" ]]; then ok "siblings missing key has context"; else not_ok "siblings missing key has context" "$out"; fi
expect "siblings missing key has no values" "" "$(sib_values "$out")"
expect "siblings missing key typed" $'1) "'"$(sib_ctx "$out")"$'"\n2) (empty array)' "$(n siblings sib:missing)"
expect "resolve on missing key with its context" "OK" "$(r resolve sib:missing "$(sib_ctx "$out")" z)"
expect "get after resolve on missing key" "z" "$(r get sib:missing)"
expect "siblings arity" "(error) ERR wrong number of arguments for 'siblings' command" "$(n siblings)"
expect "resolve arity" "(error) ERR wrong number of arguments for 'resolve' command" "$(n resolve sib:k)"

# --- errors ----------------------------------------------------------------
expect "unknown command" "(error) ERR unknown command 'FOO', with args beginning with: 'bar' 'baz' " "$(n FOO bar baz)"
expect "unknown command no args" "(error) ERR unknown command 'nosuchcmd', with args beginning with: " "$(n nosuchcmd)"
expect "lpush is unknown" "(error) ERR unknown command 'lpush', with args beginning with: 'l' 'x' " "$(n lpush l x)"
expect "wrong arity get" "(error) ERR wrong number of arguments for 'get' command" "$(n get)"
expect "wrong arity set" "(error) ERR wrong number of arguments for 'set' command" "$(n set onlykey)"
expect "wrong arity get (extra arg)" "(error) ERR wrong number of arguments for 'get' command" "$(n get a b)"
expect "set syntax error" "(error) ERR syntax error" "$(n set k v bogus)"
expect "unknown subcommand" "(error) ERR unknown subcommand 'foo'. Try COMMAND HELP." "$(n command foo)"
expect "subcommand arity" "(error) ERR wrong number of arguments for 'client|getname' command" "$(n client getname x)"
expect "set ex non-integer" "(error) ERR value is not an integer or out of range" "$(n set k v ex abc)"
out="$(n incr counter)"
if [[ "$out" == "(error) ERR"* && "${out,,}" == *"not supported"* ]]; then ok "incr is reported as not supported"
else not_ok "incr is reported as not supported" "(error) ERR ... not supported ..." "$out"; fi

# --- pipelining ------------------------------------------------------------
expect "commands piped through stdin" $'OK\na\n3\nabc\n1\n0\nPONG' \
    "$(printf 'SET pipe:1 a\nGET pipe:1\nAPPEND pipe:1 bc\nGET pipe:1\nDEL pipe:1\nEXISTS pipe:1\nPING\n' | r)"
# Raw RESP pipeline in a single write over one socket.
raw_pipeline() {
    local req="" i
    for i in $(seq 1 100); do
        req+=$'*3\r\n$3\r\nSET\r\n$'"${#i}"$'\r\n'"$i"$'\r\n$1\r\nv\r\n'
    done
    req+=$'*2\r\n$3\r\nGET\r\n$3\r\n100\r\n*1\r\n$4\r\nQUIT\r\n'
    exec 3<>"/dev/tcp/$HOST/$PORT"
    printf '%s' "$req" >&3
    timeout 5 cat <&3 | tr -d '\r' | sort | uniq -c | awk '{print $1, $2}'
    exec 3<&- 3>&- || true
}
expect "raw RESP pipeline (100 SET + GET + QUIT in one write)" $'1 $1\n101 +OK\n1 v' "$(raw_pipeline 2>&1 || true)"
r del 1 2 3 4 5 6 7 8 9 10 >/dev/null

# --- redis-cli --pipe mass insert ------------------------------------------
expect "flushall before mass insert" "OK" "$(n flushall)"
expect "dbsize after flushall" "(integer) 0" "$(n dbsize)"
awk 'BEGIN {
    for (i = 0; i < 10000; i++) {
        k = "mass:" i; v = "value-" i;
        printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, length(v), v
    }
}' >"$TMP_ROOT/mass.resp"
pipe_out="$(timeout 120 redis-cli -h "$HOST" -p "$PORT" --pipe <"$TMP_ROOT/mass.resp" 2>&1 || true)"
expect "--pipe mass insert replies" "errors: 0, replies: 10000" "$(tail -n1 <<<"$pipe_out")"
expect "dbsize after mass insert" "(integer) 10000" "$(n dbsize)"
expect "mass insert value readback" '"value-9999"' "$(n get mass:9999)"
expect "scan --pattern after mass insert" "10000" "$(manual_scan 'mass:*' 1000 | sort -u | wc -l | tr -d ' ')"
expect "flushdb" "OK" "$(n flushdb)"
expect "dbsize after flushdb" "(integer) 0" "$(n dbsize)"

# --- AUTH (second instance with --requirepass) -----------------------------
APORT="$(free_port)"
start_server "$APORT" "$TMP_ROOT/data-auth" --requirepass s3cret
a() { timeout "$CLI_TIMEOUT" redis-cli -h "$HOST" -p "$APORT" --no-raw "$@" 2>&1 || true; }
expect "noauth before auth (get)" "(error) NOAUTH Authentication required." "$(a get k)"
expect "noauth before auth (set)" "(error) NOAUTH Authentication required." "$(a set k v)"
expect "wrong password" "(error) WRONGPASS invalid username-password pair or user is disabled." "$(a auth nope)"
expect "auth then commands in one session" $'OK\nOK\n"v"' "$(printf 'AUTH s3cret\nSET k v\nGET k\n' | a)"
expect "auth wrong then right" $'(error) WRONGPASS invalid username-password pair or user is disabled.\nOK\n"v"' \
    "$(printf 'AUTH nope\nAUTH s3cret\nGET k\n' | a)"
expect "redis-cli -a" '"v"' "$(timeout "$CLI_TIMEOUT" redis-cli -h "$HOST" -p "$APORT" --no-raw --no-auth-warning -a s3cret get k 2>&1 || true)"
expect "auth default user without password is accepted (nopass)" "OK" "$(n auth default anything)"
expect "auth on server without password" \
    "(error) ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?" \
    "$(n auth foo)"

# --- shutdown of the main instance via SIGTERM is clean --------------------
main_pid="${PIDS[0]}"
kill -TERM "$main_pid"
rc=0
for _ in $(seq 1 100); do kill -0 "$main_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$main_pid" 2>/dev/null; then
    not_ok "server exits after SIGTERM" "still running after 10s"
else
    wait "$main_pid" || rc=$?
    expect "server exit status after SIGTERM" "0" "$rc"
fi

echo "$PASSED passed, $FAILED failed"
[[ "$FAILED" -eq 0 ]]
