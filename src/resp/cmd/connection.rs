//! Connection commands: PING, HELLO, AUTH, SELECT, RESET, CLIENT. Must not touch keys.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Ctx;
use super::util::{int_arg, is};
use crate::resp::reply::Reply;

/// The Redis version dynkv reports, so that clients enable the features it implements.
pub const COMPAT_REDIS_VERSION: &str = "7.2.0";

/// PING [message]
pub fn ping(ctx: &mut Ctx<'_>) -> Reply {
    match ctx.args.len() {
        1 => Reply::status("PONG"),
        2 => Reply::Bulk(ctx.args[1].clone()),
        _ => Reply::err("ERR wrong number of arguments for 'ping' command"),
    }
}

fn wrongpass() -> Reply {
    Reply::err("WRONGPASS invalid username-password pair or user is disabled.")
}

/// Checks a user name and password against `requirepass`. Without a password the
/// `default` user takes any password (Redis's `nopass`), but the one-argument form of AUTH
/// is refused as Redis refuses it, since it means the client expected a password.
fn check_password(ctx: &mut Ctx<'_>, user: &[u8], pass: &[u8], explicit_user: bool) -> Result<(), Reply> {
    match &ctx.node.config.requirepass {
        None if explicit_user && user == b"default" => Ok(()),
        None if explicit_user => Err(wrongpass()),
        None => Err(Reply::err(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        )),
        Some(p) if user == b"default" && pass == p.as_bytes() => {
            ctx.client.authenticated = true;
            Ok(())
        }
        Some(_) => Err(wrongpass()),
    }
}

/// AUTH [username] password
pub fn auth(ctx: &mut Ctx<'_>) -> Reply {
    let (user, pass, explicit) = match ctx.args.len() {
        2 => (Bytes::from_static(b"default"), ctx.args[1].clone(), false),
        3 => (ctx.args[1].clone(), ctx.args[2].clone(), true),
        _ => return Reply::err("ERR syntax error"),
    };
    match check_password(ctx, &user, &pass, explicit) {
        Ok(()) => Reply::Ok,
        Err(r) => r,
    }
}

/// HELLO [protover [AUTH username password] [SETNAME clientname]]
pub fn hello(ctx: &mut Ctx<'_>) -> Reply {
    let mut proto = ctx.client.proto;
    if ctx.args.len() >= 2 {
        match int_arg(&ctx.args[1]) {
            Ok(v) if v == 2 || v == 3 => proto = v as u8,
            Ok(_) => return Reply::err("NOPROTO unsupported protocol version"),
            Err(_) => return Reply::err("ERR Protocol version is not an integer or out of range"),
        }
    }
    let mut setname = None;
    let mut i = 2;
    let args = ctx.args.clone();
    while i < args.len() {
        if is(&args[i], "auth") && i + 2 < args.len() {
            if let Err(r) = check_password(ctx, &args[i + 1], &args[i + 2], true) {
                return r;
            }
            i += 3;
        } else if is(&args[i], "setname") && i + 1 < args.len() {
            if let Err(r) = valid_name(&args[i + 1]) {
                return r;
            }
            setname = Some(args[i + 1].clone());
            i += 2;
        } else {
            return Reply::err(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&args[i])
            ));
        }
    }
    if !ctx.client.authenticated {
        return Reply::err(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        );
    }
    if let Some(n) = setname {
        ctx.client.info.set_name(n);
    }
    ctx.client.proto = proto;
    ctx.client.info.resp.store(u64::from(proto), Ordering::Relaxed);
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("dynkv")),
        (Reply::bulk("version"), Reply::bulk(COMPAT_REDIS_VERSION)),
        (Reply::bulk("proto"), Reply::Int(i64::from(proto))),
        (Reply::bulk("id"), Reply::Int(ctx.client.info.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ])
}

/// SELECT index: only database 0 exists.
pub fn select(ctx: &mut Ctx<'_>) -> Reply {
    match int_arg(&ctx.args[1]) {
        Ok(0) => Reply::Ok,
        Ok(_) => Reply::err("ERR DB index is out of range"),
        Err(r) => r,
    }
}

/// RESET: back to RESP2, no name, unauthenticated when a password is required.
pub fn reset(ctx: &mut Ctx<'_>) -> Reply {
    ctx.client.proto = 2;
    ctx.client.info.resp.store(2, Ordering::Relaxed);
    ctx.client.info.set_name(Bytes::new());
    ctx.client.authenticated = ctx.node.config.requirepass.is_none();
    Reply::status("RESET")
}

fn valid_name(name: &[u8]) -> Result<(), Reply> {
    if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(Reply::err(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

/// CLIENT SETNAME|GETNAME|ID|INFO|LIST|SETINFO|NO-EVICT|NO-TOUCH|HELP
pub fn client(ctx: &mut Ctx<'_>) -> Reply {
    let sub = String::from_utf8_lossy(&ctx.args[1]).to_ascii_lowercase();
    let n = ctx.args.len();
    let arity = |ok: bool| -> Result<(), Reply> {
        if ok {
            Ok(())
        } else {
            Err(Reply::err(format!(
                "ERR wrong number of arguments for 'client|{sub}' command"
            )))
        }
    };
    let res = match sub.as_str() {
        "setname" => arity(n == 3).and_then(|_| valid_name(&ctx.args[2])).map(|_| {
            ctx.client.info.set_name(ctx.args[2].clone());
            Reply::Ok
        }),
        "getname" => arity(n == 2).map(|_| {
            let name = ctx.client.info.name();
            if name.is_empty() { Reply::Nil } else { Reply::Bulk(name) }
        }),
        "id" => arity(n == 2).map(|_| Reply::Int(ctx.client.info.id as i64)),
        "info" => arity(n == 2).map(|_| Reply::Text(format!("{}\n", ctx.client.info.line()))),
        "list" => Ok(Reply::Text(
            ctx.node
                .client_list()
                .iter()
                .map(|c| format!("{}\n", c.line()))
                .collect(),
        )),
        "setinfo" => arity(n == 4).and_then(|_| {
            let value = String::from_utf8_lossy(&ctx.args[3]).into_owned();
            let mut lib = ctx
                .client
                .info
                .lib
                .lock()
                .map_err(|_| Reply::err("ERR internal error"))?;
            if is(&ctx.args[2], "lib-name") {
                lib.0 = value;
            } else if is(&ctx.args[2], "lib-ver") {
                lib.1 = value;
            } else {
                return Err(Reply::err(format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&ctx.args[2])
                )));
            }
            Ok(Reply::Ok)
        }),
        "no-evict" | "no-touch" => arity(n == 3).and_then(|_| {
            if is(&ctx.args[2], "on") || is(&ctx.args[2], "off") {
                Ok(Reply::Ok)
            } else {
                Err(Reply::err("ERR syntax error"))
            }
        }),
        "help" => Ok(Reply::Array(
            [
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "INFO",
                "    Return information about the current client connection.",
                "LIST",
                "    Return information about client connections.",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "SETINFO <LIB-NAME|LIB-VER> <value>",
                "    Set client library name or version.",
                "NO-EVICT (ON|OFF)",
                "    Accepted; dynkv never evicts.",
                "NO-TOUCH (ON|OFF)",
                "    Accepted; dynkv keeps no access times.",
            ]
            .iter()
            .map(|l| Reply::Status(Bytes::from_static(l.as_bytes())))
            .collect(),
        )),
        _ => Err(Reply::err(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&ctx.args[1])
        ))),
    };
    res.unwrap_or_else(|r| r)
}
