//! HTTP/2 framing (RFC 9113) of ONE direction of one connection: the frames a
//! client sends, or the frames a server sends. Header blocks are decoded with this
//! direction's HPACK table ([`hpack`]); everything else is reported by length.
//!
//! # Feeding
//!
//! [`FrameReader::feed`] takes each `Data` event's captured bytes and its real length.
//! Frames may be split across events and several may share one; the reader keeps the
//! partial frame header, and the payload of the frames it needs (HEADERS,
//! CONTINUATION, PUSH_PROMISE, RST_STREAM), nothing else. Bytes that were moved but
//! not captured (`total_len > payload.len()`, the loader keeps only the first bytes of
//! each read/write) are skipped by length when they fall inside a frame whose payload
//! is not needed (a DATA frame larger than the capture); when they hide a frame
//! header or part of a header block, the reader reports [`H2Event::LostSync`] and
//! resynchronises, emptying its HPACK table ([`FrameReader::resync`] says why).
//!
//! # Resynchronisation and detection
//!
//! Out of sync (and for a connection first seen mid-stream), the reader waits for a
//! `Data` event whose bytes [`looks_like_frames`]: they start with a plausible frame
//! header and the chain of frame headers that follows lines up with the event's end.
//! Reads and writes nearly always start at a frame boundary, so this recovers at the
//! next event in practice.
//!
//! # Bounds
//!
//! One frame header (9 bytes), at most `max_block` bytes of an incomplete header
//! block (default [`MAX_HEADER_BLOCK`]; a larger block is skipped by length and
//! reported as [`H2Event::Oversized`]), the HPACK table (at most
//! [`hpack::MAX_TABLE_SIZE`]) and at most [`hpack::MAX_FIELDS`] fields per block.

use super::hpack::{self, Decoded, HpackError};

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Default bound of an incomplete header block (HEADERS + CONTINUATION payloads).
pub const MAX_HEADER_BLOCK: usize = 16 * 1024;

const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// What one direction's frames say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2Event {
    /// A complete header block (HEADERS and its CONTINUATIONs), decoded. `error`:
    /// the block stopped decoding there (the fields before it are in `headers`).
    Headers {
        stream: u32,
        headers: Vec<(String, String)>,
        end_stream: bool,
        hpack: Decoded,
        error: Option<HpackError>,
    },
    /// A DATA frame's payload length (padding included).
    Data {
        stream: u32,
        len: u64,
        end_stream: bool,
    },
    Reset {
        stream: u32,
        code: u32,
    },
    /// Uncaptured bytes hid a frame header or part of a header block (of `stream`,
    /// when one was in progress); the reader waits for a frame start.
    LostSync {
        stream: Option<u32>,
    },
    /// Bytes that are not HTTP/2 framing (a frame header out of place or
    /// implausible); the reader waits for a frame start.
    Invalid,
    /// A header block over `max_block` bytes, skipped by length (its HPACK table
    /// inserts are lost).
    Oversized {
        stream: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHead {
    len: u32,
    ty: u8,
    flags: u8,
    stream: u32,
}

fn parse_head(b: &[u8; FRAME_HEADER_LEN]) -> FrameHead {
    FrameHead {
        len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
        ty: b[3],
        flags: b[4],
        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
    }
}

/// A frame header that HTTP/2 peers send: known type, its stream rules and fixed
/// lengths, no undefined flags, the reserved bit clear. `strict` also rejects
/// unknown frame types (which peers may send, and receivers ignore).
fn plausible(h: FrameHead, strict: bool) -> bool {
    if h.stream & 0x8000_0000 != 0 {
        return false;
    }
    let on_stream = h.stream != 0;
    match h.ty {
        DATA => on_stream && h.flags & !(END_STREAM | PADDED) == 0,
        HEADERS => on_stream && h.flags & !(END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG) == 0,
        PRIORITY => on_stream && h.len == 5 && h.flags == 0,
        RST_STREAM => on_stream && h.len == 4 && h.flags == 0,
        SETTINGS => {
            !on_stream && h.len.is_multiple_of(6) && (h.flags == 0 || (h.flags == 1 && h.len == 0))
        }
        PUSH_PROMISE => on_stream && h.flags & !(END_HEADERS | PADDED) == 0,
        PING => !on_stream && h.len == 8 && h.flags & !1 == 0,
        GOAWAY => !on_stream && h.len >= 8 && h.flags == 0,
        WINDOW_UPDATE => h.len == 4 && h.flags == 0,
        CONTINUATION => on_stream && h.flags & !END_HEADERS == 0,
        _ => !strict,
    }
}

/// Whether `bytes` (one event's captured bytes, `total` its real length) start like
/// HTTP/2: the client preface (or a prefix of it at least 4 bytes long), or a chain
/// of plausible frame headers from offset 0 that ends exactly at `total` (or runs
/// past what was captured).
pub fn looks_like_frames(bytes: &[u8], total: u64) -> bool {
    if starts_with_preface(bytes) {
        return true;
    }
    let captured = bytes.len();
    let mut pos = 0usize;
    let mut frames = 0;
    loop {
        let Some(head) = bytes.get(pos..pos + FRAME_HEADER_LEN) else {
            // A header cut by the capture is fine; a complete payload must end on a
            // frame boundary.
            let whole = u64::try_from(captured).is_ok_and(|c| c == total);
            return frames > 0 && (pos == captured || (!whole && pos < captured));
        };
        let mut b = [0u8; FRAME_HEADER_LEN];
        b.copy_from_slice(head);
        let h = parse_head(&b);
        if !plausible(h, true) {
            return false;
        }
        frames += 1;
        pos = pos
            .saturating_add(FRAME_HEADER_LEN)
            .saturating_add(usize::try_from(h.len).unwrap_or(usize::MAX));
        if pos >= captured {
            let end = u64::try_from(pos).unwrap_or(u64::MAX);
            return pos == captured || end <= total;
        }
    }
}

/// Whether `bytes` start with the client preface, or are a prefix of it at least 4
/// bytes long (a short capture).
pub fn starts_with_preface(bytes: &[u8]) -> bool {
    if bytes.len() >= PREFACE.len() {
        bytes.starts_with(PREFACE)
    } else {
        bytes.len() >= 4 && PREFACE.starts_with(bytes)
    }
}

/// The frame being read.
#[derive(Debug, Clone, Copy)]
struct Current {
    head: FrameHead,
    remaining: u32,
    /// Its payload is kept (in `payload`).
    buffered: bool,
}

/// The header block in progress (HEADERS or PUSH_PROMISE awaiting CONTINUATION).
#[derive(Debug, Clone, Copy)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// A PUSH_PROMISE's block: decoded for the HPACK table, not reported.
    promise: bool,
    /// Over the bound: skipped.
    oversized: bool,
}

