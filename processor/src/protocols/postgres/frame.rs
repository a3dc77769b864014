//! PostgreSQL message framing of one direction: the message-start check for
//! detection, the constants of the startup packets, and the incremental [`Framer`]
//! that yields [`Frame`]s.

use crate::protocols::db::{Input, MAX_KEEP};

/// Longest message accepted (the server's own limit for most messages is 1 GiB).
const MAX_LEN: u32 = 1 << 30;
pub(super) const SSL_REQUEST: u32 = 80_877_103;
pub(super) const GSSENC_REQUEST: u32 = 80_877_104;
pub(super) const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.0.
const PROTOCOL_3: u32 = 196_608;

const FRONTEND_TYPES: &[u8] = b"QPBESDCHXFdcfp";
const BACKEND_TYPES: &[u8] = b"RSKZTDCEN123nstIAGHWcdVv";

/// Whether a request-direction payload starts like a PostgreSQL connection or
/// message: a startup packet (protocol 3.0, SSL, GSS, cancel) or a `Q`/`P` message
/// whose length fits.
pub fn looks_like_start(payload: &[u8], total_len: u64) -> bool {
    if let Some(code) = startup_code(payload) {
        let len = be32(payload, 0).unwrap_or(0);
        return match code {
            SSL_REQUEST | GSSENC_REQUEST => len == 8,
            CANCEL_REQUEST => len == 16,
            PROTOCOL_3 => (8..10_000).contains(&len),
            _ => false,
        };
    }
    let Some(&t) = payload.first() else {
        return false;
    };
    let Some(len) = be32(payload, 1) else {
        return false;
    };
    let fits = u64::from(len) < total_len;
    match t {
        // A query's text is printable (or whitespace) and NUL-terminated.
        b'Q' => {
            fits && len > 4
                && payload
                    .get(5)
                    .is_some_and(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        }
        b'P' => fits && len >= 8,
        _ => false,
    }
}

/// The length field of fixed-size messages.
fn fixed_len(frontend: bool, t: u8) -> Option<u32> {
    match (frontend, t) {
        (true, b'S' | b'H' | b'X' | b'c') => Some(4),
        (false, b'1' | b'2' | b'3' | b'n' | b'c' | b'I') => Some(4),
        (false, b'Z') => Some(5),
        (false, b'K') => Some(12),
        _ => None,
    }
}

fn startup_code(payload: &[u8]) -> Option<u32> {
    let code = be32(payload, 4)?;
    matches!(
        code,
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST | PROTOCOL_3
    )
    .then_some(code)
}

pub(super) fn be32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// One message: its type (0 for the untyped startup packets) and its body's
/// captured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub typ: u8,
    pub body: Vec<u8>,
    /// Part of the body was not captured or not kept.
    pub cut: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FState {
    Resync,
    Header,
    Body,
}

/// Why framing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Uncaptured bytes hid a header.
    LostSync,
    /// A header that is not PostgreSQL's.
    Invalid,
}

/// Incremental framer of one direction.
#[derive(Debug)]
pub struct Framer {
    frontend: bool,
    state: FState,
    /// The next message is an untyped startup packet.
    untyped_next: bool,
    hdr: [u8; 5],
    hdr_len: usize,
    typ: u8,
    body: Vec<u8>,
    remaining: u64,
    cut: bool,
}

impl Framer {
    /// `frontend`: the client's messages. `fresh`: the connection is seen from its
    /// start (else the framer waits for a plausible message start).
    pub fn new(frontend: bool, fresh: bool) -> Self {
        Framer {
            frontend,
            state: if fresh {
                FState::Header
            } else {
                FState::Resync
            },
            untyped_next: frontend && fresh,
            hdr: [0; 5],
            hdr_len: 0,
            typ: 0,
            body: Vec::new(),
            remaining: 0,
            cut: false,
        }
    }

    pub fn resync(&mut self) {
        self.state = FState::Resync;
        self.hdr_len = 0;
        self.body = Vec::new();
    }

    /// Between messages (the next byte starts one).
    pub fn at_boundary(&self) -> bool {
        self.state == FState::Header && self.hdr_len == 0
    }

    /// Bytes held (for checking the bound).
    pub fn buffered(&self) -> usize {
        self.body.capacity()
    }

