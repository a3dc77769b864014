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

/// How long an exited process stays routable, for its late events (closes).
const EXITED_GRACE: Duration = Duration::from_secs(10);

/// Most ports remembered per process for port-based selection.
const MAX_PORTS_PER_PROCESS: usize = 64;

/// Largest resume state a subscriber may leave with its subscription (`Ack`).
pub const MAX_RESUME_STATE: usize = 256 * 1024;

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
            max_batch: 512,
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

struct Queue {
    events: VecDeque<Event>,
    /// Events dropped since the last one queued: becomes a Loss marker.
    lost_pending: u64,
    /// Sent batches not yet acknowledged (acknowledging subscriptions only).
    unacked: VecDeque<EventBatch>,
    /// Batches to send again, before anything new, after a resume.
    resend: VecDeque<EventBatch>,
    /// Events in `unacked` and `resend`; they count against the capacity.
    held_events: usize,
    /// The subscriber's last acknowledged resume state (opaque, bounded).
    resume_state: bytes::Bytes,
    /// The next batch sent carries `resume_state` (set when a connection resumes).
    state_due: bool,
}

impl Queue {
    fn len(&self) -> usize {
        self.events.len() + self.held_events
    }
}

/// One subscription's queue and counters.
pub struct Subscription {
    id: u64,
    name: String,
    /// New for every subscription the hub creates; stamped on its batches.
    epoch: u64,
    capacity: usize,
    /// Never drop (backpressure): the capacity is where sources are held back, and a
    /// queue may exceed it by what was published without waiting.
    lossless: bool,
    /// The current connection acknowledges what it processed.
    acknowledging: AtomicBool,
    matcher: Mutex<Arc<Matcher>>,
    queue: Mutex<Queue>,
    notify: Notify,
    generation: AtomicU64,
    connected: AtomicBool,
    peer: Mutex<Peer>,
    delivered: AtomicU64,
    dropped: AtomicU64,
    connections: AtomicU64,
    next_subscription_seq: AtomicU64,
    disconnected_at: Mutex<Option<Instant>>,
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

struct ProcEntry {
    facts: ProcessFacts,
    selected_by: Vec<Arc<Subscription>>,
    /// The process's latest `ProcessStarted`, handed to subscriptions that select the
    /// process after it was published (they attached later, or a port matched later).
    started: Option<Event>,
    /// When its `ProcessExited` went by; the entry is removed `EXITED_GRACE` later.
    exited_at: Option<Instant>,
}

impl ProcEntry {
    /// Sets who selects the process; those new to it get its `ProcessStarted` first.
    fn reselect(&mut self, selected_by: Vec<Arc<Subscription>>) {
        if let Some(started) = self.facts_event() {
            for s in &selected_by {
                if !self.selected_by.iter().any(|old| old.id == s.id) && s.push(started.clone()) {
                    s.notify.notify_one();
                }
            }
        }
        self.selected_by = selected_by;
    }

