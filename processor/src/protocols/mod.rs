//! Application protocols: incremental parsers of one direction of one connection's
//! byte stream, and the sessions that pair what they find into transactions.
//!
//! Each protocol has a detector (a `looks_like_*` on the first bytes of a payload)
//! and a session type implementing [`crate::stitch::Session`]; [`REGISTRY`] lists
//! them in the order the stitcher tries them. Adding a protocol is one file here
//! (parser, detector, session) and one line in [`REGISTRY`].

pub mod db;
#[cfg(test)]
mod db_tests;
pub mod hpack;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;

use crate::stitch::{
    Http1Protocol, Http2Protocol, MySqlProtocol, PostgresProtocol, Protocol, RedisProtocol,
};

/// Every protocol the stitcher detects, in the order it tries them on a payload of
/// a connection whose protocol is not decided yet (see `stitch`).
pub static REGISTRY: &[&dyn Protocol] = &[
    &Http2Protocol,
    &Http1Protocol,
    &PostgresProtocol,
    &MySqlProtocol,
    &RedisProtocol,
];

/// The event that carried a message's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    pub mono_ns: u64,
    pub task: Task,
}

/// Who moved an event's bytes: the thread, and in a Go process the goroutine they
/// moved for and its creator (ids from the loader, 0 when not known) — what the
/// linker links a client call to its server request by (`stitch/link.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Task {
    pub tid: u32,
    pub goroutine: u64,
    pub goroutine_parent: u64,
}

impl Task {
    /// A thread, no goroutine.
    pub fn thread(tid: u32) -> Task {
        Task {
            tid,
            ..Task::default()
        }
    }
}

/// One `Data` event: its captured bytes, then `unknown` bytes moved by the syscall
/// but not captured.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub data: &'a [u8],
    pub unknown: u64,
    pub origin: Origin,
}

impl<'a> Segment<'a> {
    pub fn new(data: &'a [u8], total_len: u64, origin: Origin) -> Self {
        let captured = u64::try_from(data.len()).unwrap_or(u64::MAX);
        Segment {
            data,
            unknown: total_len.saturating_sub(captured),
            origin,
        }
    }

    /// Bytes the segment stands for: captured and uncaptured.
    pub fn total(&self) -> u64 {
        u64::try_from(self.data.len())
            .unwrap_or(u64::MAX)
            .saturating_add(self.unknown)
    }
}

/// Cuts `s` to at most `max` bytes, at a char boundary.
pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    let end = prefix_utf8(s, max).len();
    s.truncate(end);
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary (what [`truncate_utf8`] keeps).
pub(crate) fn prefix_utf8(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
