//! Incremental HTTP/1.0 and HTTP/1.1 parser of ONE direction of one connection: the
//! requests a client sends, or the responses a server sends.
//!
//! Just what tandem needs: the request line or status line, the header block, and
//! the body framing (RFC 9112 section 6: `Transfer-Encoding: chunked`,
//! `Content-Length`, no body, or delimited by the connection's close). Bodies are
//! counted, never kept.
//!
//! # Feeding
//!
//! Each `Data` event becomes a [`Chunk`]: the captured bytes, then `total_len -
//! payload.len()` bytes that were moved by the syscall but not captured. The unknown
//! bytes count: inside a body of known length (or a chunk's data) they advance it;
//! where the parser needed them (a header block, a chunk-size line) it reports what
//! it knows (a head with `truncated: true`, or [`Http1Event::BodyLost`]) and
//! resynchronises.
//!
//! Call [`Parser::next`] until it returns `None`: each call returns at most one
//! [`Http1Event`], so the caller can act between events (e.g. call
//! [`Parser::no_body`] after the head of a response to `HEAD`).
//!
//! # Resynchronisation
//!
//! After bytes that are not HTTP/1.x, an oversized header block, or lost framing, the
//! parser skips bytes until a chunk (one syscall's payload) STARTS with something
//! that looks like a message start: an upper-case method and a space, or
//! `HTTP/1.x NNN`, and whose first line, when complete, parses; or a chunk that is
//! all a prefix of one (a short read), tried tentatively: if the start line turns
//! out invalid its bytes are skipped, not reported as an error. Message starts
//! nearly always coincide with the start of a read or write; a message that starts
//! in the middle of one after a loss of synchronisation is missed.
//!
//! # Bounds
//!
//! The only buffer is the incomplete header block, at most `max_head` bytes (default
//! [`MAX_HEAD_BYTES`]); beyond, the message is given up ([`ParseError::HeadTooLong`]).
//! Headers keep at most [`MAX_HEADERS`] entries, values cut to [`MAX_HEADER_VALUE`]
//! bytes (framing headers are honoured even past `MAX_HEADERS`).

use crate::model::{method_from_bytes, HttpRequest, HttpResponse, MAX_HEADERS, MAX_HEADER_VALUE};
use crate::protocols::truncate_utf8;

#[cfg(test)]
mod tests;

/// Default bound of an incomplete header block (request/status line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest method accepted (longer is not HTTP).
const MAX_METHOD_LEN: usize = 24;
/// Longest chunk extension skipped on a chunk-size line.
const MAX_CHUNK_EXT: u32 = 4096;
/// At most 16 hex digits fit in a u64.
const MAX_CHUNK_DIGITS: u8 = 16;

/// Which messages a parser expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Response,
}

pub use crate::protocols::Origin;

/// One `Data` event's bytes, consumed by [`Parser::next`].
#[derive(Debug)]
pub struct Chunk<'a> {
    data: &'a [u8],
    pos: usize,
    /// Bytes after `data` that were moved but not captured, not yet consumed.
    unknown: u64,
    origin: Origin,
    skipped: u64,
    lost_sync: u64,
}

impl<'a> Chunk<'a> {
    /// `total_len` is the syscall's byte count; `data` its captured prefix.
    pub fn new(data: &'a [u8], total_len: u64, origin: Origin) -> Self {
        let captured = u64::try_from(data.len()).unwrap_or(u64::MAX);
        Chunk {
            data,
            pos: 0,
            unknown: total_len.saturating_sub(captured),
            origin,
            skipped: 0,
            lost_sync: 0,
        }
    }

    /// Bytes (captured or not) skipped as not parseable: garbage, a given-up header
    /// block, bytes passed over while resynchronising.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Times uncaptured bytes hid a message start, a header block's end or chunk
    /// framing, so that the parser lost its place.
    pub fn lost_sync(&self) -> u64 {
        self.lost_sync
    }

    fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or_default()
    }

    fn skip_rest(&mut self) {
        self.skipped += len64(self.rest().len()) + self.unknown;
        self.pos = self.data.len();
        self.unknown = 0;
    }
}

fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What the parser found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http1Event {
    /// A request's head. `truncated`: the capture ended inside the header block;
    /// the request holds what was captured (maybe a partial target, no version), no
    /// `End` follows and the parser resynchronises.
    Request {
        request: HttpRequest,
        origin: Origin,
        truncated: bool,
    },
    /// A response's head (1xx included). `truncated` as for requests.
    Response {
        response: HttpResponse,
        origin: Origin,
        truncated: bool,
    },
    /// The current message ended, in the chunk being consumed.
    End { body_size: u64 },
    /// Uncaptured bytes hid the chunked framing of the current message's body: the
    /// end of the message is unknown; `body_size` is what was counted. The parser
    /// resynchronises.
    BodyLost { body_size: u64 },
    /// Bytes that are not HTTP/1.x (or a header block too long). The current
    /// message, if its head was reported, ends here; the parser resynchronises.
    Error(ParseError),
}

/// Why bytes were not accepted as HTTP/1.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not an HTTP/1.0 or HTTP/1.1 request or status line")]
    StartLine,
    #[error("header block longer than the buffer bound")]
    HeadTooLong,
    #[error("invalid header line")]
    HeaderLine,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("request with a Transfer-Encoding not ending in chunked")]
    TransferEncoding,
    #[error("invalid chunked framing")]
    Chunked,
}

