//! One subscription's side of the hub: its bounded queue, the batches it sends
//! and keeps until acknowledged, the resume state its processor leaves, and the
//! `Loss` marker for what overflowed.

use super::*;

/// Largest resume state a subscriber may leave with its subscription (`Ack`).
pub const MAX_RESUME_STATE: usize = 256 * 1024;

/// A subscription's events waiting to be sent, and its batches sent but not
/// acknowledged.
pub(super) struct Queue {
    pub(super) events: VecDeque<Event>,
    /// Events dropped since the last one queued: becomes a Loss marker.
    pub(super) lost_pending: u64,
    /// Sent batches not yet acknowledged (acknowledging subscriptions only).
    pub(super) unacked: VecDeque<EventBatch>,
    /// Batches to send again, before anything new, after a resume.
    pub(super) resend: VecDeque<EventBatch>,
    /// Events in `unacked` and `resend`; they count against the capacity.
    pub(super) held_events: usize,
    /// The subscriber's last acknowledged resume state (opaque, bounded).
    pub(super) resume_state: bytes::Bytes,
    /// The next batch sent carries `resume_state` (set when a connection resumes).
    pub(super) state_due: bool,
}

impl Queue {
    pub(super) fn len(&self) -> usize {
        self.events.len() + self.held_events
    }
}

/// One subscription's queue and counters.
pub struct Subscription {
    pub(super) id: u64,
    pub(super) name: String,
    /// New for every subscription the hub creates; stamped on its batches.
    pub(super) epoch: u64,
    pub(super) capacity: usize,
    /// Never drop (backpressure): the capacity is where sources are held back, and a
    /// queue may exceed it by what was published without waiting.
    pub(super) lossless: bool,
    /// The current connection acknowledges what it processed.
    pub(super) acknowledging: AtomicBool,
    pub(super) matcher: Mutex<Arc<Matcher>>,
    pub(super) queue: Mutex<Queue>,
    pub(super) notify: Notify,
    pub(super) generation: AtomicU64,
    pub(super) connected: AtomicBool,
    pub(super) peer: Mutex<Peer>,
    pub(super) delivered: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) connections: AtomicU64,
    pub(super) next_subscription_seq: AtomicU64,
    pub(super) disconnected_at: Mutex<Option<Instant>>,
}

/// A subscription as held by one connection.
pub struct Attachment {
    pub subscription: Arc<Subscription>,
    pub generation: u64,
}

/// The next thing a subscription's stream yields.
pub enum Next {
    Batch(EventBatch),
    /// Nothing queued: wait for [`Subscription::notified`].
    Empty,
    /// Another connection took this subscription over.
    TakenOver,
}

impl Subscription {
    /// Resolves when events were queued or the subscription was taken over.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Queues one event, or counts it dropped when the queue is full (never with
    /// backpressure).
    pub(super) fn push(&self, event: Event) -> bool {
        let mut q = lock(&self.queue);
        if q.len() >= self.capacity && !self.lossless {
            q.lost_pending += 1;
            self.dropped.fetch_add(1, Relaxed);
            return false;
        }
        if q.lost_pending > 0 {
            let marker = subscriber_loss(q.lost_pending);
            q.events.push_back(marker);
            q.lost_pending = 0;
        }
        q.events.push_back(event);
        true
    }
}

impl Hub {
    /// The next batch for `attachment`.
    pub fn next_batch(&self, attachment: &Attachment) -> Next {
        let s = &attachment.subscription;
        let acknowledging = s.acknowledging.load(Relaxed);
        let mut q = lock(&s.queue);
        if s.generation.load(Relaxed) != attachment.generation {
            return Next::TakenOver;
        }
        if let Some(mut batch) = q.resend.pop_front() {
            if acknowledging {
                q.unacked.push_back(batch.clone());
            } else {
                q.held_events -= batch.events.len();
            }
            take_state(&mut q, &mut batch);
            let freed = !acknowledging;
            drop(q);
            if freed {
                self.room_freed();
            }
            return Next::Batch(batch);
        }
        let mut n = q.events.len().min(self.config.max_batch);
        if acknowledging {
            // Unacknowledged batches may use at most half the queue: past that the
            // stream waits for an Ack, and new events queue (or drop) as usual.
            let room = (s.capacity / 2).max(1).saturating_sub(q.held_events);
            n = n.min(room);
        }
        let mut events: Vec<Event> = q.events.drain(..n).collect();
        if q.events.is_empty() && q.lost_pending > 0 {
            events.push(subscriber_loss(q.lost_pending));
            q.lost_pending = 0;
        }
        if events.is_empty() {
            return Next::Empty;
        }
        let len = events.len();
        s.delivered.fetch_add(len as u64, Relaxed);
        let mut batch = EventBatch {
            subscription_seq: s.next_subscription_seq.fetch_add(len as u64, Relaxed),
            events,
            realtime_offset_ns: self.realtime_offset_ns.load(Relaxed),
            subscription_epoch: s.epoch,
            resume_state: bytes::Bytes::new(),
        };
        if acknowledging {
            q.unacked.push_back(batch.clone());
            q.held_events += len;
        }
        take_state(&mut q, &mut batch);
        drop(q);
        if !acknowledging {
            self.room_freed();
        }
        Next::Batch(batch)
    }

    /// Forgets the batches of subscription `name` processed through `seq`, and
    /// keeps `resume_state` (at most [`MAX_RESUME_STATE`] bytes, checked by the
    /// server) for the next connection that resumes it.
    /// Returns false when no such subscription (or epoch) exists.
    pub fn ack(&self, name: &str, epoch: u64, seq: u64, resume_state: bytes::Bytes) -> bool {
        let Some(s) = lock(&self.state)
            .subscriptions
            .iter()
            .find(|s| s.name == name && s.epoch == epoch)
            .cloned()
        else {
            return false;
        };
        let mut q = lock(&s.queue);
        q.resume_state = resume_state;
        while let Some(front) = q.unacked.front() {
            let last = front.subscription_seq + front.events.len() as u64 - 1;
            if last > seq {
                break;
            }
            let n = front.events.len();
            q.unacked.pop_front();
            q.held_events -= n;
        }
        drop(q);
        // The stream may be waiting for room among the unacknowledged.
        s.notify.notify_one();
        self.room_freed();
        true
    }
}

/// Puts the resume state on `batch` when the connection's first batch is due it.
pub(super) fn take_state(q: &mut Queue, batch: &mut EventBatch) {
    if std::mem::take(&mut q.state_due) {
        batch.resume_state = q.resume_state.clone();
    }
}

pub(super) fn subscriber_loss(count: u64) -> Event {
    Event::loss(
        monotonic_ns(),
        count,
        v1::LossLocation::SubscriberQueue,
        "subscriber queue full: the processor did not keep up (or was away) and the loader's \
         bounded queue for it overflowed",
    )
}

/// A subscription epoch: unique within this loader run and unlikely to repeat
/// across runs (the start time is mixed in).
pub(super) fn new_epoch(id: u64) -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map_or(0, |t| t.tv_nsec() as u64 ^ ((t.tv_sec() as u64) << 30));
    (t << 16) ^ id
}

pub(super) fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "(ephemeral)"
    } else {
        name
    }
}
