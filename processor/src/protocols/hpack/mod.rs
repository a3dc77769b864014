//! HPACK (RFC 7541) header block decoding for HTTP/2, with the dynamic table.
//!
//! Built to degrade, not to fail: tandem may see a connection from the middle (its
//! dynamic table already filled), or miss a header block (an uncaptured write), so
//! the decoder's table can be out of step with the encoder's. A field that refers to
//! an index the table does not have is skipped and counted
//! ([`Decoded::unknown_indices`]); the representations around it are still decoded,
//! because each one's length is known from its own bytes. A literal with incremental
//! indexing whose name is unknown is still inserted (with an empty name), so later
//! indices stay aligned. Only bytes that do not parse at all (a truncated integer or
//! string, invalid Huffman code) stop the block: what was decoded before is kept.
//!
//! # Bounds
//!
//! The dynamic table holds at most [`MAX_TABLE_SIZE`] bytes (RFC 7541 section 4.1
//! sizes), whatever size the encoder announces (larger size updates are clamped and
//! counted, [`Decoded::clamped_sizes`]); integers over 2^32 are errors. In heap, that
//! is at most 2,048 entries (32 bytes of each entry's size are overhead) and three
//! times [`MAX_TABLE_SIZE`] of text (invalid UTF-8 is kept as U+FFFD): under 320 KiB
//! per direction. A block returns at most [`MAX_FIELDS`] fields of at most
//! [`MAX_FIELD_LEN`] bytes each; a string's announced length is checked against the
//! block before anything is allocated for it.

mod huffman;

use std::collections::VecDeque;

/// SETTINGS_HEADER_TABLE_SIZE's initial value (RFC 7540 section 6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Largest dynamic table kept, whatever the encoder announces.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;

/// The static table (RFC 7541 Appendix A), index 1..=61.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Why a header block stopped decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a representation")]
    Truncated,
    #[error("integer over 2^32 in a header block")]
    IntegerOverflow,
    #[error("invalid Huffman-coded string in a header block")]
    Huffman,
    #[error("index 0 in a header block")]
    ZeroIndex,
}

/// What one block gave besides its headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Fields skipped because their index is not in the (possibly out of step)
    /// dynamic table.
    pub unknown_indices: u32,
    /// Table size updates over [`MAX_TABLE_SIZE`] (clamped).
    pub clamped_sizes: u32,
    /// Fields decoded but not returned: over [`MAX_FIELDS`] in one block.
    pub dropped_fields: u32,
}

/// Most fields returned per block; names and values are cut to [`MAX_FIELD_LEN`]
/// bytes. (The table itself keeps them whole, for its sizes.) Without these, a block
/// of one-byte references to a large entry would expand without bound.
pub const MAX_FIELDS: usize = 128;
pub const MAX_FIELD_LEN: usize = crate::model::MAX_HEADER_VALUE;

fn cut(s: &str) -> String {
    if s.len() <= MAX_FIELD_LEN {
        return s.to_string();
    }
    let mut end = MAX_FIELD_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_string()
}

fn emit(
    out: &mut Vec<(String, String)>,
    start: usize,
    info: &mut Decoded,
    name: &str,
    value: &str,
) {
    if out.len() - start >= MAX_FIELDS {
        info.dropped_fields += 1;
    } else {
        out.push((cut(name), cut(value)));
    }
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    value: String,
    /// RFC 7541 section 4.1 size: octets of name and value, plus 32.
    size: usize,
}

/// One direction's decoder (each direction of a connection has its own table).
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Newest first (dynamic index 62 is `table[0]`).
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