/// What a close means for the message in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    /// No message was in progress (or the parser was resynchronising).
    Between,
    /// The close ended the message properly (a body delimited by the close).
    Ended { body_size: u64 },
    /// The close cut a message: in its header block (`head_seen` false) or body.
    Cut { head_seen: bool, body_size: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length(u64),
    UntilClose,
    /// Reading a chunk-size line: digits so far, then extension bytes skipped.
    ChunkSize {
        value: u64,
        digits: u8,
        ext: Option<u32>,
    },
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkDataEnd,
    /// Trailer lines after the last chunk; ends at an empty line.
    Trailers {
        line_len: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages: the next byte (after optional CR/LF) starts one.
    Idle,
    /// Inside a header block, buffered in `head`.
    Head,
    Body(Body),
    /// Lost: waiting for a chunk that starts with a message start.
    Resync,
}

/// Parser of one direction's byte stream.
#[derive(Debug)]
pub struct Parser {
    kind: MessageKind,
    state: State,
    head: Vec<u8>,
    /// The first line of `head` was complete and valid.
    start_line_checked: bool,
    /// The message in `head` was started while resynchronising on a mere prefix of
    /// a start line: if the start line turns out invalid, its bytes are skipped
    /// silently rather than reported as an error.
    tentative: bool,
    origin: Origin,
    body_size: u64,
    max_head: usize,
}

impl Parser {
    /// A parser at a message boundary.
    pub fn new(kind: MessageKind, max_head: usize) -> Self {
        Parser {
            kind,
            state: State::Idle,
            head: Vec::new(),
            start_line_checked: false,
            tentative: false,
            origin: Origin::default(),
            body_size: 0,
            max_head: max_head.max(16),
        }
    }

    /// Forget the message in progress and wait for a chunk that starts a message
    /// (e.g. when joining a connection in the middle).
    pub fn resync(&mut self) {
        self.state = State::Resync;
        self.head = Vec::new();
        self.start_line_checked = false;
        self.tentative = false;
        self.body_size = 0;
    }

    /// True while waiting for a message start after losing synchronisation.
    #[cfg(test)]
    pub fn is_resyncing(&self) -> bool {
        self.state == State::Resync
    }

    /// Bytes held for an incomplete header block.
    pub fn buffered(&self) -> usize {
        self.head.len()
    }

    /// Body bytes counted so far for the message in progress.
    pub fn body_size(&self) -> u64 {
        self.body_size
    }

    /// The message whose head was just reported has no body whatever its headers
    /// say (a response to `HEAD`, a `2xx` response to `CONNECT`). Call it before the
    /// next [`Parser::next`].
    pub fn no_body(&mut self) {
        if let State::Body(_) = self.state {
            self.state = State::Body(Body::Length(0));
        }
    }

    /// The connection closed: what that means for the message in progress. The
    /// parser is then back at a message boundary.
    pub fn close(&mut self) -> CloseOutcome {
        let outcome = match self.state {
            State::Idle | State::Resync => CloseOutcome::Between,
            State::Head => CloseOutcome::Cut {
                head_seen: false,
                body_size: 0,
            },
            State::Body(Body::UntilClose) | State::Body(Body::Length(0)) => CloseOutcome::Ended {
                body_size: self.body_size,
            },
            State::Body(_) => CloseOutcome::Cut {
                head_seen: true,
                body_size: self.body_size,
            },
        };
        self.state = State::Idle;
        self.head = Vec::new();
        self.start_line_checked = false;
        self.body_size = 0;
        outcome
    }

    /// Consumes `chunk` up to the next event; `None` when the chunk is used up.
    pub fn next(&mut self, chunk: &mut Chunk<'_>) -> Option<Http1Event> {
        loop {
            match self.state {
                State::Resync => {
                    if chunk.pos == 0 {
                        let start = looks_like_start(self.kind, chunk.data);
                        // A short read may hold only the beginning of a start line.
                        let prefix = check_start(self.kind, chunk.data) == Start::Incomplete
                            && !chunk.data.is_empty();
                        if start || prefix {
                            self.state = State::Idle;
                            self.tentative = true;
                            continue;
                        }
                    }
                    chunk.skip_rest();
                    return None;
                }
                State::Idle => {
                    let rest = chunk.rest();
                    let blank = rest.iter().take_while(|b| matches!(b, b'\r' | b'\n'));
                    chunk.pos += blank.count();
                    if chunk.rest().is_empty() {
                        if chunk.unknown > 0 {
                            // A message starts in bytes nobody saw.
                            chunk.lost_sync += 1;
                            chunk.skip_rest();
                            self.state = State::Resync;
                        }
                        return None;
                    }
                    self.origin = chunk.origin;
                    self.head.clear();
                    self.start_line_checked = false;
                    self.body_size = 0;
                    self.state = State::Head;
                }
                State::Head => {
                    if let Some(event) = self.head_step(chunk) {
                        return Some(event);
                    }
                    if chunk.rest().is_empty() && chunk.unknown == 0 && self.state == State::Head {
                        return None;
                    }
                }
                State::Body(body) => {
                    if let Some(event) = self.body_step(body, chunk) {
                        return Some(event);
                    }
                    if chunk.rest().is_empty()
                        && chunk.unknown == 0
                        && matches!(self.state, State::Body(b) if b != Body::Length(0))
                    {
                        return None;
                    }
                }
            }
        }
    }

    fn fail(&mut self, error: ParseError, chunk: &mut Chunk<'_>) -> Http1Event {
        chunk.skipped += len64(self.head.len());
        chunk.skip_rest();
        self.resync();
        Http1Event::Error(error)
    }

    /// An invalid start line: an error, or skipped bytes if the message was only
    /// tentatively started while resynchronising.
    fn fail_start(&mut self, chunk: &mut Chunk<'_>) -> Option<Http1Event> {
        if self.tentative {
            chunk.skipped += len64(self.head.len());
            chunk.skip_rest();
            self.resync();
            return None;
        }
        Some(self.fail(ParseError::StartLine, chunk))
    }

    /// Buffers header-block bytes; returns an event when the block is complete,
    /// invalid, or cut by uncaptured bytes.
    fn head_step(&mut self, chunk: &mut Chunk<'_>) -> Option<Http1Event> {
        let rest = chunk.rest();
        if self.head.is_empty() {
            // The whole header block in this chunk (the usual case): parsed where it
            // is, not copied.
            if let Some(end) = find_head_end(rest, 0).filter(|e| *e <= self.max_head) {
                let head = rest.get(..end).unwrap_or_default();
                return match parse_head(self.kind, head) {
                    Ok((message, body)) => {
                        chunk.pos += end;
                        self.tentative = false;
                        self.state = State::Body(body);
                        Some(self.head_event(message, false))
                    }
                    Err(error) => Some(self.fail(error, chunk)),
                };
            }
        }
        if rest.is_empty() {
            // Only uncaptured bytes are left: the header block was cut.
            chunk.lost_sync += 1;
            let event = partial_head(self.kind, &self.head, self.origin);
            chunk.skip_rest();
            self.resync();
            return event;
        }
        let old = self.head.len();
        let take = rest.len().min(self.max_head.saturating_sub(old));
        self.head
            .extend_from_slice(rest.get(..take).unwrap_or_default());
        chunk.pos += take;
        if let Some(end) = find_head_end(&self.head, old.saturating_sub(3)) {
            // Give back what follows the block: it belongs to the body.
            chunk.pos -= self.head.len() - end;
            self.head.truncate(end);
            let parsed = parse_head(self.kind, &self.head);
            return Some(match parsed {
                Ok((message, body)) => {
                    self.head = Vec::new();
                    self.tentative = false;
                    self.state = State::Body(body);
                    self.head_event(message, false)
                }
                Err(error) => self.fail(error, chunk),
            });
        }
        if !self.start_line_checked {
            if let Some(line_end) = self.head.iter().position(|&b| b == b'\n') {
                let line = trim_cr(self.head.get(..line_end).unwrap_or_default());
                let valid = match self.kind {
                    MessageKind::Request => parse_request_line(line).is_some(),
                    MessageKind::Response => parse_status_line(line).is_some(),
                };
                if !valid {
                    return self.fail_start(chunk);
                }
                self.start_line_checked = true;
                self.tentative = false;
            } else if check_start(self.kind, &self.head) == Start::Invalid {
                return self.fail_start(chunk);
            }
        }
        if self.head.len() >= self.max_head {
            return Some(self.fail(ParseError::HeadTooLong, chunk));
        }
        None
    }

    fn head_event(&self, message: Message, truncated: bool) -> Http1Event {
        match message {
            Message::Request(request) => Http1Event::Request {
                request,
                origin: self.origin,
                truncated,
            },
            Message::Response(response) => Http1Event::Response {
                response,
                origin: self.origin,
                truncated,
            },
        }
    }

    fn lose_body(&mut self, chunk: &mut Chunk<'_>) -> Http1Event {
        chunk.lost_sync += 1;
        chunk.skip_rest();
        let body_size = self.body_size;
        self.resync();
        Http1Event::BodyLost { body_size }
    }

    fn end(&mut self) -> Http1Event {
        self.state = State::Idle;
        self.tentative = false;
        Http1Event::End {
            body_size: self.body_size,
        }
    }

    fn body_step(&mut self, body: Body, chunk: &mut Chunk<'_>) -> Option<Http1Event> {
        match body {
            Body::Length(0) => Some(self.end()),
            Body::Length(remaining) => {
                let n = self.consume_opaque(remaining, chunk);
                self.state = State::Body(Body::Length(remaining - n));
                None
            }
            Body::UntilClose => {
                self.consume_opaque(u64::MAX, chunk);
                None
            }
            Body::ChunkData(remaining) => {
                if chunk.rest().is_empty() && chunk.unknown > remaining {
                    // The chunk's data ends in uncaptured bytes, and so does the
                    // framing that follows it.
                    self.body_size += remaining;
                    chunk.unknown -= remaining;
                    return Some(self.lose_body(chunk));
                }
                let n = self.consume_opaque(remaining, chunk);
                let left = remaining - n;
                self.state = State::Body(if left == 0 {
                    Body::ChunkDataEnd
                } else {
                    Body::ChunkData(left)
                });
                None
            }
            Body::ChunkSize { .. } | Body::ChunkDataEnd | Body::Trailers { .. } => {
                if chunk.rest().is_empty() {
                    return if chunk.unknown > 0 {
                        Some(self.lose_body(chunk))
                    } else {
                        None
                    };
                }
                self.chunk_framing(body, chunk)
            }
        }
    }

    /// Consumes up to `limit` body bytes, captured first, then uncaptured.
    fn consume_opaque(&mut self, limit: u64, chunk: &mut Chunk<'_>) -> u64 {
        let captured = len64(chunk.rest().len());
        let n = if captured > 0 {
            let n = captured.min(limit);
            chunk.pos += usize::try_from(n).unwrap_or(usize::MAX);
            n
        } else {
            let n = chunk.unknown.min(limit);
            chunk.unknown -= n;
            n
        };
        self.body_size = self.body_size.saturating_add(n);
        n
    }

    /// Walks chunk-size lines, data CRLFs and trailers byte by byte.
    fn chunk_framing(&mut self, mut body: Body, chunk: &mut Chunk<'_>) -> Option<Http1Event> {
        while let Some(&b) = chunk.rest().first() {
            chunk.pos += 1;
            body = match body {
                Body::ChunkSize { value, digits, ext } => match (b, ext) {
                    (b'\n', _) if digits > 0 => {
                        if value == 0 {
                            Body::Trailers { line_len: 0 }
                        } else {
                            self.state = State::Body(Body::ChunkData(value));
                            return None;
                        }
                    }
                    (b'\r', _) if digits > 0 => body,
                    (_, Some(n)) if n < MAX_CHUNK_EXT => Body::ChunkSize {
                        value,
                        digits,
                        ext: Some(n + 1),
                    },
                    (b';' | b' ' | b'\t', None) if digits > 0 => Body::ChunkSize {
                        value,
                        digits,
                        ext: Some(0),
                    },
                    (_, None) => match hex_value(b) {
                        Some(d) if digits < MAX_CHUNK_DIGITS => Body::ChunkSize {
                            value: value << 4 | u64::from(d),
                            digits: digits + 1,
                            ext: None,
                        },
                        _ => return Some(self.fail(ParseError::Chunked, chunk)),
                    },
                    _ => return Some(self.fail(ParseError::Chunked, chunk)),
                },
                Body::ChunkDataEnd => match b {
                    b'\r' => body,
                    b'\n' => Body::ChunkSize {
                        value: 0,
                        digits: 0,
                        ext: None,
                    },
                    _ => return Some(self.fail(ParseError::Chunked, chunk)),
                },
                Body::Trailers { line_len } => match b {
                    b'\n' if line_len == 0 => return Some(self.end()),
                    b'\n' => Body::Trailers { line_len: 0 },
                    b'\r' => body,
                    _ if line_len < MAX_CHUNK_EXT => Body::Trailers {
                        line_len: line_len + 1,
                    },
                    _ => return Some(self.fail(ParseError::Chunked, chunk)),
                },
                other => other,
            };
        }
        self.state = State::Body(body);
        None
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// End (exclusive) of the header block: the index after an empty line, searching
/// line ends from `from`.
fn find_head_end(head: &[u8], from: usize) -> Option<usize> {
    let tail = head.get(from..)?;
    for i in memchr::memchr_iter(b'\n', tail).map(|i| i + from) {
        match (head.get(i + 1), head.get(i + 2)) {
            (Some(b'\n'), _) => return Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
            _ => {}
        }
    }
    None
}

/// The lines of `bytes` (split at `\n`, the last one possibly empty), found with
/// `memchr`.
fn split_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', bytes);
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match ends.next() {
            Some(end) => {
                let line = bytes.get(start..end);
                start = end + 1;
                line
            }
            None => {
                done = true;
                bytes.get(start..)
            }
        }
    })
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// How the beginning of some bytes compares with a message start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A method and a space, or `HTTP/1.x NNN`.
    Valid,
    /// A prefix of one.
    Incomplete,
    Invalid,
}

