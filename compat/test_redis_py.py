"""Black-box compatibility tests for dynkv using redis-py (RESP2 and RESP3).

Expected values are what a real Redis 7 server returns, except for the
behaviours where dynkv deliberately differs (documented in the lead's brief):
DBSIZE counts live keys, SCAN cursors are opaque decimal integers, TYPE is
always string/none, SELECT n>0 errors, INCR family is "not supported yet",
and the dynkv-only SIBLINGS / RESOLVE commands.

Run: pytest compat/   (see compat/README.md)
"""

import threading
import time

import pytest
import redis  # must fail loudly if missing
from redis.exceptions import AuthenticationError, ResponseError

from conftest import TARGET


def err_text(excinfo) -> str:
    return str(excinfo.value)


def text(v):
    """redis-py converts some replies (CLIENT GETNAME, RESET, ...) to str; normalise."""
    return v.decode() if isinstance(v, bytes) else v


# ---------------------------------------------------------------- connection

def test_ping_echo(r, r3):
    assert r.ping() is True
    assert r.echo("hello") == b"hello"
    assert r3.ping() is True
    assert r3.echo("hi") == "hi"


def test_select(r):
    assert r.select(0) is True
    assert r.set("sel:k", "v") is True
    assert r.get("sel:k") == b"v"


@pytest.mark.dynkv_specific
def test_select_nonzero_errors(r):
    # dynkv-specific: only database 0 exists
    with pytest.raises(ResponseError):
        r.select(1)
    # connection still usable and still on db 0
    assert r.set("sel:k2", "v") is True
    assert r.get("sel:k2") == b"v"


def test_client_name_id_list_info(server):
    c = redis.Redis(host=server.host, port=server.port, protocol=2)
    assert c.client_getname() is None
    assert c.client_setname("compat-client") is True
    assert text(c.client_getname()) == "compat-client"
    cid = c.client_id()
    assert isinstance(cid, int) and cid > 0
    other = redis.Redis(host=server.host, port=server.port, protocol=2)
    assert other.client_id() != cid
    clients = c.client_list()
    assert isinstance(clients, list) and len(clients) >= 2
    mine = [cl for cl in clients if cl.get("name") == "compat-client"]
    assert len(mine) == 1
    assert str(mine[0]["id"]) == str(cid)
    assert "addr" in mine[0]
    info = c.client_info()
    assert isinstance(info, dict)
    assert str(info["id"]) == str(cid)
    assert info["name"] == "compat-client"
    with pytest.raises(ResponseError):
        c.client_setname("has space")
    c.close()
    other.close()


@pytest.mark.dynkv_specific
def test_client_setinfo_no_evict_no_touch(r):
    # CLIENT SETINFO / NO-TOUCH need Redis >= 7.2
    assert r.execute_command("CLIENT", "SETINFO", "LIB-NAME", "compat") in (True, b"OK")
    assert r.execute_command("CLIENT", "SETINFO", "LIB-VER", "1.2.3") in (True, b"OK")
    assert r.execute_command("CLIENT", "NO-EVICT", "on") in (True, b"OK")
    assert r.execute_command("CLIENT", "NO-TOUCH", "on") in (True, b"OK")


def test_reset(server):
    c = redis.Redis(host=server.host, port=server.port, protocol=2, single_connection_client=True)
    c.client_setname("before-reset")
    assert text(c.execute_command("RESET")) == "RESET"
    assert c.client_getname() is None
    assert c.ping() is True
    c.close()


def test_quit(server):
    c = redis.Redis(host=server.host, port=server.port, protocol=2, single_connection_client=True)
    assert c.execute_command("QUIT") in (True, b"OK")
    c.close()


def test_command_introspection(r):
    assert r.command_count() > 0
    info = r.execute_command("COMMAND", "INFO", "get")
    assert "get" in info
    assert info["get"]["arity"] == 2
    docs = r.execute_command("COMMAND DOCS", "get")  # name with space: no redis-py callback
    assert isinstance(docs, (list, dict)) and len(docs) > 0
    assert b"get" in (docs if isinstance(docs, dict) else docs[::2])


def test_info(r):
    r.mset({"info:a": 1, "info:b": 2, "info:c": 3})
    r.set("info:d", 4, ex=100)
    info = r.info()
    assert isinstance(info, dict)
    assert "redis_version" in info
    assert int(info["connected_clients"]) >= 1
    assert info["db0"]["keys"] == 4
    ks = r.info("keyspace")
    assert ks["db0"]["keys"] == 4
    assert "redis_version" in r.info("server")


def test_info_keyspace_expires(r):
    r.mset({"info:a": 1, "info:b": 2})
    r.set("info:d", 4, ex=100)
    assert r.info("keyspace")["db0"]["expires"] == 1


def test_info_empty_keyspace(r):
    assert "db0" not in r.info("keyspace")


