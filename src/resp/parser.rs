//! Bounded, non-recursive, incremental parser for Redis-protocol *requests*.
//!
//! Requests arrive either as a RESP array of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or as an inline command line typed over
//! telnet (`SET k "hello world"\r\n`). Generic RESP decoders are unfit for
//! untrusted input (unbounded lengths, recursion on nested arrays, unchecked
//! CRLF), so this parser accepts only what a request can be, enforces
//! Redis's limits, never recurses and never allocates ahead of the bytes that
//! have actually arrived.
//!
//! Behaviour follows Redis's `processMultibulkBuffer` / `processInlineBuffer`
//! (networking.c) and `sdssplitargs` (sds.c), including the error texts. The
//! deliberate differences are all stricter or chunking-independent:
//!
//! * the CRLF after a bulk payload is checked (Redis just skips two bytes);
//! * a `\r` ending a `*`/`$` header must be followed by `\n` (Redis skips
//!   whatever byte follows);
//! * a bulk header not starting with `$` is reported as soon as its first
//!   byte arrives rather than once its line is complete;
//! * the inline and header length limits apply to the line itself, whether or
//!   not its terminator has arrived, so the outcome does not depend on how the
//!   bytes were split into reads (Redis only checks while the terminator is
//!   missing);
//! * inline lines are binary safe: a NUL byte is an ordinary byte (Redis's C
//!   string handling stops at it).

use bytes::{Buf, Bytes, BytesMut};

/// Upper bound on the argument vector capacity reserved from a declared
/// multibulk count, so a hostile `*1048576` costs nothing until the
/// arguments actually arrive (Redis uses the same cap).
const MAX_ARGS_PREALLOC: usize = 1024;

/// Upper bound on [`RequestParser::hint_needed`], so a declared but not yet
/// received large bulk never makes the caller reserve a huge buffer up front.
const MAX_HINT: usize = 1024 * 1024;

/// Longest number text accepted by Redis's `string2ll` (`LONG_STR_SIZE - 1`).
const MAX_NUMBER_LEN: usize = 20;

/// Bounds on a request; defaults follow Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted bulk string payload, in bytes (Redis's
    /// `proto-max-bulk-len`); a larger declared length is rejected as soon
    /// as its header line is complete.
    pub max_bulk_len: usize,
    /// Largest accepted multibulk element count; above it the request is
    /// rejected with "invalid multibulk length".
    pub max_multibulk_len: usize,
    /// Longest accepted inline command line, and also the longest accepted
    /// `*`/`$` header line (Redis's `PROTO_INLINE_MAX_SIZE` plays both roles).
    pub max_inline_len: usize,
    /// Most memory one multibulk request may hold while it is read: its
    /// payload bytes plus a fixed cost per argument (Redis's
    /// `client-query-buffer-limit`). Bounds a request of many large bulks.
    pub max_request_len: usize,
}

impl Default for Limits {
    /// Redis 7's defaults: 512 MiB bulks, no element limit below `i32::MAX`,
    /// 64 KiB inline lines, 1 GiB per request.
    fn default() -> Self {
        Self {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: i32::MAX as usize,
            max_inline_len: 64 * 1024,
            max_request_len: 1024 * 1024 * 1024,
        }
    }
}

/// A protocol error in a request. The `Display` text is exactly Redis's error
/// reply text without the leading `-`, so the caller can send
/// `-{err}\r\n` and then close the connection, as Redis does.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum ParseError {
    /// The `*` count is not a valid number, exceeds
    /// [`Limits::max_multibulk_len`], or its line does not end in CRLF.
    #[error("ERR Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A `$` length is not a valid number, is negative, exceeds
    /// [`Limits::max_bulk_len`], or its line does not end in CRLF.
    #[error("ERR Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// An element of a multibulk request does not start with `$`; holds the
    /// offending byte (shown as a char, CR/LF shown as a space as Redis does
    /// to keep the reply on one line).
    #[error("ERR Protocol error: expected '$', got '{}'", shown_byte(.0))]
    ExpectedDollar(u8),
    /// An inline command line is longer than [`Limits::max_inline_len`].
    #[error("ERR Protocol error: too big inline request")]
    TooBigInlineRequest,
    /// A `*` header line is longer than [`Limits::max_inline_len`].
    #[error("ERR Protocol error: too big mbulk count string")]
    TooBigMultibulkCountString,
    /// A `$` header line is longer than [`Limits::max_inline_len`].
    #[error("ERR Protocol error: too big bulk count string")]
    TooBigBulkCountString,
    /// An inline command has an unterminated quote, or a closing quote not
    /// followed by whitespace or the end of the line.
    #[error("ERR Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A bulk payload is not followed by `\r\n` (dynkv's own check; Redis
    /// silently skips two bytes).
    #[error("ERR Protocol error: expected CRLF after bulk")]
    ExpectedCrlfAfterBulk,
    /// A multibulk request holds more than [`Limits::max_request_len`].
    #[error("ERR Protocol error: request exceeds the query buffer limit")]
    RequestTooBig,
}

/// Memory counted for each argument besides its payload (the `Bytes` handle).
const ARG_OVERHEAD: usize = 32;

