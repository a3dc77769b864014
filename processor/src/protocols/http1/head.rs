//! The header block of an HTTP/1.x message: start-line checks ([`check_start`],
//! [`looks_like_start`]), request and status lines, header lines and the body framing
//! they announce, and the parser's header stage (buffering the block, reporting it).

use std::borrow::Cow;

use super::{len64, Body, Chunk, Http1Event, MessageKind, Origin, ParseError, Parser, State};
use crate::model::{
    header_name, method_from_bytes, Header, HttpRequest, HttpResponse, MAX_HEADERS,
    MAX_HEADER_VALUE,
};
use crate::protocols::truncate_utf8;

/// Longest method accepted (longer is not HTTP).
const MAX_METHOD_LEN: usize = 24;

impl Parser {
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
    pub(super) fn head_step(&mut self, chunk: &mut Chunk<'_>) -> Option<Http1Event> {
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
pub(super) fn split_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
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
pub(super) fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'0'..=b'9' | b'A'..=b'Z'
            | b'^'..=b'z' | b'|' | b'~')
}

/// A header name lower-cased, if it is a token (ASCII, so byte-wise lower-casing is
/// exact); the known names without an allocation.
fn lower_token(name: &[u8]) -> Option<Cow<'static, str>> {
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let mut buf = [0u8; 32];
    match buf.get_mut(..name.len()) {
        Some(lower) => {
            for (l, b) in lower.iter_mut().zip(name) {
                *l = b.to_ascii_lowercase();
            }
            std::str::from_utf8(lower).ok().map(header_name)
        }
        None => String::from_utf8(name.to_ascii_lowercase())
            .ok()
            .map(Cow::Owned),
    }
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
    headers: &mut Vec<Header>,
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
        let Some(name) = colon.and_then(|_| lower_token(name)) else {
            if strict {
                return Err(ParseError::HeaderLine);
            }
            continue;
        };
        match &*name {
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
