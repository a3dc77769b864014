//! What the processor received and what it knows was lost.

use std::collections::BTreeMap;
use std::fmt;

use tandem_proto::{Event, EventKind};

use crate::printer::location_name;

/// Counters over the processor's lifetime (across reconnections).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub events: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Lost events by where they were lost (`kernel_ring_buffer`, `subscriber_queue`,
    /// `source`, and `in_transit` for gaps in the subscription sequence).
    pub lost: BTreeMap<&'static str, u64>,
    /// Epoch and next expected sequence number of the subscription, once known.
    position: Option<(u64, u64)>,
    /// Times the subscription started again (a new loader, or it expired).
    pub restarts: u64,
}

/// What a batch's position says about the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum SeqCheck {
    Contiguous,
    /// This many events were lost in transit before the batch.
    Gap(u64),
    /// A new subscription (e.g. the loader restarted or the subscription expired).
    Restarted,
    /// The batch was sent again after a reconnection: its first this-many events
    /// were already processed and are skipped.
    Duplicate(usize),
}

impl Stats {
    /// A processor taking a subscription over from a predecessor that processed
    /// its events through `watermark` (see `crate::resume`). Only before the first
    /// batch: false (and nothing changes) afterwards.
    pub fn resume_at(&mut self, epoch: u64, watermark: u64) -> bool {
        if self.position.is_some() {
            return false;
        }
        self.position = Some((epoch, watermark + 1));
        true
    }

    /// Checks a batch's position and counts its new events. Returns the check; the
    /// events to process are `events[check.skip()..]`.
    pub fn record_batch(&mut self, epoch: u64, seq: u64, events: &[Event]) -> SeqCheck {
        let end = seq + events.len() as u64;
        let check = match self.position {
            None => SeqCheck::Contiguous,
            Some((e, _)) if e != epoch => {
                self.restarts += 1;
                SeqCheck::Restarted
            }
            Some((_, expected)) if seq == expected => SeqCheck::Contiguous,
            Some((_, expected)) if seq > expected => {
                let gap = seq - expected;
                *self.lost.entry("in_transit").or_default() += gap;
                SeqCheck::Gap(gap)
            }
            Some((_, expected)) => SeqCheck::Duplicate(
                usize::try_from(expected - seq).map_or(events.len(), |n| n.min(events.len())),
            ),
        };
        let expected = match (self.position, &check) {
            (Some((_, old)), SeqCheck::Duplicate(_)) => old.max(end),
            _ => end,
        };
        self.position = Some((epoch, expected));
        // Counted per batch, then added to the totals (one map update per kind).
        const KINDS: [&str; 7] = [
            "process_started",
            "process_exited",
            "connection_opened",
            "connection_closed",
            "data",
            "loss",
            "unknown",
        ];
        let mut counts = [0u64; 7];
        let new = events.get(check.skip()..).unwrap_or_default();
        for e in new {
            let i = match &e.kind {
                Some(EventKind::ProcessStarted(_)) => 0,
                Some(EventKind::ProcessExited(_)) => 1,
                Some(EventKind::ConnectionOpened(_)) => 2,
                Some(EventKind::ConnectionClosed(_)) => 3,
                Some(EventKind::Data(_)) => 4,
                Some(EventKind::Loss(l)) => {
                    *self.lost.entry(location_name(l.location)).or_default() += l.count;
                    5
                }
                None => 6,
            };
            if let Some(c) = counts.get_mut(i) {
                *c += 1;
            }
        }
        self.events += new.len() as u64;
        for (kind, n) in KINDS.iter().zip(counts) {
            if n > 0 {
                *self.by_kind.entry(kind).or_default() += n;
            }
        }
        check
    }

    pub fn total_lost(&self) -> u64 {
        self.lost.values().sum()
    }
}

impl SeqCheck {
    /// Events at the start of the batch that were already processed.
    pub fn skip(&self) -> usize {
        match self {
            SeqCheck::Duplicate(n) => *n,
            _ => 0,
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "received {} events", self.events)?;
        for (k, v) in &self.by_kind {
            write!(f, " {k}={v}")?;
        }
        write!(f, "; lost {}", self.total_lost())?;
        for (k, v) in &self.lost {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::v1::LossLocation;

    fn loss(count: u64) -> Event {
        Event::loss(1, count, LossLocation::SubscriberQueue, "full")
    }

    #[test]
    fn gaps_and_restarts_are_told_apart() {
        let mut s = Stats::default();
        assert_eq!(
            s.record_batch(7, 1, &[loss(2), loss(3)]),
            SeqCheck::Contiguous
        );
        assert_eq!(s.record_batch(7, 3, &[loss(1)]), SeqCheck::Contiguous);
        assert_eq!(s.record_batch(7, 10, &[loss(1)]), SeqCheck::Gap(6));
        assert_eq!(s.record_batch(8, 1, &[loss(1)]), SeqCheck::Restarted);
        assert_eq!(s.lost["subscriber_queue"], 8);
        assert_eq!(s.lost["in_transit"], 6);
        assert_eq!(s.events, 5);
        assert_eq!(s.total_lost(), 14);
    }

    #[test]
    fn resent_events_are_skipped_once() {
        let mut s = Stats::default();
        s.record_batch(7, 1, &[loss(1), loss(1), loss(1)]);
        // Sent again from seq 2 after a reconnection, with one new event.
        let check = s.record_batch(7, 2, &[loss(1), loss(1), loss(5)]);
        assert_eq!(check, SeqCheck::Duplicate(2));
        assert_eq!(s.events, 4);
        assert_eq!(s.lost["subscriber_queue"], 8);
        assert_eq!(s.record_batch(7, 5, &[loss(1)]), SeqCheck::Contiguous);
    }
}
