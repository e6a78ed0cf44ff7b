"""dynkv's replicated cluster driven by cluster-aware clients: redis-py's
``redis.cluster.RedisCluster`` (RESP2 and RESP3) and ``redis-cli -c``.

A cluster client reads CLUSTER SLOTS and sends each key to the slot's first
node, which dynkv makes the first replica of the key's partition: no request
should need a forward (INFO ``forwarded_requests`` stays 0 on every node). The
check only means something when some node is *not* a replica of some keys, so
the module runs twice: 3 nodes with N=3 (the default; every node replicates
every key) and 3 nodes with N=2 (a plain client forwards for about a third of
the keys, which ``test_plain_client_forwards`` shows, so the counter is live).

Known deviation: dynkv's SCAN/KEYS/DBSIZE through any node cover the whole
cluster (right for plain clients), while Redis Cluster clients expect each
master to answer for its own slots and fan SCAN out to every master. redis-py
8 sends KEYS and DBSIZE to one node (fine) but SCAN to every node it classed as
a primary, so ``scan_iter`` yields each key once per such node.

Run: pytest compat/test_redis_cluster.py   (uses $DYNKV_BIN like conftest.py)
"""

import os
import shutil
import subprocess
import time

import pytest
import redis
from redis.cluster import RedisCluster

from conftest import HOST, TARGET, Server, dynkv_bin, free_port, stop_server

pytestmark = pytest.mark.skipif(TARGET == "redis", reason="needs a dynkv cluster")

NODES = 3


def _info_stats(port: int) -> dict:
    c = redis.Redis(host=HOST, port=port, socket_timeout=5, protocol=2)
    try:
        return c.info("stats")
    finally:
        c.close()


def forwarded(cluster) -> list:
    return [int(_info_stats(s.port)["forwarded_requests"]) for s in cluster]


def _known_nodes(port: int):
    try:
        c = redis.Redis(host=HOST, port=port, socket_timeout=2, protocol=2)
        try:
            raw = c.execute_command("CLUSTER INFO")
        finally:
            c.close()
    except redis.RedisError:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    if isinstance(raw, dict):
        return int(raw.get("cluster_known_nodes", 0))
    for line in text.splitlines():
        if line.startswith("cluster_known_nodes:"):
            return int(line.split(":", 1)[1])
    return None


