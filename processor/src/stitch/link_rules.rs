//! What the linker counts and which runtimes it links by thread (see `link.rs`).

/// Why a client span was not made a child of a server span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unlinked {
    /// Its process serves no requests (a plain client), or its thread (goroutine)
    /// had no server request in flight (a background job).
    NoServerRequest,
    /// Its thread had several server requests in flight (HTTP/1.x pipelining,
    /// HTTP/2 streams served by one thread): the parent is ambiguous.
    Ambiguous,
    /// The process's runtime moves requests between threads or serves many on one
    /// (or is not known to serve a request on one thread): not linked by thread.
    Runtime,
    /// The process was seen serving two connections' requests on one thread at once.
    Multiplexing,
    /// No `ProcessStarted` was seen for the process: its runtime is unknown.
    UnknownProcess,
}

impl Unlinked {
    pub const ALL: [Unlinked; 5] = [
        Unlinked::NoServerRequest,
        Unlinked::Ambiguous,
        Unlinked::Runtime,
        Unlinked::Multiplexing,
        Unlinked::UnknownProcess,
    ];

    /// The `reason` label of the counters.
    pub fn name(self) -> &'static str {
        match self {
            Unlinked::NoServerRequest => "no_server_request",
            Unlinked::Ambiguous => "ambiguous",
            Unlinked::Runtime => "runtime",
            Unlinked::Multiplexing => "multiplexing",
            Unlinked::UnknownProcess => "unknown_process",
        }
    }
}

/// What the linker did, since the stitcher was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Server spans continuing a `traceparent` of their request.
    pub server_by_traceparent: u64,
    /// Server spans made children of the client span on the other end.
    pub server_by_connection: u64,
    /// Server spans that are roots (no `traceparent`, the client end not traced or
    /// no request in flight on it).
    pub server_roots: u64,
    /// Client spans continuing the `traceparent` the process sent.
    pub client_by_traceparent: u64,
    /// Client spans made children of the server request in flight on their thread.
    pub client_by_thread: u64,
    /// Client spans made children of the server request in flight on their
    /// goroutine (or its creator), in Go processes.
    pub client_by_goroutine: u64,
    /// Client spans left as roots, by reason (indexed as [`Unlinked::ALL`]).
    pub client_unlinked: [u64; 5],
    /// Processes found multiplexing requests on a thread (no longer linked by thread).
    pub multiplexing_processes: u64,
    /// Requests not remembered: [`MAX_ENTRIES`](super::link::MAX_ENTRIES) were in flight.
    pub dropped: u64,
    /// Requests forgotten after [`STALE_NS`](super::link::STALE_NS) in flight.
    pub stale: u64,
    /// Of `server_by_connection`, server requests whose event came before their
    /// client's (on loopback, the server's read can return first) and were linked
    /// when the client's came.
    pub late_clients: u64,
}

impl LinkStats {
    /// Client spans left as roots for `reason`.
    pub fn unlinked(&self, reason: Unlinked) -> u64 {
        self.client_unlinked[reason as usize]
    }

    /// Every client span left as a root.
    pub fn unlinked_total(&self) -> u64 {
        self.client_unlinked.iter().sum()
    }
}

/// Whether a process's client calls are linked by thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRule {
    /// A runtime that serves each request on one thread from start to end.
    Linked,
    /// A runtime that does not (or is not known to).
    NotThreadPerRequest,
    /// Seen serving two connections' requests on one thread at once.
    Multiplexing,
}

/// The rule for a process from its executable and command line (see the module
/// documentation for the list).
pub fn thread_rule(exe_path: &str, cmdline: &[String]) -> ThreadRule {
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_ascii_lowercase();
    let exe = base(exe_path);
    let interpreter = |name: &str| {
        ["python", "ruby", "perl", "php"]
            .iter()
            .any(|p| name.starts_with(p))
            || name == "httpd"
            || name == "apache2"
    };
    if !interpreter(&exe) {
        return ThreadRule::NotThreadPerRequest;
    }
    const EVENT_LOOPS: [&str; 9] = [
        "uvicorn",
        "hypercorn",
        "daphne",
        "gevent",
        "eventlet",
        "aiohttp",
        "tornado",
        "sanic",
        "twisted",
    ];
    let event_loop = cmdline.iter().any(|arg| {
        let arg = arg.to_ascii_lowercase();
        EVENT_LOOPS.iter().any(|e| arg.contains(e))
    });
    if event_loop {
        ThreadRule::NotThreadPerRequest
    } else {
        ThreadRule::Linked
    }
}
