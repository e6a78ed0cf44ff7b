"""pytest fixtures for the dynkv black-box compatibility suite.

A session-scoped fixture starts one dynkv server (free port, temp data dir,
binary from $DYNKV_BIN, default <repo>/target/debug/dynkv), waits for PING,
and on teardown sends SIGTERM and checks that the server exits with status 0.

COMPAT_TARGET=redis runs the suite against a real redis-server instead
(development aid only: dynkv-specific tests are then expected to fail).
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis  # a missing redis package must fail loudly, never skip

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TARGET = os.environ.get("COMPAT_TARGET", "dynkv")


def dynkv_bin() -> Path:
    p = os.environ.get("DYNKV_BIN")
    return Path(p) if p else REPO_ROOT / "target" / "debug" / "dynkv"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def free_port() -> int:
    """A free port P in 20000..55000 whose P+10000 (dynkv's default cluster port) is free too."""
    import random
    for _ in range(1000):
        p = random.randint(20000, 55000)
        if _port_free(p) and _port_free(p + 10000):
            return p
    raise RuntimeError("no free port pair found")


class Server:
    def __init__(self, port, data_dir, proc, log_path, password=None):
        self.host = HOST
        self.port = port
        self.data_dir = data_dir
        self.proc = proc
        self.log_path = log_path
        self.password = password

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""


def start_server(tmp_root: str, name: str, password=None) -> Server:
    port = free_port()
    data_dir = os.path.join(tmp_root, name)
    os.makedirs(data_dir)
    log_path = os.path.join(tmp_root, name + ".log")
    if TARGET == "redis":
        exe = shutil.which("redis-server")
        if not exe:
            pytest.fail("COMPAT_TARGET=redis but redis-server is not in PATH", pytrace=False)
        cmd = [exe, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
               "--dir", data_dir]
        if password:
            cmd += ["--requirepass", password]
    else:
        exe = dynkv_bin()
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            pytest.fail(
                f"dynkv binary not found at {exe}: run `cargo build` in {REPO_ROOT} "
                "or set DYNKV_BIN", pytrace=False)
        cmd = [str(exe), "server", "--bind", HOST, "--port", str(port), "--data-dir", data_dir]
        if password:
            cmd += ["--requirepass", password]
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    srv = Server(port, data_dir, proc, log_path, password)
    deadline = time.monotonic() + 15
    last_err = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited early with status {proc.returncode}:\n{srv.log()}",
                        pytrace=False)
        try:
            c = redis.Redis(host=HOST, port=port, password=password, socket_timeout=2,
                            protocol=2)
            if c.ping():
                c.close()
                return srv
        except redis.RedisError as e:
            last_err = e
        time.sleep(0.1)
    stop_server(srv, check=False)
    pytest.fail(f"server did not answer PING within 15s ({last_err!r}):\n{srv.log()}",
                pytrace=False)


def stop_server(srv: Server, check=True):
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
            if check:
                pytest.fail(f"server did not exit within 15s of SIGTERM:\n{srv.log()}",
                            pytrace=False)
            return
    if check and srv.proc.returncode != 0:
        pytest.fail(f"server exited with status {srv.proc.returncode} after SIGTERM "
                    f"(expected 0):\n{srv.log()}", pytrace=False)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "dynkv_specific: dynkv-only behaviour (or Redis >= 7.2); skipped when "
        "COMPAT_TARGET=redis")


def pytest_collection_modifyitems(config, items):
    if TARGET != "redis":
        return
    skip = pytest.mark.skip(reason="dynkv-specific behaviour, not checked against redis-server")
    for item in items:
        if "dynkv_specific" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tmp_root():
    d = tempfile.mkdtemp(prefix="dynkv-compat-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def server(tmp_root):
    srv = start_server(tmp_root, "main")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def auth_server(tmp_root):
    srv = start_server(tmp_root, "auth", password="s3cret-pw")
    yield srv
    stop_server(srv)


@pytest.fixture
def fresh_server(tmp_root, request):
    """A dedicated server for tests that may wedge or crash it (huge requests)."""
    srv = start_server(tmp_root, "fresh-" + request.node.name)
    yield srv
    stop_server(srv)


@pytest.fixture
def r(server):
    """RESP2 client (protocol=2 explicitly: redis-py 8 defaults to RESP3) returning bytes; the keyspace is flushed before each test."""
    c = redis.Redis(host=server.host, port=server.port, socket_timeout=10, protocol=2)
    c.flushall()
    yield c
    c.close()


@pytest.fixture
def rs(server):
    """RESP2 client with decode_responses=True (str replies)."""
    c = redis.Redis(host=server.host, port=server.port, socket_timeout=10, protocol=2,
                    decode_responses=True)
    c.flushall()
    yield c
    c.close()


@pytest.fixture
def r3(server):
    """RESP3 client (HELLO 3 on connect), decode_responses=True."""
    c = redis.Redis(host=server.host, port=server.port, socket_timeout=10, protocol=3,
                    decode_responses=True)
    c.flushall()
    yield c
    c.close()
