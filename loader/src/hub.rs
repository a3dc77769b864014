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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tandem_proto::v1::{self, AttachedProbe, InfoResponse, LossLocation, Role, SubscriberInfo};
use tandem_proto::{selection, Event, EventBatch, EventKind, Selection};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::selection::{Matcher, ProcessFacts, SelectionError};

/// Most ports remembered per process for port-based selection.
const MAX_PORTS_PER_PROCESS: usize = 64;

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
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            queue_capacity: 65_536,
            max_batch: 512,
            retention: Duration::from_secs(300),
            max_processes: 65_536,
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
}

/// One subscription's queue and counters.
pub struct Subscription {
    id: u64,
    name: String,
    capacity: usize,
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
        })
    }

    /// Follows the union of all subscriptions' selections.
    pub fn selection(&self) -> watch::Receiver<Option<Selection>> {
        self.union_tx.subscribe()
    }

    /// Follows the number of subscriptions (connected or retained).
    pub fn subscriber_count(&self) -> watch::Receiver<usize> {
        self.subscribers_tx.subscribe()
    }

    /// Sets the CLOCK_REALTIME - CLOCK_MONOTONIC offset stamped on batches.
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
                        st.processes.remove(&pid);
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
        if let Some(entry) = st.processes.get_mut(&pid) {
            if changed_facts(&mut entry.facts) {
                entry.selected_by = selected_by(&st.subscriptions, pid, &entry.facts);
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
                    queued = lock(&s.queue).events.len(),
                    taken_over = was_connected,
                    "subscriber resumed its subscription"
                );
                *lock(&s.matcher) = matcher;
                s
            }
            None => {
                let s = Arc::new(Subscription {
                    id: st.next_subscription_id,
                    name: name.to_owned(),
                    capacity: self.config.queue_capacity,
                    matcher: Mutex::new(matcher),
                    queue: Mutex::new(Queue {
                        events: VecDeque::new(),
                        lost_pending: 0,
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
        let queued = lock(&s.queue).events.len();
        if s.name.is_empty() {
            let mut st = lock(&self.state);
            st.subscriptions.retain(|x| x.id != s.id);
            self.reselect(&mut st);
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

    /// Ends named subscriptions left unclaimed for longer than the retention time.
    pub fn expire(&self, now: Instant) {
        let mut st = lock(&self.state);
        let before = st.subscriptions.len();
        st.subscriptions.retain(|s| {
            let since = *lock(&s.disconnected_at);
            let expired = !s.connected.load(Relaxed)
                && since.is_some_and(|t| now.duration_since(t) >= self.config.retention);
            if expired {
                warn!(
                    subscriber = %s.name,
                    discarded = lock(&s.queue).events.len(),
                    dropped = s.dropped.load(Relaxed),
                    retention_secs = self.config.retention.as_secs(),
                    "subscription expired unclaimed; its queued events are discarded"
                );
            }
            !expired
        });
        if st.subscriptions.len() != before {
            self.reselect(&mut st);
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
            entry.selected_by = selected_by(subscriptions, *pid, &entry.facts);
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
        let mut q = lock(&s.queue);
        if s.generation.load(Relaxed) != attachment.generation {
            return Next::TakenOver;
        }
        let n = q.events.len().min(self.config.max_batch);
        let mut events: Vec<Event> = q.events.drain(..n).collect();
        if q.events.is_empty() && q.lost_pending > 0 {
            events.push(subscriber_loss(q.lost_pending));
            q.lost_pending = 0;
        }
        drop(q);
        if events.is_empty() {
            return Next::Empty;
        }
        let len = events.len() as u64;
        s.delivered.fetch_add(len, Relaxed);
        Next::Batch(EventBatch {
            subscription_seq: s.next_subscription_seq.fetch_add(len, Relaxed),
            events,
            realtime_offset_ns: self.realtime_offset_ns.load(Relaxed),
        })
    }

    /// Everything `Info` reports.
    pub fn info(&self) -> InfoResponse {
        let st = lock(&self.state);
        let subscribers = st
            .subscriptions
            .iter()
            .map(|s| {
                let peer = *lock(&s.peer);
                SubscriberInfo {
                    name: s.name.clone(),
                    connected: s.connected.load(Relaxed),
                    peer_pid: peer.pid,
                    peer_uid: peer.uid,
                    peer_gid: peer.gid,
                    selection: Some(lock(&s.matcher).selection().clone()),
                    queue_depth: lock(&s.queue).events.len() as u64,
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

    /// Queues one event, or counts it dropped when the queue is full.
    fn push(&self, event: Event) -> bool {
        let mut q = lock(&self.queue);
        if q.events.len() >= self.capacity {
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

fn subscriber_loss(count: u64) -> Event {
    Event::loss(
        monotonic_ns(),
        count,
        v1::LossLocation::SubscriberQueue,
        "subscriber queue full: the processor did not keep up (or was away) and the loader's \
         bounded queue for it overflowed",
    )
}

fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "(ephemeral)"
    } else {
        name
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    clock_ns(nix::time::ClockId::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC, in nanoseconds.
pub fn realtime_offset_ns() -> i64 {
    let mono = monotonic_ns() as i64;
    let real = clock_ns(nix::time::ClockId::CLOCK_REALTIME) as i64;
    real - mono
}

fn clock_ns(clock: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(clock)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}