    /// The process's `ProcessStarted` for a subscriber that did not see it, with the
    /// ports seen since (a selection by port needs them before the next connection).
    fn facts_event(&self) -> Option<Event> {
        let mut event = self.started.clone()?;
        if let Some(EventKind::ProcessStarted(p)) = &mut event.kind {
            p.ports = self
                .facts
                .ports
                .iter()
                .map(|&port| u32::from(port))
                .collect();
        }
        Some(event)
    }
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
    pub fn publish(&self, events: Vec<Event>) {
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

    /// Updates what is known of `pid` from `event` and returns who selects it.
    fn route(&self, st: &mut State, pid: u32, event: &Event) -> Vec<Arc<Subscription>> {
        let changed_facts = |facts: &mut ProcessFacts| -> bool {
            match &event.kind {
                Some(EventKind::ProcessStarted(p)) => {
                    facts.exe_path.clone_from(&p.exe_path);
                    facts.container_id.clone_from(&p.container_id);
                    true
                }
                Some(EventKind::ConnectionOpened(c)) => {
                    let addr = if c.role == Role::Client as i32 {
                        &c.peer
                    } else {
                        &c.local
                    };
                    let port = addr.as_ref().map_or(0, |a| a.port);
                    match u16::try_from(port) {
                        Ok(p)
                            if p != 0
                                && !facts.ports.contains(&p)
                                && facts.ports.len() < MAX_PORTS_PER_PROCESS =>
                        {
                            facts.ports.push(p);
                            true
                        }
                        _ => false,
                    }
                }
                _ => false,
            }
        };
        let started = matches!(event.kind, Some(EventKind::ProcessStarted(_)));
        if let Some(entry) = st.processes.get_mut(&pid) {
            if started {
                // A new process with a reused pid, or a new image after exec.
                entry.exited_at = None;
                // Delivered by the caller to everyone who selects it now; remembered
                // for whoever selects it later.
                entry.started = Some(event.clone());
            }
            if changed_facts(&mut entry.facts) {
                let now = selected_by(&st.subscriptions, pid, &entry.facts);
                if started {
                    entry.selected_by = now;
                } else {
                    entry.reselect(now);
                }
            }
            return entry.selected_by.clone();
        }
        let mut facts = ProcessFacts::default();
        changed_facts(&mut facts);
        let targets = selected_by(&st.subscriptions, pid, &facts);
        if st.processes.len() < self.config.max_processes {
            st.processes.insert(
                pid,
                ProcEntry {
                    facts,
                    selected_by: targets.clone(),
                    started: started.then(|| event.clone()),
                    exited_at: None,
                },
            );
        } else if !st.process_table_full_logged {
            st.process_table_full_logged = true;
            warn!(
                max_processes = self.config.max_processes,
                "process table full: new processes are routed by pid only (selection by \
                 executable, container or port does not apply to them)"
            );
        }
        targets
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

impl Subscription {
    /// Resolves when events were queued or the subscription was taken over.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Queues one event, or counts it dropped when the queue is full (never with
    /// backpressure).
    fn push(&self, event: Event) -> bool {
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

fn deliver(
    targets: &[Arc<Subscription>],
    event: Event,
    touched: &mut Vec<Arc<Subscription>>,
) -> usize {
    for s in targets {
        if s.push(event.clone()) && !touched.iter().any(|t| t.id == s.id) {
            touched.push(s.clone());
        }
    }
    targets.len()
}

fn selected_by(
    subs: &[Arc<Subscription>],
    pid: u32,
    facts: &ProcessFacts,
) -> Vec<Arc<Subscription>> {
    subs.iter()
        .filter(|s| lock(&s.matcher).matches(pid, facts))
        .cloned()
        .collect()
}

/// A resumed subscription begins with the `ProcessStarted` of every live process it
/// selects: the processor now reading it may be a new one that never saw them (a
/// restart), and without them its spans would be anonymous. They are given the
/// positions just before what comes next (the first batch sent again, else the
/// next new one), which the previous reader already processed: a processor that
/// reads on skips them as sent again, a new one takes them. A young subscription
/// (fewer positions than facts) sends its early ProcessStarted again anyway.
fn resume_with_facts(st: &State, s: &Arc<Subscription>, realtime_offset_ns: i64) {
    let mut facts: Vec<(u32, Event)> = st
        .processes
        .iter()
        .filter(|(_, p)| p.exited_at.is_none() && p.selected_by.iter().any(|x| x.id == s.id))
        .filter_map(|(pid, p)| p.facts_event().map(|e| (*pid, e)))
        .collect();
    if facts.is_empty() {
        return;
    }
    facts.sort_by_key(|(pid, _)| *pid);
    let mut facts: Vec<Event> = facts.into_iter().map(|(_, e)| e).collect();
    let n = facts.len() as u64;
    let mut q = lock(&s.queue);
    match q.resend.front_mut() {
        Some(first) if first.subscription_seq > n => {
            facts.append(&mut first.events);
            first.events = facts;
            first.subscription_seq -= n;
        }
        Some(_) => return,
        None => {
            let next = s.next_subscription_seq.load(Relaxed);
            if next <= n {
                return;
            }
            q.resend.push_back(EventBatch {
                subscription_seq: next - n,
                events: facts,
                realtime_offset_ns,
                subscription_epoch: s.epoch,
                resume_state: bytes::Bytes::new(),
            });
        }
    }
    q.held_events += n as usize;
}

/// Puts the resume state on `batch` when the connection's first batch is due it.
fn take_state(q: &mut Queue, batch: &mut EventBatch) {
    if std::mem::take(&mut q.state_due) {
        batch.resume_state = q.resume_state.clone();
    }
}

fn subscriber_loss(count: u64) -> Event {
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
fn new_epoch(id: u64) -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map_or(0, |t| t.tv_nsec() as u64 ^ ((t.tv_sec() as u64) << 30));
    (t << 16) ^ id
}

fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "(ephemeral)"
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::FutureExt;
    use tandem_proto::v1::{ConnectionOpened, Data, ProcessStarted, SocketAddress};

    fn hub(capacity: usize, max_batch: usize) -> Arc<Hub> {
        Hub::new(HubConfig {
            queue_capacity: capacity,
            max_batch,
            ..HubConfig::default()
        })
    }

    fn started(pid: u32, exe: &str) -> Event {
        Event {
            seq: 0,
            mono_ns: 0,
            kind: Some(EventKind::ProcessStarted(ProcessStarted {
                pid,
                exe_path: exe.into(),
                ..Default::default()
            })),
        }
    }

    /// A connection `pid` accepted on `port`.
    fn accepted(pid: u32, port: u32) -> Event {
        Event {
            seq: 0,
            mono_ns: 0,
            kind: Some(EventKind::ConnectionOpened(ConnectionOpened {
                pid,
                local: Some(SocketAddress {
                    ip: vec![127, 0, 0, 1].into(),
                    port,
                }),
                role: Role::Server as i32,
                ..Default::default()
            })),
        }
    }

    fn data(pid: u32, n: u8) -> Event {
        Event {
            seq: 0,
            mono_ns: u64::from(n),
            kind: Some(EventKind::Data(Data {
                pid,
                payload: vec![n].into(),
                ..Default::default()
            })),
        }
    }

    fn batch(hub: &Hub, a: &Attachment) -> EventBatch {
        match hub.next_batch(a) {
            Next::Batch(b) => b,
            Next::Empty => panic!("expected a batch, queue empty"),
            Next::TakenOver => panic!("expected a batch, taken over"),
        }
    }

    impl Hub {
        /// A batch of at most `n` events, whatever max_batch says.
        fn next_batch_limited(&self, a: &Attachment, n: usize) -> EventBatch {
            let mut q = lock(&a.subscription.queue);
            let events: Vec<Event> = q.events.drain(..n).collect();
            EventBatch {
                events,
                ..Default::default()
            }
        }
    }

    fn payloads(b: &EventBatch) -> Vec<String> {
        b.events
            .iter()
            .map(|e| match &e.kind {
                Some(EventKind::Data(d)) => d.payload[0].to_string(),
                Some(EventKind::Loss(l)) => format!("loss{}", l.count),
                _ => "?".into(),
            })
            .collect()
    }

    #[test]
    fn overflow_drops_counts_and_marks_the_gap_in_place() {
        let h = hub(3, 100);
        let a = h
            .attach("p", Selection::default(), false, Peer::default())
            .unwrap();
        h.publish((0..5).map(|n| data(1, n)).collect());
        // 3 queued, 2 dropped: the marker follows the last event queued before the gap.
        assert_eq!(payloads(&batch(&h, &a)), ["0", "1", "2", "loss2"]);
        h.publish(vec![data(1, 5)]);
        assert_eq!(payloads(&batch(&h, &a)), ["5"]);
        // With room freed before the drain ends, the marker precedes the next event.
        h.publish((6..10).map(|n| data(1, n)).collect()); // 6,7,8 queued, 9 dropped
        let first = h.next_batch_limited(&a, 1);
        assert_eq!(payloads(&first), ["6"]);
        h.publish(vec![data(1, 10)]);
        assert_eq!(payloads(&batch(&h, &a)), ["7", "8", "loss1", "10"]);
        let info = h.info();
        assert_eq!(info.subscribers[0].dropped, 3);
        assert_eq!(info.events_ingested, 11);
    }

    #[test]
    fn a_loss_at_the_end_is_reported_when_the_queue_drains() {
        let h = hub(2, 100);
        let a = h
            .attach("p", Selection::default(), false, Peer::default())
            .unwrap();
        h.publish((0..4).map(|n| data(1, n)).collect());
        assert_eq!(payloads(&batch(&h, &a)), ["0", "1", "loss2"]);
        assert!(matches!(h.next_batch(&a), Next::Empty));
    }

    #[test]
    fn routing_follows_each_subscribers_selection() {
        let h = hub(100, 100);
        let by_pid = h
            .attach(
                "pid",
                Selection {
                    pids: vec![7],
                    ..Default::default()
                },
                false,
                Peer::default(),
            )
            .unwrap();
        let by_exe = h
            .attach(
                "exe",
                Selection {
                    exe_globs: vec!["*/nginx".into()],
                    ..Default::default()
                },
                false,
                Peer::default(),
            )
            .unwrap();
        let by_port = h
            .attach(
                "port",
                Selection {
                    ports: tandem_proto::selection::parse_port_ranges("8000-8999").unwrap(),
                    ..Default::default()
                },
                false,
                Peer::default(),
            )
            .unwrap();
        let (start, serve) = (started, accepted);
        h.publish(vec![
            start(7, "/bin/seven"),
            start(8, "/usr/sbin/nginx"),
            start(9, "/usr/bin/python3"),
            serve(9, 8080),
            data(9, 1),
            data(10, 2), // unknown, unselected process
        ]);
        let pids = |a: &Attachment| -> Vec<u32> {
            batch(&h, a).events.iter().filter_map(Event::pid).collect()
        };
        assert_eq!(pids(&by_pid), [7]);
        assert_eq!(pids(&by_exe), [8]);
        // Selected from the connection on; its ProcessStarted comes first.
        let port_events = batch(&h, &by_port).events;
        assert!(matches!(
            port_events[0].kind,
            Some(EventKind::ProcessStarted(_))
        ));
        assert_eq!(
            port_events
                .iter()
                .filter_map(Event::pid)
                .collect::<Vec<_>>(),
            [9, 9, 9]
        );
        assert_eq!(h.info().events_unrouted, 2);
        let union = h.selection().borrow().clone().unwrap();
        assert_eq!(union.pids, [7]);
        assert_eq!(union.exe_globs, ["*/nginx"]);
    }

    #[test]
    fn late_selectors_learn_the_process_first() {
        let h = hub(100, 100);
        let early = h
            .attach("early", Selection::default(), false, Peer::default())
            .unwrap();
        let started = started(5, "/usr/sbin/nginx");
        h.publish(vec![started]);
        assert_eq!(batch(&h, &early).events.len(), 1);
        // A subscriber attaching later gets the ProcessStarted before new events...
        let late = h
            .attach(
                "late",
                Selection {
                    ports: tandem_proto::selection::parse_port_ranges("80").unwrap(),
                    exe_globs: vec!["*/nginx".into()],
                    ..Default::default()
                },
                false,
                Peer::default(),
            )
            .unwrap();
        h.publish(vec![data(5, 1)]);
        let kinds = |b: EventBatch| -> Vec<&'static str> {
            b.events
                .iter()
                .map(|e| match e.kind {
                    Some(EventKind::ProcessStarted(_)) => "started",
                    Some(EventKind::Data(_)) => "data",
                    _ => "other",
                })
                .collect()
        };
        assert_eq!(kinds(batch(&h, &late)), ["started", "data"]);
        // ...and the early one does not get it twice.
        assert_eq!(kinds(batch(&h, &early)), ["data"]);
    }

    #[test]
    fn unacknowledged_batches_go_to_the_next_connection() {
        let h = hub(100, 2);
        let first = h
            .attach("p", Selection::default(), true, Peer::default())
            .unwrap();
        h.publish((0..5).map(|n| data(1, n)).collect());
        let b1 = batch(&h, &first);
        let b2 = batch(&h, &first);
        assert_eq!((b1.subscription_seq, b2.subscription_seq), (1, 3));
        assert!(h.ack("p", b1.subscription_epoch, 2, Bytes::new()));
        assert!(
            !h.ack("p", b1.subscription_epoch + 1, 2, Bytes::new()),
            "wrong epoch"
        );
        assert_eq!(h.info().subscribers[0].unacknowledged, 2);
        h.detach(&first);
        // The second batch was never acknowledged: it comes again, then what is new.
        let second = h
            .attach("p", Selection::default(), true, Peer::default())
            .unwrap();
        let again = batch(&h, &second);
        assert_eq!(again.subscription_seq, 3);
        assert_eq!(payloads(&again), ["2", "3"]);
        assert_eq!(payloads(&batch(&h, &second)), ["4"]);
        assert_eq!(h.info().subscribers[0].connections, 2);
    }

    /// Issue 17: a resumed subscription (a processor restarted under the same name)
    /// begins with the facts of the processes it selects, at positions the previous
    /// reader already processed: a new reader takes them, the same one skips them.
    #[test]
    fn a_resumed_subscription_begins_with_the_facts_of_its_processes() {
        let h = hub(100, 100);
        let first = h
            .attach("p", Selection::default(), true, Peer::default())
            .unwrap();
        let started = |pid: u32| Event {
            seq: 0,
            mono_ns: 0,
            kind: Some(EventKind::ProcessStarted(ProcessStarted {
                pid,
                exe_path: format!("/usr/bin/server{pid}"),
                ..Default::default()
            })),
        };
        h.publish(vec![started(7), started(5), data(5, 0), data(7, 1)]);
        let b = batch(&h, &first);
        assert_eq!((b.subscription_seq, b.events.len()), (1, 4));
        assert!(h.ack("p", b.subscription_epoch, 4, Bytes::new()));
        h.detach(&first);
        // Everything was acknowledged; a new processor resumes the subscription.
        let second = h
            .attach("p", Selection::default(), true, Peer::default())
            .unwrap();
        let facts = batch(&h, &second);
        let pids: Vec<u32> = facts
            .events
            .iter()
            .map(|e| match &e.kind {
                Some(EventKind::ProcessStarted(p)) => p.pid,
                other => panic!("only facts first: {other:?}"),
            })
            .collect();
        assert_eq!(pids, [5, 7]);
        // Just before the next new event's position (5): 3 and 4.
        assert_eq!(facts.subscription_seq, 3);
        h.publish(vec![data(5, 2)]);
        let next = batch(&h, &second);
        assert_eq!(
            (next.subscription_seq, payloads(&next)),
            (5, vec!["2".to_string()])
        );
        // With a batch to send again, the facts lead it.
        h.detach(&second);
        let third = h
            .attach("p", Selection::default(), true, Peer::default())
            .unwrap();
        // Nothing of the second reader was acknowledged: its facts batch (3, 4) and
        // the data (5) come again, the facts of now (1, 2) leading them.
        let again = batch(&h, &third);
        assert_eq!((again.subscription_seq, again.events.len()), (1, 4));
        assert!(again
            .events
            .iter()
            .all(|e| matches!(e.kind, Some(EventKind::ProcessStarted(_)))));
        let then = batch(&h, &third);
        assert_eq!(
            (then.subscription_seq, payloads(&then)),
            (5, vec!["2".to_string()])
        );
    }

    #[test]
    fn the_resume_state_and_the_ports_seen_go_to_the_next_connection() {
        let h = hub(100, 100);
        let first = h
            .attach("p", Selection::default(), true, Peer::default())
            .unwrap();
        h.publish(vec![
            started(5, "/usr/bin/python3"),
            accepted(5, 8080),
            data(5, 0),
            data(5, 1),
        ]);
        let b = batch(&h, &first);
        assert!(b.resume_state.is_empty(), "no state was left yet");
        assert!(h.ack("p", b.subscription_epoch, 4, Bytes::from_static(b"state-1")));
        h.detach(&first);
        let second = h
            .attach("p", Selection::default(), true, Peer::default())
            .unwrap();
        let again = batch(&h, &second);
        assert_eq!(&again.resume_state[..], b"state-1");
        assert_eq!(
            again.subscription_seq, 4,
            "the facts just before what comes next"
        );
        match &again.events[..] {
            [Event {
                kind: Some(EventKind::ProcessStarted(p)),
                ..
            }] => assert_eq!(p.ports, [8080]),
            other => panic!("the facts: {other:?}"),
        }
        h.publish(vec![data(5, 2)]);
        let next = batch(&h, &second);
        assert!(
            next.resume_state.is_empty(),
            "only the first batch carries it"
        );
    }

    #[test]
    fn unacknowledged_events_count_against_the_bound() {
        let h = hub(4, 100);
        let a = h
            .attach("p", Selection::default(), true, Peer::default())
            .unwrap();
        h.publish((0..4).map(|n| data(1, n)).collect());
        // At most half the capacity may be in flight unacknowledged.
        assert_eq!(payloads(&batch(&h, &a)), ["0", "1"]);
        assert!(matches!(h.next_batch(&a), Next::Empty));
        h.publish(vec![data(1, 4)]); // 2 held + 2 queued = full: dropped
        assert_eq!(h.info().subscribers[0].dropped, 1);
        assert!(h.ack("p", a.subscription.epoch, 2, Bytes::new()));
        assert_eq!(payloads(&batch(&h, &a)), ["2", "3", "loss1"]);
    }

    #[test]
    fn a_close_after_the_process_exited_still_reaches_its_subscriber() {
        let h = hub(100, 100);
        let by_port = h
            .attach(
                "port",
                Selection {
                    ports: tandem_proto::selection::parse_port_ranges("8080").unwrap(),
                    ..Default::default()
                },
                false,
                Peer::default(),
            )
            .unwrap();
        let ev = |kind: EventKind| Event {
            seq: 0,
            mono_ns: 0,
            kind: Some(kind),
        };
        h.publish(vec![
            ev(EventKind::ConnectionOpened(ConnectionOpened {
                pid: 3,
                conn_id: 9,
                peer: Some(SocketAddress {
                    ip: vec![127, 0, 0, 1].into(),
                    port: 8080,
                }),
                role: Role::Client as i32,
                ..Default::default()
            })),
            ev(EventKind::ProcessExited(v1::ProcessExited {
                pid: 3,
                exit_code: 0,
            })),
            ev(EventKind::ConnectionClosed(v1::ConnectionClosed {
                pid: 3,
                conn_id: 9,
                ..Default::default()
            })),
        ]);
        assert_eq!(batch(&h, &by_port).events.len(), 3);
        assert_eq!(h.info().events_unrouted, 0);
        // Forgotten after the grace period.
        h.expire(Instant::now() + EXITED_GRACE + Duration::from_secs(1));
        h.publish(vec![ev(EventKind::ConnectionClosed(
            v1::ConnectionClosed {
                pid: 3,
                conn_id: 10,
                ..Default::default()
            },
        ))]);
        assert_eq!(h.info().events_unrouted, 1);
    }

    #[test]
    fn a_second_connection_takes_the_subscription_over() {
        let h = hub(10, 10);
        let old = h
            .attach("p", Selection::default(), false, Peer::default())
            .unwrap();
        let new = h
            .attach("p", Selection::default(), false, Peer::default())
            .unwrap();
        assert!(matches!(h.next_batch(&old), Next::TakenOver));
        h.detach(&old); // must not disconnect the newer connection
        assert!(h.info().subscribers[0].connected);
        h.publish(vec![data(1, 1)]);
        assert_eq!(payloads(&batch(&h, &new)), ["1"]);
    }

    fn backpressure_hub(capacity: usize) -> Arc<Hub> {
        Hub::new(HubConfig {
            queue_capacity: capacity,
            max_batch: 2,
            backpressure: true,
            ..HubConfig::default()
        })
    }

    #[test]
    fn without_backpressure_waiting_for_room_never_waits() {
        let h = hub(2, 100);
        let _a = h
            .attach("p", Selection::default(), false, Peer::default())
            .unwrap();
        h.publish((0..3).map(|n| data(1, n)).collect());
        assert!(!h.backpressure());
        assert!(h.wait_for_room(10).now_or_never().is_some());
    }

    #[test]
    fn with_backpressure_a_full_queue_holds_the_source_and_drops_nothing() {
        let h = backpressure_hub(4);
        let a = h
            .attach("", Selection::default(), false, Peer::default())
            .unwrap();
        assert!(h.wait_for_room(4).now_or_never().is_some(), "empty queue");
        h.publish((0..3).map(|n| data(1, n)).collect());
        assert!(
            h.wait_for_room(1).now_or_never().is_some(),
            "3 + 1 fit in 4"
        );
        assert!(h.wait_for_room(2).now_or_never().is_none(), "3 + 2 do not");
        // A batch larger than the capacity waits for an empty queue, and is then
        // queued whole: nothing is dropped.
        assert!(h.wait_for_room(6).now_or_never().is_none());
        assert_eq!(payloads(&batch(&h, &a)), ["0", "1"]);
        assert!(h.wait_for_room(2).now_or_never().is_some());
        assert_eq!(payloads(&batch(&h, &a)), ["2"]);
        assert!(h.wait_for_room(6).now_or_never().is_some());
        h.publish((3..9).map(|n| data(1, n)).collect());
        let mut got = Vec::new();
        while let Next::Batch(b) = h.next_batch(&a) {
            got.extend(payloads(&b));
        }
        assert_eq!(got, ["3", "4", "5", "6", "7", "8"]);
        assert_eq!(h.info().subscribers[0].dropped, 0);
    }

    #[tokio::test]
    async fn draining_wakes_a_waiting_source() {
        let h = backpressure_hub(2);
        let a = h
            .attach("", Selection::default(), false, Peer::default())
            .unwrap();
        h.publish((0..2).map(|n| data(1, n)).collect());
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.wait_for_room(1).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the queue is full");
        assert_eq!(payloads(&batch(&h, &a)), ["0", "1"]);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the drain")
            .unwrap();
    }

    #[test]
    fn named_subscriptions_expire_after_retention_and_ephemeral_ones_at_once() {
        let h = Hub::new(HubConfig {
            retention: Duration::from_secs(60),
            ..HubConfig::default()
        });
        let named = h
            .attach("p", Selection::default(), false, Peer::default())
            .unwrap();
        let eph = h
            .attach("", Selection::default(), false, Peer::default())
            .unwrap();
        h.detach(&eph);
        assert_eq!(h.info().subscribers.len(), 1);
        h.detach(&named);
        h.expire(Instant::now());
        assert_eq!(h.info().subscribers.len(), 1, "still within retention");
        h.expire(Instant::now() + Duration::from_secs(61));
        assert!(h.info().subscribers.is_empty());
        assert!(h.selection().borrow().is_none());
    }
}