/// Renders the byte of [`ParseError::ExpectedDollar`] like Redis's `%c`,
/// with CR and LF replaced by spaces (Redis's `addReplyErrorFormat` does the
/// same) so the error reply stays a single protocol line.
fn shown_byte(b: &u8) -> char {
    match *b {
        b'\r' | b'\n' => ' ',
        other => char::from(other),
    }
}

/// Where the parser is within the current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Between requests: the next byte decides multibulk (`*`) or inline.
    Start,
    /// Reading the `*<count>\r\n` line at the front of the buffer.
    MultibulkHeader,
    /// Reading a `$<len>\r\n` line at the front of the buffer.
    BulkHeader,
    /// Waiting for a bulk payload of this many bytes plus its CRLF.
    BulkPayload(usize),
    /// Reading an inline line at the front of the buffer.
    Inline,
}

/// Incremental request parser; keeps its progress between calls so a large bulk arriving in
/// many reads is not rescanned from the start (O(n) total, not O(n^2)).
///
/// Completed parts of a multibulk request (header lines, whole bulk
/// payloads) are consumed from the buffer as soon as they are parsed and kept
/// in the parser; for a line still being received the parser remembers how
/// far it has already searched for the terminator. The caller must therefore
/// only ever append to the buffer between calls, and use one parser per
/// connection.
#[derive(Debug)]
pub struct RequestParser {
    /// The configured bounds.
    limits: Limits,
    /// Current position in the request grammar.
    stage: Stage,
    /// Bytes at the front of the buffer already searched for a line
    /// terminator without finding it (or the terminator's index once found).
    scanned: usize,
    /// Multibulk elements still to be read for the current request.
    remaining: usize,
    /// Multibulk elements read so far for the current request.
    args: Vec<Bytes>,
    /// Bytes known to be missing for the current frame at the last call.
    needed: usize,
    /// Memory the current multibulk request holds or has declared (payloads
    /// plus [`ARG_OVERHEAD`] per argument), checked against the request limit.
    request_bytes: usize,
}