def test_config_get(r):
    mm = r.config_get("maxmemory")
    assert isinstance(mm, dict)
    assert "maxmemory" in mm
    assert r.config_get("no-such-config-param") == {}


def test_config_get_benchmark_params(r):
    # what redis-benchmark and common clients ask for at startup
    assert "save" in r.config_get("save")
    assert "appendonly" in r.config_get("appendonly")


def test_dbsize_time_flush(r):
    assert r.dbsize() == 0
    r.mset({"db:a": 1, "db:b": 2})
    r.set("db:c", 3, px=50)
    assert r.dbsize() == 3
    time.sleep(0.2)
    assert r.dbsize() == 2  # dynkv: DBSIZE counts live keys
    secs, usecs = r.time()
    assert isinstance(secs, int) and isinstance(usecs, int)
    assert abs(secs - time.time()) < 5
    assert 0 <= usecs < 1_000_000
    assert r.flushdb() is True
    assert r.dbsize() == 0
    r.set("db:a", 1)
    assert r.flushall() is True
    assert r.dbsize() == 0
    assert r.get("db:a") is None


# ------------------------------------------------------------------- strings

def test_set_get_basic(r):
    assert r.set("s:a", "v1") is True
    assert r.get("s:a") == b"v1"
    assert r.get("s:missing") is None
    assert r.set("s:a", "v2") is True
    assert r.get("s:a") == b"v2"
    assert r.type("s:a") == b"string"
    assert r.type("s:missing") == b"none"


def test_set_expiry_options(r):
    now = time.time()
    assert r.set("sx:ex", "v", ex=100) is True
    assert 98 <= r.ttl("sx:ex") <= 100
    assert r.set("sx:px", "v", px=100_000) is True
    assert 98_000 <= r.pttl("sx:px") <= 100_000
    assert r.set("sx:exat", "v", exat=int(now) + 100) is True
    assert 98 <= r.ttl("sx:exat") <= 100
    assert r.expiretime("sx:exat") == int(now) + 100
    assert r.set("sx:pxat", "v", pxat=int(now * 1000) + 100_000) is True
    assert 98_000 <= r.pttl("sx:pxat") <= 100_000
    assert r.pexpiretime("sx:pxat") == int(now * 1000) + 100_000
    assert r.set("sx:ex", "v2", keepttl=True) is True
    assert r.get("sx:ex") == b"v2"
    assert 98 <= r.ttl("sx:ex") <= 100
    assert r.set("sx:ex", "v3") is True
    assert r.ttl("sx:ex") == -1


def test_set_expiry_errors(r):
    for args in (("EX", 0), ("EX", -5), ("PX", 0)):
        with pytest.raises(ResponseError) as ei:
            r.execute_command("SET", "sx:bad", "v", *args)
        assert err_text(ei) == "invalid expire time in 'set' command"
    with pytest.raises(ResponseError) as ei:
        r.execute_command("SET", "sx:bad", "v", "EX", "abc")
    assert err_text(ei) == "value is not an integer or out of range"
    for args in (("EX", 10, "PX", 100), ("EX", 10, "KEEPTTL"), ("NX", "XX"), ("BOGUS",), ("EX",)):
        with pytest.raises(ResponseError) as ei:
            r.execute_command("SET", "sx:bad", "v", *args)
        assert err_text(ei) == "syntax error", args
    assert r.exists("sx:bad") == 0


def test_set_past_exat_deletes(r):
    r.set("sx:past", "v")
    assert r.set("sx:past", "v2", exat=int(time.time()) - 10) is True
    assert r.get("sx:past") is None


def test_set_nx_xx(r):
    assert r.set("nx:a", "1", nx=True) is True
    assert r.set("nx:a", "2", nx=True) is None
    assert r.get("nx:a") == b"1"
    assert r.set("nx:b", "1", xx=True) is None
    assert r.exists("nx:b") == 0
    assert r.set("nx:a", "3", xx=True) is True
    assert r.get("nx:a") == b"3"


def test_set_get_option(r):
    assert r.set("sg:a", "new", get=True) is None
    assert r.get("sg:a") == b"new"
    assert r.set("sg:a", "newer", get=True) == b"new"
    assert r.get("sg:a") == b"newer"
    # Redis >= 7.0 allows NX/XX together with GET
    assert r.set("sg:a", "x", nx=True, get=True) == b"newer"
    assert r.get("sg:a") == b"newer"
    assert r.set("sg:b", "x", xx=True, get=True) is None
    assert r.exists("sg:b") == 0
    assert r.set("sg:a", "y", xx=True, get=True) == b"newer"
    assert r.get("sg:a") == b"y"
    assert r.set("sg:a", "z", ex=50, get=True) == b"y"
    assert 48 <= r.ttl("sg:a") <= 50


