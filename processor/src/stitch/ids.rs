//! Where span ids come from: a splitmix64 sequence reseeded at every event from a
//! key, the subscription's epoch and the event's position, so that a processor
//! taking a subscription over (with its predecessor's key, `crate::resume`) gives a
//! request it rebuilds the ids it had; and where each request began ([`Begin`]).

use crate::model::{LinkKind, TraceIds};
use crate::pipeline::span::TraceParent;
use crate::resume::Begin;

#[derive(Debug)]
pub(super) struct IdSource {
    rng: u64,
    /// Ids derive from it and the position.
    key: u64,
    /// The subscription position of the event being fed, and how many requests
    /// began in it so far.
    position: u64,
    nth: u32,
}

impl IdSource {
    pub(super) fn new(seed: u64) -> Self {
        IdSource {
            rng: seed | 1,
            key: seed,
            position: 0,
            nth: 0,
        }
    }

    /// The events fed next are at position `seq` of the subscription of `epoch`:
    /// the ids of the requests they begin derive from the key, the epoch and `seq`
    /// alone. (The epoch changes when the loader restarts, and positions start
    /// again.)
    pub(super) fn at(&mut self, epoch: u64, seq: u64) {
        self.position = seq;
        self.nth = 0;
        self.rng = self.key
            ^ epoch.wrapping_mul(0x9FB2_1C65_1E98_DF25)
            ^ seq.wrapping_mul(0xA24B_AED4_963E_E407);
    }

    pub(super) fn set_key(&mut self, key: u64) {
        self.key = key;
    }

    /// Where the request beginning now began: this event, after those it began
    /// already.
    pub(super) fn begin(&mut self) -> Begin {
        let b = Begin {
            seq: self.position,
            nth: self.nth,
        };
        self.nth = self.nth.saturating_add(1);
        b
    }

    /// Splitmix64: fast, and random enough for trace ids (never zero).
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).max(1)
    }

    pub(super) fn root(&mut self) -> TraceIds {
        let trace_id = (u128::from(self.next()) << 64) | u128::from(self.next());
        TraceIds {
            trace_id,
            span_id: self.next(),
            parent_span_id: 0,
            link: LinkKind::Root,
            remote_sampled: None,
            peer_pid: 0,
            begin: Begin::default(),
        }
    }

    pub(super) fn child_of(&mut self, parent: &TraceIds, link: LinkKind) -> TraceIds {
        TraceIds {
            trace_id: parent.trace_id,
            span_id: self.next(),
            parent_span_id: parent.span_id,
            link,
            remote_sampled: parent.remote_sampled,
            peer_pid: 0,
            begin: Begin::default(),
        }
    }

    pub(super) fn continuing(&mut self, tp: Option<TraceParent>) -> Option<TraceIds> {
        let tp = tp?;
        Some(TraceIds {
            trace_id: u128::from_be_bytes(tp.trace_id.to_bytes()),
            span_id: self.next(),
            parent_span_id: u64::from_be_bytes(tp.parent_id.to_bytes()),
            link: LinkKind::TraceParent,
            remote_sampled: Some(tp.sampled),
            peer_pid: 0,
            begin: Begin::default(),
        })
    }
}