    /// Whether a payload (of a write of `total` bytes) starts with messages: a
    /// known type, a length that fits the write (exact for fixed-size messages), and
    /// the next captured message (up to a few) plausible as well. Strict, because a
    /// payload that starts inside a large message (rows) must not be taken for one.
    fn plausible(&self, data: &[u8], total: u64) -> bool {
        if self.frontend && startup_code(data).is_some() {
            return true;
        }
        let mut at = 0usize;
        for _ in 0..4 {
            let rest = data.get(at..).unwrap_or_default();
            if rest.is_empty() {
                return true;
            }
            let (Some(&t), Some(len)) = (rest.first(), be32(rest, 1)) else {
                // A header cut by the capture: plausible if what is there is.
                return rest.first().is_some_and(|t| self.known(*t)) && at > 0;
            };
            if !self.known(t) || !(4..MAX_LEN).contains(&len) {
                return false;
            }
            if let Some(fixed) = fixed_len(self.frontend, t) {
                if len != fixed {
                    return false;
                }
            }
            let end = u64::try_from(at).unwrap_or(u64::MAX) + 1 + u64::from(len);
            if end > total {
                return false;
            }
            at = usize::try_from(end).unwrap_or(usize::MAX);
        }
        true
    }

    fn known(&self, t: u8) -> bool {
        if self.frontend {
            FRONTEND_TYPES.contains(&t)
        } else {
            BACKEND_TYPES.contains(&t)
        }
    }

    fn keep(&self, typ: u8) -> bool {
        // Rows and row descriptions are skipped, never kept.
        self.frontend || !matches!(typ, b'D' | b'T')
    }

    /// The next complete message in `input`, `None` when more bytes are needed.
    pub fn next(&mut self, input: &mut Input<'_>) -> Option<Result<Frame, FrameError>> {
        loop {
            match self.state {
                FState::Resync => {
                    if input.pos == 0 && self.plausible(input.data, input.total()) {
                        if self.frontend {
                            self.untyped_next = startup_code(input.data).is_some();
                        }
                        self.state = FState::Header;
                        self.hdr_len = 0;
                        continue;
                    }
                    input.skip_rest();
                    return None;
                }
                FState::Header => {
                    let need = if self.untyped_next { 4 } else { 5 };
                    if !input.fill(&mut self.hdr, &mut self.hdr_len, need) {
                        if input.unknown > 0 {
                            input.skip_rest();
                            self.resync();
                            return Some(Err(FrameError::LostSync));
                        }
                        return None;
                    }
                    let len = be32(&self.hdr, need - 4).unwrap_or(0);
                    self.typ = if self.untyped_next { 0 } else { self.hdr[0] };
                    let known = self.typ == 0
                        || if self.frontend {
                            FRONTEND_TYPES.contains(&self.typ)
                        } else {
                            BACKEND_TYPES.contains(&self.typ)
                        };
                    if !(4..MAX_LEN).contains(&len) || !known {
                        input.skip_rest();
                        self.resync();
                        return Some(Err(FrameError::Invalid));
                    }
                    self.remaining = u64::from(len - 4);
                    self.body = Vec::new();
                    self.cut = false;
                    self.state = FState::Body;
                }
                FState::Body => {
                    let rest = input.rest();
                    let n = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    let taken = rest.get(..n).unwrap_or_default();
                    if self.keep(self.typ) {
                        let room = MAX_KEEP.saturating_sub(self.body.len());
                        self.body
                            .extend_from_slice(taken.get(..room.min(n)).unwrap_or_default());
                        if n > room {
                            self.cut = true;
                        }
                    }
                    if input.take_body(n, &mut self.remaining) {
                        self.cut = true;
                    }
                    if self.remaining > 0 {
                        return None;
                    }
                    self.state = FState::Header;
                    self.hdr_len = 0;
                    let frame = Frame {
                        typ: self.typ,
                        body: std::mem::take(&mut self.body),
                        cut: self.cut,
                    };
                    if frame.typ == 0 {
                        // After an SSL/GSS request the startup packet follows.
                        let code = be32(&frame.body, 0).unwrap_or(0);
                        self.untyped_next = matches!(code, SSL_REQUEST | GSSENC_REQUEST);
                    }
                    return Some(Ok(frame));
                }
            }
        }
    }
}