/// Reads an HPACK integer with an `prefix`-bit prefix (RFC 7541 section 5.1).
fn integer(input: &[u8], pos: &mut usize, prefix: u8) -> Result<u32, HpackError> {
    let first = *input.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let mask = u8::try_from((1u16 << prefix) - 1).unwrap_or(0xff);
    let mut value = u64::from(first & mask);
    if value < u64::from(mask) {
        return Ok(u32::try_from(value).unwrap_or(u32::MAX));
    }
    let mut shift = 0u32;
    loop {
        let b = *input.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += u64::from(b & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return Err(HpackError::IntegerOverflow);
        }
        if b & 0x80 == 0 {
            return u32::try_from(value).map_err(|_| HpackError::IntegerOverflow);
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
    }
}

/// Reads a string literal (RFC 7541 section 5.2): raw octets.
fn string(input: &[u8], pos: &mut usize) -> Result<Vec<u8>, HpackError> {
    let huffman = input.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = usize::try_from(integer(input, pos, 7)?).map_err(|_| HpackError::IntegerOverflow)?;
    let end = pos.checked_add(len).ok_or(HpackError::Truncated)?;
    let bytes = input.get(*pos..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    if huffman {
        let mut out = Vec::with_capacity(len.saturating_mul(8) / 5 + 1);
        huffman::decode(bytes, &mut out).map_err(|_| HpackError::Huffman)?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

/// `bytes` as text, invalid UTF-8 replaced (U+FFFD: up to three bytes for one), in an
/// allocation no larger than the text: the table keeps these strings, and its heap
/// bound (see "Bounds") counts their lengths.
fn text(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    s.shrink_to_fit();
    s
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
        }
    }

    /// Bytes the dynamic table holds (RFC 7541 sizes).
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// Entries in the dynamic table.
    #[cfg(test)]
    fn entries(&self) -> Vec<(String, String)> {
        self.table
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    /// Forgets the dynamic table (e.g. after a loss): later references to it are
    /// skipped and counted until the encoder's new entries refill it.
    pub fn reset(&mut self) {
        self.table.clear();
        self.size = 0;
    }

    /// Name and value at `index` (1-based; static then dynamic).
    fn get(&self, index: u32) -> Option<(&str, &str)> {
        let i = usize::try_from(index).ok()?;
        if i == 0 {
            return None;
        }
        if let Some((n, v)) = STATIC_TABLE.get(i - 1) {
            return Some((n, v));
        }
        self.table
            .get(i - 1 - STATIC_TABLE.len())
            .map(|e| (e.name.as_str(), e.value.as_str()))
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    fn insert(&mut self, name: String, value: String, raw_size: usize) {
        let size = raw_size.saturating_add(32);
        if size > self.max_size {
            // Section 4.4: an entry larger than the table empties it.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.table.push_front(Entry { name, value, size });
    }

    /// Decodes one complete header block, appending its fields to `out` in order.
    /// On an error, the fields decoded before it stay in `out`.
    pub fn decode(
        &mut self,
        block: &[u8],
        out: &mut Vec<(String, String)>,
    ) -> Result<Decoded, HpackError> {
        let mut pos = 0;
        let start = out.len();
        let mut info = Decoded::default();
        while let Some(&b) = block.get(pos) {
            if b & 0x80 != 0 {
                // Indexed header field (6.1).
                let index = integer(block, &mut pos, 7)?;
                if index == 0 {
                    return Err(HpackError::ZeroIndex);
                }
                match self.get(index) {
                    Some((n, v)) => emit(out, start, &mut info, n, v),
                    None => info.unknown_indices += 1,
                }
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update (6.3).
                let size = usize::try_from(integer(block, &mut pos, 5)?).unwrap_or(usize::MAX);
                if size > MAX_TABLE_SIZE {
                    info.clamped_sizes += 1;
                }
                self.max_size = size.min(MAX_TABLE_SIZE);
                self.evict_to(self.max_size);
            } else {
                // Literal: with incremental indexing (6.2.1, 6-bit prefix), without
                // indexing (6.2.2) or never indexed (6.2.3) (4-bit prefix).
                let indexing = b & 0xc0 == 0x40;
                let prefix = if indexing { 6 } else { 4 };
                let name_index = integer(block, &mut pos, prefix)?;
                let (name, name_len, known) = if name_index == 0 {
                    let raw = string(block, &mut pos)?;
                    (text(&raw), raw.len(), true)
                } else {
                    match self.get(name_index) {
                        Some((n, _)) => (n.to_string(), n.len(), true),
                        None => (String::new(), 0, false),
                    }
                };
                let raw_value = string(block, &mut pos)?;
                let value = text(&raw_value);
                if known {
                    emit(out, start, &mut info, &name, &value);
                } else {
                    info.unknown_indices += 1;
                }
                if indexing {
                    self.insert(name, value, name_len + raw_value.len());
                }
            }
        }
        Ok(info)
    }
}

#[cfg(test)]
mod peer_tests;
#[cfg(test)]
mod tests;
