//! Sending sampled spans: a bounded queue in front of an OTLP span exporter.
//!
//! The SDK's batch span processor exports all spans of a tracer provider under that
//! provider's one resource; tandem's spans come from many processes, each with its
//! own resource. So tandem batches itself: [`TraceExport::offer`] never waits — it
//! puts the span in a queue of `max_queue_size` spans or, when the queue is full,
//! drops it and counts it. One task takes up to [`MAX_BATCH`] spans (or what came
//! within [`BATCH_DELAY`]), groups them by process and hands each group, with its
//! resource, to the exporter, which retries with backoff. A collector that is down or
//! slow therefore costs at most a full queue of memory and never blocks ingestion.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::pipeline::resource::ProcessResource;

/// Most spans in one export call.
pub const MAX_BATCH: usize = 512;
/// Longest a queued span waits for its batch to fill.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// How long `shutdown` waits for the queue to drain before abandoning it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What happened to the spans offered for export.
#[derive(Debug, Default)]
pub struct TraceExportStats {
    /// Put in the queue.
    pub queued: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Accepted by the collector.
    pub exported: AtomicU64,
    /// Lost because the export failed after the exporter's retries.
    pub failed: AtomicU64,
    /// Still queued when shutdown gave up.
    pub abandoned: AtomicU64,
}

/// A plain copy of [`TraceExportStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceExportCounts {
    pub queued: u64,
    pub dropped_queue_full: u64,
    pub exported: u64,
    pub failed: u64,
    pub abandoned: u64,
}

impl TraceExportStats {
    pub fn counts(&self) -> TraceExportCounts {
        TraceExportCounts {
            queued: self.queued.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
        }
    }
}

struct Queued {
    process: Arc<ProcessResource>,
    span: SpanData,
}

/// The queue and its export task.
pub struct TraceExport {
    tx: mpsc::Sender<Queued>,
    stats: Arc<TraceExportStats>,
    task: JoinHandle<()>,
}

impl TraceExport {
    /// Starts the export task on the current Tokio runtime.
    pub fn spawn<E: SpanExporter + 'static>(exporter: E, max_queue_size: usize) -> Self {
        let (tx, rx) = mpsc::channel(max_queue_size.max(1));
        let stats = Arc::new(TraceExportStats::default());
        let task = tokio::spawn(run(exporter, rx, stats.clone()));
        TraceExport { tx, stats, task }
    }

    /// Queues `span` of `process` for export; drops and counts it when the queue is
    /// full. Never waits.
    pub fn offer(&self, process: Arc<ProcessResource>, span: SpanData) {
        match self.tx.try_send(Queued { process, span }) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                let before = self
                    .stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                if before == 0 {
                    warn!(
                        "span export queue full (collector down or slow?): dropping spans; \
                         the total is logged after each export and at shutdown"
                    );
                }
            }
        }
    }

    pub fn stats(&self) -> TraceExportCounts {
        self.stats.counts()
    }

    /// Exports what is queued (within [`SHUTDOWN_GRACE`]) and shuts the exporter down.
    pub async fn shutdown(self) -> TraceExportCounts {
        let TraceExport { tx, stats, task } = self;
        drop(tx);
        let abort = task.abort_handle();
        if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
            abort.abort();
            let c = stats.counts();
            let left = c.queued.saturating_sub(c.exported + c.failed);
            stats.abandoned.store(left, Ordering::Relaxed);
            warn!(
                spans = left,
                "span export did not finish in {SHUTDOWN_GRACE:?}: abandoned"
            );
        }
        let c = stats.counts();
        if c.dropped_queue_full + c.failed + c.abandoned > 0 {
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

async fn run<E: SpanExporter>(
    mut exporter: E,
    mut rx: mpsc::Receiver<Queued>,
    stats: Arc<TraceExportStats>,
) {
    let mut reported_drops = 0;
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(q)) => batch.push(q),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        export_batch(&mut exporter, batch, &stats).await;
        let drops = stats.dropped_queue_full.load(Ordering::Relaxed);
        if drops > reported_drops {
            warn!(
                dropped = drops - reported_drops,
                total = drops,
                "spans dropped: export queue full"
            );
            reported_drops = drops;
        }
    }
    if let Err(e) = exporter.shutdown() {
        debug!("span exporter shutdown: {e}");
    }
}

