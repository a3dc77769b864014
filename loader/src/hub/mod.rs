//! Fan-out from the event source to subscriptions.
//!
//! The source publishes batches; the hub stamps each event with a loader-wide
//! sequence number, routes it to every subscription whose selection matches the
//! event's process, and appends it to that subscription's bounded queue. Publishing
//! never waits for a subscriber: when a queue is full the event is dropped for that
//! subscription only, counted, and a `Loss` event takes its place in the stream (at
//! the position of the gap) once there is room again.
//!
//! Named subscriptions outlive their connection for `retention`, still queueing, so a
//! processor that restarts with the same name finds what happened meanwhile.
//!
//! With [`HubConfig::backpressure`] (only `tandem-loader record` sets it) nothing is
//! ever dropped: sources await [`Hub::wait_for_room`] before publishing, which holds
//! them back while a queue is full, and draining a queue wakes them up.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tandem_proto::v1::{self, AttachedProbe, InfoResponse, LossLocation, Role, SubscriberInfo};
use tandem_proto::{selection, Event, EventBatch, EventKind, Selection};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::clock::{kernel_release, monotonic_ns, realtime_offset_ns};
use crate::selection::{Matcher, ProcessFacts, SelectionError};

/// Sizes and times of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events a subscription may hold before it drops (plus one loss marker).
    pub queue_capacity: usize,
    /// Most events in one batch sent to a subscriber.
    pub max_batch: usize,
    /// How long a named subscription keeps queueing after its processor went away.
    pub retention: Duration,
    /// Most processes tracked for routing; beyond it events are routed by pid only.
    pub max_processes: usize,
    /// Hold sources back instead of dropping: queues never drop, and
    /// [`Hub::wait_for_room`] waits while one is full. For `record`, whose only
    /// subscriber is the file writer; serving never sets it (a slow processor must
    /// not stall the capture).
    pub backpressure: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            queue_capacity: 65_536,
            max_batch: 2048,
            retention: Duration::from_secs(300),
            max_processes: 65_536,
            backpressure: false,
        }
    }
}

/// Who is on the other end of a subscription.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

struct State {
    next_seq: u64,
    next_subscription_id: u64,
    subscriptions: Vec<Arc<Subscription>>,
    processes: HashMap<u32, ProcEntry>,
    process_table_full_logged: bool,
}

/// The fan-out point between the event source and the subscriptions.
pub struct Hub {
    config: HubConfig,
    state: Mutex<State>,
    union_tx: watch::Sender<Option<Selection>>,
    subscribers_tx: watch::Sender<usize>,
    ingested: AtomicU64,
    unrouted: AtomicU64,
    lost_at_source: AtomicU64,
    realtime_offset_ns: AtomicI64,
    probes: Mutex<Vec<AttachedProbe>>,
    source_name: Mutex<String>,
    source_finished: AtomicBool,
    /// Wakes [`Hub::wait_for_room`] when a queue was drained (backpressure only).
    room: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data behind (every
    // critical section is a few assignments), so poisoning is not fatal.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub fn new(config: HubConfig) -> Arc<Self> {
        Arc::new(Hub {
            config,
            state: Mutex::new(State {
                next_seq: 1,
                next_subscription_id: 1,
                subscriptions: Vec::new(),
                processes: HashMap::new(),
                process_table_full_logged: false,
            }),
            union_tx: watch::Sender::new(None),
            subscribers_tx: watch::Sender::new(0),
            ingested: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
            lost_at_source: AtomicU64::new(0),
            realtime_offset_ns: AtomicI64::new(realtime_offset_ns()),
            probes: Mutex::new(Vec::new()),
            source_name: Mutex::new(String::new()),
            source_finished: AtomicBool::new(false),
            room: Notify::new(),
        })
    }

    /// Follows the union of all subscriptions' selections.
    pub fn selection(&self) -> watch::Receiver<Option<Selection>> {
        self.union_tx.subscribe()
    }

