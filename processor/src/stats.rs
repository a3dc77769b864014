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
    /// Next expected subscription sequence number, once known.
    expected_seq: Option<u64>,
}

/// What a batch's sequence number says about the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum SeqCheck {
    Contiguous,
    /// This many events were lost in transit before the batch.
    Gap(u64),
    /// The sequence went backwards: a new subscription (e.g. the loader restarted).
    Restarted,
}

impl Stats {
    /// Checks a batch's position, then counts its events.
    pub fn record_batch(&mut self, subscription_seq: u64, events: &[Event]) -> SeqCheck {
        let check = match self.expected_seq {
            None => SeqCheck::Contiguous,
            Some(expected) if subscription_seq == expected => SeqCheck::Contiguous,
            Some(expected) if subscription_seq > expected => {
                let gap = subscription_seq - expected;
                *self.lost.entry("in_transit").or_default() += gap;
                SeqCheck::Gap(gap)
            }
            Some(_) => SeqCheck::Restarted,
        };
        self.expected_seq = Some(subscription_seq + events.len() as u64);
        for e in events {
            self.events += 1;
            let kind = match &e.kind {
                Some(EventKind::ProcessStarted(_)) => "process_started",
                Some(EventKind::ProcessExited(_)) => "process_exited",
                Some(EventKind::ConnectionOpened(_)) => "connection_opened",
                Some(EventKind::ConnectionClosed(_)) => "connection_closed",
                Some(EventKind::Data(_)) => "data",
                Some(EventKind::Loss(l)) => {
                    *self.lost.entry(location_name(l.location)).or_default() += l.count;
                    "loss"
                }
                None => "unknown",
            };
            *self.by_kind.entry(kind).or_default() += 1;
        }
        check
    }

    pub fn total_lost(&self) -> u64 {
        self.lost.values().sum()
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
        assert_eq!(s.record_batch(1, &[loss(2), loss(3)]), SeqCheck::Contiguous);
        assert_eq!(s.record_batch(3, &[loss(1)]), SeqCheck::Contiguous);
        assert_eq!(s.record_batch(10, &[loss(1)]), SeqCheck::Gap(6));
        assert_eq!(s.record_batch(1, &[loss(1)]), SeqCheck::Restarted);
        assert_eq!(s.lost["subscriber_queue"], 8);
        assert_eq!(s.lost["in_transit"], 6);
        assert_eq!(s.events, 5);
        assert_eq!(s.total_lost(), 14);
    }
}