/// Whether `bytes` begin like a request (a method of upper-case letters, `-` or `_`,
/// then a space) or a response (`HTTP/1.0 ` or `HTTP/1.1 ` and three digits).
pub fn check_start(kind: MessageKind, bytes: &[u8]) -> Start {
    match kind {
        MessageKind::Request => {
            for (i, &b) in bytes.iter().enumerate().take(MAX_METHOD_LEN + 1) {
                match b {
                    b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD_LEN => {}
                    b' ' if i > 0 => return Start::Valid,
                    _ => return Start::Invalid,
                }
            }
            Start::Incomplete
        }
        MessageKind::Response => {
            const PATTERN: &[u8] = b"HTTP/1.? ???";
            for (i, &b) in bytes.iter().enumerate().take(PATTERN.len()) {
                let ok = match i {
                    7 => b == b'0' || b == b'1',
                    9..=11 => b.is_ascii_digit(),
                    _ => PATTERN.get(i) == Some(&b),
                };
                if !ok {
                    return Start::Invalid;
                }
            }
            if bytes.len() >= PATTERN.len() {
                Start::Valid
            } else {
                Start::Incomplete
            }
        }
    }
}

/// Whether a chunk starting with `bytes` starts a message: [`check_start`] says
/// `Valid`, and the first line, if complete, parses.
pub fn looks_like_start(kind: MessageKind, bytes: &[u8]) -> bool {
    if check_start(kind, bytes) != Start::Valid {
        return false;
    }
    match bytes.iter().position(|&b| b == b'\n') {
        None => true,
        Some(end) => {
            let line = trim_cr(bytes.get(..end).unwrap_or_default());
            match kind {
                MessageKind::Request => parse_request_line(line).is_some(),
                MessageKind::Response => parse_status_line(line).is_some(),
            }
        }
    }
}