def test_setnx_setex_psetex_getset(r):
    assert r.setnx("sn:a", "1") is True
    assert r.setnx("sn:a", "2") is False
    assert r.get("sn:a") == b"1"
    assert r.execute_command("SETEX", "sn:b", 100, "v") is True
    assert 98 <= r.ttl("sn:b") <= 100
    assert r.psetex("sn:c", 100_000, "v") is True
    assert 98_000 <= r.pttl("sn:c") <= 100_000
    with pytest.raises(ResponseError) as ei:
        r.execute_command("SETEX", "sn:d", 0, "v")
    assert err_text(ei) == "invalid expire time in 'setex' command"
    assert r.getset("sn:a", "9") == b"1"
    assert r.getset("sn:new", "1") is None
    assert r.get("sn:a") == b"9"
    r.expire("sn:a", 100)
    r.getset("sn:a", "10")
    assert r.ttl("sn:a") == -1  # GETSET discards the TTL


def test_getdel(r):
    r.set("gd:a", "v")
    assert r.getdel("gd:a") == b"v"
    assert r.get("gd:a") is None
    assert r.getdel("gd:a") is None


def test_getex(r):
    now = time.time()
    r.set("ge:a", "v")
    assert r.getex("ge:a") == b"v"
    assert r.ttl("ge:a") == -1
    assert r.getex("ge:a", ex=100) == b"v"
    assert 98 <= r.ttl("ge:a") <= 100
    assert r.getex("ge:a", px=50_000) == b"v"
    assert 48_000 <= r.pttl("ge:a") <= 50_000
    assert r.getex("ge:a", exat=int(now) + 200) == b"v"
    assert 198 <= r.ttl("ge:a") <= 200
    assert r.getex("ge:a", pxat=int(now * 1000) + 300_000) == b"v"
    assert 298 <= r.ttl("ge:a") <= 300
    assert r.getex("ge:a", persist=True) == b"v"
    assert r.ttl("ge:a") == -1
    assert r.getex("ge:missing", ex=10) is None
    assert r.exists("ge:missing") == 0
    with pytest.raises(ResponseError) as ei:
        r.execute_command("GETEX", "ge:a", "EX", 0)
    assert err_text(ei) == "invalid expire time in 'getex' command"
    with pytest.raises(ResponseError) as ei:
        r.execute_command("GETEX", "ge:a", "EX", 10, "PERSIST")
    assert err_text(ei) == "syntax error"


def test_mset_mget_msetnx(r):
    assert r.mset({"m:a": "1", "m:b": "2"}) is True
    assert r.mget("m:a", "m:missing", "m:b") == [b"1", None, b"2"]
    assert r.mget(["m:a"]) == [b"1"]
    assert r.msetnx({"m:a": "x", "m:c": "3"}) is False
    assert r.get("m:a") == b"1"
    assert r.get("m:c") is None
    assert r.msetnx({"m:c": "3", "m:d": "4"}) is True
    assert r.mget("m:c", "m:d") == [b"3", b"4"]
    with pytest.raises(ResponseError) as ei:
        r.execute_command("MSET", "m:a", "1", "m:b")
    assert err_text(ei) == "wrong number of arguments for 'mset' command"


def test_append_strlen_getrange_setrange(r):
    assert r.append("ap:a", "Hello") == 5
    assert r.append("ap:a", " World") == 11
    assert r.strlen("ap:a") == 11
    assert r.strlen("ap:missing") == 0
    assert r.getrange("ap:a", 0, 4) == b"Hello"
    assert r.getrange("ap:a", -5, -1) == b"World"
    assert r.getrange("ap:a", 0, -1) == b"Hello World"
    assert r.getrange("ap:a", 5, 3) == b""
    assert r.getrange("ap:a", 100, 200) == b""
    assert r.getrange("ap:a", -100, 2) == b"Hel"
    assert r.getrange("ap:missing", 0, -1) == b""
    assert r.setrange("ap:a", 6, "Redis") == 11
    assert r.get("ap:a") == b"Hello Redis"
    assert r.setrange("ap:a", 11, "!!") == 13
    assert r.get("ap:a") == b"Hello Redis!!"
    assert r.setrange("ap:pad", 5, "x") == 6
    assert r.get("ap:pad") == b"\x00" * 5 + b"x"
    assert r.setrange("ap:empty", 0, "") == 0
    assert r.exists("ap:empty") == 0
    with pytest.raises(ResponseError) as ei:
        r.setrange("ap:a", -1, "x")
    assert err_text(ei) == "offset is out of range"


def test_append_keeps_ttl(r):
    r.set("apt:a", "x", ex=100)
    r.append("apt:a", "y")
    assert 98 <= r.ttl("apt:a") <= 100


@pytest.mark.dynkv_specific
def test_unsupported_incr_family(r):
    # dynkv-specific: counters are not supported yet
    r.set("inc:a", "1")
    for args in (("INCR", "inc:a"), ("DECR", "inc:a"), ("INCRBY", "inc:a", 2),
                 ("DECRBY", "inc:a", 2), ("INCRBYFLOAT", "inc:a", "1.5")):
        with pytest.raises(ResponseError) as ei:
            r.execute_command(*args)
        assert "not supported" in err_text(ei).lower(), args
    assert r.get("inc:a") == b"1"


