//! Linking spans into traces on evidence, without touching the traffic.
//!
//! Every transaction gets its trace identity ([`TraceIds`]) when its request
//! *begins* (HTTP: its header block was read; HTTP/2: its HEADERS; database
//! operations: when they are reported, see below), so a server span's ids exist
//! before the client calls made while serving it end, and children can be exported
//! before their parent. The rules, in precedence order:
//!
//! **Server spans** (the process received the request):
//! 1. a valid W3C `traceparent` in the request (the application propagates context
//!    itself): its trace id and parent, its sampled flag ([`LinkKind::TraceParent`]);
//! 2. else *both ends of the connection*: the client side of this very connection is
//!    traced by this processor (its local address/port is this server's peer
//!    address/port and the reverse) and has a request in flight on it — the oldest
//!    one for HTTP/1.x and the database protocols (requests are answered in order),
//!    the one of the same stream id for HTTP/2 — then the server span is a child of
//!    that client span, in its trace ([`LinkKind::Connection`]). Over loopback
//!    addresses both processes must be in the same container (or both on the host):
//!    another network namespace may use the same loopback address and port. Each
//!    data record is stamped when its own socket call returns, so on loopback the
//!    server's read may be seen just before the client's send: a server request that
//!    began as a root is still adopted by a client request of its connection that
//!    comes at most [`LATE_CLIENT_NS`] later, as long as no client call of the
//!    server has been linked to it yet (their trace id would differ);
//! 3. else a root with a new trace id.
//!
//! **Client spans** (the process sent the request):
//! 1. a valid `traceparent` the process itself sent: a child of the span it names
//!    (the application's own span), in its trace;
//! 2. else *the thread*: the request's first byte was written by thread T, and T has
//!    exactly one server request of the same process in flight (its request seen, its
//!    response not finished) that began before it — then the client span is a child
//!    of that server span ([`LinkKind::Thread`]). Only for processes whose runtime
//!    serves a request on one thread from start to end ([`ThreadRule`]);
//! 3. else, in a Go process, *the goroutine*: the request's bytes were written for
//!    goroutine G (the loader names it: for a net/http client request written by
//!    the connection's writer goroutine, the goroutine that called `roundTrip`),
//!    and G, else the goroutine that created G, has exactly one server request of
//!    the same process in flight that began before it (read by that goroutine:
//!    net/http serves an HTTP/1.x connection's requests on one goroutine, grpc-go
//!    reads a connection's frames on the goroutine that starts each handler) —
//!    then the client span is a child of that server span ([`LinkKind::Goroutine`]).
//!    Goroutine ids are unique for a goroutine's lifetime, so a goroutine that
//!    outlives its creator never finds a newer one;
//! 4. else a root, and the reason it was not linked is counted ([`Unlinked`]).
//!
//! Chains nest: a client span linked by thread is the parent a downstream server
//! span finds on the connection, whose own client calls link by thread again.
//!
//! **Runtimes.** Linking by thread is right only where a thread serves one request
//! at a time and makes its calls itself. tandem links by thread for processes whose
//! executable is a Python, Ruby, Perl or PHP interpreter or Apache httpd
//! (thread-per-request and process-per-request servers: `ThreadingHTTPServer`,
//! WSGI servers, Puma, mod_php, php-fpm), unless their command line names an event
//! loop server (`uvicorn`, `hypercorn`, `daphne`, `gevent`, `eventlet`, `aiohttp`,
//! `tornado`, `sanic`, `twisted`). Any process seen with two server requests of
//! different connections in flight on one thread is multiplexing requests on its
//! threads (an event loop) and is never linked by thread again. Everything else
//! (Node.js, Go, the JVM, tokio and other async Rust, nginx, Envoy, unknown
//! executables) is not linked by thread: their client spans stay roots, counted as
//! [`Unlinked::Runtime`]. Linking by connection does not depend on the runtime.
//!
//! **Database operations** are given their ids when they are reported (their answer
//! ended): a client operation still finds its thread's server request in flight (the
//! thread waits for the answer in a thread-per-request runtime), but a database
//! server's span is reported before its client's, so it is not linked by connection.
//!
//! **Sampling** follows the trace's root: every span linked below a span carries the
//! root's trace id and the `sampled` flag of the `traceparent` the root continued
//! (if any), the two inputs of every sampler (`traceidratio` decides from the trace
//! id alone), so a trace is kept or dropped whole.
//!
//! **Bounds.** At most [`MAX_ENTRIES`] requests in flight are remembered (server
//! requests per thread, client requests waiting for their server); beyond, a request
//! is not remembered (counted in [`LinkStats::dropped`]) and links to it are missed,
//! never wrong. Entries older than [`STALE_NS`] are forgotten.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::net::SocketAddr;