enum Message {
    Request(HttpRequest),
    Response(HttpResponse),
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'0'..=b'9' | b'A'..=b'Z'
            | b'^'..=b'z' | b'|' | b'~')
}

fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn version(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        b"HTTP/1.1" => Some("1.1"),
        b"HTTP/1.0" => Some("1.0"),
        _ => None,
    }
}

/// `METHOD SP target SP HTTP/1.x` → (method, target, version).
fn parse_request_line(line: &[u8]) -> Option<(&[u8], &[u8], &'static str)> {
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = version(parts.next()?)?;
    let method_ok = !method.is_empty()
        && method.len() <= MAX_METHOD_LEN
        && method
            .iter()
            .all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_');
    let target_ok = !target.is_empty() && target.iter().all(|b| *b > b' ' && *b != 0x7f);
    (parts.next().is_none() && method_ok && target_ok).then_some((method, target, version))
}

/// `HTTP/1.x SP NNN [SP reason]` → (version, status).
fn parse_status_line(line: &[u8]) -> Option<(&'static str, u16)> {
    let version = version(line.get(..8)?)?;
    if line.get(8) != Some(&b' ') {
        return None;
    }
    let digits = line.get(9..12)?;
    if !digits.iter().all(u8::is_ascii_digit) || line.get(12).is_some_and(|b| *b != b' ') {
        return None;
    }
    let status = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (status >= 100).then_some((version, status))
}

