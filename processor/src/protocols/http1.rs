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
//! Headers keep at most [`MAX_HEADERS`](crate::model::MAX_HEADERS) entries, values
//! cut to [`MAX_HEADER_VALUE`](crate::model::MAX_HEADER_VALUE) bytes (framing headers
//! are honoured even past `MAX_HEADERS`).

use crate::model::{HttpRequest, HttpResponse};

mod head;
#[cfg(test)]
mod tests;

pub use head::{check_start, looks_like_start, Start};
#[cfg(test)]
use {
    crate::model::{MAX_HEADERS, MAX_HEADER_VALUE},
    head::{is_tchar, split_lines},
};

/// Default bound of an incomplete header block (request/status line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
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
