//! Application protocols: incremental parsers of one direction of one connection's
//! byte stream. They know nothing of connections, roles or pairing; `stitch` drives
//! them and pairs what they find into transactions.

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

/// Cuts `s` to at most `max` bytes, at a char boundary.
pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}