use tandem_proto::v1::ProcessStarted;

use crate::model::{LinkKind, Side, TraceIds};
use crate::pipeline::span::{parse_traceparent, TraceParent};

use super::ids::IdSource;
use crate::protocols::Task;

pub use super::link_rules::{thread_rule, LinkStats, ThreadRule, Unlinked};
use super::session::ConnMeta;
use super::table::{ConnKey, FastMap, SeededMap};

/// Most requests in flight remembered for linking.
pub const MAX_ENTRIES: usize = 65_536;
/// Requests in flight longer than this (10 minutes) are forgotten.
pub const STALE_NS: u64 = 600_000_000_000;
/// How many requests begin between two sweeps of stale entries.
const SWEEP_EVERY: u32 = 4096;

#[derive(Debug)]
struct Process {
    rule: ThreadRule,
    /// It began a server request (else it is a plain client: its calls have no
    /// parent to find, whatever its runtime).
    serves: bool,
    /// Hash of the container id (0: the host or not in a container).
    container: u64,
}

/// What server requests in flight are remembered by: the thread that read them,
/// or in a Go process the goroutine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum On {
    Thread(u32),
    Goroutine(u64),
}

impl On {
    fn of(task: Task) -> On {
        if task.goroutine != 0 {
            On::Goroutine(task.goroutine)
        } else {
            On::Thread(task.tid)
        }
    }
}

/// A server request in flight on a thread (or goroutine).
#[derive(Debug, Clone, Copy)]
struct InFlight {
    conn: ConnKey,
    begin_ns: u64,
    ids: TraceIds,
    /// Client spans linked to it by thread so far (its trace id was copied).
    children: u32,
}

impl InFlight {
    fn span_id(&self) -> u64 {
        self.ids.span_id
    }
}

/// A client request sent and not yet seen by its server.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// HTTP/2 stream id (0 otherwise).
    stream: u32,
    begin_ns: u64,
    pid: u32,
    container: u64,
    ids: TraceIds,
    /// The server process that took it as its parent (0: none yet). Taken entries
    /// stay until the client's transaction ends, which reads it.
    taken_by: u32,
}

/// A server request that began as a root, which a late client may still adopt.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    pid: u32,
    on: On,
    stream: u32,
    begin_ns: u64,
    span_id: u64,
    container: u64,
}

/// How much earlier than its client's a server request's first event may be: each
/// data record is stamped when its own socket call returns, and on loopback the
/// server's read can return (on another CPU) just before the client's send call
/// does, so the server's event may come first.
pub const LATE_CLIENT_NS: u64 = 1_000_000;

/// `(client address, server address)` of a connection, as the client sees it.
type Ends = (SocketAddr, SocketAddr);

/// The linker of a stitcher; see the module documentation.
#[derive(Debug)]
pub struct Linker {
    processes: FastMap<u32, Process>,
    /// Server requests in flight by the process and the thread (goroutine) that
    /// read them.
    threads: FastMap<(u32, On), Vec<InFlight>>,
    /// Client requests in flight by the connection's ends.
    clients: SeededMap<Ends, VecDeque<Waiting>>,
    /// Server requests that began as roots in the last [`LATE_CLIENT_NS`], by the
    /// connection's ends (as the client sees them): their client's event may still
    /// come (see [`Linker::adopt`]).
    awaiting: SeededMap<Ends, Awaiting>,
    entries: usize,
    newest_ns: u64,
    until_sweep: u32,
    hasher: RandomState,
    /// Span ids, and where each request began (see `crate::resume`).
    ids: IdSource,
    stats: LinkStats,
}

