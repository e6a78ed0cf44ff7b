"""`dynkv migrate`: copies a real redis-server's string keys (and their TTLs) into dynkv.

Starts a real `redis-server` (Debian package; a missing one fails the test, never skips it)
on a free port with persistence off, fills it with strings (binary, large, with and without
TTLs) and with lists, hashes, sets, zsets and streams, runs `dynkv migrate`, and compares
both sides: every string key with its value and remaining TTL, every other key absent from
dynkv and listed in the report and the skipped-keys file. Also covers --match, a run killed
with SIGKILL and resumed from its state file, keys expiring while in flight, --to-password,
and unreachable servers.
"""

import codecs
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import redis

from conftest import HOST, dynkv_bin, free_port

pytestmark = pytest.mark.dynkv_specific


# ---------------------------------------------------------------- source redis-server

class RedisSource:
    def __init__(self, port, proc, log_path):
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.url = f"redis://{HOST}:{port}"

    def client(self):
        return redis.Redis(host=HOST, port=self.port, socket_timeout=30, protocol=2)


@pytest.fixture(scope="module")
def source(tmp_root):
    exe = shutil.which("redis-server")
    if not exe:
        pytest.fail("redis-server is not in PATH (install Debian's redis-server package)",
                    pytrace=False)
    port = free_port()
    data = os.path.join(tmp_root, "migrate-source")
    os.makedirs(data, exist_ok=True)
    log_path = os.path.join(tmp_root, "migrate-source.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", data, "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    src = RedisSource(port, proc, log_path)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited with {proc.returncode}", pytrace=False)
        try:
            if src.client().ping():
                break
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("redis-server did not answer PING within 15 s", pytrace=False)
        time.sleep(0.05)
    yield src
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def src(source):
    c = source.client()
    c.flushall()
    yield c
    c.close()


# ---------------------------------------------------------------- helpers

def migrate_cmd(source, server, state, *extra):
    return [str(dynkv_bin()), "migrate", "--from", source.url, "--to",
            f"{server.host}:{server.port}", "--state-file", str(state), *extra]