# ------------------------------------------------------------------ keyspace

def test_del_unlink_exists(r):
    r.mset({"d:a": 1, "d:b": 2, "d:c": 3})
    assert r.exists("d:a", "d:b", "d:missing") == 2
    assert r.exists("d:a", "d:a", "d:a") == 3
    assert r.delete("d:a", "d:b", "d:missing") == 2
    assert r.exists("d:a") == 0
    assert r.unlink("d:c", "d:missing") == 1
    assert r.delete("d:c") == 0


def test_ttl_family(r):
    now = time.time()
    r.set("t:a", "v")
    assert r.ttl("t:a") == -1
    assert r.pttl("t:a") == -1
    assert r.ttl("t:missing") == -2
    assert r.pttl("t:missing") == -2
    assert r.expiretime("t:a") == -1
    assert r.expiretime("t:missing") == -2
    assert r.pexpiretime("t:missing") == -2
    assert r.expire("t:a", 100) is True
    assert 98 <= r.ttl("t:a") <= 100
    assert r.expire("t:missing", 100) is False
    assert r.pexpire("t:a", 200_000) is True
    assert 198_000 <= r.pttl("t:a") <= 200_000
    assert r.expireat("t:a", int(now) + 300) is True
    assert r.expiretime("t:a") == int(now) + 300
    assert r.pexpireat("t:a", int(now * 1000) + 400_000) is True
    assert r.pexpiretime("t:a") == int(now * 1000) + 400_000
    assert r.persist("t:a") is True
    assert r.ttl("t:a") == -1
    assert r.persist("t:a") is False
    assert r.persist("t:missing") is False


def test_expire_flags(r):
    r.set("ef:a", "v")
    assert r.expire("ef:a", 100, xx=True) is False  # no TTL yet
    assert r.ttl("ef:a") == -1
    assert r.expire("ef:a", 100, gt=True) is False  # no TTL counts as infinite
    assert r.expire("ef:a", 100, lt=True) is True
    assert r.expire("ef:a", 200, nx=True) is False
    assert r.expire("ef:a", 200, xx=True) is True
    assert r.expire("ef:a", 100, gt=True) is False
    assert r.expire("ef:a", 300, gt=True) is True
    assert r.expire("ef:a", 400, lt=True) is False
    assert r.expire("ef:a", 50, lt=True) is True
    assert 48 <= r.ttl("ef:a") <= 50
    r.set("ef:b", "v")
    assert r.expire("ef:b", 100, nx=True) is True
    assert r.pexpire("ef:b", 500_000, gt=True) is True
    with pytest.raises(ResponseError) as ei:
        r.execute_command("EXPIRE", "ef:a", 10, "NX", "XX")
    assert err_text(ei) == "NX and XX, GT or LT options at the same time are not compatible"
    with pytest.raises(ResponseError) as ei:
        r.execute_command("EXPIRE", "ef:a", 10, "GT", "LT")
    assert err_text(ei) == "GT and LT options at the same time are not compatible"
    with pytest.raises(ResponseError) as ei:
        r.execute_command("EXPIRE", "ef:a", 10, "BOGUS")
    assert err_text(ei) == "Unsupported option BOGUS"
    with pytest.raises(ResponseError) as ei:
        r.execute_command("EXPIRE", "ef:a", "ten")
    assert err_text(ei) == "value is not an integer or out of range"


def test_expiry_really_expires(r):
    r.set("ex:a", "v", px=100)
    r.set("ex:b", "v")
    r.pexpire("ex:b", 100)
    r.set("ex:c", "v")
    assert r.expire("ex:c", 0) is True  # non-positive TTL deletes
    assert r.exists("ex:c") == 0
    r.set("ex:d", "v")
    assert r.expireat("ex:d", int(time.time()) - 10) is True
    assert r.get("ex:d") is None
    time.sleep(0.3)
    assert r.get("ex:a") is None
    assert r.exists("ex:a", "ex:b") == 0
    assert r.ttl("ex:b") == -2
    assert r.mget("ex:a", "ex:b") == [None, None]
    assert r.keys("ex:*") == []


def test_keys(rs):
    rs.mset({f"k:{i}": i for i in range(20)})
    rs.set("other", 1)
    assert sorted(rs.keys("k:*")) == sorted(f"k:{i}" for i in range(20))
    assert sorted(rs.keys("k:?")) == sorted(f"k:{i}" for i in range(10))
    assert sorted(rs.keys("k:1[0-2]")) == ["k:10", "k:11", "k:12"]
    assert rs.keys("nomatch*") == []
    assert sorted(rs.keys()) == sorted([f"k:{i}" for i in range(20)] + ["other"])