fn request(method: &[u8], target: &[u8], version: &'static str) -> HttpRequest {
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (
            target.get(..q).unwrap_or_default(),
            Some(text(target.get(q + 1..).unwrap_or_default())),
        ),
        None => (target, None),
    };
    HttpRequest {
        method: method_from_bytes(method),
        path: text(path),
        query,
        version,
        headers: Vec::new(),
        body_size: 0,
    }
}

/// What the framing headers said.
#[derive(Default)]
struct Framing {
    content_length: Option<u64>,
    /// Some(last coding is chunked) when Transfer-Encoding was present.
    chunked: Option<bool>,
}

/// Parses header lines into `headers` (bounded) and `framing`. `strict`: an invalid
/// line is an error (else skipped, for truncated blocks).
fn parse_headers<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    headers: &mut Vec<(String, String)>,
    framing: &mut Framing,
    strict: bool,
) -> Result<(), ParseError> {
    for line in lines {
        let line = trim_cr(line);
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // Obsolete line folding: continues the previous value.
            if let Some((_, value)) = headers.last_mut() {
                let more = text(line.trim_ascii());
                if !more.is_empty() {
                    value.push(' ');
                    value.push_str(&more);
                    truncate_utf8(value, MAX_HEADER_VALUE);
                }
            }
            continue;
        }
        let colon = line.iter().position(|&b| b == b':');
        let (name, value) = match colon {
            Some(c) => (
                line.get(..c).unwrap_or_default(),
                line.get(c + 1..).unwrap_or_default().trim_ascii(),
            ),
            None => (line, &b""[..]),
        };
        if colon.is_none() || name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            if strict {
                return Err(ParseError::HeaderLine);
            }
            continue;
        }
        // Header names are tokens (ASCII), so byte-wise lower-casing is exact.
        let name = String::from_utf8(name.to_ascii_lowercase()).unwrap_or_default();
        match name.as_str() {
            "content-length" => {
                // "5" or a list of identical values ("5, 5").
                for item in value.split(|&b| b == b',') {
                    let item = item.trim_ascii();
                    let parsed = (!item.is_empty() && item.len() <= 19)
                        .then(|| std::str::from_utf8(item).ok())
                        .flatten()
                        .and_then(|s| s.parse::<u64>().ok())
                        .filter(|_| item.iter().all(u8::is_ascii_digit));
                    match (parsed, framing.content_length) {
                        (Some(n), None) => framing.content_length = Some(n),
                        (Some(n), Some(m)) if n == m => {}
                        _ if strict => return Err(ParseError::ContentLength),
                        _ => {}
                    }
                }
            }
            "transfer-encoding" => {
                let last = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                framing.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
            _ => {}
        }
        if headers.len() < MAX_HEADERS {
            let mut value = text(value);
            truncate_utf8(&mut value, MAX_HEADER_VALUE);
            headers.push((name, value));
        }
    }
    Ok(())
}

