//! Sending sampled spans over OTLP: a bounded queue in front of the OTLP transport.
//!
//! tandem's spans come from many processes, each with its own resource, so tandem
//! batches itself and puts every process of a batch in one request (one
//! `ResourceSpans` each). [`TraceExport::offer`] never waits: it encodes the span at
//! once, on the caller's thread, into the chunk being filled (grouped by process,
//! [`SpanGroups`]); the chunk goes to the export task at the end of each input
//! batch (or when it holds [`CHUNK`] spans). Spans beyond `max_queue_size` waiting
//! for export (in chunks, or not yet handed over) are dropped and counted. The task
//! joins chunks into a request of up to `max_export_batch_size` spans (or what came
//! within `batch_timeout`) by concatenating them — a protobuf concatenation of
//! requests is the request of all their spans — and keeps up to the transport's
//! `max_in_flight` exports running at once, each retried with backoff by the
//! transport. A collector that is down or slow therefore costs at most a full queue
//! (plus the request being filled and those in flight) of memory and never blocks
//! ingestion.
//!
//! Without a transport ([`TraceExport::encode_only`]) requests are assembled and
//! discarded: the throughput benchmark measures the same path without a network.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

use crate::export::encode::SpanGroups;
use crate::export::transport::Transport;
use crate::pipeline::resource::ProcessResource;
use crate::pipeline::span::Span;
use crate::resume::{Begin, Progress};
use opentelemetry::trace::SpanKind;

/// Told which spans the collector answered for (see `crate::resume`).
type Confirm = Arc<OnceLock<Arc<Progress>>>;

/// Defaults of the batching settings (see `config`: `otel_traces_export.*`).
pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 4096;
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `shutdown` waits for the queue to drain before abandoning it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Spans in one chunk handed to the task (at most).
pub const CHUNK: u64 = 512;

/// What happened to the spans offered for export.
#[derive(Debug, Default)]
pub struct TraceExportStats {
    /// Put in the queue.
    pub queued: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Accepted by the collector.
    pub exported: AtomicU64,
    /// Lost because the export failed after the transport's retries, or because
    /// the collector rejected them (partial success).
    pub failed: AtomicU64,
    /// Still queued when shutdown gave up.
    pub abandoned: AtomicU64,
    /// Requests sent (each with one or more processes' spans).
    pub requests: AtomicU64,
    /// Bytes of the encoded requests.
    pub bytes: AtomicU64,
    /// Of the dropped and the failed, the server spans (one per request served).
    pub server_dropped: AtomicU64,
    pub server_failed: AtomicU64,
}

/// A plain copy of [`TraceExportStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceExportCounts {
    pub queued: u64,
    pub dropped_queue_full: u64,
    pub exported: u64,
    pub failed: u64,
    pub abandoned: u64,
    pub requests: u64,
    pub bytes: u64,
    pub server_dropped: u64,
    pub server_failed: u64,
}

impl TraceExportCounts {
    /// Spans that will never reach the collector.
    pub fn lost(&self) -> u64 {
        self.dropped_queue_full + self.failed + self.abandoned
    }
}

impl TraceExportStats {
    pub fn counts(&self) -> TraceExportCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TraceExportCounts {
            queued: l(&self.queued),
            dropped_queue_full: l(&self.dropped_queue_full),
            exported: l(&self.exported),
            failed: l(&self.failed),
            abandoned: l(&self.abandoned),
            requests: l(&self.requests),
            bytes: l(&self.bytes),
            server_dropped: l(&self.server_dropped),
            server_failed: l(&self.server_failed),
        }
    }
}

/// An encoded chunk, how many spans it holds and how many of them are server
/// spans, and where their requests began.
type Chunk = (Bytes, (u64, u64), Vec<Begin>);

/// Batching settings. Memory is bounded by the queue, plus the request being
/// filled, plus the requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most spans waiting for export (queued, not yet in the request being filled).
    pub max_queue_size: usize,
    /// Most spans in one request.
    pub max_export_batch_size: usize,
    /// Longest a span waits for its request to fill.
    pub batch_timeout: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_queue_size: 4096,
            max_export_batch_size: DEFAULT_MAX_EXPORT_BATCH_SIZE,
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
        }
    }
}

