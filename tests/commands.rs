//! Command semantics through a real client library (the `redis` crate), against the real
//! binary: strings, keyspace, expiry, SCAN/KEYS, binary safety, siblings, connection and
//! server commands. Replies whose exact bytes matter are checked over raw TCP.

mod common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Raw, Resp, Server, Setup, err_text};
use redis::{Connection, Value};

fn cmd(args: &[&[u8]]) -> redis::Cmd {
    let mut c = redis::cmd(std::str::from_utf8(args[0]).expect("command name"));
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// Runs a command given as text words; panics on an error reply.
fn q(con: &mut Connection, args: &[&str]) -> Value {
    let b: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    qb(con, &b)
}

/// Runs a command given as byte words; panics on an error reply.
fn qb(con: &mut Connection, args: &[&[u8]]) -> Value {
    cmd(args)
        .query(con)
        .unwrap_or_else(|e| panic!("{:?} failed: {}", show(args), err_text(&e)))
}

/// Runs a command that must fail; returns the error text (`CODE detail`).
fn qe(con: &mut Connection, args: &[&str]) -> String {
    let b: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    match cmd(&b).query::<Value>(con) {
        Ok(v) => panic!("{args:?} should fail, got {v:?}"),
        Err(e) => err_text(&e),
    }
}

fn qi(con: &mut Connection, args: &[&str]) -> i64 {
    match q(con, args) {
        Value::Int(i) => i,
        other => panic!("{args:?}: expected an integer, got {other:?}"),
    }
}

/// A bulk reply as text, or None for nil.
fn qs(con: &mut Connection, args: &[&str]) -> Option<String> {
    match q(con, args) {
        Value::Nil => None,
        Value::BulkString(b) => Some(String::from_utf8(b).expect("utf-8")),
        Value::SimpleString(s) => Some(s),
        Value::Okay => Some("OK".into()),
        other => panic!("{args:?}: expected a string, got {other:?}"),
    }
}

fn show(args: &[&[u8]]) -> Vec<String> {
    args.iter()
        .map(|a| {
            let s = String::from_utf8_lossy(a);
            if s.len() > 40 {
                format!("{}...({} bytes)", &s[..40], a.len())
            } else {
                s.into_owned()
            }
        })
        .collect()
}

fn ok(con: &mut Connection, args: &[&str]) {
    assert_eq!(q(con, args), Value::Okay, "{args:?}");
}

fn bulk(v: &[u8]) -> Value {
    Value::BulkString(v.to_vec())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64
}

fn assert_ttl_near(con: &mut Connection, key: &str, secs: i64) {
    let t = qi(con, &["TTL", key]);
    assert!((secs - 1..=secs).contains(&t), "TTL {key} = {t}, expected about {secs}");
}

fn assert_pttl_near(con: &mut Connection, key: &str, ms: i64) {
    let t = qi(con, &["PTTL", key]);
    assert!((ms - 2000..=ms).contains(&t), "PTTL {key} = {t}, expected about {ms}");
}

/// Every key SCAN returns (cursor loop), with extra options.
fn scan_all(con: &mut Connection, extra: &[&str]) -> Vec<Vec<u8>> {
    let mut cursor = "0".to_string();
    let mut out = Vec::new();
    let mut calls = 0;
    loop {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(extra);
        let v = q(con, &args);
        let Value::Array(parts) = v else {
            panic!("SCAN reply {v:?}");
        };
        let [Value::BulkString(next), Value::Array(keys)] = &parts[..] else {
            panic!("SCAN reply shape {parts:?}");
        };
        for k in keys {
            match k {
                Value::BulkString(b) => out.push(b.clone()),
                other => panic!("SCAN key {other:?}"),
            }
        }
        cursor = String::from_utf8(next.clone()).expect("cursor");
        calls += 1;
        assert!(calls < 100_000, "SCAN does not terminate");
        if cursor == "0" {
            return out;
        }
    }
}

fn key_set(v: &Value) -> HashSet<Vec<u8>> {
    let Value::Array(items) = v else {
        panic!("not an array: {v:?}");
    };
    items
        .iter()
        .map(|i| match i {
            Value::BulkString(b) => b.clone(),
            other => panic!("not a bulk: {other:?}"),
        })
        .collect()
}

/// SIBLINGS key → (context, values).
fn siblings(con: &mut Connection, key: &str) -> (String, Vec<Vec<u8>>) {
    match q(con, &["SIBLINGS", key]) {
        Value::Array(parts) => match &parts[..] {
            [Value::BulkString(ctx), Value::Array(vals)] => (
                String::from_utf8(ctx.clone()).expect("context is text"),
                vals.iter()
                    .map(|v| match v {
                        Value::BulkString(b) => b.clone(),
                        other => panic!("sibling {other:?}"),
                    })
                    .collect(),
            ),
            other => panic!("SIBLINGS shape {other:?}"),
        },
        other => panic!("SIBLINGS reply {other:?}"),
    }
}

#[test]
fn get_set_and_every_set_option() {
    let s = Server::start(&[]);
    let mut c = s.client();

    assert_eq!(qs(&mut c, &["GET", "k"]), None);
    ok(&mut c, &["SET", "k", "v"]);
    assert_eq!(qs(&mut c, &["GET", "k"]).as_deref(), Some("v"));
    assert_eq!(qi(&mut c, &["TTL", "k"]), -1);

    // EX / PX / EXAT / PXAT
    ok(&mut c, &["SET", "ex", "v", "EX", "100"]);
    assert_ttl_near(&mut c, "ex", 100);
    ok(&mut c, &["SET", "px", "v", "PX", "100000"]);
    assert_pttl_near(&mut c, "px", 100_000);
    let at = now_ms() / 1000 + 200;
    ok(&mut c, &["SET", "exat", "v", "EXAT", &at.to_string()]);
    assert_eq!(qi(&mut c, &["EXPIRETIME", "exat"]), at as i64);
    assert_ttl_near(&mut c, "exat", (at - now_ms() / 1000) as i64);
    let pat = now_ms() + 300_000;
    ok(&mut c, &["SET", "pxat", "v", "PXAT", &pat.to_string()]);
    assert_eq!(qi(&mut c, &["PEXPIRETIME", "pxat"]), pat as i64);
    assert_eq!(qi(&mut c, &["EXPIRETIME", "pxat"]), (pat / 1000) as i64);

    // KEEPTTL keeps, a plain SET clears.
    ok(&mut c, &["SET", "ex", "v2", "KEEPTTL"]);
    assert_eq!(qs(&mut c, &["GET", "ex"]).as_deref(), Some("v2"));
    assert_ttl_near(&mut c, "ex", 100);
    ok(&mut c, &["SET", "ex", "v3"]);
    assert_eq!(qi(&mut c, &["TTL", "ex"]), -1);

    // NX / XX
    assert_eq!(q(&mut c, &["SET", "k", "other", "NX"]), Value::Nil);
    assert_eq!(qs(&mut c, &["GET", "k"]).as_deref(), Some("v"));
    ok(&mut c, &["SET", "nx", "1", "NX"]);
    assert_eq!(qs(&mut c, &["GET", "nx"]).as_deref(), Some("1"));
    assert_eq!(q(&mut c, &["SET", "xx", "1", "XX"]), Value::Nil);
    assert_eq!(qi(&mut c, &["EXISTS", "xx"]), 0);
    ok(&mut c, &["SET", "k", "v2", "XX"]);
    assert_eq!(qs(&mut c, &["GET", "k"]).as_deref(), Some("v2"));

    // GET
    assert_eq!(qs(&mut c, &["SET", "k", "v3", "GET"]).as_deref(), Some("v2"));
    assert_eq!(qs(&mut c, &["GET", "k"]).as_deref(), Some("v3"));
    assert_eq!(qs(&mut c, &["SET", "fresh", "a", "GET"]), None);
    assert_eq!(qs(&mut c, &["GET", "fresh"]).as_deref(), Some("a"));
    // NX GET on an existing key: old value, no write.
    assert_eq!(qs(&mut c, &["SET", "k", "zzz", "NX", "GET"]).as_deref(), Some("v3"));
    assert_eq!(qs(&mut c, &["GET", "k"]).as_deref(), Some("v3"));
    // Combined: XX GET EX
    assert_eq!(
        qs(&mut c, &["SET", "k", "v4", "XX", "GET", "EX", "50"]).as_deref(),
        Some("v3")
    );
    assert_ttl_near(&mut c, "k", 50);
    // Lower-case options.
    ok(&mut c, &["set", "lc", "v", "px", "100000", "nx"]);
    assert_pttl_near(&mut c, "lc", 100_000);

    // An absolute time in the past: the key is written already expired.
    ok(&mut c, &["SET", "past", "v", "PXAT", "1"]);
    assert_eq!(qs(&mut c, &["GET", "past"]), None);
    assert_eq!(qi(&mut c, &["EXISTS", "past"]), 0);
    ok(&mut c, &["SET", "past2", "v"]);
    assert_eq!(qs(&mut c, &["GETEX", "past2", "EXAT", "1"]).as_deref(), Some("v"));
    assert_eq!(qs(&mut c, &["GET", "past2"]), None);

    // Errors
    assert_eq!(
        qe(&mut c, &["SET", "k", "v", "EX", "0"]),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        qe(&mut c, &["SET", "k", "v", "PX", "-5"]),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(qe(&mut c, &["SET", "k", "v", "NX", "XX"]), "ERR syntax error");
    assert_eq!(
        qe(&mut c, &["SET", "k", "v", "EX", "10", "PX", "10"]),
        "ERR syntax error"
    );
    assert_eq!(
        qe(&mut c, &["SET", "k", "v", "KEEPTTL", "EX", "10"]),
        "ERR syntax error"
    );
    assert_eq!(qe(&mut c, &["SET", "k", "v", "EX"]), "ERR syntax error");
    assert_eq!(qe(&mut c, &["SET", "k", "v", "BOGUS"]), "ERR syntax error");
    assert_eq!(
        qe(&mut c, &["SET", "k", "v", "EX", "ten"]),
        "ERR value is not an integer or out of range"
    );
    // Nothing above changed the key.
    assert_eq!(qs(&mut c, &["GET", "k"]).as_deref(), Some("v4"));
}

#[test]
fn string_commands() {
    let s = Server::start(&[]);
    let mut c = s.client();

    // SETNX
    assert_eq!(qi(&mut c, &["SETNX", "n", "1"]), 1);
    assert_eq!(qi(&mut c, &["SETNX", "n", "2"]), 0);
    assert_eq!(qs(&mut c, &["GET", "n"]).as_deref(), Some("1"));

    // SETEX / PSETEX
    ok(&mut c, &["SETEX", "se", "100", "v"]);
    assert_eq!(qs(&mut c, &["GET", "se"]).as_deref(), Some("v"));
    assert_ttl_near(&mut c, "se", 100);
    ok(&mut c, &["PSETEX", "pse", "100000", "v"]);
    assert_pttl_near(&mut c, "pse", 100_000);
    assert_eq!(
        qe(&mut c, &["SETEX", "se", "0", "v"]),
        "ERR invalid expire time in 'setex' command"
    );
    assert_eq!(
        qe(&mut c, &["PSETEX", "se", "-1", "v"]),
        "ERR invalid expire time in 'psetex' command"
    );

    // GETSET: old value, and the expiry is cleared.
    assert_eq!(qs(&mut c, &["GETSET", "se", "w"]).as_deref(), Some("v"));
    assert_eq!(qi(&mut c, &["TTL", "se"]), -1);
    assert_eq!(qs(&mut c, &["GETSET", "gs-new", "x"]), None);
    assert_eq!(qs(&mut c, &["GET", "gs-new"]).as_deref(), Some("x"));

    // GETDEL
    assert_eq!(qs(&mut c, &["GETDEL", "gs-new"]).as_deref(), Some("x"));
    assert_eq!(qs(&mut c, &["GET", "gs-new"]), None);
    assert_eq!(qs(&mut c, &["GETDEL", "gs-new"]), None);

    // GETEX, every option.
    ok(&mut c, &["SET", "gx", "val"]);
    assert_eq!(qs(&mut c, &["GETEX", "gx"]).as_deref(), Some("val"));
    assert_eq!(qi(&mut c, &["TTL", "gx"]), -1);
    assert_eq!(qs(&mut c, &["GETEX", "gx", "EX", "100"]).as_deref(), Some("val"));
    assert_ttl_near(&mut c, "gx", 100);
    // No option leaves the expiry alone.
    assert_eq!(qs(&mut c, &["GETEX", "gx"]).as_deref(), Some("val"));
    assert_ttl_near(&mut c, "gx", 100);
    assert_eq!(qs(&mut c, &["GETEX", "gx", "PX", "200000"]).as_deref(), Some("val"));
    assert_pttl_near(&mut c, "gx", 200_000);
    let at = now_ms() / 1000 + 300;
    assert_eq!(
        qs(&mut c, &["GETEX", "gx", "EXAT", &at.to_string()]).as_deref(),
        Some("val")
    );
    assert_eq!(qi(&mut c, &["EXPIRETIME", "gx"]), at as i64);
    let pat = now_ms() + 400_000;
    assert_eq!(
        qs(&mut c, &["GETEX", "gx", "PXAT", &pat.to_string()]).as_deref(),
        Some("val")
    );
    assert_eq!(qi(&mut c, &["PEXPIRETIME", "gx"]), pat as i64);
    assert_eq!(qs(&mut c, &["GETEX", "gx", "PERSIST"]).as_deref(), Some("val"));
    assert_eq!(qi(&mut c, &["TTL", "gx"]), -1);
    assert_eq!(qs(&mut c, &["GETEX", "missing", "EX", "10"]), None);
    assert_eq!(qi(&mut c, &["EXISTS", "missing"]), 0);
    assert_eq!(qe(&mut c, &["GETEX", "gx", "EX"]), "ERR syntax error");
    assert_eq!(
        qe(&mut c, &["GETEX", "gx", "EX", "0"]),
        "ERR invalid expire time in 'getex' command"
    );
    assert_eq!(qe(&mut c, &["GETEX", "gx", "PERSIST", "EX", "10"]), "ERR syntax error");

    // MSET / MGET / MSETNX
    ok(&mut c, &["MSET", "m1", "a", "m2", "b", "m1", "c"]);
    assert_eq!(
        q(&mut c, &["MGET", "m1", "m2", "nope"]),
        Value::Array(vec![bulk(b"c"), bulk(b"b"), Value::Nil])
    );
    assert_eq!(
        qe(&mut c, &["MSET", "m1", "a", "m2"]),
        "ERR wrong number of arguments for 'mset' command"
    );
    assert_eq!(qi(&mut c, &["MSETNX", "m1", "x", "m3", "y"]), 0);
    assert_eq!(qs(&mut c, &["GET", "m3"]), None, "MSETNX wrote partially");
    assert_eq!(qs(&mut c, &["GET", "m1"]).as_deref(), Some("c"));
    assert_eq!(qi(&mut c, &["MSETNX", "m3", "x", "m4", "y"]), 1);
    assert_eq!(
        q(&mut c, &["MGET", "m3", "m4"]),
        Value::Array(vec![bulk(b"x"), bulk(b"y")])
    );

    // APPEND keeps the expiry.
    assert_eq!(qi(&mut c, &["APPEND", "ap", "Hello"]), 5);
    assert_eq!(qi(&mut c, &["APPEND", "ap", " World"]), 11);
    assert_eq!(qs(&mut c, &["GET", "ap"]).as_deref(), Some("Hello World"));
    assert_eq!(qi(&mut c, &["EXPIRE", "ap", "100"]), 1);
    assert_eq!(qi(&mut c, &["APPEND", "ap", "!"]), 12);
    assert_ttl_near(&mut c, "ap", 100);

    // STRLEN
    assert_eq!(qi(&mut c, &["STRLEN", "ap"]), 12);
    assert_eq!(qi(&mut c, &["STRLEN", "nope"]), 0);

    // GETRANGE (and SUBSTR)
    ok(&mut c, &["SET", "gr", "This is a string"]);
    for (a, b, want) in [
        ("0", "3", "This"),
        ("-3", "-1", "ing"),
        ("0", "-1", "This is a string"),
        ("10", "100", "string"),
        ("5", "3", ""),
        ("-100", "2", "Thi"),
    ] {
        assert_eq!(
            qs(&mut c, &["GETRANGE", "gr", a, b]).as_deref(),
            Some(want),
            "GETRANGE {a} {b}"
        );
    }
    assert_eq!(qs(&mut c, &["SUBSTR", "gr", "0", "3"]).as_deref(), Some("This"));
    assert_eq!(qs(&mut c, &["GETRANGE", "nope", "0", "-1"]).as_deref(), Some(""));
    assert_eq!(
        qe(&mut c, &["GETRANGE", "gr", "a", "1"]),
        "ERR value is not an integer or out of range"
    );

    // SETRANGE, with zero padding.
    ok(&mut c, &["SET", "sr", "Hello World"]);
    assert_eq!(qi(&mut c, &["SETRANGE", "sr", "6", "Redis"]), 11);
    assert_eq!(qs(&mut c, &["GET", "sr"]).as_deref(), Some("Hello Redis"));
    assert_eq!(qi(&mut c, &["SETRANGE", "pad", "5", "hi"]), 7);
    assert_eq!(q(&mut c, &["GET", "pad"]), bulk(b"\0\0\0\0\0hi"));
    assert_eq!(qi(&mut c, &["SETRANGE", "sr", "13", "!"]), 14);
    assert_eq!(q(&mut c, &["GET", "sr"]), bulk(b"Hello Redis\0\0!"));
    assert_eq!(qi(&mut c, &["SETRANGE", "sr", "0", ""]), 14);
    assert_eq!(qi(&mut c, &["SETRANGE", "empty", "3", ""]), 0);
    assert_eq!(qi(&mut c, &["EXISTS", "empty"]), 0);
    assert_eq!(qe(&mut c, &["SETRANGE", "sr", "-1", "x"]), "ERR offset is out of range");
    assert_eq!(
        qe(&mut c, &["SETRANGE", "sr", "536870912", "x"]),
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    );
}

#[test]
fn keyspace_and_expire_family() {
    let s = Server::start(&[]);
    let mut c = s.client();
    ok(&mut c, &["MSET", "a", "1", "b", "2", "c", "3", "d", "4"]);

    // EXISTS counts repeats, DEL does not.
    assert_eq!(qi(&mut c, &["EXISTS", "a", "a", "a", "nope", "b"]), 4);
    assert_eq!(qi(&mut c, &["DEL", "a", "a", "nope"]), 1);
    assert_eq!(qi(&mut c, &["EXISTS", "a"]), 0);
    assert_eq!(qi(&mut c, &["UNLINK", "b", "c", "nope"]), 2);
    assert_eq!(qi(&mut c, &["EXISTS", "b", "c"]), 0);
    assert_eq!(qi(&mut c, &["DEL", "b"]), 0);

    // TYPE
    assert_eq!(q(&mut c, &["TYPE", "d"]), Value::SimpleString("string".into()));
    assert_eq!(q(&mut c, &["TYPE", "a"]), Value::SimpleString("none".into()));

    // TTL / PTTL of missing and persistent keys.
    assert_eq!(qi(&mut c, &["TTL", "nope"]), -2);
    assert_eq!(qi(&mut c, &["PTTL", "nope"]), -2);
    assert_eq!(qi(&mut c, &["EXPIRETIME", "nope"]), -2);
    assert_eq!(qi(&mut c, &["PEXPIRETIME", "nope"]), -2);
    assert_eq!(qi(&mut c, &["TTL", "d"]), -1);
    assert_eq!(qi(&mut c, &["PTTL", "d"]), -1);
    assert_eq!(qi(&mut c, &["EXPIRETIME", "d"]), -1);
    assert_eq!(qi(&mut c, &["PEXPIRETIME", "d"]), -1);

    // EXPIRE family on a missing key.
    assert_eq!(qi(&mut c, &["EXPIRE", "nope", "100"]), 0);
    assert_eq!(qi(&mut c, &["PEXPIRE", "nope", "100"]), 0);

    // NX / XX / GT / LT
    ok(&mut c, &["SET", "e", "v"]);
    assert_eq!(qi(&mut c, &["EXPIRE", "e", "100", "XX"]), 0);
    assert_eq!(qi(&mut c, &["TTL", "e"]), -1);
    assert_eq!(qi(&mut c, &["EXPIRE", "e", "100", "GT"]), 0);
    assert_eq!(qi(&mut c, &["TTL", "e"]), -1);
    assert_eq!(qi(&mut c, &["EXPIRE", "e", "100", "NX"]), 1);
    assert_ttl_near(&mut c, "e", 100);
    assert_eq!(qi(&mut c, &["EXPIRE", "e", "200", "NX"]), 0);
    assert_ttl_near(&mut c, "e", 100);
    assert_eq!(qi(&mut c, &["EXPIRE", "e", "50", "GT"]), 0);
    assert_ttl_near(&mut c, "e", 100);
    assert_eq!(qi(&mut c, &["EXPIRE", "e", "200", "GT"]), 1);
    assert_ttl_near(&mut c, "e", 200);
    assert_eq!(qi(&mut c, &["EXPIRE", "e", "300", "LT"]), 0);
    assert_ttl_near(&mut c, "e", 200);
    assert_eq!(qi(&mut c, &["EXPIRE", "e", "150", "LT"]), 1);
    assert_ttl_near(&mut c, "e", 150);
    assert_eq!(qi(&mut c, &["EXPIRE", "e", "120", "XX"]), 1);
    assert_ttl_near(&mut c, "e", 120);
    assert_eq!(qi(&mut c, &["EXPIRE", "e", "130", "XX", "GT"]), 1);
    assert_ttl_near(&mut c, "e", 130);
    // LT on a persistent key: no expiry counts as infinite, so LT sets it (as Redis).
    ok(&mut c, &["SET", "p", "v"]);
    assert_eq!(qi(&mut c, &["EXPIRE", "p", "100", "LT"]), 1);
    assert_ttl_near(&mut c, "p", 100);
    assert_eq!(
        qe(&mut c, &["EXPIRE", "e", "10", "NX", "XX"]),
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    );
    assert_eq!(
        qe(&mut c, &["EXPIRE", "e", "10", "GT", "LT"]),
        "ERR GT and LT options at the same time are not compatible"
    );
    assert_eq!(qe(&mut c, &["EXPIRE", "e", "10", "FOO"]), "ERR Unsupported option FOO");
    assert_eq!(
        qe(&mut c, &["EXPIRE", "e", "ten"]),
        "ERR value is not an integer or out of range"
    );

    // PEXPIRE / EXPIREAT / PEXPIREAT
    assert_eq!(qi(&mut c, &["PEXPIRE", "e", "100000"]), 1);
    assert_pttl_near(&mut c, "e", 100_000);
    let at = now_ms() / 1000 + 500;
    assert_eq!(qi(&mut c, &["EXPIREAT", "e", &at.to_string()]), 1);
    assert_eq!(qi(&mut c, &["EXPIRETIME", "e"]), at as i64);
    let pat = now_ms() + 600_000;
    assert_eq!(qi(&mut c, &["PEXPIREAT", "e", &pat.to_string()]), 1);
    assert_eq!(qi(&mut c, &["PEXPIRETIME", "e"]), pat as i64);

    // PERSIST
    assert_eq!(qi(&mut c, &["PERSIST", "e"]), 1);
    assert_eq!(qi(&mut c, &["TTL", "e"]), -1);
    assert_eq!(qi(&mut c, &["PERSIST", "e"]), 0);
    assert_eq!(qi(&mut c, &["PERSIST", "nope"]), 0);

    // Times in the past delete the key.
    for (cmd_name, t) in [
        ("EXPIRE", "-1".to_string()),
        ("PEXPIRE", "0".to_string()),
        ("EXPIREAT", (now_ms() / 1000 - 10).to_string()),
        ("PEXPIREAT", "1".to_string()),
    ] {
        ok(&mut c, &["SET", "gone", "v"]);
        assert_eq!(qi(&mut c, &[cmd_name, "gone", &t]), 1, "{cmd_name} {t}");
        assert_eq!(qs(&mut c, &["GET", "gone"]), None, "{cmd_name} {t}");
        assert_eq!(qi(&mut c, &["EXISTS", "gone"]), 0, "{cmd_name} {t}");
        assert_eq!(qi(&mut c, &["TTL", "gone"]), -2, "{cmd_name} {t}");
    }
}

#[test]
fn scan_sees_every_key() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let n = 5000;
    let all: HashSet<Vec<u8>> = (0..n).map(|i| format!("key:{i}").into_bytes()).collect();
    let keys: Vec<String> = (0..n).map(|i| format!("key:{i}")).collect();
    for chunk in keys.chunks(500) {
        let mut m = redis::cmd("MSET");
        for k in chunk {
            m.arg(k).arg("v");
        }
        let r: Value = m.query(&mut c).expect("MSET");
        assert_eq!(r, Value::Okay);
    }
    assert_eq!(qi(&mut c, &["DBSIZE"]), n as i64);

    let seen = scan_all(&mut c, &["COUNT", "100"]);
    let seen_set: HashSet<Vec<u8>> = seen.iter().cloned().collect();
    let missing: Vec<_> = all.difference(&seen_set).take(5).collect();
    assert!(missing.is_empty(), "SCAN missed keys, e.g. {missing:?}");
    assert_eq!(seen_set.len(), n, "SCAN returned foreign keys");
    // Without concurrent writes no key should come back twice.
    assert_eq!(seen.len(), n, "SCAN returned duplicates");

    // MATCH
    let want: HashSet<Vec<u8>> = all.iter().filter(|k| k.starts_with(b"key:12")).cloned().collect();
    let got: HashSet<Vec<u8>> = scan_all(&mut c, &["MATCH", "key:12*", "COUNT", "100"])
        .into_iter()
        .collect();
    assert_eq!(got, want);

    // TYPE
    let strings: HashSet<Vec<u8>> = scan_all(&mut c, &["COUNT", "1000", "TYPE", "string"])
        .into_iter()
        .collect();
    assert_eq!(strings, all);
    assert!(scan_all(&mut c, &["COUNT", "1000", "TYPE", "list"]).is_empty());

    // Bad arguments.
    assert_eq!(qe(&mut c, &["SCAN", "abc"]), "ERR invalid cursor");
    assert_eq!(qe(&mut c, &["SCAN", "0", "COUNT", "0"]), "ERR syntax error");
    assert_eq!(qe(&mut c, &["SCAN", "0", "MATCH"]), "ERR syntax error");
}

#[test]
fn keys_pattern() {
    let s = Server::start(&[]);
    let mut c = s.client();
    ok(
        &mut c,
        &[
            "MSET",
            "user:1:name",
            "a",
            "user:2:name",
            "b",
            "user:2:age",
            "3",
            "hello",
            "x",
            "hallo",
            "y",
            "hxllo",
            "z",
        ],
    );
    let set = |v: &[&str]| -> HashSet<Vec<u8>> { v.iter().map(|s| s.as_bytes().to_vec()).collect() };
    assert_eq!(
        key_set(&q(&mut c, &["KEYS", "user:*:name"])),
        set(&["user:1:name", "user:2:name"])
    );
    assert_eq!(key_set(&q(&mut c, &["KEYS", "h[ae]llo"])), set(&["hello", "hallo"]));
    assert_eq!(
        key_set(&q(&mut c, &["KEYS", "h?llo"])),
        set(&["hello", "hallo", "hxllo"])
    );
    assert_eq!(key_set(&q(&mut c, &["KEYS", "*"])).len(), 6);
    assert!(key_set(&q(&mut c, &["KEYS", "nothing*"])).is_empty());
}

#[test]
fn expired_keys_are_invisible() {
    let s = Server::start(&[]);
    let mut c = s.client();
    ok(&mut c, &["SET", "stay", "v"]);
    ok(&mut c, &["SET", "brief", "v", "PX", "50"]);
    assert_eq!(qi(&mut c, &["EXISTS", "brief"]), 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(qs(&mut c, &["GET", "brief"]), None);
    assert_eq!(qi(&mut c, &["EXISTS", "brief"]), 0);
    assert_eq!(qi(&mut c, &["TTL", "brief"]), -2);
    assert_eq!(q(&mut c, &["TYPE", "brief"]), Value::SimpleString("none".into()));
    assert_eq!(scan_all(&mut c, &[]), vec![b"stay".to_vec()]);
    assert_eq!(
        key_set(&q(&mut c, &["KEYS", "*"])),
        [b"stay".to_vec()].into_iter().collect()
    );
    assert_eq!(qi(&mut c, &["DBSIZE"]), 1);
    assert_eq!(
        q(&mut c, &["MGET", "brief", "stay"]),
        Value::Array(vec![Value::Nil, bulk(b"v")])
    );
    // An expired key counts as missing for NX and APPEND.
    ok(&mut c, &["SET", "brief2", "old", "PX", "50"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(qi(&mut c, &["APPEND", "brief2", "new"]), 3);
    assert_eq!(qs(&mut c, &["GET", "brief2"]).as_deref(), Some("new"));
    assert_eq!(qi(&mut c, &["TTL", "brief2"]), -1);
    let s2 = redis::cmd("INFO").arg("keyspace").query::<String>(&mut c);
    let text = s2.expect("INFO keyspace");
    assert!(text.contains("db0:keys=2,"), "INFO keyspace: {text}");
}

#[test]
fn binary_safety_and_sizes() {
    let s = Server::start(&[]);
    let mut c = s.client();

    let k: &[u8] = b"a\0b\r\n\xff";
    let v: &[u8] = b"\0\x01\xfe\xff\r\n\0";
    assert_eq!(qb(&mut c, &[b"SET", k, v]), Value::Okay);
    assert_eq!(qb(&mut c, &[b"GET", k]), bulk(v));
    assert_eq!(qb(&mut c, &[b"GET", b"a"]), Value::Nil);
    assert_eq!(qb(&mut c, &[b"STRLEN", k]), Value::Int(v.len() as i64));
    assert!(scan_all(&mut c, &[]).contains(&k.to_vec()));

    // Empty key and empty value.
    assert_eq!(qb(&mut c, &[b"SET", b"", b"empty-key"]), Value::Okay);
    assert_eq!(qb(&mut c, &[b"GET", b""]), bulk(b"empty-key"));
    assert_eq!(qb(&mut c, &[b"SET", b"ev", b""]), Value::Okay);
    assert_eq!(qb(&mut c, &[b"GET", b"ev"]), bulk(b""));
    assert_eq!(qb(&mut c, &[b"EXISTS", b"ev"]), Value::Int(1));
    assert_eq!(qb(&mut c, &[b"STRLEN", b"ev"]), Value::Int(0));
    assert!(scan_all(&mut c, &[]).contains(&Vec::new()));
    assert_eq!(qb(&mut c, &[b"DEL", b""]), Value::Int(1));
    assert_eq!(qb(&mut c, &[b"GET", b""]), Value::Nil);

    // A 10 KB key.
    let big_key: Vec<u8> = (0..10 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(qb(&mut c, &[b"SET", &big_key, b"bk"]), Value::Okay);
    assert_eq!(qb(&mut c, &[b"GET", &big_key]), bulk(b"bk"));
    // A key sharing a long prefix must not collide with it.
    let mut other = big_key.clone();
    *other.last_mut().expect("non-empty") = b'!';
    assert_eq!(qb(&mut c, &[b"GET", &other]), Value::Nil);
    assert_eq!(qb(&mut c, &[b"SET", &other, b"other"]), Value::Okay);
    assert_eq!(qb(&mut c, &[b"GET", &big_key]), bulk(b"bk"));
    let scanned = scan_all(&mut c, &["COUNT", "1000"]);
    assert!(scanned.contains(&big_key), "SCAN lost the 10 KB key");
    assert!(scanned.contains(&other), "SCAN lost the second 10 KB key");
    assert_eq!(qb(&mut c, &[b"DEL", &big_key]), Value::Int(1));
    assert_eq!(qb(&mut c, &[b"GET", &big_key]), Value::Nil);
    assert_eq!(qb(&mut c, &[b"GET", &other]), bulk(b"other"));

    // A 5 MB value.
    let big: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(qb(&mut c, &[b"SET", b"big", &big]), Value::Okay);
    match qb(&mut c, &[b"GET", b"big"]) {
        Value::BulkString(got) => assert!(got == big, "5 MB value changed"),
        other => panic!("GET big: {other:?}"),
    }
    assert_eq!(qb(&mut c, &[b"STRLEN", b"big"]), Value::Int(big.len() as i64));
}

#[test]
fn siblings_and_resolve() {
    let s = Server::start(&[]);
    let mut c = s.client();

    // A missing key: the empty context and no values.
    let (ctx0, vals) = siblings(&mut c, "k");
    assert!(!ctx0.is_empty(), "empty context token");
    assert_eq!(ctx0, "AQA", "documented token of the empty context");
    assert!(vals.is_empty());

    ok(&mut c, &["SET", "k", "a"]);
    let (ctx1, vals) = siblings(&mut c, "k");
    assert_eq!(vals, vec![b"a".to_vec()]);
    assert_ne!(ctx1, ctx0);
    ok(&mut c, &["SET", "k", "b"]);
    // A write with the stale context ctx1 is concurrent with b.
    ok(&mut c, &["RESOLVE", "k", &ctx1, "c"]);
    let (ctx2, vals) = siblings(&mut c, "k");
    let got: HashSet<Vec<u8>> = vals.iter().cloned().collect();
    assert_eq!(vals.len(), 2, "siblings: {vals:?}");
    assert_eq!(got, [b"b".to_vec(), b"c".to_vec()].into_iter().collect());
    let g = qs(&mut c, &["GET", "k"]).expect("GET with siblings");
    assert!(g == "b" || g == "c", "GET returned {g}");
    // GET is deterministic.
    for _ in 0..5 {
        assert_eq!(qs(&mut c, &["GET", "k"]).as_deref(), Some(g.as_str()));
    }
    assert_eq!(qi(&mut c, &["EXISTS", "k"]), 1);
    assert_eq!(qi(&mut c, &["DBSIZE"]), 1, "siblings count as one key");

    // Resolving with the current context replaces both.
    ok(&mut c, &["RESOLVE", "k", &ctx2, "d"]);
    let (ctx3, vals) = siblings(&mut c, "k");
    assert_eq!(vals, vec![b"d".to_vec()]);
    assert_eq!(qs(&mut c, &["GET", "k"]).as_deref(), Some("d"));
    assert_ne!(ctx3, ctx2);

    // RESOLVE with an expiry.
    ok(&mut c, &["RESOLVE", "k", &ctx3, "e", "EX", "100"]);
    assert_ttl_near(&mut c, "k", 100);
    assert_eq!(siblings(&mut c, "k").1, vec![b"e".to_vec()]);

    // Garbage contexts are errors and change nothing.
    for bad in ["!!!", "", "AQ", "zzzzzzzz", "AQA=", "not a context"] {
        let e = qe(&mut c, &["RESOLVE", "k", bad, "x"]);
        assert!(e.starts_with("ERR"), "RESOLVE with {bad:?}: {e}");
    }
    assert_eq!(siblings(&mut c, "k").1, vec![b"e".to_vec()]);
    assert_eq!(qe(&mut c, &["RESOLVE", "k", "AQA", "x", "EX"]), "ERR syntax error");

    // Sequential SETs never create siblings.
    for i in 0..100 {
        ok(&mut c, &["SET", "seq", &i.to_string()]);
    }
    assert_eq!(siblings(&mut c, "seq").1, vec![b"99".to_vec()]);

    // A plain SET over siblings supersedes them all.
    ok(&mut c, &["SET", "sup", "a"]);
    let (old, _) = siblings(&mut c, "sup");
    ok(&mut c, &["SET", "sup", "b"]);
    ok(&mut c, &["RESOLVE", "sup", &old, "c"]);
    assert_eq!(siblings(&mut c, "sup").1.len(), 2);
    ok(&mut c, &["SET", "sup", "z"]);
    assert_eq!(siblings(&mut c, "sup").1, vec![b"z".to_vec()]);

    // DEL removes every sibling.
    ok(&mut c, &["SET", "sib", "a"]);
    let (old, _) = siblings(&mut c, "sib");
    ok(&mut c, &["SET", "sib", "b"]);
    ok(&mut c, &["RESOLVE", "sib", &old, "c"]);
    assert_eq!(siblings(&mut c, "sib").1.len(), 2);
    assert_eq!(qi(&mut c, &["DEL", "sib"]), 1);
    assert_eq!(qs(&mut c, &["GET", "sib"]), None);
    assert_eq!(qi(&mut c, &["EXISTS", "sib"]), 0);
    assert!(siblings(&mut c, "sib").1.is_empty());
    // A stale context does not resurrect deleted values: only the new one is live.
    ok(&mut c, &["RESOLVE", "sib", &old, "z"]);
    let vals = siblings(&mut c, "sib").1;
    assert_eq!(vals, vec![b"z".to_vec()]);
}

#[test]
fn errors_and_unsupported_commands() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let e = qe(&mut c, &["INCR", "x"]);
    assert!(e.starts_with("ERR") && e.contains("not supported"), "{e}");
    for name in ["DECR", "INCRBY", "DECRBY", "INCRBYFLOAT"] {
        let args: Vec<&str> = if name == "DECR" {
            vec![name, "x"]
        } else {
            vec![name, "x", "1"]
        };
        let e = qe(&mut c, &args);
        assert!(e.contains("not supported"), "{name}: {e}");
    }
    assert_eq!(qi(&mut c, &["EXISTS", "x"]), 0);
    assert_eq!(qe(&mut c, &["GET"]), "ERR wrong number of arguments for 'get' command");
    assert_eq!(
        qe(&mut c, &["SET", "k"]),
        "ERR wrong number of arguments for 'set' command"
    );
    assert_eq!(
        qe(&mut c, &["GET", "a", "b"]),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(qe(&mut c, &["SELECT", "1"]), "ERR DB index is out of range");
    ok(&mut c, &["SELECT", "0"]);

    // Exact bytes of Redis's unknown-command error (networking.c: each argument quoted,
    // followed by a space, the whole list after "with args beginning with: ").
    let mut r = s.raw();
    r.send(b"*2\r\n$3\r\nFOO\r\n$1\r\na\r\n").expect("send");
    assert_eq!(
        r.read_line().expect("reply"),
        b"-ERR unknown command 'FOO', with args beginning with: 'a' ".to_vec()
    );
    r.send(b"*1\r\n$3\r\nFOO\r\n").expect("send");
    assert_eq!(
        r.read_line().expect("reply"),
        b"-ERR unknown command 'FOO', with args beginning with: ".to_vec()
    );
    r.send(b"*3\r\n$3\r\nfoo\r\n$1\r\na\r\n$2\r\nbc\r\n").expect("send");
    assert_eq!(
        r.read_line().expect("reply"),
        b"-ERR unknown command 'foo', with args beginning with: 'a' 'bc' ".to_vec()
    );
    // The connection is still usable.
    assert_eq!(r.cmd(&[b"PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn auth_flow() {
    let pw = "s3cret";
    let s = Server::start_with(Setup {
        password: Some(pw.into()),
        ..Setup::args(&["--requirepass", pw])
    });
    let mut r = Raw::connect(s.addr());
    assert_eq!(
        r.cmd(&[b"GET", b"k"]),
        Resp::Error("NOAUTH Authentication required.".into())
    );
    assert_eq!(
        r.cmd(&[b"SET", b"k", b"v"]),
        Resp::Error("NOAUTH Authentication required.".into())
    );
    assert_eq!(
        r.cmd(&[b"AUTH", b"wrong"]),
        Resp::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
    );
    assert_eq!(
        r.cmd(&[b"AUTH", b"someone", pw.as_bytes()]),
        Resp::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
    );
    assert!(matches!(r.cmd(&[b"HELLO", b"3"]), Resp::Error(e) if e.starts_with("NOAUTH")));
    assert_eq!(r.cmd(&[b"AUTH", pw.as_bytes()]), Resp::Simple("OK".into()));
    assert_eq!(r.cmd(&[b"SET", b"k", b"v"]), Resp::Simple("OK".into()));
    assert_eq!(r.cmd(&[b"GET", b"k"]), Resp::bulk("v"));
    // RESET drops the authentication.
    assert_eq!(r.cmd(&[b"RESET"]), Resp::Simple("RESET".into()));
    assert_eq!(
        r.cmd(&[b"GET", b"k"]),
        Resp::Error("NOAUTH Authentication required.".into())
    );

    // AUTH default <pw>
    let mut r2 = Raw::connect(s.addr());
    assert_eq!(r2.cmd(&[b"AUTH", b"default", pw.as_bytes()]), Resp::Simple("OK".into()));
    assert_eq!(r2.cmd(&[b"GET", b"k"]), Resp::bulk("v"));

    // HELLO 3 AUTH default <pw>
    let mut r3 = Raw::connect(s.addr());
    r3.send(&common::encode(&[b"HELLO", b"3", b"AUTH", b"default", b"wrong"]))
        .expect("send");
    assert!(matches!(r3.read_reply().expect("reply"), Resp::Error(e) if e.starts_with("WRONGPASS")));
    r3.send(&common::encode(&[b"HELLO", b"3", b"AUTH", b"default", pw.as_bytes()]))
        .expect("send");
    assert_eq!(r3.read_line().expect("HELLO header"), b"%7".to_vec());
    // Consume the 7 pairs.
    for _ in 0..14 {
        r3.read_reply().expect("HELLO field");
    }
    assert_eq!(r3.cmd(&[b"GET", b"k"]), Resp::bulk("v"));

    // The redis crate with a password in the URL.
    let mut c = s.client();
    assert_eq!(qs(&mut c, &["GET", "k"]).as_deref(), Some("v"));

    // AUTH without a configured password.
    let open = Server::start(&[]);
    let mut r4 = Raw::connect(open.addr());
    match r4.cmd(&[b"AUTH", b"x"]) {
        Resp::Error(e) => assert!(e.starts_with("ERR AUTH"), "{e}"),
        other => panic!("AUTH without password: {other:?}"),
    }
}

#[test]
fn hello_switches_to_resp3() {
    let s = Server::start(&[]);
    let mut r = s.raw();
    // RESP2 before.
    r.send(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n").expect("send");
    assert_eq!(r.read_line().expect("nil"), b"$-1".to_vec());
    r.send(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n").expect("send");
    assert_eq!(r.read_line().expect("map header"), b"%7".to_vec());
    let mut fields = Vec::new();
    for _ in 0..7 {
        let k = r.read_reply().expect("key");
        let v = r.read_reply().expect("value");
        fields.push((k.text(), v));
    }
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("HELLO has no {name}: {fields:?}"))
    };
    assert_eq!(get("server"), Resp::bulk("dynkv"));
    assert_eq!(get("proto"), Resp::Int(3));
    assert!(matches!(get("id"), Resp::Int(_)));
    // RESP3 after: nil is `_`, and maps are maps.
    r.send(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n").expect("send");
    assert_eq!(r.read_line().expect("nil"), b"_".to_vec());
    r.send(&common::encode(&[b"CONFIG", b"GET", b"maxmemory"]))
        .expect("send");
    assert_eq!(r.read_line().expect("map"), b"%1".to_vec());
    assert_eq!(r.read_reply().expect("k"), Resp::bulk("maxmemory"));
    assert_eq!(r.read_reply().expect("v"), Resp::bulk("0"));
    // HELLO 2 goes back.
    assert!(matches!(r.cmd(&[b"HELLO", b"2"]), Resp::Array(_)));
    r.send(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n").expect("send");
    assert_eq!(r.read_line().expect("nil"), b"$-1".to_vec());
    // Unsupported versions.
    match r.cmd(&[b"HELLO", b"4"]) {
        Resp::Error(e) => assert!(e.starts_with("NOPROTO"), "{e}"),
        other => panic!("HELLO 4: {other:?}"),
    }
}

#[test]
fn client_commands() {
    let s = Server::start(&[]);
    let mut c = s.client();
    assert_eq!(q(&mut c, &["CLIENT", "GETNAME"]), Value::Nil);
    ok(&mut c, &["CLIENT", "SETNAME", "tester"]);
    assert_eq!(qs(&mut c, &["CLIENT", "GETNAME"]).as_deref(), Some("tester"));
    assert_eq!(
        qe(&mut c, &["CLIENT", "SETNAME", "has space"]),
        "ERR Client names cannot contain spaces, newlines or special characters."
    );
    let id = qi(&mut c, &["CLIENT", "ID"]);
    assert!(id > 0);
    let mut other = s.client();
    let other_id = qi(&mut other, &["CLIENT", "ID"]);
    assert_ne!(id, other_id);
    let list = qs(&mut c, &["CLIENT", "LIST"]).expect("CLIENT LIST");
    let mine = list
        .lines()
        .find(|l| l.starts_with(&format!("id={id} ")))
        .unwrap_or_else(|| panic!("CLIENT LIST lacks id={id}:\n{list}"));
    assert!(mine.contains(" name=tester "), "{mine}");
    assert!(
        list.lines().any(|l| l.starts_with(&format!("id={other_id} "))),
        "{list}"
    );
    assert_eq!(list.lines().count(), 2, "{list}");
    let e = qe(&mut c, &["CLIENT", "NOPE"]);
    assert!(e.starts_with("ERR unknown subcommand"), "{e}");
}

#[test]
fn server_commands() {
    let s = Server::start(&[]);
    let mut c = s.client();
    ok(&mut c, &["SET", "a", "1"]);
    ok(&mut c, &["SET", "b", "2", "EX", "100"]);

    let info: String = redis::cmd("INFO").query(&mut c).expect("INFO");
    assert!(info.contains("redis_version:"), "{info}");
    assert!(info.contains("db0:keys=2,expires=1"), "{info}");
    let only_server: String = redis::cmd("INFO").arg("server").query(&mut c).expect("INFO");
    assert!(only_server.contains("redis_version:"));
    assert!(!only_server.contains("# Keyspace"), "{only_server}");

    match q(&mut c, &["CONFIG", "GET", "maxmemory"]) {
        Value::Array(v) => assert_eq!(v, vec![bulk(b"maxmemory"), bulk(b"0")]),
        Value::Map(v) => assert_eq!(v, vec![(bulk(b"maxmemory"), bulk(b"0"))]),
        other => panic!("CONFIG GET maxmemory: {other:?}"),
    }
    match q(&mut c, &["CONFIG", "GET", "port"]) {
        Value::Array(v) => {
            assert_eq!(v, vec![bulk(b"port"), bulk(s.port().to_string().as_bytes())])
        }
        other => panic!("CONFIG GET port: {other:?}"),
    }
    assert!(qe(&mut c, &["CONFIG", "SET", "maxmemory", "1"]).starts_with("ERR"));

    match q(&mut c, &["TIME"]) {
        Value::Array(v) => {
            assert_eq!(v.len(), 2);
            let secs: u64 = match &v[0] {
                Value::BulkString(b) => std::str::from_utf8(b).expect("").parse().expect("secs"),
                other => panic!("{other:?}"),
            };
            let us: u64 = match &v[1] {
                Value::BulkString(b) => std::str::from_utf8(b).expect("").parse().expect("us"),
                other => panic!("{other:?}"),
            };
            assert!(us < 1_000_000);
            let now = now_ms() / 1000;
            assert!(secs.abs_diff(now) <= 2, "TIME {secs} vs {now}");
        }
        other => panic!("TIME: {other:?}"),
    }

    assert_eq!(qi(&mut c, &["DBSIZE"]), 2);
    ok(&mut c, &["FLUSHALL"]);
    assert_eq!(qi(&mut c, &["DBSIZE"]), 0);
    assert_eq!(qs(&mut c, &["GET", "a"]), None);
    ok(&mut c, &["SET", "a", "again"]);
    assert_eq!(qi(&mut c, &["DBSIZE"]), 1);
    ok(&mut c, &["FLUSHDB", "SYNC"]);
    assert_eq!(qi(&mut c, &["DBSIZE"]), 0);

    let count = qi(&mut c, &["COMMAND", "COUNT"]);
    assert!(count > 40, "COMMAND COUNT = {count}");
    match q(&mut c, &["COMMAND", "INFO", "get"]) {
        Value::Array(v) => match &v[..] {
            [Value::Array(entry)] => {
                assert_eq!(entry[0], bulk(b"get"));
                assert_eq!(entry[1], Value::Int(2));
                assert_eq!(entry[3], Value::Int(1), "first key");
            }
            other => panic!("COMMAND INFO get: {other:?}"),
        },
        other => panic!("COMMAND INFO get: {other:?}"),
    }
    match q(&mut c, &["COMMAND", "INFO", "set", "nosuch"]) {
        Value::Array(v) => {
            assert_eq!(v.len(), 2);
            assert_eq!(v[1], Value::Nil);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(qs(&mut c, &["ECHO", "hi"]).as_deref(), Some("hi"));
    assert_eq!(q(&mut c, &["PING"]), Value::SimpleString("PONG".into()));
    assert_eq!(qs(&mut c, &["PING", "x"]).as_deref(), Some("x"));
}

#[test]
fn scan_with_concurrent_writes() {
    // Keys present for the whole iteration are returned, whatever else changes meanwhile.
    let s = Server::start(&[]);
    let mut c = s.client();
    let stable: Vec<String> = (0..2000).map(|i| format!("stable:{i}")).collect();
    for chunk in stable.chunks(500) {
        let mut m = redis::cmd("MSET");
        for k in chunk {
            m.arg(k).arg("v");
        }
        let _: Value = m.query(&mut c).expect("MSET");
    }
    let mut w = s.client();
    let mut cursor = "0".to_string();
    let mut seen = HashSet::new();
    let mut step = 0;
    loop {
        // Between SCAN calls, add and remove other keys.
        for j in 0..20 {
            let k = format!("churn:{step}:{j}");
            ok(&mut w, &["SET", &k, "x"]);
            if j % 2 == 0 {
                assert_eq!(qi(&mut w, &["DEL", &k]), 1);
            }
        }
        step += 1;
        let v = q(&mut c, &["SCAN", &cursor, "COUNT", "50"]);
        let Value::Array(parts) = v else { panic!("{v:?}") };
        let [Value::BulkString(next), Value::Array(keys)] = &parts[..] else {
            panic!("{parts:?}")
        };
        for k in keys {
            if let Value::BulkString(b) = k {
                seen.insert(b.clone());
            }
        }
        cursor = String::from_utf8(next.clone()).expect("cursor");
        if cursor == "0" {
            break;
        }
        assert!(step < 10_000, "SCAN does not terminate under writes");
    }
    let missing: Vec<&String> = stable.iter().filter(|k| !seen.contains(k.as_bytes())).take(5).collect();
    assert!(
        missing.is_empty(),
        "SCAN under concurrent writes missed stable keys, e.g. {missing:?}"
    );
}

/// Pipelined reads between writes see exactly the writes before them, on one connection
/// and from another one: a run of reads shares one snapshot, taken after its requests
/// arrived and ended at the next write.
#[test]
fn pipelined_reads_see_the_writes_before_them() {
    let s = Server::start(&["--fsync", "no"]);
    let mut a = s.client();
    let mut b = s.client();
    for round in 0..200 {
        let mut p = redis::pipe();
        p.cmd("SET").arg("k").arg(format!("{round}a"));
        p.cmd("GET").arg("k");
        p.cmd("MGET").arg("k").arg("other");
        p.cmd("SET").arg("k").arg(format!("{round}b"));
        p.cmd("GET").arg("k");
        p.cmd("EXISTS").arg("k");
        p.cmd("DEL").arg("k");
        p.cmd("GET").arg("k");
        p.cmd("EXISTS").arg("k");
        type Replies = (
            String,
            String,
            Vec<Option<String>>,
            String,
            String,
            i64,
            i64,
            Option<String>,
            i64,
        );
        let r: Replies = p.query(&mut a).expect("pipeline");
        assert_eq!(r.1, format!("{round}a"), "round {round}: GET after the first SET");
        assert_eq!(r.2, vec![Some(format!("{round}a")), None], "round {round}: MGET");
        assert_eq!(r.4, format!("{round}b"), "round {round}: GET after the second SET");
        assert_eq!(
            (r.5, r.6, r.7.clone(), r.8),
            (1, 1, None, 0),
            "round {round}: after DEL"
        );
        // A write acknowledged to one connection is seen by the next pipeline of reads
        // on another.
        ok(&mut b, &["SET", "shared", &round.to_string()]);
        let mut p = redis::pipe();
        p.cmd("GET").arg("shared").cmd("GET").arg("shared");
        let (x, y): (String, String) = p.query(&mut a).expect("reads");
        assert_eq!(
            (x.as_str(), y.as_str()),
            (round.to_string().as_str(), round.to_string().as_str())
        );
    }
}

/// With `fsync no` each client thread commits its own connections' writes. A pipeline's
/// writes still apply in the order sent (a FLUSHALL between them included), and writes
/// from connections spread over the threads all land.
#[test]
fn writes_keep_their_order_and_all_land_on_every_client_thread() {
    let s = Server::start(&["--fsync", "no", "--threads", "2"]);
    let mut cons: Vec<Connection> = (0..4).map(|_| s.client()).collect();
    for (i, c) in cons.iter_mut().enumerate() {
        let mut p = redis::pipe();
        p.cmd("SET").arg(format!("before{i}")).arg("x");
        p.cmd("FLUSHALL");
        p.cmd("SET").arg(format!("after{i}")).arg("y");
        p.cmd("GET").arg(format!("before{i}"));
        p.cmd("GET").arg(format!("after{i}"));
        let (_, _, _, before, after): (String, String, String, Option<String>, Option<String>) =
            p.query(c).expect("pipeline");
        assert_eq!(before, None, "connection {i}: a write sent before FLUSHALL survived it");
        assert_eq!(
            after.as_deref(),
            Some("y"),
            "connection {i}: a write sent after FLUSHALL was lost"
        );
    }
    ok(&mut cons[0], &["FLUSHALL"]);
    let writers: Vec<_> = cons
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || {
                for chunk in 0..10 {
                    let mut p = redis::pipe();
                    for j in 0..50 {
                        p.cmd("SET").arg(format!("w{i}:{}", chunk * 50 + j)).arg(j).ignore();
                    }
                    p.query::<()>(&mut c).expect("pipelined SETs");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let mut c = s.client();
    assert_eq!(qi(&mut c, &["DBSIZE"]), 4 * 500);
    for i in 0..4 {
        for k in [0, 249, 499] {
            assert_eq!(qs(&mut c, &["GET", &format!("w{i}:{k}")]), Some((k % 50).to_string()));
        }
    }
}