def start_cluster(tmp_root: str, name: str, n: int, r: int, w: int) -> list:
    """NODES dynkv processes joined by --seeds; returns their conftest.Server handles
    once every node reports cluster_known_nodes:NODES."""
    exe = dynkv_bin()
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        pytest.fail(f"dynkv binary not found at {exe}: run `cargo build` or set DYNKV_BIN",
                    pytrace=False)
    ports = []
    while len(ports) < NODES:
        p = free_port()  # p and p + 10000 (the default internode port) are free
        if all(abs(p - q) not in (0, 10000) for q in ports):
            ports.append(p)
    seeds = ",".join(f"{HOST}:{p}" for p in ports)
    servers = []
    for i, port in enumerate(ports):
        data_dir = os.path.join(tmp_root, f"{name}-{i}")
        os.makedirs(data_dir)
        log_path = data_dir + ".log"
        cmd = [str(exe), "server", "--bind", HOST, "--port", str(port), "--data-dir", data_dir,
               "--seeds", seeds, "--cluster-secret", f"compat-{name}", "--n", str(n),
               "--r", str(r), "--w", str(w)]
        log = open(log_path, "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
        log.close()
        servers.append(Server(port, data_dir, proc, log_path))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for s in servers:
            if s.proc.poll() is not None:
                for x in servers:
                    stop_server(x, check=False)
                pytest.fail(f"cluster node on port {s.port} exited with {s.proc.returncode}:\n"
                            f"{s.log()}", pytrace=False)
        if all(_known_nodes(s.port) == NODES for s in servers):
            return servers
        time.sleep(0.1)
    seen = [_known_nodes(s.port) for s in servers]
    for s in servers:
        stop_server(s, check=False)
    pytest.fail(f"cluster did not converge to {NODES} known nodes within 20 s: {seen}\n"
                + "\n".join(s.log() for s in servers), pytrace=False)


@pytest.fixture(scope="module", params=[3, 2], ids=["n3", "n2"])
def cluster(tmp_root, request):
    n = request.param
    r = w = 2
    servers = start_cluster(tmp_root, f"cluster-n{n}", n, r, w)
    yield servers
    for s in servers:
        stop_server(s)


@pytest.fixture
def rc_factory(cluster):
    made = []

    def make(protocol):
        c = RedisCluster(host=HOST, port=cluster[0].port, protocol=protocol,
                         decode_responses=True, socket_timeout=10)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_cluster_client_needs_no_forwards(cluster, rc_factory, protocol):
    rc = rc_factory(protocol)
    rc.flushall()
    # The client sees the whole key space: every slot maps to one of our nodes.
    ports = {s.port for s in cluster}
    assert {n.port for n in rc.get_nodes()} == ports
    before = forwarded(cluster)
    p = f"p{protocol}"
    keys = [f"{p}:key:{i}" for i in range(120)]
    ops = 0
    for i, k in enumerate(keys):
        assert rc.set(k, f"v{i}") is True
        ops += 1
    for i, k in enumerate(keys):
        assert rc.get(k) == f"v{i}"
        ops += 1
    for k in keys[:60]:
        assert rc.expire(k, 1000) is True
        assert 0 < rc.ttl(k) <= 1000
        ops += 2
    for k in keys[60:]:
        assert rc.ttl(k) == -1
        ops += 1
    assert rc.delete(*keys[100:]) == 20  # redis-py splits multi-key DEL by slot
    ops += 20
    for k in keys[100:]:
        assert rc.get(k) is None
        ops += 1
    # Multi-key commands within one slot (hash tags), and MGET over many slots.
    for g in range(30):
        tag = f"{{{p}:user:{g}}}"
        assert rc.mset({f"{tag}:a": "1", f"{tag}:b": str(g), f"{tag}:c": "x"}) is True
        assert rc.mget(f"{tag}:a", f"{tag}:b", f"{tag}:missing", f"{tag}:c") == ["1", str(g), None, "x"]
        assert rc.exists(f"{tag}:a", f"{tag}:b", f"{tag}:nope") == 2
        ops += 3
    assert rc.mget_nonatomic(keys[:100]) == [f"v{i}" for i in range(100)]
    ops += 1
    assert ops >= 500
    after = forwarded(cluster)
    assert after == before, (
        f"requests from a cluster-aware client were forwarded: forwarded_requests "
        f"{before} -> {after} (ports {[s.port for s in cluster]})")

    # SCAN through the cluster client finds exactly the live keys.
    live = set(keys[:100]) | {f"{{{p}:user:{g}}}:{x}" for g in range(30) for x in "abc"}
    scanned = list(rc.scan_iter(match=f"*{p}*", count=50))
    assert set(scanned) == live
    # redis-py runs SCAN on every node it believes a primary (the first role it saw a
    # node in while reading CLUSTER SLOTS); dynkv's SCAN on any node covers the whole
    # cluster, so each key comes once per such node (1 with N=3: slot 0 lists all three,
    # the first as master; with N=2 it depends on the node ids). See the module docstring.
    primaries = len(rc.get_primaries())
    assert len(scanned) == len(live) * primaries
    assert set(rc.keys(f"*{p}*")) == live
    assert rc.dbsize() == len(live)


def test_cluster_client_sees_writes_from_plain_clients(cluster, rc_factory):
    plain = redis.Redis(host=HOST, port=cluster[-1].port, protocol=2, decode_responses=True)
    try:
        for i in range(50):
            assert plain.set(f"mixed:{i}", str(i)) is True
        rc = rc_factory(3)
        assert rc.mget_nonatomic([f"mixed:{i}" for i in range(50)]) == [str(i) for i in range(50)]
        assert rc.delete(*[f"mixed:{i}" for i in range(50)]) == 50
        assert plain.exists(*[f"mixed:{i}" for i in range(50)]) == 0
    finally:
        plain.close()


def test_plain_client_forwards(cluster, request):
    """A plain client on one node forwards exactly when that node is not a replica:
    never with N=3 of 3 nodes, for some keys with N=2 (so the zero above is meaningful)."""
    n = 2 if request.node.callspec.id.endswith("n2") else 3
    port = cluster[0].port
    plain = redis.Redis(host=HOST, port=port, protocol=2, decode_responses=True)
    try:
        before = forwarded(cluster)
        for i in range(60):
            assert plain.set(f"fw:{i}", "1") is True
        delta = [a - b for a, b in zip(forwarded(cluster), before)]
        if n == 3:
            assert delta == [0] * NODES
        else:
            assert delta[0] > 0, "with N=2 of 3 nodes some keys are not on node 0"
            assert delta[1:] == [0] * (NODES - 1)
    finally:
        plain.close()


def test_redis_cli_cluster_mode(cluster):
    exe = shutil.which("redis-cli")
    if not exe:
        pytest.fail("redis-cli not found in PATH (install redis-tools)", pytrace=False)

    def cli(port, *args):
        out = subprocess.run([exe, "-c", "-h", HOST, "-p", str(port), *args],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    for i in range(10):
        assert cli(cluster[i % NODES].port, "SET", f"cli:{i}", f"val{i}") == "OK"
    for i in range(10):
        assert cli(cluster[(i + 1) % NODES].port, "GET", f"cli:{i}") == f"val{i}"
    assert cli(cluster[0].port, "CLUSTER", "KEYSLOT", "cli:0").isdigit()
    assert cli(cluster[2].port, "DEL", "cli:0") == "1"
    assert cli(cluster[1].port, "GET", "cli:0") == ""