    /// Follows the number of subscriptions (connected or retained).
    #[cfg(feature = "dev-sources")]
    pub fn subscriber_count(&self) -> watch::Receiver<usize> {
        self.subscribers_tx.subscribe()
    }

    /// Sets the CLOCK_REALTIME - CLOCK_MONOTONIC offset stamped on batches.
    #[cfg(feature = "dev-sources")]
    pub fn set_realtime_offset(&self, offset_ns: i64) {
        self.realtime_offset_ns.store(offset_ns, Relaxed);
    }

    pub fn set_source(&self, name: &str) {
        *lock(&self.source_name) = name.to_owned();
    }

    pub fn set_source_finished(&self) {
        self.source_finished.store(true, Relaxed);
    }

    /// Replaces the probe status shown by `Info`.
    pub fn set_probes(&self, probes: Vec<AttachedProbe>) {
        *lock(&self.probes) = probes;
    }

    /// Publishes a loss that happened before events reached the loader.
    pub fn report_source_loss(
        &self,
        mono_ns: u64,
        count: u64,
        location: LossLocation,
        reason: &str,
    ) {
        self.publish(vec![Event::loss(mono_ns, count, location, reason)]);
    }

    /// Whether sources are held back instead of events dropped
    /// ([`HubConfig::backpressure`]).
    pub fn backpressure(&self) -> bool {
        self.config.backpressure
    }