async fn export_batch<E: SpanExporter>(
    exporter: &mut E,
    batch: Vec<Queued>,
    stats: &TraceExportStats,
) {
    // Group by process, keeping first-seen order.
    let mut groups: Vec<(Arc<ProcessResource>, Vec<SpanData>)> = Vec::new();
    let mut index: HashMap<usize, usize> = HashMap::new();
    for q in batch {
        let key = Arc::as_ptr(&q.process) as usize;
        match index.get(&key) {
            Some(&i) => groups[i].1.push(q.span),
            None => {
                index.insert(key, groups.len());
                groups.push((q.process, vec![q.span]));
            }
        }
    }
    for (process, spans) in groups {
        let n = spans.len() as u64;
        exporter.set_resource(&process.resource);
        match exporter.export(spans).await {
            Ok(()) => {
                stats.exported.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                let before = stats.failed.fetch_add(n, Ordering::Relaxed);
                warn!(
                    spans = n,
                    total_failed = before + n,
                    service = %process.service_name,
                    "span export failed: {e}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Side;
    use crate::pipeline::resource::{ProcessMap, ResourceSettings};
    use crate::pipeline::span::build_span;
    use crate::pipeline::span::tests::{tx, SeqIds};
    use crate::settings::Sampler;
    use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
    use opentelemetry_sdk::Resource;
    use std::sync::Mutex;

    /// (service name, span names) of one export call.
    type Call = (String, Vec<String>);

    /// Records each export call; can stall or fail.
    #[derive(Debug, Clone, Default)]
    struct Fake {
        calls: Arc<Mutex<Vec<Call>>>,
        resource: Option<Resource>,
        stall: Option<Duration>,
        fail: bool,
    }

    impl SpanExporter for Fake {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if let Some(d) = self.stall {
                tokio::time::sleep(d).await;
            }
            if self.fail {
                return Err(OTelSdkError::InternalFailure("down".into()));
            }
            let svc = self
                .resource
                .as_ref()
                .and_then(|r| r.get(&opentelemetry::Key::from_static_str("service.name")))
                .map(|v| v.to_string())
                .unwrap_or_default();
            self.calls
                .lock()
                .expect("lock")
                .push((svc, batch.iter().map(|s| s.name.to_string()).collect()));
            Ok(())
        }
        fn set_resource(&mut self, resource: &Resource) {
            self.resource = Some(resource.clone());
        }
    }

    fn span(path: &str) -> SpanData {
        build_span(
            &tx(Side::Server, "GET", path, Some(200)),
            Some(path),
            Sampler::AlwaysOn,
            &SeqIds::default(),
        )
        .data
    }

    fn procs() -> ProcessMap {
        let mut m = ProcessMap::new(ResourceSettings::default());
        for (pid, exe) in [(1, "/bin/a"), (2, "/bin/b")] {
            m.on_started(&tandem_proto::v1::ProcessStarted {
                pid,
                exe_path: exe.into(),
                ..Default::default()
            });
        }
        m
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn groups_by_process_and_flushes_on_shutdown() {
        let fake = Fake::default();
        let calls = fake.calls.clone();
        let export = TraceExport::spawn(fake, 100);
        let mut p = procs();
        export.offer(p.get(1), span("/x"));
        export.offer(p.get(2), span("/y"));
        export.offer(p.get(1), span("/z"));
        let c = export.shutdown().await;
        assert_eq!(c.exported, 3);
        let calls = calls.lock().expect("lock").clone();
        assert_eq!(
            calls,
            vec![
                (
                    "a".to_string(),
                    vec!["GET /x".to_string(), "GET /z".to_string()]
                ),
                ("b".to_string(), vec!["GET /y".to_string()]),
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stalled_collector_never_blocks_and_drops_are_counted() {
        let fake = Fake {
            stall: Some(Duration::from_millis(300)),
            ..Default::default()
        };
        let export = TraceExport::spawn(fake, 10);
        let mut p = procs();
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            export.offer(p.get(1), span("/x"));
        }
        assert!(started.elapsed() < Duration::from_secs(2), "offer blocked");
        let c = export.stats();
        assert!(
            c.dropped_queue_full >= 10_000 - 10 - MAX_BATCH as u64,
            "{c:?}"
        );
        assert_eq!(c.queued + c.dropped_queue_full, 10_000);
        let c = export.shutdown().await;
        assert_eq!(c.exported, c.queued);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failures_are_counted() {
        let fake = Fake {
            fail: true,
            ..Default::default()
        };
        let export = TraceExport::spawn(fake, 10);
        export.offer(procs().get(1), span("/x"));
        let c = export.shutdown().await;
        assert_eq!((c.exported, c.failed), (0, 1));
    }
}