impl RequestParser {
    /// Creates a parser enforcing `limits`, positioned before a request.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            stage: Stage::Start,
            scanned: 0,
            remaining: 0,
            args: Vec::new(),
            needed: 0,
            request_bytes: 0,
        }
    }

    /// Takes one complete request off the front of `buf`, consuming its bytes.
    ///
    /// * `Ok(None)`: need more bytes (nothing lost; call again after more bytes arrive).
    ///   Parts of a request already parsed may have been moved from `buf`
    ///   into the parser.
    /// * `Ok(Some(args))`: one request, never empty; args are zero-copy
    ///   `Bytes` split off `buf` for multibulk requests (inline arguments are
    ///   unescaped, hence copied).
    ///
    /// Empty requests (`*0\r\n`, `*-1\r\n`, blank inline lines) are skipped
    /// silently, as Redis does, and parsing continues with what follows.
    ///
    /// # Errors
    ///
    /// A [`ParseError`] for a protocol error; the caller replies with it and
    /// closes the connection. The parser is reset, but `buf` is left at an
    /// unspecified position, so parsing must not continue on it.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ParseError> {
        if self.stage == Stage::Start {
            if let Some(args) = self.whole_request(buf) {
                return Ok(Some(args));
            }
        }
        let result = self.step(buf);
        if result.is_err() {
            *self = Self::new(self.limits);
        }
        result
    }

    /// How many more bytes the parser knows it needs for the current frame
    /// (the rest of a declared bulk and its CRLF, as of the last
    /// [`parse`](Self::parse) call), so the caller can reserve buffer space.
    /// Capped at 1 MiB so a declared length that has not arrived never
    /// causes a large reservation; 0 when unknown (e.g. inside a line).
    pub fn hint_needed(&self) -> usize {
        self.needed.min(MAX_HINT)
    }

    /// [`parse`](Self::parse) without the one-pass path, so tests can check that the path
    /// never changes an outcome.
    #[cfg(test)]
    fn parse_by_steps(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ParseError> {
        let result = self.step(buf);
        if result.is_err() {
            *self = Self::new(self.limits);
        }
        result
    }

    /// The state machine behind [`parse`](Self::parse); loops (never
    /// recurses) until a request is complete, more bytes are needed, or an
    /// error is found.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ParseError> {
        self.needed = 0;
        loop {
            match self.stage {
                Stage::Start => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    self.scanned = 0;
                    self.stage = if first == b'*' {
                        Stage::MultibulkHeader
                    } else {
                        Stage::Inline
                    };
                }
                Stage::Inline => {
                    let limit = self.limits.max_inline_len;
                    let Some(nl) = self.find_terminator(buf, b'\n', limit) else {
                        return Err(ParseError::TooBigInlineRequest);
                    };
                    let Some(nl) = nl else {
                        return Ok(None);
                    };
                    let line = buf.split_to(nl + 1);
                    self.scanned = 0;
                    self.stage = Stage::Start;
                    let mut content = line.get(..nl).unwrap_or_default();
                    if let Some(stripped) = content.strip_suffix(b"\r") {
                        content = stripped;
                    }
                    let args = split_args(content)?;
                    if !args.is_empty() {
                        return Ok(Some(args));
                    }
                }
                Stage::MultibulkHeader => {
                    let Some(count) = self.header_number(
                        buf,
                        ParseError::TooBigMultibulkCountString,
                        ParseError::InvalidMultibulkLength,
                    )?
                    else {
                        return Ok(None);
                    };
                    if count <= 0 {
                        // `*0` and `*-1` (any negative count, like Redis) are
                        // empty requests: skip them.
                        self.stage = Stage::Start;
                        continue;
                    }
                    let count = usize::try_from(count)
                        .ok()
                        .filter(|&c| c <= self.limits.max_multibulk_len)
                        .ok_or(ParseError::InvalidMultibulkLength)?;
                    self.remaining = count;
                    self.request_bytes = 0;
                    self.args = Vec::with_capacity(count.min(MAX_ARGS_PREALLOC));
                    self.stage = Stage::BulkHeader;
                }
                Stage::BulkHeader => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'$' {
                        return Err(ParseError::ExpectedDollar(first));
                    }
                    let Some(len) =
                        self.header_number(buf, ParseError::TooBigBulkCountString, ParseError::InvalidBulkLength)?
                    else {
                        return Ok(None);
                    };
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|&l| l <= self.limits.max_bulk_len)
                        .ok_or(ParseError::InvalidBulkLength)?;
                    self.request_bytes = self.request_bytes.saturating_add(len).saturating_add(ARG_OVERHEAD);
                    if self.request_bytes > self.limits.max_request_len {
                        return Err(ParseError::RequestTooBig);
                    }
                    self.stage = Stage::BulkPayload(len);
                }
                Stage::BulkPayload(len) => {
                    let total = len.checked_add(2).ok_or(ParseError::InvalidBulkLength)?;
                    if buf.len() < total {
                        // Report a bad terminator as soon as it is visible.
                        if buf.get(len).is_some_and(|&b| b != b'\r') {
                            return Err(ParseError::ExpectedCrlfAfterBulk);
                        }
                        self.needed = total - buf.len();
                        return Ok(None);
                    }
                    if buf.get(len..total) != Some(&b"\r\n"[..]) {
                        return Err(ParseError::ExpectedCrlfAfterBulk);
                    }
                    let payload = buf.split_to(len).freeze();
                    buf.advance(2);
                    self.args.push(payload);
                    self.remaining -= 1;
                    if self.remaining == 0 {
                        self.stage = Stage::Start;
                        return Ok(Some(std::mem::take(&mut self.args)));
                    }
                    self.stage = Stage::BulkHeader;
                }
            }
        }
    }

    /// The common case in one pass: a complete, well-formed multibulk request at the front
    /// of `buf`, within every limit, is read from the slice and split off at once (one
    /// split instead of one per header and payload). Anything else (an incomplete
    /// request, an inline one, an error, a header the quick number reader does not take,
    /// more than 16 arguments) returns `None` with `buf` and the parser untouched, and the
    /// state machine decides.
    fn whole_request(&mut self, buf: &mut BytesMut) -> Option<Vec<Bytes>> {
        /// Longest header number read here: 15 digits cannot overflow a `u64`.
        const QUICK_DIGITS: usize = 15;
        /// Most arguments read here (their positions are kept on the stack).
        const QUICK_ARGS: usize = 16;
        let limits = self.limits;
        // `*<count>\r\n` or `$<len>\r\n` starting at `at`, with `prefix` first; returns the
        // number and where the line ends. Leading zeros, signs and long lines go the slow way.
        let header = |bytes: &[u8], at: usize, prefix: u8| -> Option<(usize, usize)> {
            let rest = bytes.get(at..)?;
            if rest.first() != Some(&prefix) {
                return None;
            }
            let mut value = 0u64;
            let mut i = 1;
            while let Some(&d) = rest.get(i) {
                if !d.is_ascii_digit() || i > QUICK_DIGITS {
                    break;
                }
                if d == b'0' && i == 1 && rest.get(2) != Some(&b'\r') {
                    return None;
                }
                value = value * 10 + u64::from(d - b'0');
                i += 1;
            }
            if i == 1 || i > limits.max_inline_len || rest.get(i..i + 2) != Some(&b"\r\n"[..]) {
                return None;
            }
            Some((usize::try_from(value).ok()?, at + i + 2))
        };
        let bytes: &[u8] = buf;
        let (count, mut at) = header(bytes, 0, b'*')?;
        if count == 0 || count > limits.max_multibulk_len || count > QUICK_ARGS {
            return None;
        }
        let mut spans = [(0usize, 0usize); QUICK_ARGS];
        let mut request_bytes = 0usize;
        for span in &mut spans[..count] {
            let (len, start) = header(bytes, at, b'$')?;
            request_bytes = request_bytes.saturating_add(len).saturating_add(ARG_OVERHEAD);
            if len > limits.max_bulk_len || request_bytes > limits.max_request_len {
                return None;
            }
            let end = start.checked_add(len)?;
            if bytes.get(end..end.checked_add(2)?) != Some(&b"\r\n"[..]) {
                return None;
            }
            *span = (start, end);
            at = end + 2;
        }
        // Each argument but the last is split off the frame in turn, and the last is what
        // is left of it: one reference count taken per argument after the first, instead
        // of one for the frame and one per argument.
        let mut frame = buf.split_to(at);
        let mut args = Vec::with_capacity(count);
        let mut from = 0;
        let (last, init) = spans[..count].split_last()?;
        for &(start, end) in init {
            frame.advance(start - from);
            args.push(frame.split_to(end - start).freeze());
            from = end;
        }
        frame.advance(last.0 - from);
        frame.truncate(last.1 - last.0);
        args.push(frame.freeze());
        Some(args)
    }

    /// Reads a `*`/`$` header line at the front of `buf` and consumes it.
    /// `Ok(None)` if the line is not complete yet; `too_big` if the line
    /// (prefix byte included) is longer than `max_inline_len`; `invalid` if
    /// it is not `\r\n`-terminated or the number is not valid for Redis's
    /// `string2ll`.
    fn header_number(
        &mut self,
        buf: &mut BytesMut,
        too_big: ParseError,
        invalid: ParseError,
    ) -> Result<Option<i64>, ParseError> {
        let Some(cr) = self.find_terminator(buf, b'\r', self.limits.max_inline_len) else {
            return Err(too_big);
        };
        let Some(cr) = cr else {
            return Ok(None);
        };
        match buf.get(cr + 1) {
            None => return Ok(None),
            Some(b'\n') => {}
            Some(_) => return Err(invalid),
        }
        let number = buf.get(1..cr).and_then(parse_number).ok_or(invalid)?;
        buf.advance(cr + 2);
        self.scanned = 0;
        Ok(Some(number))
    }

    /// Finds `needle` at the front of `buf`, resuming where the previous
    /// search stopped. `None` if the line before it would be longer than
    /// `limit` bytes; `Some(None)` if not found yet; `Some(Some(index))`
    /// otherwise.
    fn find_terminator(&mut self, buf: &[u8], needle: u8, limit: usize) -> Option<Option<usize>> {
        let start = self.scanned.min(buf.len());
        let end = buf.len().min(limit.saturating_add(1));
        let found = buf
            .get(start..end)
            .and_then(|window| window.iter().position(|&b| b == needle));
        if let Some(offset) = found {
            self.scanned = start + offset;
            return Some(Some(start + offset));
        }
        if buf.len() > limit {
            return None;
        }
        self.scanned = buf.len();
        Some(None)
    }
}