def test_scan_iter(rs):
    rs.mset({f"sc:{i}": i for i in range(500)})
    rs.mset({f"sd:{i}": i for i in range(100)})
    expected = {f"sc:{i}" for i in range(500)}
    assert set(rs.scan_iter(match="sc:*")) == expected
    assert set(rs.scan_iter(match="sc:*", count=7)) == expected
    assert set(rs.scan_iter(match="sc:*", count=1000)) == expected
    assert set(rs.scan_iter(match="sc:*", _type="string")) == expected
    assert set(rs.scan_iter(match="sc:*", _type="STRING")) == expected
    assert list(rs.scan_iter(_type="list")) == []
    assert list(rs.scan_iter(match="nomatch:*")) == []
    assert len(set(rs.scan_iter())) == 600
    cursor, keys = rs.scan(0, match="sc:*", count=10)
    assert isinstance(cursor, int) and cursor >= 0
    assert isinstance(keys, list)


def test_scan_errors(r):
    with pytest.raises(ResponseError) as ei:
        r.execute_command("SCAN", "notanumber")
    assert err_text(ei) == "invalid cursor"
    with pytest.raises(ResponseError) as ei:
        r.execute_command("SCAN", 0, "BOGUS", 1)
    assert err_text(ei) == "syntax error"


# ------------------------------------------------------------- odd payloads

def test_binary_keys_and_values(r):
    key = b"bin\x00key\xff\r\n"
    val = b"\x00\x01\x02\xff\r\n\x00"
    assert r.set(key, val) is True
    assert r.get(key) == val
    assert r.strlen(key) == len(val)
    assert r.exists(key) == 1
    assert r.get(b"bin") is None
    assert r.append(key, b"\x00") == len(val) + 1
    assert r.getrange(key, 0, 1) == b"\x00\x01"
    assert key in set(r.scan_iter(match=b"bin*"))
    assert r.keys(b"bin\x00*") == [key]
    assert r.delete(key) == 1


def test_empty_key_and_value(r):
    assert r.set(b"", b"empty-key") is True
    assert r.get(b"") == b"empty-key"
    assert r.set("ev:a", b"") is True
    assert r.get("ev:a") == b""
    assert r.strlen("ev:a") == 0
    assert r.exists(b"", "ev:a") == 2
    assert r.mget(b"", "ev:a") == [b"empty-key", b""]
    assert r.delete(b"") == 1


def test_large_key_and_value(r):
    key = b"K" * 10 * 1024
    assert r.set(key, "v") is True
    assert r.get(key) == b"v"
    assert r.keys(b"K*") == [key]
    big = bytes(range(256)) * 4096  # 1 MiB
    assert r.set("big:v", big) is True
    assert r.get("big:v") == big
    assert r.strlen("big:v") == len(big)
    assert r.getrange("big:v", -3, -1) == big[-3:]


# ---------------------------------------------------------------- pipelines

def test_pipeline_1000(r):
    p = r.pipeline(transaction=False)
    for i in range(500):
        p.set(f"p:{i}", f"v{i}")
    for i in range(500):
        p.get(f"p:{i}")
    res = p.execute()
    assert len(res) == 1000
    assert res[:500] == [True] * 500
    assert res[500:] == [f"v{i}".encode() for i in range(500)]
    assert r.dbsize() == 500


def test_pipeline_with_errors(r):
    p = r.pipeline(transaction=False)
    p.set("pe:a", "1")
    p.execute_command("NOSUCHCMD")
    p.get("pe:a")
    res = p.execute(raise_on_error=False)
    assert res[0] is True
    assert isinstance(res[1], ResponseError)
    assert res[2] == b"1"


# -------------------------------------------------------------------- errors

ERROR_CASES = [
        (("GET",), "wrong number of arguments for 'get' command"),
        (("GET", "a", "b"), "wrong number of arguments for 'get' command"),
        (("SET", "a"), "wrong number of arguments for 'set' command"),
        (("MGET",), "wrong number of arguments for 'mget' command"),
        (("DEL",), "wrong number of arguments for 'del' command"),
        (("EXPIRE", "a"), "wrong number of arguments for 'expire' command"),
        (("SET", "a", "b", "FOO"), "syntax error"),
        (("EXPIRE", "a", "x"), "value is not an integer or out of range"),
        (("GETRANGE", "a", "x", "1"), "value is not an integer or out of range"),
        (("SETRANGE", "a", "x", "v"), "value is not an integer or out of range"),
        (("FOO", "bar", "baz"), "unknown command 'FOO', with args beginning with: 'bar' 'baz' "),
        (("foo",), "unknown command 'foo', with args beginning with: "),
        (("SELECT", "x"), "value is not an integer or out of range"),
        (("CLIENT", "NOSUCHSUB"),
         "unknown subcommand 'NOSUCHSUB'. Try CLIENT HELP."),
        (("CLIENT", "GETNAME", "x"), "wrong number of arguments for 'client|getname' command"),
        (("CLIENT", "SETNAME"), "wrong number of arguments for 'client|setname' command"),
        (("CONFIG", "GET"), "wrong number of arguments for 'config|get' command"),
        (("CONFIG", "FOO"), "unknown subcommand 'FOO'. Try CONFIG HELP."),
        (("COMMAND", "FOO"), "unknown subcommand 'FOO'. Try COMMAND HELP."),
        (("COMMAND", "COUNT", "x"), "wrong number of arguments for 'command|count' command"),
]