/// The queue and its export task.
pub struct TraceExport {
    pending: SpanGroups,
    tx: mpsc::UnboundedSender<Chunk>,
    /// Spans handed to the task and not yet taken into the request being filled.
    waiting: Arc<AtomicUsize>,
    batching: Batching,
    stats: Arc<TraceExportStats>,
    task: JoinHandle<()>,
    /// Where the spans of `pending` began (only with a progress to tell).
    begins: Vec<Begin>,
    /// Server spans in `pending`.
    pending_servers: u64,
    confirm: Confirm,
}

impl TraceExport {
    /// Starts the export task on the current Tokio runtime, sending with `transport`.
    pub fn spawn(transport: Transport, batching: Batching) -> Self {
        Self::start(Some(transport), batching)
    }

    /// An export that assembles its requests and discards them (no network).
    pub fn encode_only(batching: Batching) -> Self {
        Self::start(None, batching)
    }

    fn start(transport: Option<Transport>, batching: Batching) -> Self {
        let batching = Batching {
            max_queue_size: batching.max_queue_size.max(1),
            max_export_batch_size: batching.max_export_batch_size.max(1),
            batch_timeout: batching.batch_timeout,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(TraceExportStats::default());
        let waiting = Arc::new(AtomicUsize::new(0));
        let confirm = Confirm::default();
        let task = tokio::spawn(run(
            transport,
            rx,
            waiting.clone(),
            batching,
            stats.clone(),
            confirm.clone(),
        ));
        TraceExport {
            pending: SpanGroups::default(),
            tx,
            waiting,
            batching,
            stats,
            task,
            begins: Vec::new(),
            pending_servers: 0,
            confirm,
        }
    }

    /// Tells `progress` which spans wait for the collector, and when it answered.
    pub fn set_progress(&mut self, progress: Arc<Progress>) {
        let _ = self.confirm.set(progress);
    }

    /// Queues `span` of `process` for export (a sampled span; its request began at
    /// `begin`), encoding it now; drops and counts it when the queue is full.
    /// Never waits.
    pub fn offer(&mut self, process: &Arc<ProcessResource>, span: &Span, begin: Begin) {
        let queued = self.waiting.load(Ordering::Acquire) + self.pending.len() as usize;
        if queued >= self.batching.max_queue_size {
            let before = self
                .stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            if span.span_kind == SpanKind::Server {
                self.stats.server_dropped.fetch_add(1, Ordering::Relaxed);
            }
            if before == 0 {
                warn!(
                    max_queue_size = self.batching.max_queue_size,
                    "span export queue full (collector down or slow?): dropping spans; \
                     the total is in the periodic and the exit summary"
                );
            }
            return;
        }
        self.pending.add(process, span);
        self.pending_servers += u64::from(span.span_kind == SpanKind::Server);
        if self.confirm.get().is_some() {
            self.begins.push(begin);
        }
        if self.pending.len() >= CHUNK {
            self.flush();
        }
    }

    /// Hands the spans offered so far to the export task (called at the end of each
    /// input batch, so that a span waits at most `batch_timeout` plus a batch).
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (body, n) = self.pending.take();
        self.waiting.fetch_add(n as usize, Ordering::AcqRel);
        self.stats.queued.fetch_add(n, Ordering::Relaxed);
        let begins = std::mem::take(&mut self.begins);
        let servers = std::mem::take(&mut self.pending_servers);
        if let Some(p) = self.confirm.get() {
            p.hold(&begins);
        }
        if let Err(mpsc::error::SendError((_, _, begins))) =
            self.tx.send((Bytes::from(body), (n, servers), begins))
        {
            // The task is gone (only after a panic): what it would have sent is lost.
            self.waiting.fetch_sub(n as usize, Ordering::AcqRel);
            self.stats.failed.fetch_add(n, Ordering::Relaxed);
            self.stats
                .server_failed
                .fetch_add(servers, Ordering::Relaxed);
            if let Some(p) = self.confirm.get() {
                p.confirm(&begins);
            }
        }
    }

    pub fn stats(&self) -> TraceExportCounts {
        self.stats.counts()
    }