/// Parses a complete header block (ending with its empty line).
fn parse_head(kind: MessageKind, head: &[u8]) -> Result<(Message, Body), ParseError> {
    let mut lines = split_lines(head);
    let first = trim_cr(lines.next().unwrap_or_default());
    let mut headers = Vec::new();
    let mut framing = Framing::default();
    match kind {
        MessageKind::Request => {
            let (method, target, version) =
                parse_request_line(first).ok_or(ParseError::StartLine)?;
            parse_headers(lines, &mut headers, &mut framing, true)?;
            // Requests are never delimited by the close (RFC 9112 6.3).
            let body = match (framing.chunked, framing.content_length) {
                (Some(true), _) => chunked(),
                (Some(false), _) => return Err(ParseError::TransferEncoding),
                (None, Some(n)) => Body::Length(n),
                (None, None) => Body::Length(0),
            };
            let mut request = request(method, target, version);
            request.headers = headers;
            Ok((Message::Request(request), body))
        }
        MessageKind::Response => {
            let (version, status) = parse_status_line(first).ok_or(ParseError::StartLine)?;
            parse_headers(lines, &mut headers, &mut framing, true)?;
            let body = if matches!(status, 100..=199 | 204 | 304) {
                Body::Length(0)
            } else {
                match (framing.chunked, framing.content_length) {
                    (Some(true), _) => chunked(),
                    (Some(false), _) => Body::UntilClose,
                    (None, Some(n)) => Body::Length(n),
                    (None, None) => Body::UntilClose,
                }
            };
            let response = HttpResponse {
                status,
                version,
                headers,
                body_size: 0,
            };
            Ok((Message::Response(response), body))
        }
    }
}

fn chunked() -> Body {
    Body::ChunkSize {
        value: 0,
        digits: 0,
        ext: None,
    }
}

/// What can be said of a header block cut by uncaptured bytes: the start line (a
/// request's may be partial: method and target so far, no version) and the complete
/// header lines. `None` when not even that is known.
fn partial_head(kind: MessageKind, head: &[u8], origin: Origin) -> Option<Http1Event> {
    let complete = match head.iter().rposition(|&b| b == b'\n') {
        Some(last) => head.get(..last).unwrap_or_default(),
        None => &[][..],
    };
    let mut lines = split_lines(complete);
    let first_complete = !complete.is_empty();
    let first = if first_complete {
        trim_cr(lines.next().unwrap_or_default())
    } else {
        head
    };
    let mut headers = Vec::new();
    let mut framing = Framing::default();
    let _ = parse_headers(lines, &mut headers, &mut framing, false);
    match kind {
        MessageKind::Request => {
            let mut request = if first_complete {
                let (method, target, version) = parse_request_line(first)?;
                request(method, target, version)
            } else {
                let space = first.iter().position(|&b| b == b' ')?;
                let method = first.get(..space).unwrap_or_default();
                let target = first.get(space + 1..).unwrap_or_default();
                request(method, target, "")
            };
            request.headers = headers;
            Some(Http1Event::Request {
                request,
                origin,
                truncated: true,
            })
        }
        MessageKind::Response => {
            let (version, status) = if first_complete {
                parse_status_line(first)?
            } else {
                parse_status_line(first.get(..12)?)?
            };
            Some(Http1Event::Response {
                response: HttpResponse {
                    status,
                    version,
                    headers,
                    body_size: 0,
                },
                origin,
                truncated: true,
            })
        }
    }
}