@pytest.mark.parametrize("args,expected", ERROR_CASES, ids=lambda v: " ".join(map(str, v))
                         if isinstance(v, tuple) else None)
def test_error_texts(r, args, expected):
    with pytest.raises(ResponseError) as ei:
        r.execute_command(*args)
    assert err_text(ei) == expected
    # connection still healthy after the error
    assert r.ping() is True


@pytest.mark.dynkv_specific
def test_other_types_are_unknown_commands(r):
    # dynkv-specific: only strings exist; other data-type commands are unknown
    cases = [
        (("LPUSH", "l", "x"), "unknown command 'LPUSH', with args beginning with: 'l' 'x' "),
        (("HSET", "h", "f", "v"), "unknown command 'HSET', with args beginning with: 'h' 'f' 'v' "),
        (("SADD", "s", "m"), "unknown command 'SADD', with args beginning with: 's' 'm' "),
    ]
    for args, txt in cases:
        with pytest.raises(ResponseError) as ei:
            r.execute_command(*args)
        assert err_text(ei) == txt, args


def test_long_unknown_command_args_truncated(r):
    # Redis quotes at most 128 chars of args in the unknown-command error
    with pytest.raises(ResponseError) as ei:
        r.execute_command("NOSUCH", "a" * 300)
    assert err_text(ei) == "unknown command 'NOSUCH', with args beginning with: '" + "a" * 128 + "' "


def test_auth(auth_server):
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    s = auth_server
    nr = {"retry": Retry(NoBackoff(), 0)}  # no client-side retries on auth failures
    c = redis.Redis(host=s.host, port=s.port, protocol=2, **nr)
    with pytest.raises(AuthenticationError) as ei:
        c.get("a")
    assert "Authentication required" in err_text(ei)
    bad = redis.Redis(host=s.host, port=s.port, password="wrong", protocol=2, **nr)
    with pytest.raises(AuthenticationError) as ei:
        bad.ping()
    assert "invalid username-password pair" in err_text(ei)
    good = redis.Redis(host=s.host, port=s.port, password=s.password, protocol=2)
    assert good.set("auth:a", "v") is True
    assert good.get("auth:a") == b"v"
    # HELLO 3 AUTH default <pw> (what redis-py does for protocol=3 + password)
    g3 = redis.Redis(host=s.host, port=s.port, password=s.password, protocol=3)
    assert g3.get("auth:a") == b"v"
    # RESP3 without password: HELLO 3 is rejected with a NOAUTH error
    n3 = redis.Redis(host=s.host, port=s.port, protocol=3, **nr)
    with pytest.raises(AuthenticationError):
        n3.ping()
    # Same session, byte level (redis-py's own connect handshake sends CLIENT SETINFO,
    # which an unauthenticated connection must refuse with NOAUTH, as Redis >= 7.2 does).
    import socket
    with socket.create_connection((s.host, s.port), timeout=5) as sock:
        f = sock.makefile("rb")

        def cmd(*args):
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a.encode() if isinstance(a, str) else a
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            sock.sendall(out)
            line = f.readline()
            if line.startswith(b"$") and line != b"$-1\r\n":
                line += f.readline()
            return line

        assert cmd("GET", "auth:a") == b"-NOAUTH Authentication required.\r\n"
        if TARGET != "redis":  # redis-server 7.0 here predates CLIENT SETINFO
            assert cmd("CLIENT", "SETINFO", "LIB-NAME", "x").startswith(b"-NOAUTH")
        assert cmd("AUTH", "wrong") == \
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        assert cmd("AUTH", s.password) == b"+OK\r\n"
        assert cmd("GET", "auth:a") == b"$1\r\nv\r\n"
        assert cmd("AUTH", "default", s.password) == b"+OK\r\n"
    for cl in (c, bad, good, g3, n3):
        cl.close()