/// One direction's frame reader; see the module documentation.
#[derive(Debug)]
pub struct FrameReader {
    max_block: usize,
    hpack: hpack::Decoder,
    synced: bool,
    /// No byte fed yet: a connection's first bytes may be the client preface.
    fresh: bool,
    /// Bytes of the client preface still expected (the client's direction only).
    preface_left: usize,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    current: Option<Current>,
    payload: Vec<u8>,
    block: Option<Block>,
    block_bytes: Vec<u8>,
}

impl FrameReader {
    /// A reader at the start of a connection (`synced`), or waiting for a frame start.
    pub fn new(max_block: usize, synced: bool) -> Self {
        FrameReader {
            max_block,
            hpack: hpack::Decoder::new(),
            synced,
            fresh: true,
            preface_left: 0,
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            current: None,
            payload: Vec::new(),
            block: None,
            block_bytes: Vec::new(),
        }
    }

    /// Bytes buffered now (partial frame payload and header block).
    pub fn buffered(&self) -> usize {
        self.payload.capacity() + self.block_bytes.capacity() + self.head_len
    }

    /// Bytes the HPACK table holds.
    pub fn table_size(&self) -> usize {
        self.hpack.table_size()
    }

    /// Drops partial state and waits for a frame start (after a loss of events). The
    /// HPACK table is emptied: header blocks may have been missed, and a table missing
    /// the encoder's newest entries would resolve indices to the wrong fields. An
    /// emptied table holds the newest entries again as they are inserted, so indices
    /// into it stay right, and older ones are skipped and counted.
    pub fn resync(&mut self) {
        self.synced = false;
        self.clear();
        self.hpack.reset();
    }

    fn clear(&mut self) {
        self.preface_left = 0;
        self.head_len = 0;
        self.current = None;
        self.payload = Vec::new();
        self.block = None;
        self.block_bytes = Vec::new();
    }

    fn lose(&mut self, out: &mut Vec<H2Event>) {
        let stream = self.block.map(|b| b.stream).or_else(|| {
            self.current
                .filter(|c| matches!(c.head.ty, HEADERS | CONTINUATION))
                .map(|c| c.head.stream)
        });
        out.push(H2Event::LostSync { stream });
        self.resync();
    }

