//! MySQL packets of one direction: the little-endian field readers, the detection
//! of a greeting or a `COM_QUERY`, and the incremental packet reader ([`Framer`]).

use super::COM_QUERY;
use crate::protocols::db::{Input, MAX_KEEP};

pub(super) fn le24(b: &[u8], at: usize) -> Option<u32> {
    let x = b.get(at..at + 3)?;
    Some(u32::from(x[0]) | u32::from(x[1]) << 8 | u32::from(x[2]) << 16)
}

pub(super) fn le16(b: &[u8], at: usize) -> Option<u16> {
    let x = b.get(at..at + 2)?;
    Some(u16::from(x[0]) | u16::from(x[1]) << 8)
}

pub(super) fn le32(b: &[u8], at: usize) -> Option<u32> {
    let x: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(x))
}

/// Whether a server-to-client payload is a MySQL initial handshake: sequence 0,
/// protocol version 10, a printable NUL-terminated server version, the whole
/// packet in this write.
pub fn looks_like_greeting(payload: &[u8], total_len: u64) -> bool {
    let Some(len) = le24(payload, 0) else {
        return false;
    };
    if payload.get(3) != Some(&0) || payload.get(4) != Some(&10) {
        return false;
    }
    if u64::from(len) + 4 != total_len || len < 20 {
        return false;
    }
    let version = payload.get(5..).unwrap_or_default();
    match version.iter().position(|&b| b == 0) {
        Some(n) => n > 0 && version[..n].iter().all(|b| b.is_ascii_graphic()),
        None => false,
    }
}

/// Whether a client-to-server payload is a `COM_QUERY` (a connection seen mid-way).
pub fn looks_like_query(payload: &[u8], total_len: u64) -> bool {
    let Some(len) = le24(payload, 0) else {
        return false;
    };
    payload.get(3) == Some(&0)
        && payload.get(4) == Some(&COM_QUERY)
        && u64::from(len) + 4 == total_len
        && len > 1
        && payload
            .get(5)
            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'(' || *b == b'/')
}

/// One packet: sequence id and the payload's kept prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Packet {
    pub(super) seq: u8,
    pub(super) len: u32,
    pub(super) body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FState {
    Resync,
    Header,
    Body,
}

/// Incremental packet reader of one direction.
#[derive(Debug)]
pub(super) struct Framer {
    state: FState,
    hdr: [u8; 4],
    hdr_len: usize,
    len: u32,
    seq: u8,
    body: Vec<u8>,
    remaining: u64,
}

pub(super) enum Read {
    Packet(Packet),
    LostSync,
}

impl Framer {
    pub(super) fn new(fresh: bool) -> Self {
        Framer {
            state: if fresh {
                FState::Header
            } else {
                FState::Resync
            },
            hdr: [0; 4],
            hdr_len: 0,
            len: 0,
            seq: 0,
            body: Vec::new(),
            remaining: 0,
        }
    }

    pub(super) fn resync(&mut self) {
        self.state = FState::Resync;
        self.hdr_len = 0;
        self.body = Vec::new();
    }

    pub(super) fn buffered(&self) -> usize {
        self.body.capacity()
    }

    /// Packets chained from the payload's start fit the write.
    fn plausible(data: &[u8], total: u64) -> bool {
        let mut at = 0usize;
        for _ in 0..4 {
            let rest = data.get(at..).unwrap_or_default();
            if rest.is_empty() {
                return at > 0;
            }
            let Some(len) = le24(rest, 0) else {
                return at > 0;
            };
            if len == 0 || rest.len() < 4 {
                return at > 0 && len != 0;
            }
            let end = u64::try_from(at).unwrap_or(u64::MAX) + 4 + u64::from(len);
            if end > total {
                return false;
            }
            at = usize::try_from(end).unwrap_or(usize::MAX);
        }
        true
    }

    pub(super) fn next(&mut self, input: &mut Input<'_>) -> Option<Read> {
        loop {
            match self.state {
                FState::Resync => {
                    if input.pos == 0 && Self::plausible(input.data, input.total()) {
                        self.state = FState::Header;
                        self.hdr_len = 0;
                        continue;
                    }
                    input.skip_rest();
                    return None;
                }
                FState::Header => {
                    if !input.fill(&mut self.hdr, &mut self.hdr_len, 4) {
                        if input.unknown > 0 {
                            input.skip_rest();
                            self.resync();
                            return Some(Read::LostSync);
                        }
                        return None;
                    }
                    self.len = le24(&self.hdr, 0).unwrap_or(0);
                    self.seq = self.hdr[3];
                    self.remaining = u64::from(self.len);
                    self.body = Vec::new();
                    self.state = FState::Body;
                }
                FState::Body => {
                    let rest = input.rest();
                    let n = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    let room = MAX_KEEP.saturating_sub(self.body.len());
                    self.body
                        .extend_from_slice(rest.get(..room.min(n)).unwrap_or_default());
                    input.take_body(n, &mut self.remaining);
                    if self.remaining > 0 {
                        return None;
                    }
                    self.state = FState::Header;
                    self.hdr_len = 0;
                    return Some(Read::Packet(Packet {
                        seq: self.seq,
                        len: self.len,
                        body: std::mem::take(&mut self.body),
                    }));
                }
            }
        }
    }
}