def test_auth_default_user_without_password(server):
    # With no requirepass the default user is "nopass": AUTH default <anything> and
    # HELLO ... AUTH default <anything> succeed (only the one-argument AUTH errors).
    c = redis.Redis(host=server.host, port=server.port, protocol=2, single_connection_client=True)
    with pytest.raises(AuthenticationError) as ei:  # redis-py maps this error text
        c.execute_command("AUTH", "whatever")
    assert err_text(ei) == ("AUTH <password> called without any password configured for the "
                            "default user. Are you sure your configuration is correct?")
    assert c.execute_command("AUTH", "default", "whatever") is True
    c.close()
    # what redis-py does when given username/password (RESP2: AUTH, RESP3: HELLO 3 AUTH)
    u2 = redis.Redis(host=server.host, port=server.port, protocol=2,
                     username="default", password="whatever")
    assert u2.ping() is True
    u3 = redis.Redis(host=server.host, port=server.port, protocol=3,
                     username="default", password="whatever")
    assert u3.ping() is True
    u2.close()
    u3.close()


def test_mset_over_one_million_args(fresh_server):
    # Redis accepts multibulk lengths above 1024*1024 from authenticated clients.
    # Runs on its own server: a server that chokes on it must not take the others down.
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    r = redis.Redis(host=fresh_server.host, port=fresh_server.port, protocol=2,
                    socket_timeout=60, retry=Retry(NoBackoff(), 0))
    n = 600_000  # 1,200,001 arguments
    args = []
    for i in range(n):
        args += [b"big:%d" % i, b"v"]
    assert r.execute_command("MSET", *args) is True
    assert r.dbsize() == n
    assert r.get("big:599999") == b"v"
    # duplicates: the last value wins
    assert r.execute_command("MSET", *(args + [b"big:0", b"w"])) is True
    assert r.get("big:0") == b"w"
    r.close()


# ---------------------------------------------------------------- siblings

def _siblings(client, key):
    reply = client.execute_command("SIBLINGS", key)
    assert isinstance(reply, list) and len(reply) == 2, reply
    ctx, values = reply
    assert isinstance(ctx, (bytes, str)) and len(ctx) > 0
    assert isinstance(values, list)
    return ctx, values


@pytest.mark.dynkv_specific
def test_siblings_resolve_scenario(r):
    assert r.set("sib:k", "a") is True
    ctx1, vals = _siblings(r, "sib:k")
    assert vals == [b"a"]
    assert r.set("sib:k", "b") is True
    assert r.execute_command("RESOLVE", "sib:k", ctx1, "c") in (True, b"OK")
    ctx2, vals = _siblings(r, "sib:k")
    assert sorted(vals) == [b"b", b"c"]
    assert r.get("sib:k") == b"c"  # the latest written sibling
    assert r.execute_command("RESOLVE", "sib:k", ctx2, "d") in (True, b"OK")
    ctx3, vals = _siblings(r, "sib:k")
    assert vals == [b"d"]
    assert r.get("sib:k") == b"d"
    assert r.execute_command("RESOLVE", "sib:k", ctx3, "e", "EX", 100) in (True, b"OK")
    assert 98 <= r.ttl("sib:k") <= 100
    ctx4, vals = _siblings(r, "sib:k")
    assert vals == [b"e"]
    assert r.execute_command("RESOLVE", "sib:k", ctx4, "f", "PX", 100_000) in (True, b"OK")
    assert 98_000 <= r.pttl("sib:k") <= 100_000
    assert r.get("sib:k") == b"f"


@pytest.mark.dynkv_specific
def test_siblings_missing_key(r):
    ctx, vals = _siblings(r, "sib:missing")
    assert vals == []
    assert r.execute_command("RESOLVE", "sib:missing", ctx, "z") in (True, b"OK")
    assert r.get("sib:missing") == b"z"
    _, vals = _siblings(r, "sib:missing")
    assert vals == [b"z"]


@pytest.mark.dynkv_specific
def test_siblings_after_delete(r):
    r.set("sib:d", "a")
    ctx, _ = _siblings(r, "sib:d")
    assert r.delete("sib:d") == 1
    assert r.get("sib:d") is None
    _, vals = _siblings(r, "sib:d")
    assert vals == []


@pytest.mark.dynkv_specific
def test_siblings_binary_values(r):
    r.set("sib:bin", b"\x00\xff")
    _, vals = _siblings(r, "sib:bin")
    assert vals == [b"\x00\xff"]


@pytest.mark.dynkv_specific
def test_siblings_errors(r):
    with pytest.raises(ResponseError) as ei:
        r.execute_command("SIBLINGS")
    assert err_text(ei) == "wrong number of arguments for 'siblings' command"
    with pytest.raises(ResponseError) as ei:
        r.execute_command("RESOLVE", "k", "ctx")
    assert err_text(ei) == "wrong number of arguments for 'resolve' command"
    with pytest.raises(ResponseError):
        r.execute_command("RESOLVE", "k", "definitely-not-a-valid-context!!", "v")


@pytest.mark.dynkv_specific
def test_siblings_resp3(r3):
    r3.set("sib3:k", "a")
    ctx, vals = _siblings(r3, "sib3:k")
    assert vals == ["a"]
    assert r3.execute_command("RESOLVE", "sib3:k", ctx, "b") in (True, "OK")
    assert r3.get("sib3:k") == "b"