    /// Feeds one event's captured `bytes`, `total` bytes long in reality; appends
    /// events to `out`. Returns the bytes skipped while out of sync.
    pub fn feed(&mut self, bytes: &[u8], total: u64, out: &mut Vec<H2Event>) -> u64 {
        let captured = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let total = total.max(captured);
        if !self.synced {
            if !looks_like_frames(bytes, total) {
                return total;
            }
            self.synced = true;
            self.clear();
            if starts_with_preface(bytes) {
                self.preface_left = PREFACE.len();
            }
        } else if self.fresh && bytes.first() == Some(&PREFACE[0]) {
            // A frame header starting with 'P' would announce over 5 MiB: this is
            // the preface (possibly split across reads).
            self.preface_left = PREFACE.len();
        }
        if !bytes.is_empty() {
            self.fresh = false;
        }
        let mut pos = 0usize;
        while pos < bytes.len() && self.synced {
            let rest = bytes.get(pos..).unwrap_or_default();
            if self.preface_left > 0 {
                let n = rest.len().min(self.preface_left);
                let from = PREFACE.len() - self.preface_left;
                if rest.get(..n) != PREFACE.get(from..from + n) {
                    out.push(H2Event::Invalid);
                    self.resync();
                    break;
                }
                pos += n;
                self.preface_left -= n;
                continue;
            }
            match self.current {
                None => {
                    let n = rest.len().min(FRAME_HEADER_LEN - self.head_len);
                    if let (Some(dst), Some(src)) = (
                        self.head.get_mut(self.head_len..self.head_len + n),
                        rest.get(..n),
                    ) {
                        dst.copy_from_slice(src);
                    }
                    self.head_len += n;
                    pos += n;
                    if self.head_len == FRAME_HEADER_LEN {
                        self.head_len = 0;
                        self.start_frame(out);
                    }
                }
                Some(mut cur) => {
                    let n = rest
                        .len()
                        .min(usize::try_from(cur.remaining).unwrap_or(usize::MAX));
                    if cur.buffered {
                        self.payload
                            .extend_from_slice(rest.get(..n).unwrap_or_default());
                    }
                    pos += n;
                    cur.remaining -= u32::try_from(n).unwrap_or(cur.remaining);
                    self.current = Some(cur);
                    if cur.remaining == 0 {
                        self.end_frame(out);
                    }
                }
            }
        }
        // The bytes moved but not captured.
        let mut unknown = total - captured;
        if unknown > 0 && self.synced {
            if self.preface_left > 0 || self.head_len > 0 {
                self.lose(out);
                return 0;
            }
            match self.current {
                Some(mut cur) if !cur.buffered => {
                    let n = unknown.min(u64::from(cur.remaining));
                    cur.remaining -= u32::try_from(n).unwrap_or(cur.remaining);
                    unknown -= n;
                    self.current = Some(cur);
                    if cur.remaining == 0 {
                        self.end_frame(out);
                    }
                    if unknown > 0 {
                        self.lose(out);
                    }
                }
                _ => self.lose(out),
            }
        }
        0
    }

    /// A frame header was read.
    fn start_frame(&mut self, out: &mut Vec<H2Event>) {
        let head = parse_head(&self.head);
        if !plausible(head, false) {
            out.push(H2Event::Invalid);
            self.resync();
            return;
        }
        if let Some(block) = self.block {
            if head.ty != CONTINUATION || head.stream != block.stream {
                out.push(H2Event::Invalid);
                self.resync();
                return;
            }
        } else if head.ty == CONTINUATION {
            // A continuation of a block we did not see (joined mid-block): skipped.
            self.current = Some(Current {
                head,
                remaining: head.len,
                buffered: false,
            });
            if head.len == 0 {
                self.current = None;
            }
            return;
        }
        let oversized_block = self.block.is_some_and(|b| b.oversized);
        let header_block = matches!(head.ty, HEADERS | CONTINUATION | PUSH_PROMISE);
        let mut buffered = matches!(head.ty, RST_STREAM) || (header_block && !oversized_block);
        if header_block && buffered {
            let len = usize::try_from(head.len).unwrap_or(usize::MAX);
            if self.block_bytes.len().saturating_add(len) > self.max_block {
                buffered = false;
                let stream = head.stream;
                match self.block.as_mut() {
                    Some(b) => b.oversized = true,
                    None => {
                        self.block = Some(Block {
                            stream,
                            end_stream: head.flags & END_STREAM != 0,
                            promise: head.ty == PUSH_PROMISE,
                            oversized: true,
                        })
                    }
                }
                self.block_bytes = Vec::new();
                out.push(H2Event::Oversized { stream });
            }
        }
        self.payload.clear();
        self.current = Some(Current {
            head,
            remaining: head.len,
            buffered,
        });
        if head.len == 0 {
            self.end_frame(out);
        }
    }

