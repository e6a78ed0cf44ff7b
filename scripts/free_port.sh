# Sourced by the benchmark and compat scripts: free_port prints a free port P in
# 20000..55000 on 127.0.0.1 with P+10000 (dynkv's default cluster port) free as well.
free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import random, socket
def ok(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
while True:
    p = random.randint(20000, 55000)
    if ok(p) and ok(p + 10000):
        print(p); break'
        return
    fi
    local p
    while :; do
        p=$(( 20000 + RANDOM % 35000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null; then
            echo "$p"; return
        fi
    done
}