# --------------------------------------------------------------------- RESP3

def test_hello(server):
    c3 = redis.Redis(host=server.host, port=server.port, protocol=3, decode_responses=True,
                     single_connection_client=True)
    h = c3.execute_command("HELLO", 3)
    assert isinstance(h, dict)
    assert h["proto"] == 3
    for field in ("server", "version", "proto", "id", "mode", "role", "modules"):
        assert field in h, field
    assert isinstance(h["id"], int)
    assert h["modules"] == []
    c3.close()
    c2 = redis.Redis(host=server.host, port=server.port, protocol=2, single_connection_client=True)
    h2 = c2.execute_command("HELLO", 2)
    assert isinstance(h2, list)
    d = dict(zip(h2[::2], h2[1::2]))
    assert d[b"proto"] == 2
    c2.close()


def test_hello_unsupported_protocol(server):
    c = redis.Redis(host=server.host, port=server.port, protocol=2, single_connection_client=True)
    with pytest.raises(ResponseError) as ei:
        c.execute_command("HELLO", 4)
    assert "NOPROTO" in err_text(ei) or "unsupported protocol" in err_text(ei).lower()
    c.close()


def test_resp3_replies(r3):
    assert r3.set("r3:a", "1") is True
    assert r3.get("r3:a") == "1"
    assert r3.get("r3:missing") is None
    assert r3.mget("r3:a", "r3:missing") == ["1", None]
    assert r3.set("r3:a", "2", nx=True) is None
    assert r3.set("r3:a", "2", get=True) == "1"
    assert r3.exists("r3:a", "r3:missing") == 1
    assert r3.ttl("r3:a") == -1
    assert r3.expire("r3:a", 100) is True
    assert 98 <= r3.ttl("r3:a") <= 100
    assert r3.getex("r3:a", persist=True) == "2"
    assert r3.append("r3:a", "x") == 2
    assert r3.type("r3:a") == "string"
    assert r3.dbsize() == 1
    assert isinstance(r3.config_get("maxmemory"), dict)
    assert "maxmemory" in r3.config_get("maxmemory")
    assert isinstance(r3.client_id(), int)
    secs, usecs = r3.time()
    assert abs(secs - time.time()) < 5
    info = r3.info()
    assert "redis_version" in info and info["db0"]["keys"] == 1
    assert set(r3.scan_iter(match="r3:*")) == {"r3:a"}
    assert r3.keys("r3:*") == ["r3:a"]
    p = r3.pipeline(transaction=False)
    for i in range(100):
        p.set(f"r3:p{i}", i)
        p.get(f"r3:p{i}")
    res = p.execute()
    assert res[1::2] == [str(i) for i in range(100)]
    with pytest.raises(ResponseError) as ei:
        r3.execute_command("GET")
    assert err_text(ei) == "wrong number of arguments for 'get' command"
    assert r3.flushall() is True


def test_resp3_null_on_raw_connection(server):
    """Byte-level check: RESP3 null is `_`, RESP2 null bulk is `$-1`."""
    import socket
    with socket.create_connection((server.host, server.port)) as s:
        s.sendall(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
        buf = b""
        s.settimeout(5)
        while not buf.startswith(b"%"):
            buf += s.recv(4096)
            if buf and not buf.startswith(b"%"):
                break
        assert buf.startswith(b"%"), buf[:40]
        time.sleep(0.1)
        try:
            s.setblocking(False)
            s.recv(65536)
        except BlockingIOError:
            pass
        s.setblocking(True)
        s.settimeout(5)
        s.sendall(b"*2\r\n$3\r\nGET\r\n$22\r\nresp3:definitely:none!\r\n")
        assert s.recv(100) == b"_\r\n"
    with socket.create_connection((server.host, server.port)) as s:
        s.settimeout(5)
        s.sendall(b"*2\r\n$3\r\nGET\r\n$22\r\nresp3:definitely:none!\r\n")
        assert s.recv(100) == b"$-1\r\n"


# --------------------------------------------------------------- concurrency

def test_concurrency_50_threads(server):
    pool = redis.ConnectionPool(host=server.host, port=server.port, max_connections=60,
                                protocol=2)
    client = redis.Redis(connection_pool=pool)
    client.flushall()
    errors = []

    def worker(t):
        try:
            for j in range(200):
                k = f"conc:{t}:{j}"
                v = f"{t}-{j}-" + "x" * (j % 17)
                assert client.set(k, v) is True
                got = client.get(k)
                if got != v.encode():
                    errors.append((k, v, got))
        except Exception as e:  # noqa: BLE001
            errors.append((t, repr(e)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(50)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
    assert client.dbsize() == 50 * 200
    for t in range(50):
        keys = [f"conc:{t}:{j}" for j in range(200)]
        vals = client.mget(keys)
        assert vals == [(f"{t}-{j}-" + "x" * (j % 17)).encode() for j in range(200)]
    pool.disconnect()
