//! The one connection table of the stitcher: every connection of every protocol,
//! keyed by `(pid, conn_id)`, bounded, least recently active evicted first.
//!
//! Recency is kept lazily: each touch stamps the connection and appends
//! `(key, stamp)` to a queue; eviction pops the queue, skipping entries whose
//! stamp is no longer the connection's. The queue is compacted when it grows past
//! a few times the table, so memory stays proportional to the connections tracked.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use super::session::{ConnMeta, Session};

/// `(pid, conn_id)`.
pub type ConnKey = (u32, u64);

/// One tracked connection.
#[derive(Debug)]
pub struct Conn {
    pub meta: ConnMeta,
    /// The protocol session, once detected (or the HTTP/1 fallback).
    pub session: Option<Box<dyn Session>>,
    /// No data event seen yet.
    pub fresh: bool,
    /// Request-direction payloads looked at without a decision.
    pub attempts: u32,
    /// Nothing more can be read (e.g. it switched to TLS): bytes are skipped.
    pub opaque: bool,
    /// The position of the first event since the connection was last idle (no
    /// bytes buffered, no request in flight): a replacement processor must be sent
    /// the events from there on (see `crate::resume`).
    pub pending_from: Option<u64>,
    stamp: u64,
}

/// A fast hasher for the `(u32, u64)` keys (not DoS-resistant; the keys come from
/// the loader, pids and socket cookies, not from the network).
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        self.write_u64(u64::from_le_bytes(w) ^ (rest.len() as u64) << 59);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// [`KeyHasher`] started from a random state, for keys part of which come from the
/// network (a peer's address and port): their collisions cannot be chosen in advance.
#[derive(Debug, Clone, Copy)]
pub struct SeededKeys(u64);

impl Default for SeededKeys {
    fn default() -> Self {
        use std::hash::BuildHasher;
        SeededKeys(std::collections::hash_map::RandomState::new().hash_one(0u8) | 1)
    }
}

impl std::hash::BuildHasher for SeededKeys {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0)
    }
}

/// A map whose keys hold network-chosen parts (see [`SeededKeys`]).
pub type SeededMap<K, V> = HashMap<K, V, SeededKeys>;

/// The table.
#[derive(Debug)]
pub struct ConnTable {
    conns: FastMap<ConnKey, Conn>,
    recency: VecDeque<(ConnKey, u64)>,
    clock: u64,
    max: usize,
}

impl ConnTable {
    pub fn new(max: usize) -> Self {
        ConnTable {
            conns: FastMap::default(),
            recency: VecDeque::new(),
            clock: 0,
            max: max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// The connection `key`, touched (now the most recently active), or a new one
    /// with `meta` made for it. Returns it and how many connections were evicted
    /// to make room (their sessions are returned in `evicted` for closing).
    pub fn get_or_insert(&mut self, key: ConnKey, evicted: &mut Vec<Conn>) -> Option<&mut Conn> {
        self.clock += 1;
        let stamp = self.clock;
        if !self.conns.contains_key(&key) {
            while self.conns.len() >= self.max {
                match self.pop_oldest() {
                    Some(old) => evicted.push(old),
                    None => break,
                }
            }
            self.conns.insert(
                key,
                Conn {
                    meta: ConnMeta {
                        pid: key.0,
                        conn_id: key.1,
                        ..ConnMeta::default()
                    },
                    session: None,
                    fresh: true,
                    attempts: 0,
                    opaque: false,
                    pending_from: None,
                    stamp,
                },
            );
        }
        self.recency.push_back((key, stamp));
        self.compact();
        let conn = self.conns.get_mut(&key)?;
        conn.stamp = stamp;
        Some(conn)
    }

    /// Stops tracking `key`; returns the connection if it was tracked.
    pub fn remove(&mut self, key: ConnKey) -> Option<Conn> {
        self.conns.remove(&key)
    }

    /// The keys of process `pid`'s connections.
    pub fn keys_of_pid(&self, pid: u32) -> Vec<ConnKey> {
        let mut keys: Vec<ConnKey> = self.conns.keys().filter(|k| k.0 == pid).copied().collect();
        keys.sort_unstable();
        keys
    }

    /// Every connection, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Conn> {
        self.conns.values_mut()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values()
    }

    /// Every tracked connection has its current stamp in the recency queue (so it
    /// can be evicted), and the queue is within its bound.
    #[cfg(test)]
    pub fn consistent(&self) -> bool {
        let queued: std::collections::HashSet<(ConnKey, u64)> =
            self.recency.iter().copied().collect();
        self.conns
            .iter()
            .all(|(k, c)| queued.contains(&(*k, c.stamp)))
            && self.recency.len() <= 4 * self.conns.len() + 1024 + 1
    }

    fn pop_oldest(&mut self) -> Option<Conn> {
        while let Some((key, stamp)) = self.recency.pop_front() {
            if self.conns.get(&key).is_some_and(|c| c.stamp == stamp) {
                return self.conns.remove(&key);
            }
        }
        None
    }

    /// Rebuilds the recency queue from the table when stale entries dominate it.
    fn compact(&mut self) {
        if self.recency.len() <= 4 * self.conns.len() + 1024 {
            return;
        }
        let mut live: Vec<(ConnKey, u64)> = self.conns.iter().map(|(k, c)| (*k, c.stamp)).collect();
        live.sort_unstable_by_key(|(_, stamp)| *stamp);
        self.recency = live.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_active_and_stays_bounded() {
        let mut t = ConnTable::new(2);
        let mut evicted = vec![];
        t.get_or_insert((1, 1), &mut evicted);
        t.get_or_insert((1, 2), &mut evicted);
        t.get_or_insert((1, 1), &mut evicted);
        t.get_or_insert((1, 3), &mut evicted);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].meta.conn_id, 2);
        assert_eq!(t.len(), 2);
        for i in 0..10_000u64 {
            t.get_or_insert((1, 1), &mut evicted);
            t.get_or_insert((2, i), &mut evicted);
        }
        assert_eq!(t.len(), 2);
        assert!(t.recency.len() <= 4 * 2 + 1024 + 1, "{}", t.recency.len());
        assert!(t.conns.contains_key(&(1, 1)), "the busy one stays");
        assert_eq!(t.keys_of_pid(1), vec![(1, 1)]);
    }
}