    /// The current frame's payload ended.
    fn end_frame(&mut self, out: &mut Vec<H2Event>) {
        let Some(cur) = self.current.take() else {
            return;
        };
        let head = cur.head;
        let payload = std::mem::take(&mut self.payload);
        match head.ty {
            DATA => out.push(H2Event::Data {
                stream: head.stream,
                len: u64::from(head.len),
                end_stream: head.flags & END_STREAM != 0,
            }),
            HEADERS | PUSH_PROMISE => {
                let oversized = self.block.is_some_and(|b| b.oversized);
                if !oversized {
                    let Some(fragment) = fragment(head, &payload) else {
                        out.push(H2Event::Invalid);
                        self.resync();
                        return;
                    };
                    self.block_bytes.clear();
                    self.block_bytes.extend_from_slice(fragment);
                    self.block = Some(Block {
                        stream: head.stream,
                        end_stream: head.flags & END_STREAM != 0,
                        promise: head.ty == PUSH_PROMISE,
                        oversized: false,
                    });
                }
                if head.flags & END_HEADERS != 0 {
                    self.end_block(out);
                }
            }
            CONTINUATION if self.block.is_some() => {
                if cur.buffered {
                    self.block_bytes.extend_from_slice(&payload);
                }
                if head.flags & END_HEADERS != 0 {
                    self.end_block(out);
                }
            }
            RST_STREAM => {
                let code = payload
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, u32::from_be_bytes);
                out.push(H2Event::Reset {
                    stream: head.stream,
                    code,
                });
            }
            _ => {}
        }
        // Keep the allocation for the next frame only when it is small.
        if payload.capacity() <= 1024 {
            self.payload = payload;
            self.payload.clear();
        }
    }

    fn end_block(&mut self, out: &mut Vec<H2Event>) {
        let Some(block) = self.block.take() else {
            return;
        };
        let bytes = std::mem::take(&mut self.block_bytes);
        if block.oversized {
            // Its table inserts are lost (see `resync`).
            self.hpack.reset();
            return;
        }
        let mut headers = Vec::new();
        let (hpack, error) = match self.hpack.decode(&bytes, &mut headers) {
            Ok(info) => (info, None),
            Err(e) => {
                self.hpack.reset();
                (Decoded::default(), Some(e))
            }
        };
        if block.promise {
            return;
        }
        out.push(H2Event::Headers {
            stream: block.stream,
            headers,
            end_stream: block.end_stream,
            hpack,
            error,
        });
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload: without padding,
/// priority fields or the promised stream id.
fn fragment(head: FrameHead, payload: &[u8]) -> Option<&[u8]> {
    let mut start = 0usize;
    let mut end = payload.len();
    if head.flags & PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if head.ty == HEADERS && head.flags & PRIORITY_FLAG != 0 {
        start += 5;
    }
    if head.ty == PUSH_PROMISE {
        start += 4;
    }
    payload.get(start..end)
}

#[cfg(test)]
mod tests;

/// Builders of frames and header blocks, for tests.
#[cfg(test)]
pub(crate) mod testutil {
    pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("frame length");
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(ty);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn int(out: &mut Vec<u8>, first: u8, prefix: u8, mut v: usize) {
        let max = (1usize << prefix) - 1;
        if v < max {
            out.push(first | u8::try_from(v).expect("small"));
            return;
        }
        out.push(first | u8::try_from(max).expect("mask"));
        v -= max;
        while v >= 128 {
            out.push(u8::try_from(v % 128).expect("byte") | 0x80);
            v /= 128;
        }
        out.push(u8::try_from(v).expect("byte"));
    }

    /// Literal header fields with incremental indexing and a new name (so the
    /// dynamic table fills as real encoders make it).
    pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in fields {
            b.push(0x40);
            int(&mut b, 0, 7, n.len());
            b.extend_from_slice(n.as_bytes());
            int(&mut b, 0, 7, v.len());
            b.extend_from_slice(v.as_bytes());
        }
        b
    }

    pub fn headers(stream: u32, end_stream: bool, fields: &[(&str, &str)]) -> Vec<u8> {
        let flags = 0x4 | u8::from(end_stream);
        frame(0x1, flags, stream, &block(fields))
    }

    pub fn data(stream: u32, end_stream: bool, payload: &[u8]) -> Vec<u8> {
        frame(0x0, u8::from(end_stream), stream, payload)
    }

    pub fn settings() -> Vec<u8> {
        frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])
    }
}