def run_migrate(source, server, state, *extra, timeout=180):
    p = subprocess.run(migrate_cmd(source, server, state, *extra), capture_output=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def unescape(name):
    return codecs.escape_decode(name.encode("ascii"))[0]


def parse_report(out):
    """{label: value text} for the report's lines, and {type: [names]} for skipped keys."""
    fields, names, current = {}, {}, None
    lines = out.splitlines()
    assert lines and lines[0].startswith("dynkv migrate: "), out
    fields["status"] = lines[0][len("dynkv migrate: "):]
    for line in lines[1:]:
        if line.startswith("  "):
            if current is not None and not line.startswith("  ... and "):
                names[current].append(unescape(line[2:]))
            continue
        label, value = line[:19].strip(), line[19:].strip()
        fields[label] = value
        current = None
        if label.startswith("skipped ") and label != "skipped":
            current = label[len("skipped "):]
            names[current] = []
    return fields, names


def num(fields, label):
    return int(fields[label].split()[0])


def fill_strings(c, n, prefix="str:"):
    """n string keys of assorted shapes; returns {key: (value, has_ttl)}."""
    want = {}
    p = c.pipeline(transaction=False)
    for i in range(n):
        key = f"{prefix}{i}".encode()
        if i % 50 == 0:
            value = b"\x00bin\x00" + os.urandom(40) + b"\x00"
        elif i % 250 == 7:
            value = os.urandom(100_000)
        elif i % 333 == 5:
            value = b""
        else:
            value = f"value-{i}-".encode() * (1 + i % 7)
        ttl = i % 10 == 3
        if ttl:
            p.set(key, value, ex=1000)
        else:
            p.set(key, value)
        want[key] = (value, ttl)
        if len(p) >= 500:
            p.execute()
    # binary key names, with NUL, newline, tab, backslash and non-UTF-8 bytes
    for i in range(20):
        key = prefix.encode() + b"bin\x00\n\t\\\xff" + str(i).encode()
        value = bytes(range(256)) * (i + 1)
        p.set(key, value)
        want[key] = (value, False)
    p.execute()
    return want


def fill_others(c, prefix=""):
    """Keys of other types; returns {type: {key}}."""
    others = {"list": set(), "hash": set(), "set": set(), "zset": set(), "stream": set()}
    p = c.pipeline(transaction=False)
    for i in range(12):
        k = f"{prefix}list:{i}".encode()
        p.rpush(k, "a", "b", "c")
        others["list"].add(k)
        k = f"{prefix}hash:{i}".encode()
        p.hset(k, mapping={"f": "v", "g": "w"})
        others["hash"].add(k)
        k = f"{prefix}set:{i}".encode()
        p.sadd(k, "x", "y")
        others["set"].add(k)
        k = f"{prefix}zset:{i}".encode()
        p.zadd(k, {"m": 1.0, "n": 2.0})
        others["zset"].add(k)
    for i in range(3):
        k = f"{prefix}stream:{i}".encode()
        p.xadd(k, {"f": "v"})
        others["stream"].add(k)
    # a non-string key whose name needs escaping
    k = prefix.encode() + b"list:\x00odd\\name"
    p.rpush(k, "z")
    others["list"].add(k)
    p.execute()
    return others


def dynkv_values(r, keys):
    """{key: (value, pttl)} as dynkv has them."""
    keys = list(keys)
    out = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        p = r.pipeline(transaction=False)
        for k in chunk:
            p.get(k)
            p.pttl(k)
        res = p.execute()
        for j, k in enumerate(chunk):
            out[k] = (res[2 * j], res[2 * j + 1])
    return out


def assert_same_strings(src, r, keys, slack_ms=5000):
    """Every given key that is a string in redis is in dynkv with its value and TTL."""
    p = src.pipeline(transaction=False)
    for k in keys:
        p.get(k)
        p.pttl(k)
    res = p.execute()
    got = dynkv_values(r, keys)
    missing, wrong, ttl_off = [], [], []
    for j, k in enumerate(keys):
        value, pttl = res[2 * j], res[2 * j + 1]
        if value is None:
            continue  # expired in redis meanwhile
        dv, dpttl = got[k]
        if dv is None:
            missing.append(k)
        elif dv != value:
            wrong.append(k)
        elif (pttl == -1) != (dpttl == -1) or (pttl > 0 and abs(pttl - dpttl) > slack_ms):
            ttl_off.append((k, pttl, dpttl))
    assert not missing, f"{len(missing)} keys missing in dynkv, e.g. {missing[:5]}"
    assert not wrong, f"{len(wrong)} keys with other values in dynkv, e.g. {wrong[:5]}"
    assert not ttl_off, f"{len(ttl_off)} keys with other TTLs, e.g. {ttl_off[:5]}"


# ---------------------------------------------------------------- tests

def test_migrate_copies_strings_and_ttls_and_lists_other_types(source, src, server, r, tmp_path):
    want = fill_strings(src, 5000)
    others = fill_others(src)
    p = src.pipeline(transaction=False)
    for i in range(5):
        p.set(f"flash:{i}", "gone soon", px=1)
    p.execute()
    total_strings = len(want)
    state = tmp_path / "m.state"

    t0 = time.monotonic()
    rc, out, err = run_migrate(source, server, state, "--batch", "200", "--parallel", "4")
    took = time.monotonic() - t0
    assert rc == 0, f"exit {rc}\nstdout:\n{out}\nstderr:\n{err}"
    fields, names = parse_report(out)
    assert fields["status"] == "complete", out

    # the strings, their values and TTLs
    assert_same_strings(src, r, list(want))
    with_ttl = [k for k, (_, ttl) in want.items() if ttl]
    got = dynkv_values(r, with_ttl)
    assert all(900_000 < pttl <= 1_000_000 for _, pttl in got.values()), "TTLs of 1000 s not kept"
    no_ttl = [k for k, (_, ttl) in want.items() if not ttl]
    assert all(pttl == -1 for _, pttl in dynkv_values(r, no_ttl).values())
    # 1 ms TTLs have expired before the scan reached them: never written to dynkv
    assert r.exists(*[f"flash:{i}" for i in range(5)]) == 0

    # other types: absent from dynkv, counted and listed in the report and the file
    all_others = set().union(*others.values())
    assert r.exists(*all_others) == 0
    for ty, keys in others.items():
        assert num(fields, f"skipped {ty}") == len(keys), (ty, out)
        assert set(names[ty]) == keys, ty
    assert num(fields, "skipped") == len(all_others)
    skipped_file = tmp_path / "m.state.skipped"
    listed = {}
    for line in skipped_file.read_text().splitlines():
        ty, name = line.split("\t", 1)
        listed.setdefault(ty, set()).add(unescape(name))
    assert listed == others

    # counters
    assert num(fields, "copied") == total_strings, out
    assert num(fields, "errors") == 0
    assert num(fields, "scanned") == total_strings + len(all_others) + num(fields, "expired")
    assert num(fields, "bytes") == sum(len(v) for v, _ in want.values())
    assert "keys/s" in fields["rate"]
    assert not state.exists(), "a completed migration leaves no state file"
    print(f"migrated {total_strings} strings in {took:.1f} s")


def test_migrate_match_copies_only_matching_keys(source, src, server, r, tmp_path):
    a = fill_strings(src, 300, prefix="a:")
    b = fill_strings(src, 300, prefix="b:")
    others_a = fill_others(src, prefix="a:")
    fill_others(src, prefix="b:")
    rc, out, err = run_migrate(source, server, tmp_path / "s", "--match", "a:*", "--batch", "50")
    assert rc == 0, f"{out}\n{err}"
    fields, names = parse_report(out)
    assert num(fields, "copied") == len(a)
    assert_same_strings(src, r, list(a))
    assert r.exists(*b) == 0
    assert num(fields, "skipped list") == len(others_a["list"])
    assert set(names["hash"]) == others_a["hash"]


def test_migrate_resumes_after_sigkill(source, src, server, r, tmp_path):
    want = fill_strings(src, 3000)
    fill_others(src)
    state = tmp_path / "resume.state"
    # Slow the first run down (20 keys a batch, 1500 keys/s) so it can be killed midway.
    proc = subprocess.Popen(
        migrate_cmd(source, server, state, "--batch", "20", "--parallel", "2",
                    "--max-rate", "1500"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    saved = None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                saved = json.loads(state.read_text())
            except (OSError, ValueError):
                saved = None
            if saved and saved["cursor"] != 0 and saved["counters"]["copied"] >= 200:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert saved and saved["counters"]["copied"] >= 200, f"no progress saved: {saved}"
    after_kill = json.loads(state.read_text())
    assert not after_kill["complete"] and after_kill["cursor"] != 0
    copied_before = sum(1 for v, _ in dynkv_values(r, list(want)).values() if v is not None)
    assert 0 < copied_before < len(want), "the killed run should have copied part of the keys"

    rc, out, err = run_migrate(source, server, state, "--batch", "200")
    assert rc == 0, f"{out}\n{err}"
    fields, names = parse_report(out)
    assert fields["status"] == "complete"
    assert fields["resumed"].startswith(f"from cursor {after_kill['cursor']}"), out
    assert_same_strings(src, r, list(want))
    # SCAN may return keys twice across the two runs, never fewer
    assert num(fields, "copied") >= len(want)
    assert num(fields, "skipped list") == 13  # distinct names, from the skipped-keys file
    assert not state.exists()


def test_migrate_counts_keys_expiring_in_flight(source, src, server, r, tmp_path):
    # 60 keys live 1.5 s; at 5 keys/s the first batch is read at once and the next batches
    # (already scanned) only after 2 s: by then they have expired and must be counted.
    p = src.pipeline(transaction=False)
    for i in range(60):
        p.set(f"short:{i}", f"v{i}", px=1500)
    p.execute()
    rc, out, err = run_migrate(source, server, tmp_path / "e", "--batch", "10", "--parallel",
                               "1", "--max-rate", "5")
    assert rc == 0, f"{out}\n{err}"
    fields, _ = parse_report(out)
    assert num(fields, "copied") >= 1, out
    assert num(fields, "expired") >= 1, out
    assert num(fields, "errors") == 0
    assert num(fields, "copied") + num(fields, "expired") == num(fields, "scanned")


def test_migrate_to_password_protected_node(source, src, auth_server, tmp_path):
    want = fill_strings(src, 100)
    cmd = migrate_cmd(source, auth_server, tmp_path / "a")
    ok = subprocess.run(cmd + ["--to-password", auth_server.password], capture_output=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr.decode()
    a = redis.Redis(host=auth_server.host, port=auth_server.port, password=auth_server.password,
                    protocol=2)
    try:
        assert_same_strings(src, a, list(want))
    finally:
        a.flushall()
        a.close()
    bad = subprocess.run(cmd + ["--to-password", "wrong", "--fresh"], capture_output=True,
                         timeout=60)
    assert bad.returncode != 0
    assert b"cannot reach dynkv" in bad.stderr, bad.stderr


def test_migrate_unreachable_servers_fail_clearly(source, server, tmp_path):
    closed = free_port()
    p = subprocess.run(
        [str(dynkv_bin()), "migrate", "--from", f"redis://{HOST}:{closed}", "--to",
         f"{server.host}:{server.port}", "--state-file", str(tmp_path / "u")],
        capture_output=True, timeout=60)
    assert p.returncode != 0
    assert b"cannot reach the source Redis" in p.stderr, p.stderr
    p = subprocess.run(
        [str(dynkv_bin()), "migrate", "--from", source.url, "--to", f"{HOST}:{closed}",
         "--state-file", str(tmp_path / "u")],
        capture_output=True, timeout=60)
    assert p.returncode != 0
    assert b"cannot reach dynkv" in p.stderr, p.stderr
    p = subprocess.run(
        [str(dynkv_bin()), "migrate", "--from", source.url, "--to", f"{HOST}:{source.port}",
         "--state-file", str(tmp_path / "u")],
        capture_output=True, timeout=60)
    assert p.returncode != 0
    assert b"same server" in p.stderr, p.stderr
