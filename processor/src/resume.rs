//! Resuming exactly where a killed processor stopped.
//!
//! The loader keeps a named subscription's batches until the processor
//! acknowledges them and sends what was not acknowledged to the next processor
//! with that name. Acknowledging a batch as soon as it was read would lose, at a
//! `kill -9`, everything the processor held in memory: requests whose answer had
//! not arrived yet, and spans waiting in the export queue. So the processor
//! acknowledges only up to its *watermark*: the position before the oldest event
//! something unfinished depends on —
//! - a connection with bytes buffered or a request in flight (from the first
//!   event since it was last idle, see `stitch`);
//! - a span handed to the OTLP exporter and not yet answered by the collector.
//!
//! A replacement therefore receives again every event from the watermark on and
//! rebuilds those transactions. So that it does not export twice what its
//! predecessor had already delivered, each acknowledgement also leaves a resume
//! state with the loader (opaque to it, handed back on the first batch of the next
//! connection): the watermark, which transactions after it are finished
//! (identified by where they began: [`Begin`]), and the key the span ids are
//! derived from, so that a rebuilt span gets the ids its already-exported children
//! point to (`stitch/link.rs` seeds its ids from the key and the position).
//!
//! The watermark lags the newest position by at most `lag_max` events (a quarter
//! of the loader's queue): the loader holds unacknowledged events against its
//! bound. What falls behind that (a connection stuck mid-message, an export
//! retried for long) is not protected; its count goes into the state and the
//! replacement reports it (`lost resume_bound` in the summary). Spans the
//! collector accepted in the last acknowledgement interval before a kill are
//! exported again, with the same ids.

use std::collections::BTreeSet;
use std::sync::Mutex;

use bytes::Bytes;

/// Where a transaction began: the subscription position of the event that began
/// its request, and its rank among the requests that event began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Begin {
    pub seq: u64,
    pub nth: u32,
}

/// Most finished transactions after the watermark a resume state lists; older
/// ones are left out (a replacement would export them again, with the same ids).
pub const MAX_DONE: usize = 16_384;
/// Default of the watermark's largest lag, in events.
pub const DEFAULT_LAG_MAX: u64 = 16_384;
const FORMAT: u8 = 1;

/// What a resume state says (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// The key span ids are derived from.
    pub key: u64,
    /// Everything through this position is acknowledged.
    pub watermark: u64,
    /// Transactions in progress that fell behind the lag bound: lost if the
    /// processor stops now.
    pub unprotected: u64,
    /// Finished transactions that began after the watermark.
    pub done: Vec<Begin>,
}

impl State {
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(24 + self.done.len() * 3);
        out.push(FORMAT);
        out.extend_from_slice(&self.key.to_le_bytes());
        varint(&mut out, self.watermark);
        varint(&mut out, self.unprotected);
        varint(&mut out, self.done.len() as u64);
        let mut prev = self.watermark;
        for b in &self.done {
            varint(&mut out, b.seq.wrapping_sub(prev));
            varint(&mut out, u64::from(b.nth));
            prev = b.seq;
        }
        Bytes::from(out)
    }

    /// `None` when `bytes` is not a state of this format (never panics).
    pub fn decode(bytes: &[u8]) -> Option<State> {
        let (&format, rest) = bytes.split_first()?;
        if format != FORMAT || rest.len() < 8 {
            return None;
        }
        let (key, mut rest) = rest.split_at(8);
        let key = u64::from_le_bytes(key.try_into().ok()?);
        let watermark = read_varint(&mut rest)?;
        let unprotected = read_varint(&mut rest)?;
        let n = usize::try_from(read_varint(&mut rest)?).ok()?;
        if n > MAX_DONE {
            return None;
        }
        let mut done = Vec::with_capacity(n);
        let mut prev = watermark;
        for _ in 0..n {
            let seq = prev.checked_add(read_varint(&mut rest)?)?;
            let nth = u32::try_from(read_varint(&mut rest)?).ok()?;
            done.push(Begin { seq, nth });
            prev = seq;
        }
        rest.is_empty().then_some(State {
            key,
            watermark,
            unprotected,
            done,
        })
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, tail) = rest.split_first()?;
        *rest = tail;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// An acknowledgement to send: the epoch, the watermark and the resume state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub epoch: u64,
    pub through: u64,
    pub state: Bytes,
}