impl Default for Linker {
    fn default() -> Self {
        let hasher = RandomState::new();
        let seed = hasher.hash_one(std::time::SystemTime::now());
        Linker {
            processes: FastMap::default(),
            threads: FastMap::default(),
            clients: SeededMap::default(),
            awaiting: SeededMap::default(),
            entries: 0,
            newest_ns: 0,
            until_sweep: SWEEP_EVERY,
            hasher,
            ids: IdSource::new(seed),
            stats: LinkStats::default(),
        }
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

impl Linker {
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Requests in flight remembered now.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// A process started (or was found running): its runtime and container.
    pub fn on_process(&mut self, p: &ProcessStarted) {
        let container = if p.container_id.is_empty() {
            0
        } else {
            self.hasher.hash_one(&p.container_id) | 1
        };
        let rule = thread_rule(&p.exe_path, &p.cmdline);
        let entry = self.processes.entry(p.pid).or_insert(Process {
            rule,
            serves: false,
            container,
        });
        entry.container = container;
        if entry.rule != ThreadRule::Multiplexing {
            entry.rule = rule;
        }
    }

    /// A process exited: what it had in flight is forgotten.
    pub fn on_exit(&mut self, pid: u32) {
        self.processes.remove(&pid);
        let mut removed = 0;
        self.threads.retain(|(p, _), v| {
            if *p == pid {
                removed += v.len();
                false
            } else {
                true
            }
        });
        self.entries -= removed;
    }

    /// The events fed next are at position `seq` of the subscription of `epoch`
    /// (see [`IdSource::at`]).
    pub fn at(&mut self, epoch: u64, seq: u64) {
        self.ids.at(epoch, seq);
    }

    pub fn set_key(&mut self, key: u64) {
        self.ids.set_key(key);
    }

    /// A request of connection `meta` began on `task` at `begin_ns`, seen
    /// from `side`; `stream` is its HTTP/2 stream id (0 otherwise), `traceparent`
    /// the request's header if it has one. Returns the ids of its span; the
    /// transaction must be handed to [`Linker::end`] when it is reported.
    pub fn begin(
        &mut self,
        meta: &ConnMeta,
        side: Side,
        task: Task,
        begin_ns: u64,
        stream: u32,
        traceparent: Option<&str>,
    ) -> TraceIds {
        self.newest_ns = self.newest_ns.max(begin_ns);
        self.until_sweep -= 1;
        if self.until_sweep == 0 {
            self.until_sweep = SWEEP_EVERY;
            self.sweep();
        }
        let tp = traceparent.and_then(parse_traceparent);
        let begin = self.ids.begin();
        let ids = match side {
            Side::Server => self.begin_server(meta, On::of(task), begin_ns, stream, tp),
            Side::Client => self.begin_client(meta, task, begin_ns, stream, tp),
        };
        TraceIds { begin, ..ids }
    }

    fn begin_server(
        &mut self,
        meta: &ConnMeta,
        on: On,
        begin_ns: u64,
        stream: u32,
        tp: Option<TraceParent>,
    ) -> TraceIds {
        let ids = if let Some(ids) = self.ids.continuing(tp) {
            self.stats.server_by_traceparent += 1;
            ids
        } else if let Some((client, client_pid)) = self.take_client(meta, stream) {
            self.stats.server_by_connection += 1;
            TraceIds {
                peer_pid: client_pid,
                ..self.ids.child_of(&client, LinkKind::Connection)
            }
        } else {
            self.stats.server_roots += 1;
            self.ids.root()
        };
        if self.entries >= MAX_ENTRIES {
            self.stats.dropped += 1;
            return ids;
        }
        if ids.link == LinkKind::Root && self.awaiting.len() < MAX_ENTRIES {
            if let (Some(local), Some(peer)) = (meta.local, meta.peer) {
                let container = self.processes.get(&meta.pid).map_or(0, |p| p.container);
                self.awaiting.insert(
                    (canonical(peer), canonical(local)),
                    Awaiting {
                        pid: meta.pid,
                        on,
                        stream,
                        begin_ns,
                        span_id: ids.span_id,
                        container,
                    },
                );
            }
        }
        if let Some(p) = self.processes.get_mut(&meta.pid) {
            p.serves = true;
        }
        let conn = (meta.pid, meta.conn_id);
        let on_thread = self.threads.entry((meta.pid, on)).or_default();
        // A goroutine serves one connection (HTTP/2: its streams); a thread serving
        // two at once is an event loop.
        let multiplexing = matches!(on, On::Thread(_)) && on_thread.iter().any(|f| f.conn != conn);
        on_thread.push(InFlight {
            conn,
            begin_ns,
            ids,
            children: 0,
        });
        self.entries += 1;
        if multiplexing {
            if let Some(p) = self.processes.get_mut(&meta.pid) {
                if p.rule != ThreadRule::Multiplexing {
                    p.rule = ThreadRule::Multiplexing;
                    self.stats.multiplexing_processes += 1;
                }
            }
        }
        ids
    }

    /// The oldest client request in flight on the other end of `meta` (of `stream`
    /// for HTTP/2) not yet taken, taken: one server request is its one child.
    /// Returns its ids and its pid.
    fn take_client(&mut self, meta: &ConnMeta, stream: u32) -> Option<(TraceIds, u32)> {
        let (local, peer) = (canonical(meta.local?), canonical(meta.peer?));
        let container = self.processes.get(&meta.pid).map_or(0, |p| p.container);
        let waiting = self.clients.get_mut(&(peer, local))?;
        let w = waiting
            .iter_mut()
            .find(|w| w.taken_by == 0 && w.stream == stream)?;
        if local.ip().is_loopback() && w.container != container {
            return None;
        }
        w.taken_by = meta.pid.max(1);
        Some((w.ids, w.pid))
    }

    fn begin_client(
        &mut self,
        meta: &ConnMeta,
        task: Task,
        begin_ns: u64,
        stream: u32,
        tp: Option<TraceParent>,
    ) -> TraceIds {
        let ids = if let Some(ids) = self.ids.continuing(tp) {
            self.stats.client_by_traceparent += 1;
            ids
        } else {
            let found = if task.goroutine != 0 {
                self.server_on_goroutine(meta.pid, task, begin_ns)
                    .map(|s| (s, LinkKind::Goroutine))
            } else {
                self.server_on_thread(meta.pid, task.tid, begin_ns)
                    .map(|s| (s, LinkKind::Thread))
            };
            match found {
                Ok((server, link)) => {
                    if link == LinkKind::Goroutine {
                        self.stats.client_by_goroutine += 1;
                    } else {
                        self.stats.client_by_thread += 1;
                    }
                    self.ids.child_of(&server, link)
                }
                Err(reason) => {
                    self.stats.client_unlinked[reason as usize] += 1;
                    self.ids.root()
                }
            }
        };
        let (Some(local), Some(peer)) = (meta.local, meta.peer) else {
            return ids;
        };
        if self.entries >= MAX_ENTRIES {
            self.stats.dropped += 1;
            return ids;
        }
        let container = self.processes.get(&meta.pid).map_or(0, |p| p.container);
        let ends = (canonical(local), canonical(peer));
        let taken_by = self.adopt(ends, meta.pid, container, stream, begin_ns, &ids);
        self.clients.entry(ends).or_default().push_back(Waiting {
            stream,
            begin_ns,
            pid: meta.pid,
            container,
            ids,
            taken_by,
        });
        self.entries += 1;
        ids
    }

    /// A client request (`ids`, of `pid`) began on connection `ends`: if its server's
    /// request began as a root just before (at most [`LATE_CLIENT_NS`] earlier: its
    /// event came first), with no client span linked to it yet, it becomes this
    /// request's child after all. Returns the server's pid (0: none adopted).
    fn adopt(
        &mut self,
        ends: Ends,
        pid: u32,
        container: u64,
        stream: u32,
        begin_ns: u64,
        ids: &TraceIds,
    ) -> u32 {
        let Some(a) = self.awaiting.get(&ends).copied() else {
            return 0;
        };
        let recent = a.begin_ns <= begin_ns && begin_ns - a.begin_ns <= LATE_CLIENT_NS;
        let same_place = !ends.1.ip().is_loopback() || a.container == container;
        if !recent || a.stream != stream || !same_place {
            return 0;
        }
        self.awaiting.remove(&ends);
        let Some(server) = self
            .threads
            .get_mut(&(a.pid, a.on))
            .and_then(|v| v.iter_mut().find(|f| f.span_id() == a.span_id))
        else {
            return 0;
        };
        if server.children > 0 || server.ids.link != LinkKind::Root {
            return 0;
        }
        server.ids = TraceIds {
            trace_id: ids.trace_id,
            parent_span_id: ids.span_id,
            link: LinkKind::Connection,
            remote_sampled: ids.remote_sampled,
            peer_pid: pid,
            ..server.ids
        };
        self.stats.server_roots -= 1;
        self.stats.server_by_connection += 1;
        self.stats.late_clients += 1;
        a.pid.max(1)
    }

    /// The one server request in flight on thread `tid` of `pid` that began before
    /// `begin_ns`, if the process is linked by thread.
    fn server_on_thread(
        &mut self,
        pid: u32,
        tid: u32,
        begin_ns: u64,
    ) -> Result<TraceIds, Unlinked> {
        match self.processes.get(&pid).map(|p| (p.rule, p.serves)) {
            None => return Err(Unlinked::UnknownProcess),
            Some((_, false)) => return Err(Unlinked::NoServerRequest),
            Some((ThreadRule::NotThreadPerRequest, _)) => return Err(Unlinked::Runtime),
            Some((ThreadRule::Multiplexing, _)) => return Err(Unlinked::Multiplexing),
            Some((ThreadRule::Linked, true)) => {}
        }
        self.one_in_flight(pid, On::Thread(tid), begin_ns)
            .unwrap_or(Err(Unlinked::NoServerRequest))
    }

    /// The one server request in flight on the goroutine of `task` (else on its
    /// creator) that began before `begin_ns`.
    fn server_on_goroutine(
        &mut self,
        pid: u32,
        task: Task,
        begin_ns: u64,
    ) -> Result<TraceIds, Unlinked> {
        match self.processes.get(&pid) {
            None => return Err(Unlinked::UnknownProcess),
            Some(p) if !p.serves => return Err(Unlinked::NoServerRequest),
            Some(_) => {}
        }
        if let Some(found) = self.one_in_flight(pid, On::Goroutine(task.goroutine), begin_ns) {
            return found;
        }
        if task.goroutine_parent == 0 {
            return Err(Unlinked::NoServerRequest);
        }
        self.one_in_flight(pid, On::Goroutine(task.goroutine_parent), begin_ns)
            .unwrap_or(Err(Unlinked::NoServerRequest))
    }

    /// The one server request in flight on `on` that began before `begin_ns`
    /// (its child count bumped); `None`: none; `Ambiguous`: several.
    fn one_in_flight(
        &mut self,
        pid: u32,
        on: On,
        begin_ns: u64,
    ) -> Option<Result<TraceIds, Unlinked>> {
        let mut found = self
            .threads
            .get_mut(&(pid, on))
            .into_iter()
            .flatten()
            .filter(|f| f.begin_ns <= begin_ns);
        match (found.next(), found.next()) {
            (None, _) => None,
            (Some(f), None) => {
                f.children += 1;
                Some(Ok(f.ids))
            }
            (Some(_), Some(_)) => Some(Err(Unlinked::Ambiguous)),
        }
    }

    /// A transaction that began with `ids` on `task` of connection `meta` was
    /// reported (answered, closed, lost): it is no longer in flight. Returns its final
    /// ids: a server span may have been adopted by a late client since it began, and
    /// `peer_pid` says which traced process on the other end it was linked with.
    pub fn end(&mut self, meta: &ConnMeta, side: Side, task: Task, ids: &TraceIds) -> TraceIds {
        match side {
            Side::Server => {
                let key = (meta.pid, On::of(task));
                let mut last = *ids;
                if let Some(v) = self.threads.get_mut(&key) {
                    if let Some(at) = v.iter().position(|f| f.span_id() == ids.span_id) {
                        last = v.swap_remove(at).ids;
                        self.entries -= 1;
                    }
                    if v.is_empty() {
                        self.threads.remove(&key);
                    }
                }
                // Where it began stays the transaction's (the entry kept its ids
                // as they were linked).
                last.begin = ids.begin;
                if let (Some(local), Some(peer)) = (meta.local, meta.peer) {
                    let ends = (canonical(peer), canonical(local));
                    if self
                        .awaiting
                        .get(&ends)
                        .is_some_and(|a| a.span_id == ids.span_id)
                    {
                        self.awaiting.remove(&ends);
                    }
                }
                last
            }
            Side::Client => {
                let (Some(local), Some(peer)) = (meta.local, meta.peer) else {
                    return *ids;
                };
                let ends = (canonical(local), canonical(peer));
                let mut taken_by = 0;
                if let Some(v) = self.clients.get_mut(&ends) {
                    if let Some(at) = v.iter().position(|w| w.ids.span_id == ids.span_id) {
                        taken_by = v.remove(at).map_or(0, |w| w.taken_by);
                        self.entries -= 1;
                    }
                    if v.is_empty() {
                        self.clients.remove(&ends);
                    }
                }
                TraceIds {
                    peer_pid: taken_by,
                    ..*ids
                }
            }
        }
    }

    /// Forgets requests in flight for longer than [`STALE_NS`].
    fn sweep(&mut self) {
        let Some(cutoff) = self.newest_ns.checked_sub(STALE_NS) else {
            return;
        };
        let mut removed = 0usize;
        self.threads.retain(|_, v| {
            let before = v.len();
            v.retain(|f| f.begin_ns >= cutoff);
            removed += before - v.len();
            !v.is_empty()
        });
        self.clients.retain(|_, v| {
            let before = v.len();
            v.retain(|w| w.begin_ns >= cutoff);
            removed += before - v.len();
            !v.is_empty()
        });
        self.entries -= removed;
        self.stats.stale += removed as u64;
        let newest = self.newest_ns;
        self.awaiting
            .retain(|_, a| newest.saturating_sub(a.begin_ns) <= LATE_CLIENT_NS);
    }
}