    /// Waits until `n` more events fit in every subscription's queue (or the queue is
    /// empty, for a batch larger than the capacity). Returns at once without
    /// backpressure, so sources call it before every [`Hub::publish`]. Sources select
    /// it against their shutdown: a subscriber that stops draining holds them forever.
    pub async fn wait_for_room(&self, n: usize) {
        if !self.config.backpressure {
            return;
        }
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before checking, so a drain in between is not missed.
            notified.as_mut().enable();
            if self.has_room(n) {
                return;
            }
            notified.await;
        }
    }

    /// True when `n` more events fit in every subscription's queue.
    fn has_room(&self, n: usize) -> bool {
        lock(&self.state).subscriptions.iter().all(|s| {
            let len = lock(&s.queue).len();
            len == 0 || len.saturating_add(n) <= s.capacity
        })
    }

    /// Wakes sources waiting for room, after a queue shrank.
    fn room_freed(&self) {
        if self.config.backpressure {
            self.room.notify_waiters();
        }
    }

    /// Stamps, routes and queues `events`. Never blocks on subscribers.
    pub fn publish(&self, events: impl IntoIterator<Item = Event>) {
        let mut st = lock(&self.state);
        let mut touched: Vec<Arc<Subscription>> = Vec::new();
        for mut event in events {
            event.seq = st.next_seq;
            st.next_seq += 1;
            self.ingested.fetch_add(1, Relaxed);
            let delivered = match (&event.kind, event.pid()) {
                (Some(EventKind::Loss(loss)), _) => {
                    self.lost_at_source.fetch_add(loss.count, Relaxed);
                    let all = st.subscriptions.clone();
                    deliver(&all, event, &mut touched)
                }
                (_, Some(pid)) => {
                    let targets = self.route(&mut st, pid, &event);
                    let exited = matches!(event.kind, Some(EventKind::ProcessExited(_)));
                    let n = deliver(&targets, event, &mut touched);
                    if exited {
                        // Kept routable a while: a connection's close often comes after
                        // its process exited (the socket closes when the peer's FIN
                        // arrives). `expire` removes it later.
                        if let Some(entry) = st.processes.get_mut(&pid) {
                            entry.exited_at = Some(Instant::now());
                        }
                    }
                    n
                }
                _ => 0,
            };
            if delivered == 0 {
                self.unrouted.fetch_add(1, Relaxed);
            }
        }
        drop(st);
        for s in touched {
            s.notify.notify_one();
        }
    }

    /// Attaches a connection to the subscription `name` (creating it, or taking it
    /// over from an earlier connection) with `selection`.
    pub fn attach(
        &self,
        name: &str,
        selection: Selection,
        acknowledge: bool,
        peer: Peer,
    ) -> Result<Attachment, SelectionError> {
        let matcher = Arc::new(Matcher::new(selection)?);
        let mut st = lock(&self.state);
        let existing = if name.is_empty() {
            None
        } else {
            st.subscriptions.iter().find(|s| s.name == name).cloned()
        };
        let subscription = match existing {
            Some(s) => {
                let was_connected = s.connected.swap(true, Relaxed);
                info!(
                    subscriber = %s.name,
                    peer_pid = peer.pid,
                    queued = lock(&s.queue).len(),
                    taken_over = was_connected,
                    "subscriber resumed its subscription"
                );
                *lock(&s.matcher) = matcher;
                // What the previous connection did not acknowledge goes out again
                // first, in its original order.
                let mut q = lock(&s.queue);
                let mut resend = std::mem::take(&mut q.unacked);
                resend.append(&mut q.resend);
                q.resend = resend;
                q.state_due = !q.resume_state.is_empty();
                drop(q);
                resume_with_facts(&st, &s, self.realtime_offset_ns.load(Relaxed));
                s
            }
            None => {
                let s = Arc::new(Subscription {
                    id: st.next_subscription_id,
                    name: name.to_owned(),
                    epoch: new_epoch(st.next_subscription_id),
                    capacity: self.config.queue_capacity,
                    lossless: self.config.backpressure,
                    acknowledging: AtomicBool::new(false),
                    matcher: Mutex::new(matcher),
                    queue: Mutex::new(Queue {
                        events: VecDeque::new(),
                        lost_pending: 0,
                        unacked: VecDeque::new(),
                        resend: VecDeque::new(),
                        held_events: 0,
                        resume_state: bytes::Bytes::new(),
                        state_due: false,
                    }),
                    notify: Notify::new(),
                    generation: AtomicU64::new(0),
                    connected: AtomicBool::new(true),
                    peer: Mutex::new(peer),
                    delivered: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                    connections: AtomicU64::new(0),
                    next_subscription_seq: AtomicU64::new(1),
                    disconnected_at: Mutex::new(None),
                });
                st.next_subscription_id += 1;
                st.subscriptions.push(s.clone());
                info!(
                    subscriber = %display_name(&s.name),
                    peer_pid = peer.pid,
                    peer_uid = peer.uid,
                    selection = %selection::describe(lock(&s.matcher).selection()),
                    "subscriber attached"
                );
                s
            }
        };
        *lock(&subscription.peer) = peer;
        subscription.acknowledging.store(acknowledge, Relaxed);
        *lock(&subscription.disconnected_at) = None;
        subscription.connections.fetch_add(1, Relaxed);
        let generation = subscription.generation.fetch_add(1, Relaxed) + 1;
        // Wakes a stream of an earlier generation so that it ends.
        subscription.notify.notify_waiters();
        self.reselect(&mut st);
        Ok(Attachment {
            subscription,
            generation,
        })
    }

    /// Called when the connection holding `attachment` ends.
    pub fn detach(&self, attachment: &Attachment) {
        let s = &attachment.subscription;
        if s.generation.load(Relaxed) != attachment.generation {
            return; // taken over; the newer connection owns it now
        }
        s.connected.store(false, Relaxed);
        let queued = lock(&s.queue).len();
        if s.name.is_empty() {
            let mut st = lock(&self.state);
            st.subscriptions.retain(|x| x.id != s.id);
            self.reselect(&mut st);
            drop(st);
            self.room_freed();
            info!(
                delivered = s.delivered.load(Relaxed),
                dropped = s.dropped.load(Relaxed),
                discarded = queued,
                "ephemeral subscriber detached; subscription ended"
            );
        } else {
            *lock(&s.disconnected_at) = Some(Instant::now());
            info!(
                subscriber = %s.name,
                queued,
                retention_secs = self.config.retention.as_secs(),
                "subscriber detached; its subscription keeps queueing for a processor with the same name"
            );
        }
    }

    /// Ends named subscriptions left unclaimed for longer than the retention time, and
    /// forgets processes that exited more than `EXITED_GRACE` ago.
    pub fn expire(&self, now: Instant) {
        let mut st = lock(&self.state);
        st.processes.retain(|_, p| {
            p.exited_at
                .is_none_or(|t| now.saturating_duration_since(t) < EXITED_GRACE)
        });
        let before = st.subscriptions.len();
        st.subscriptions.retain(|s| {
            let since = *lock(&s.disconnected_at);
            let expired = !s.connected.load(Relaxed)
                && since.is_some_and(|t| now.duration_since(t) >= self.config.retention);
            if expired {
                warn!(
                    subscriber = %s.name,
                    discarded = lock(&s.queue).len(),
                    dropped = s.dropped.load(Relaxed),
                    retention_secs = self.config.retention.as_secs(),
                    "subscription expired unclaimed; its queued events are discarded"
                );
            }
            !expired
        });
        if st.subscriptions.len() != before {
            self.reselect(&mut st);
            drop(st);
            self.room_freed();
        }
    }

    /// Recomputes routing and the union after subscriptions changed.
    fn reselect(&self, st: &mut State) {
        let State {
            subscriptions,
            processes,
            ..
        } = st;
        for (pid, entry) in processes.iter_mut() {
            entry.reselect(selected_by(subscriptions, *pid, &entry.facts));
        }
        let matchers: Vec<Arc<Matcher>> = subscriptions
            .iter()
            .map(|s| lock(&s.matcher).clone())
            .collect();
        let union = selection::union(matchers.iter().map(|m| m.selection()));
        self.union_tx.send_if_modified(|old| {
            let changed = *old != union;
            *old = union;
            changed
        });
        self.subscribers_tx.send_replace(subscriptions.len());
    }

    /// Everything `Info` reports.
    pub fn info(&self) -> InfoResponse {
        let st = lock(&self.state);
        let subscribers = st
            .subscriptions
            .iter()
            .map(|s| {
                let peer = *lock(&s.peer);
                let (queue_depth, unacknowledged) = {
                    let q = lock(&s.queue);
                    (q.events.len() as u64, q.held_events as u64)
                };
                let selection = lock(&s.matcher).selection().clone();
                SubscriberInfo {
                    name: s.name.clone(),
                    connected: s.connected.load(Relaxed),
                    peer_pid: peer.pid,
                    peer_uid: peer.uid,
                    peer_gid: peer.gid,
                    selection: Some(selection),
                    queue_depth,
                    unacknowledged,
                    queue_capacity: self.config.queue_capacity as u64,
                    delivered: s.delivered.load(Relaxed),
                    dropped: s.dropped.load(Relaxed),
                    connections: s.connections.load(Relaxed),
                }
            })
            .collect();
        InfoResponse {
            loader_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: Some(tandem_proto::protocol_version()),
            kernel_release: kernel_release(),
            source: lock(&self.source_name).clone(),
            probes: lock(&self.probes).clone(),
            instrumented: self.union_tx.borrow().clone(),
            subscribers,
            events_ingested: self.ingested.load(Relaxed),
            events_unrouted: self.unrouted.load(Relaxed),
            events_lost_at_source: self.lost_at_source.load(Relaxed),
            source_finished: self.source_finished.load(Relaxed),
        }
    }
}

mod processes;
mod queue;
#[cfg(test)]
mod tests;

use processes::*;
use queue::*;
pub use queue::{Attachment, Next, Subscription, MAX_RESUME_STATE};