/// The processor's progress, shared by the engine (what it processed, what is
/// pending in its connections), the span exporter (what the collector took) and
/// the client (what to acknowledge).
#[derive(Debug)]
pub struct Progress {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    key: u64,
    epoch: Option<u64>,
    /// The last position processed.
    through: u64,
    /// The first position of the oldest connection with unfinished bytes.
    pending: Option<u64>,
    /// Connections whose unfinished bytes began more than `lag_max` ago.
    stale_connections: u64,
    /// Spans handed to the exporter, not yet answered.
    held: BTreeSet<Begin>,
    /// Finished transactions (exported, or not to be), pruned to the watermark.
    done: BTreeSet<Begin>,
    lag_max: u64,
    /// The highest watermark computed: the loader forgets what it was sent
    /// through, so the watermark never goes back.
    floor: u64,
    /// Bumped at every change, so that the client sends only new states.
    version: u64,
}

impl Progress {
    /// Span ids derive from `key` (random for a processor that resumes nothing).
    pub fn new(key: u64) -> Self {
        Progress {
            inner: Mutex::new(Inner {
                key,
                lag_max: DEFAULT_LAG_MAX,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn key(&self) -> u64 {
        self.lock().key
    }

    /// The watermark lags at most `n` events (a quarter of the loader's queue).
    pub fn set_lag_max(&self, n: u64) {
        self.lock().lag_max = n.max(1);
    }

    /// Continues a predecessor's state: its key, and what it finished.
    pub fn resume(&self, epoch: u64, state: &State) {
        let mut i = self.lock();
        i.key = state.key;
        i.epoch = Some(epoch);
        i.through = state.watermark;
        i.floor = state.watermark;
        i.done = state.done.iter().copied().collect();
        i.version += 1;
    }

    /// A batch of `epoch` is about to be processed. A new epoch (the loader
    /// restarted): nothing carries over.
    pub fn start_batch(&self, epoch: u64) {
        let mut i = self.lock();
        if i.epoch != Some(epoch) {
            i.epoch = Some(epoch);
            i.held.clear();
            i.done.clear();
            i.pending = None;
            i.through = 0;
            i.floor = 0;
            i.version += 1;
        }
    }

    /// Spans handed to the exporter (answered later by [`Progress::confirm`]).
    pub fn hold(&self, begins: &[Begin]) {
        if begins.is_empty() {
            return;
        }
        let mut i = self.lock();
        i.held.extend(begins.iter().copied());
        i.version += 1;
    }

    /// The collector answered for these spans (accepted, rejected, or the export
    /// failed for good: nothing more will be done for them).
    pub fn confirm(&self, begins: &[Begin]) {
        if begins.is_empty() {
            return;
        }
        let mut i = self.lock();
        for b in begins {
            if i.held.remove(b) {
                i.done.insert(*b);
            }
        }
        i.version += 1;
    }

    /// The engine processed a batch through `through`: `pending` is the
    /// first position of its oldest unfinished connection, `stale_connections` how
    /// many began more than the lag bound ago, `finished` the transactions it
    /// completed (those not held by the exporter are done).
    pub fn processed(
        &self,
        through: u64,
        pending: Option<u64>,
        stale_connections: u64,
        finished: &[Begin],
    ) {
        let mut i = self.lock();
        i.through = through;
        i.pending = pending;
        i.stale_connections = stale_connections;
        for b in finished {
            if !i.held.contains(b) {
                i.done.insert(*b);
            }
        }
        let w = i.watermark();
        i.floor = w;
        i.done = i.done.split_off(&Begin { seq: w + 1, nth: 0 });
        i.version += 1;
    }

    /// The lowest position a replacement must be sent again from, minus one.
    pub fn lag_floor(&self) -> u64 {
        let i = self.lock();
        i.through.saturating_sub(i.lag_max)
    }

    /// The acknowledgement for now, and its version (unchanged: nothing new).
    pub fn ack(&self) -> Option<(u64, Ack)> {
        let i = self.lock();
        let epoch = i.epoch?;
        let w = i.watermark();
        let held_behind = i
            .held
            .range(
                ..=Begin {
                    seq: w,
                    nth: u32::MAX,
                },
            )
            .count() as u64;
        let skip = i.done.len().saturating_sub(MAX_DONE);
        let state = State {
            key: i.key,
            watermark: w,
            unprotected: held_behind + i.stale_connections,
            done: i.done.iter().skip(skip).copied().collect(),
        };
        Some((
            i.version,
            Ack {
                epoch,
                through: w,
                state: state.encode(),
            },
        ))
    }

    /// Spans held by the exporter now.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }
}

impl Inner {
    fn watermark(&self) -> u64 {
        let mut w = self.through;
        if let Some(p) = self.pending {
            w = w.min(p.saturating_sub(1));
        }
        if let Some(h) = self.held.first() {
            w = w.min(h.seq.saturating_sub(1));
        }
        w.max(self.through.saturating_sub(self.lag_max))
            .max(self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(seq: u64, nth: u32) -> Begin {
        Begin { seq, nth }
    }

    #[test]
    fn states_round_trip_and_garbage_is_refused() {
        let s = State {
            key: 0xdead_beef_0123_4567,
            watermark: 1000,
            unprotected: 3,
            done: vec![b(1001, 0), b(1001, 1), b(1500, 0), b(u64::MAX / 2, 7)],
        };
        assert_eq!(State::decode(&s.encode()), Some(s.clone()));
        let bytes = s.encode();
        for cut in 0..bytes.len() {
            assert_eq!(State::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut extra = bytes.to_vec();
        extra.push(0);
        assert_eq!(State::decode(&extra), None);
        assert_eq!(State::decode(&[2, 0, 0]), None);
        assert_eq!(State::decode(&[1; 40]), None);
    }

    #[test]
    fn the_watermark_stops_before_pending_connections_and_held_spans() {
        let p = Progress::new(9);
        assert_eq!(p.ack(), None, "nothing processed yet");
        // Transactions 10 and 20 finished; 20's span is with the exporter; a
        // connection has bytes waiting since 30.
        p.start_batch(7);
        p.hold(&[b(20, 0)]);
        p.processed(40, Some(30), 0, &[b(10, 0), b(20, 0)]);
        let (_, ack) = p.ack().unwrap();
        assert_eq!(ack.epoch, 7);
        assert_eq!(ack.through, 19);
        let s = State::decode(&ack.state).unwrap();
        assert_eq!((s.key, s.watermark, s.unprotected), (9, 19, 0));
        assert!(s.done.is_empty(), "10 is below the watermark: {s:?}");
        // The collector took 20: the connection bounds the watermark now (20 is
        // below it).
        p.confirm(&[b(20, 0)]);
        p.start_batch(7);
        p.processed(41, Some(30), 0, &[]);
        let (_, ack) = p.ack().unwrap();
        assert_eq!(ack.through, 29);
        assert!(State::decode(&ack.state).unwrap().done.is_empty());
        p.start_batch(7);
        p.hold(&[b(35, 0)]);
        p.processed(45, None, 0, &[b(33, 0), b(33, 1), b(35, 0)]);
        let (_, ack) = p.ack().unwrap();
        assert_eq!(ack.through, 34);
        let s = State::decode(&ack.state).unwrap();
        assert_eq!(s.done, vec![], "33 is below 34");
        p.confirm(&[b(35, 0)]);
        p.start_batch(7);
        p.processed(46, Some(36), 0, &[]);
        let (_, ack) = p.ack().unwrap();
        assert_eq!(ack.through, 35);
    }

    #[test]
    fn finished_transactions_after_the_watermark_are_listed() {
        let p = Progress::new(1);
        p.start_batch(3);
        p.processed(100, Some(50), 0, &[b(60, 0), b(70, 0), b(70, 1)]);
        let s = State::decode(&p.ack().unwrap().1.state).unwrap();
        assert_eq!(s.watermark, 49);
        assert_eq!(s.done, vec![b(60, 0), b(70, 0), b(70, 1)]);
        // A replacement continues the list and the key.
        let q = Progress::new(2);
        q.resume(3, &s);
        assert_eq!(q.key(), 1);
        q.processed(100, Some(50), 0, &[b(80, 0)]);
        let s2 = State::decode(&q.ack().unwrap().1.state).unwrap();
        assert_eq!(s2.done, vec![b(60, 0), b(70, 0), b(70, 1), b(80, 0)]);
    }

    #[test]
    fn the_lag_is_bounded_and_what_falls_behind_is_counted() {
        let p = Progress::new(1);
        p.set_lag_max(100);
        p.start_batch(3);
        p.hold(&[b(5, 0), b(500, 0)]);
        p.processed(1000, Some(2), 1, &[b(5, 0), b(500, 0)]);
        let (_, ack) = p.ack().unwrap();
        assert_eq!(ack.through, 900);
        let s = State::decode(&ack.state).unwrap();
        assert_eq!(s.unprotected, 3, "two held spans and one stale connection");
    }

    #[test]
    fn a_new_epoch_starts_afresh() {
        let p = Progress::new(1);
        p.start_batch(3);
        p.hold(&[b(5, 0)]);
        p.processed(10, None, 0, &[b(5, 0)]);
        assert_eq!(p.ack().unwrap().1.through, 4);
        p.start_batch(4);
        p.processed(2, None, 0, &[]);
        assert_eq!(p.ack().unwrap().1.through, 2);
        assert_eq!(p.held(), 0);
    }
}