    /// Exports what is queued (within [`SHUTDOWN_GRACE`]) and stops the task.
    pub async fn shutdown(mut self) -> TraceExportCounts {
        self.flush();
        let TraceExport {
            tx, stats, task, ..
        } = self;
        drop(tx);
        let abort = task.abort_handle();
        if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
            abort.abort();
            let c = stats.counts();
            let left = c
                .queued
                .saturating_sub(c.exported + c.failed)
                .saturating_sub(c.abandoned);
            stats.abandoned.fetch_add(left, Ordering::Relaxed);
            warn!(
                spans = left,
                "span export did not finish in {SHUTDOWN_GRACE:?}: abandoned"
            );
        }
        let c = stats.counts();
        if c.lost() > 0 {
            warn!(
                exported = c.exported,
                dropped_queue_full = c.dropped_queue_full,
                failed = c.failed,
                abandoned = c.abandoned,
                "spans lost in export"
            );
        }
        c
    }
}

/// The export task: requests of up to `max_export_batch_size` spans (whole chunks;
/// a chunk never splits), up to the transport's `max_in_flight` at once.
async fn run(
    transport: Option<Transport>,
    mut rx: mpsc::UnboundedReceiver<Chunk>,
    waiting: Arc<AtomicUsize>,
    batching: Batching,
    stats: Arc<TraceExportStats>,
    confirm: Confirm,
) {
    let max_in_flight = transport.as_ref().map_or(1, |t| t.max_in_flight().max(1));
    let max_batch = batching.max_export_batch_size as u64;
    let mut request = BytesMut::new();
    let mut begins: Vec<Begin> = Vec::new();
    let mut items = 0u64;
    let mut servers = 0u64;
    let mut in_flight = FuturesUnordered::new();
    let mut deadline: Option<Instant> = None;
    let mut open = true;
    while open || items > 0 || !in_flight.is_empty() {
        let full = items >= max_batch;
        let due = deadline.is_some_and(|d| Instant::now() >= d) || (!open && items > 0);
        if (full || due) && items > 0 && in_flight.len() < max_in_flight {
            let body = request.split().freeze();
            let n = std::mem::take(&mut items);
            deadline = None;
            stats.requests.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            in_flight.push(send(
                transport.clone(),
                body,
                (n, std::mem::take(&mut servers)),
                stats.clone(),
                (std::mem::take(&mut begins), confirm.clone()),
            ));
            continue;
        }
        let sleep_until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            msg = rx.recv(), if open && items < max_batch => match msg {
                Some((body, (n, s), mut b)) => {
                    begins.append(&mut b);
                    servers += s;
                    // Out of the queue into the request being filled (as the SDK's
                    // batch processor does): the queue has room again.
                    waiting.fetch_sub(n as usize, Ordering::AcqRel);
                    if items == 0 {
                        deadline = Some(Instant::now() + batching.batch_timeout);
                    }
                    request.extend_from_slice(&body);
                    items += n;
                }
                None => open = false,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            _ = tokio::time::sleep_until(sleep_until),
                if deadline.is_some() && in_flight.len() < max_in_flight => {}
        }
    }
}

/// Sends one request and counts what became of its spans; then tells the progress
/// that nothing more will be done for them.
async fn send(
    transport: Option<Transport>,
    body: Bytes,
    (items, servers): (u64, u64),
    stats: Arc<TraceExportStats>,
    (begins, confirm): (Vec<Begin>, Confirm),
) {
    let (ok, rejected) = match transport {
        Some(t) => match t.export(body, items).await {
            Ok(done) => (done.accepted(), done.rejected),
            Err(e) => {
                stats.server_failed.fetch_add(servers, Ordering::Relaxed);
                let before = stats.failed.fetch_add(items, Ordering::Relaxed);
                warn!(
                    spans = items,
                    total_failed = before + items,
                    "span export failed: {e}"
                );
                (0, 0)
            }
        },
        None => (items, 0),
    };
    stats.exported.fetch_add(ok, Ordering::Relaxed);
    stats.failed.fetch_add(rejected, Ordering::Relaxed);
    if let Some(p) = confirm.get() {
        p.confirm(&begins);
    }
}

#[cfg(test)]
mod tests;