impl Default for RequestParser {
    /// A parser with Redis's default [`Limits`].
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

/// Parses a number exactly as Redis's `string2ll` does: optional `-`, no
/// `+`, no leading zeros (except `0` itself), no `-0`, at most 20 bytes,
/// and no overflow of `i64`.
fn parse_number(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > MAX_NUMBER_LEN {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let (&first, rest) = digits.split_first()?;
    if !(b'1'..=b'9').contains(&first) {
        return None;
    }
    let mut value = u64::from(first - b'0');
    for &d in rest {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    let value = i128::from(value);
    i64::try_from(if negative { -value } else { value }).ok()
}

/// C's `isspace` in the "C" locale, as used by `sdssplitargs`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The value of an ASCII hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte of a `\xHH` escape starting at `line[p]`, if there is one.
fn hex_escape(line: &[u8], p: usize) -> Option<u8> {
    match line.get(p..p + 4)? {
        [b'\\', b'x', hi, lo] => Some(hex_value(*hi)? * 16 + hex_value(*lo)?),
        _ => None,
    }
}

/// Fails with [`ParseError::UnbalancedQuotes`] unless the byte after a
/// closing quote at `line[p]` is whitespace or the end of the line.
fn check_after_quote(line: &[u8], p: usize) -> Result<(), ParseError> {
    match line.get(p + 1) {
        Some(&next) if !is_space(next) => Err(ParseError::UnbalancedQuotes),
        _ => Ok(()),
    }
}

/// Splits an inline command line into arguments like Redis's `sdssplitargs`:
/// whitespace-separated; `"..."` with escapes `\n \r \t \b \a \xHH` (any
/// other escaped byte stands for itself); `'...'` with only `\'`; quotes
/// may start mid-token; a closing quote must be followed by whitespace or
/// the end of the line.
fn split_args(line: &[u8]) -> Result<Vec<Bytes>, ParseError> {
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while line.get(p).is_some_and(|&b| is_space(b)) {
            p += 1;
        }
        if p >= line.len() {
            return Ok(args);
        }
        let mut current = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            if in_double {
                let Some(&c) = line.get(p) else {
                    return Err(ParseError::UnbalancedQuotes);
                };
                if let Some(byte) = hex_escape(line, p) {
                    current.push(byte);
                    p += 4;
                } else if let (b'\\', Some(&escaped)) = (c, line.get(p + 1)) {
                    current.push(match escaped {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    p += 2;
                } else if c == b'"' {
                    check_after_quote(line, p)?;
                    p += 1;
                    break;
                } else {
                    current.push(c);
                    p += 1;
                }
            } else if in_single {
                let Some(&c) = line.get(p) else {
                    return Err(ParseError::UnbalancedQuotes);
                };
                if c == b'\\' && line.get(p + 1) == Some(&b'\'') {
                    current.push(b'\'');
                    p += 2;
                } else if c == b'\'' {
                    check_after_quote(line, p)?;
                    p += 1;
                    break;
                } else {
                    current.push(c);
                    p += 1;
                }
            } else {
                match line.get(p) {
                    None => break,
                    Some(b' ' | b'\n' | b'\r' | b'\t') => {
                        p += 1;
                        break;
                    }
                    Some(b'"') => {
                        in_double = true;
                        p += 1;
                    }
                    Some(b'\'') => {
                        in_single = true;
                        p += 1;
                    }
                    Some(&c) => {
                        current.push(c);
                        p += 1;
                    }
                }
            }
        }
        args.push(Bytes::from(current));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes a request as a RESP array of bulk strings.
    fn encode(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Encodes a request as an inline line, every byte as a `\xHH` escape.
    fn encode_inline(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in args {
            out.push(b'"');
            for b in a {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            }
            out.extend_from_slice(b"\" ");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Parses everything in `input` at once.
    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ParseError> {
        parse_chunked(input, &[input.len().max(1)])
    }

    /// Feeds `input` in chunks of the given sizes (cycled), parsing after
    /// every chunk; returns every request, or the first error.
    fn parse_chunked(input: &[u8], sizes: &[usize]) -> Result<Vec<Vec<Vec<u8>>>, ParseError> {
        parse_chunked_with(input, sizes, Limits::default())
    }

    fn parse_chunked_with(input: &[u8], sizes: &[usize], limits: Limits) -> Result<Vec<Vec<Vec<u8>>>, ParseError> {
        let mut parser = RequestParser::new(limits);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < input.len() {
            let size = sizes[i % sizes.len()].max(1);
            i += 1;
            let end = (pos + size).min(input.len());
            buf.extend_from_slice(&input[pos..end]);
            pos = end;
            while let Some(req) = parser.parse(&mut buf)? {
                assert!(!req.is_empty());
                out.push(req.iter().map(|b| b.to_vec()).collect());
            }
        }
        Ok(out)
    }

    fn req(args: &[&[u8]]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.to_vec()).collect()
    }

    fn err_of(input: &[u8]) -> ParseError {
        match parse_all(input) {
            Err(e) => e,
            Ok(r) => panic!("expected error for {input:?}, got {r:?}"),
        }
    }

    #[test]
    fn single_get() {
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]);
        let r = p.parse(&mut buf).unwrap().unwrap();
        assert_eq!(r, vec![Bytes::from_static(b"GET"), Bytes::from_static(b"k")]);
        assert!(buf.is_empty());
        assert_eq!(p.parse(&mut buf).unwrap(), None);
    }

    #[test]
    fn incomplete_returns_none_and_keeps_progress() {
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$5\r\nab"[..]);
        assert_eq!(p.parse(&mut buf).unwrap(), None);
        assert_eq!(p.hint_needed(), 5);
        buf.extend_from_slice(b"cde\r");
        assert_eq!(p.parse(&mut buf).unwrap(), None);
        assert_eq!(p.hint_needed(), 1);
        buf.extend_from_slice(b"\n*1\r\n");
        let r = p.parse(&mut buf).unwrap().unwrap();
        assert_eq!(r, vec![Bytes::from_static(b"GET"), Bytes::from_static(b"abcde")]);
        assert_eq!(&buf[..], b"*1\r\n");
        assert_eq!(p.hint_needed(), 0);
    }

    #[test]
    fn hint_is_capped() {
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*1\r\n$500000000\r\n"[..]);
        assert_eq!(p.parse(&mut buf).unwrap(), None);
        assert_eq!(p.hint_needed(), MAX_HINT);
        // Nothing was allocated for the declared length.
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn zero_copy_bulk() {
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*1\r\n$5\r\nhello\r\n"[..]);
        let base = buf.as_ptr() as usize;
        let r = p.parse(&mut buf).unwrap().unwrap();
        assert_eq!(r[0].as_ptr() as usize, base + 8);
    }

    #[test]
    fn pipelined_and_empty_requests() {
        let input =
            b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n\r\n\n   \r\nPING\r\n*-5\r\n*2\r\n$4\r\nECHO\r\n$0\r\n\r\nECHO x\n";
        let got = parse_all(input).unwrap();
        assert_eq!(
            got,
            vec![
                req(&[b"PING"]),
                req(&[b"PING"]),
                req(&[b"ECHO", b""]),
                req(&[b"ECHO", b"x"]),
            ]
        );
    }

    #[test]
    fn only_empty_requests_consume_everything() {
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*0\r\n\r\n*-1\r\n"[..]);
        assert_eq!(p.parse(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn binary_payloads() {
        let payload: Vec<u8> = (0u8..=255).chain(b"\r\n\r\n\0\0*1\r\n".iter().copied()).collect();
        let input = encode(&[b"SET".to_vec(), b"k\0\r\n".to_vec(), payload.clone()]);
        let got = parse_all(&input).unwrap();
        assert_eq!(got, vec![vec![b"SET".to_vec(), b"k\0\r\n".to_vec(), payload]]);
    }

    fn pipelined_sample() -> Vec<u8> {
        let mut input = Vec::new();
        input.extend_from_slice(&encode(&[b"SET".to_vec(), b"key".to_vec(), vec![b'v'; 300]]));
        input.extend_from_slice(b"*0\r\n");
        input.extend_from_slice(b"GET \"a b\" 'c\\'d'\r\n");
        input.extend_from_slice(&encode(&[b"GET".to_vec(), b"\r\n\0".to_vec()]));
        input.extend_from_slice(b"\n\r\n");
        input.extend_from_slice(b"*-1\r\n");
        input.extend_from_slice(&encode(&[b"MSET".to_vec(), b"".to_vec(), b"x".to_vec()]));
        input.extend_from_slice(b"PING\n");
        input
    }

    fn pipelined_expected() -> Vec<Vec<Vec<u8>>> {
        vec![
            vec![b"SET".to_vec(), b"key".to_vec(), vec![b'v'; 300]],
            req(&[b"GET", b"a b", b"c'd"]),
            req(&[b"GET", b"\r\n\0"]),
            req(&[b"MSET", b"", b"x"]),
            req(&[b"PING"]),
        ]
    }

    #[test]
    fn pipelined_one_byte_at_a_time() {
        let input = pipelined_sample();
        assert_eq!(parse_all(&input).unwrap(), pipelined_expected());
        assert_eq!(parse_chunked(&input, &[1]).unwrap(), pipelined_expected());
    }

    #[test]
    fn pipelined_split_at_every_offset() {
        let input = pipelined_sample();
        for k in 1..input.len() {
            let sizes = [k, input.len()];
            assert_eq!(
                parse_chunked(&input, &sizes).unwrap(),
                pipelined_expected(),
                "split at {k}"
            );
        }
    }

    #[test]
    fn errors_are_split_independent() {
        let cases: &[&[u8]] = &[
            b"*1\r\n$3\r\nfooXY",
            b"*abc\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\nx\r\n",
            b"\"unterminated\r\n",
            b"*1\r\n$3\r\nfoo\r\n*1x\r\n",
            b"PING\r\n\"a\"b\n",
        ];
        for input in cases {
            let expected = err_of(input);
            for k in 1..input.len() {
                assert_eq!(parse_chunked(input, &[k]), Err(expected), "{input:?} in chunks of {k}");
            }
        }
    }

    #[test]
    fn error_invalid_multibulk_length() {
        for input in [
            &b"*abc\r\n"[..],
            b"*\r\n",
            b"*+1\r\n",
            b"*01\r\n",
            b"*-0\r\n",
            b"*1 \r\n",
            b"*2147483648\r\n",
            b"*99999999999999999999\r\n",
            b"*9223372036854775808\r\n",
            b"*1\rx",
        ] {
            assert_eq!(err_of(input), ParseError::InvalidMultibulkLength, "{input:?}");
        }
        assert_eq!(
            ParseError::InvalidMultibulkLength.to_string(),
            "ERR Protocol error: invalid multibulk length"
        );
        // The limit itself is accepted (it just waits for the elements).
        assert_eq!(parse_all(b"*1048576\r\n").unwrap(), Vec::<Vec<Vec<u8>>>::new());
    }

    #[test]
    fn error_invalid_bulk_length() {
        for input in [
            &b"*1\r\n$-1\r\n"[..],
            b"*1\r\n$abc\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$03\r\n",
            b"*1\r\n$3 \r\n",
            b"*1\r\n$4294967296\r\n",
            b"*1\r\n$536870913\r\n",
            b"*1\r\n$99999999999999999999\r\n",
            b"*1\r\n$3\rfoo",
        ] {
            assert_eq!(err_of(input), ParseError::InvalidBulkLength, "{input:?}");
        }
        assert_eq!(
            ParseError::InvalidBulkLength.to_string(),
            "ERR Protocol error: invalid bulk length"
        );
    }

    #[test]
    fn huge_bulk_header_errors_immediately() {
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*1\r\n$4294967296\r\n"[..]);
        assert_eq!(p.parse(&mut buf), Err(ParseError::InvalidBulkLength));
        // At the limit it waits instead.
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*1\r\n$536870912\r\n"[..]);
        assert_eq!(p.parse(&mut buf), Ok(None));
    }

    #[test]
    fn error_expected_dollar() {
        assert_eq!(err_of(b"*1\r\nx"), ParseError::ExpectedDollar(b'x'));
        assert_eq!(
            err_of(b"*1\r\nx").to_string(),
            "ERR Protocol error: expected '$', got 'x'"
        );
        assert_eq!(
            err_of(b"*2\r\n$1\r\na\r\n\r\n").to_string(),
            "ERR Protocol error: expected '$', got ' '"
        );
        assert_eq!(
            err_of(b"*1\r\n:1\r\n").to_string(),
            "ERR Protocol error: expected '$', got ':'"
        );
    }

    #[test]
    fn error_too_big_inline() {
        let mut input = vec![b'a'; 64 * 1024 + 1];
        assert_eq!(err_of(&input), ParseError::TooBigInlineRequest);
        input.push(b'\n');
        assert_eq!(err_of(&input), ParseError::TooBigInlineRequest);
        let mut ok = vec![b'a'; 64 * 1024];
        ok.push(b'\n');
        assert_eq!(parse_all(&ok).unwrap().len(), 1);
        // Incomplete but within the limit: waits.
        assert_eq!(parse_all(&vec![b'a'; 64 * 1024]).unwrap().len(), 0);
        assert_eq!(
            ParseError::TooBigInlineRequest.to_string(),
            "ERR Protocol error: too big inline request"
        );
    }

    #[test]
    fn error_too_big_count_strings() {
        let mut input = b"*".to_vec();
        input.extend(std::iter::repeat_n(b'1', 70_000));
        assert_eq!(err_of(&input), ParseError::TooBigMultibulkCountString);
        assert_eq!(
            parse_chunked(&input, &[1000]),
            Err(ParseError::TooBigMultibulkCountString)
        );
        let mut input = b"*1\r\n$".to_vec();
        input.extend(std::iter::repeat_n(b'1', 70_000));
        assert_eq!(err_of(&input), ParseError::TooBigBulkCountString);
        assert_eq!(
            ParseError::TooBigMultibulkCountString.to_string(),
            "ERR Protocol error: too big mbulk count string"
        );
        assert_eq!(
            ParseError::TooBigBulkCountString.to_string(),
            "ERR Protocol error: too big bulk count string"
        );
        // A short header without CR just waits.
        assert_eq!(parse_all(b"*123").unwrap().len(), 0);
    }

    #[test]
    fn error_unbalanced_quotes() {
        for input in [
            &b"SET k \"abc\r\n"[..],
            b"SET k 'abc\r\n",
            b"SET k \"abc\"def\r\n",
            b"SET k 'abc'def\r\n",
            b"\"a\"\"b\"\n",
            b"\"abc\\\"\n",
            b"'abc\\'\n",
        ] {
            assert_eq!(err_of(input), ParseError::UnbalancedQuotes, "{input:?}");
        }
        assert_eq!(
            ParseError::UnbalancedQuotes.to_string(),
            "ERR Protocol error: unbalanced quotes in request"
        );
    }

    #[test]
    fn error_expected_crlf_after_bulk() {
        for input in [
            &b"*1\r\n$3\r\nfooXY"[..],
            b"*1\r\n$3\r\nfoo\rX",
            b"*1\r\n$3\r\nfoo\n\r",
            b"*1\r\n$3\r\nfooo\r\n",
            b"*1\r\n$0\r\nX",
        ] {
            assert_eq!(err_of(input), ParseError::ExpectedCrlfAfterBulk, "{input:?}");
        }
        assert_eq!(
            ParseError::ExpectedCrlfAfterBulk.to_string(),
            "ERR Protocol error: expected CRLF after bulk"
        );
    }

    #[test]
    fn inline_quoting() {
        let cases: Vec<(&[u8], Vec<Vec<u8>>)> = vec![
            (b"SET k \"hello world\"\r\n", req(&[b"SET", b"k", b"hello world"])),
            (b"  a   b\t\tc  \n", req(&[b"a", b"b", b"c"])),
            (
                b"\"\\n\\r\\t\\b\\a\\\\\\\"\\x41\\x4a\\xzz\\q\"\n",
                req(&[b"\n\r\t\x08\x07\\\"AJxzzq"]),
            ),
            (b"'it\\'s' 'a\\b\"c'\n", req(&[b"it's", b"a\\b\"c"])),
            (b"\"\" ''\n", req(&[b"", b""])),
            (b"foo\"bar baz\"\n", req(&[b"foobar baz"])),
            (b"a\rb\n", req(&[b"a", b"b"])),
            (b"a\x0bb \x0bc\n", req(&[b"a\x0bb", b"c"])),
            (b"a\0b\n", req(&[b"a\0b"])),
            (b"\"a\"\tb\r\n", req(&[b"a", b"b"])),
            (b"\"\\xff\\x00\"\n", req(&[b"\xff\x00"])),
            (b"$3\r\n", req(&[b"$3"])),
            (b"x\r\r\n", req(&[b"x"])),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_all(input).unwrap(), vec![expected], "{input:?}");
        }
    }

    #[test]
    fn nested_arrays_error_without_recursion() {
        let input = b"*1\r\n".repeat(10_000);
        assert!(input.len() >= 40_000);
        assert_eq!(err_of(&input), ParseError::ExpectedDollar(b'*'));
    }

    #[test]
    fn custom_limits() {
        let limits = Limits {
            max_bulk_len: 4,
            max_multibulk_len: 2,
            max_inline_len: 8,
            max_request_len: 4 + 32 + 3 + 32,
        };
        let run = |input: &[u8]| parse_chunked_with(input, &[input.len()], limits);
        assert_eq!(
            run(b"*2\r\n$4\r\nabcd\r\n$3\r\nabc\r\n").unwrap(),
            vec![req(&[b"abcd", b"abc"])]
        );
        assert_eq!(run(b"*2\r\n$4\r\nabcd\r\n$4\r\n"), Err(ParseError::RequestTooBig));
        assert_eq!(run(b"*1\r\n$4\r\nabcd\r\n").unwrap(), vec![req(&[b"abcd"])]);
        assert_eq!(run(b"*1\r\n$5\r\n"), Err(ParseError::InvalidBulkLength));
        assert_eq!(run(b"*3\r\n"), Err(ParseError::InvalidMultibulkLength));
        assert_eq!(run(b"12345678\n").unwrap(), vec![req(&[b"12345678"])]);
        assert_eq!(run(b"123456789\n"), Err(ParseError::TooBigInlineRequest));
        assert_eq!(run(b"*00000000\r\n"), Err(ParseError::TooBigMultibulkCountString));
        assert_eq!(run(b"*0000000\r\n"), Err(ParseError::InvalidMultibulkLength));
    }

    #[test]
    fn parser_resets_after_error() {
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*2\r\n$1\r\na\r\nx"[..]);
        assert_eq!(p.parse(&mut buf), Err(ParseError::ExpectedDollar(b'x')));
        let mut buf = BytesMut::from(&b"*1\r\n$1\r\nb\r\n"[..]);
        assert_eq!(p.parse(&mut buf).unwrap().unwrap(), vec![Bytes::from_static(b"b")]);
    }

    #[test]
    fn large_bulk_in_many_reads() {
        let payload = vec![7u8; 1 << 20];
        let input = encode(&[b"SET".to_vec(), b"k".to_vec(), payload.clone()]);
        let got = parse_chunked(&input, &[4096]).unwrap();
        assert_eq!(got, vec![vec![b"SET".to_vec(), b"k".to_vec(), payload]]);
    }

    #[test]
    fn number_parsing_matches_string2ll() {
        assert_eq!(parse_number(b"0"), Some(0));
        assert_eq!(parse_number(b"-1"), Some(-1));
        assert_eq!(parse_number(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_number(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_number(b"9223372036854775808"), None);
        assert_eq!(parse_number(b"-"), None);
        assert_eq!(parse_number(b"-0"), None);
        assert_eq!(parse_number(b"00"), None);
        assert_eq!(parse_number(b"+1"), None);
        assert_eq!(parse_number(b""), None);
        assert_eq!(parse_number(b"1a"), None);
    }

    fn arb_request() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..6)
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            data in prop::collection::vec(any::<u8>(), 0..512),
            sizes in prop::collection::vec(1usize..64, 1..8),
        ) {
            let _ = parse_chunked(&data, &sizes);
        }

        #[test]
        fn random_protocolish_bytes_never_panic(
            parts in prop::collection::vec(
                prop::sample::select(vec![
                    &b"*"[..], b"$", b"\r", b"\n", b"\r\n", b"1", b"2", b"0", b"-", b"\"", b"'",
                    b"\\", b"x", b"a", b" ", b"*1\r\n", b"$1\r\n", b"$0\r\n",
                ]),
                0..128,
            ),
            sizes in prop::collection::vec(1usize..16, 1..8),
        ) {
            let data: Vec<u8> = parts.concat();
            let whole = parse_chunked(&data, &[data.len().max(1)]);
            let chunked = parse_chunked(&data, &sizes);
            // Splitting the input never changes the outcome.
            prop_assert_eq!(whole, chunked);
        }

        #[test]
        fn the_one_pass_path_agrees_with_the_state_machine(
            parts in prop::collection::vec(
                prop_oneof![
                    arb_request().prop_map(|r| encode(&r)),
                    prop::sample::select(vec![
                        &b"*"[..], b"$", b"\r\n", b"\n", b"0", b"1", b"2", b"00", b"-1", b"x",
                        b"*1\r\n", b"*2\r\n", b"$0\r\n", b"$1\r\n", b"$01\r\n", b"*0\r\n",
                        b"$3\r\nGET\r\n", b"$99999999999999999999\r\n", b"*1\r\n$1\r\nk\r\n",
                        b"*1\r\n$01\r\nk\r\n", b"*01\r\n$1\r\nk\r\n", b"*1\r\n$-0\r\n\r\n", b"*1\r\n$\r\n\r\n",
                    ]).prop_map(<[u8]>::to_vec),
                ],
                0..12,
            ),
            // One limit (or none) small enough to be hit, the others Redis's defaults.
            small in 0usize..5,
            bound in 0usize..300,
            // Whole requests in one read (the one-pass case) or a few bytes at a time.
            sizes in prop::collection::vec(prop_oneof![1usize..40, Just(1 << 16)], 1..4),
        ) {
            let data: Vec<u8> = parts.concat();
            let mut limits = Limits::default();
            match small {
                0 => limits.max_inline_len = bound % 8,
                1 => limits.max_bulk_len = bound % 70,
                2 => limits.max_multibulk_len = bound % 8,
                3 => limits.max_request_len = bound,
                _ => {}
            }
            let run = |one_pass: bool| {
                let mut parser = RequestParser::new(limits);
                let mut buf = BytesMut::new();
                let mut out = Vec::new();
                let mut pos = 0;
                let mut i = 0;
                while pos < data.len() {
                    let end = (pos + sizes[i % sizes.len()]).min(data.len());
                    i += 1;
                    buf.extend_from_slice(&data[pos..end]);
                    pos = end;
                    loop {
                        let got = if one_pass { parser.parse(&mut buf) } else { parser.parse_by_steps(&mut buf) };
                        match got {
                            Ok(Some(req)) => out.push(req),
                            Ok(None) => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok((out, buf.len()))
            };
            prop_assert_eq!(run(true), run(false));
        }

        #[test]
        fn multibulk_roundtrip(
            reqs in prop::collection::vec(arb_request(), 1..5),
            sizes in prop::collection::vec(1usize..40, 1..8),
        ) {
            let input: Vec<u8> = reqs.iter().flat_map(|r| encode(r)).collect();
            prop_assert_eq!(parse_chunked(&input, &sizes).unwrap(), reqs);
        }

        #[test]
        fn inline_roundtrip(
            reqs in prop::collection::vec(arb_request(), 1..5),
            sizes in prop::collection::vec(1usize..40, 1..8),
        ) {
            let input: Vec<u8> = reqs.iter().flat_map(|r| encode_inline(r)).collect();
            prop_assert_eq!(parse_chunked(&input, &sizes).unwrap(), reqs);
        }
    }
}
