//! Pushing metrics over OTLP: every `metrics_interval` (and once at shutdown) one task
//! collects the registry (every process's cumulative series, tandem's own, and the
//! internal metrics when they go over OTLP), encodes them into one request
//! ([`crate::export::encode_metrics`]) and sends it with the OTLP transport (which
//! retries with backoff). Metrics are cumulative, so a collector that is down loses
//! nothing but the intervals it missed, and holds no memory: nothing queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::export::encode_metrics::{data_points, encode_metrics};
use crate::export::transport::Transport;
use crate::pipeline::metrics::{MetricsRegistry, ResourceMetrics};

/// How long `shutdown` waits for the last export.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Something besides the registry whose metrics are pushed (the internal metrics).
pub type Extra = Arc<dyn Fn() -> Option<ResourceMetrics> + Send + Sync>;

/// Export outcomes, counted per request.
#[derive(Debug, Default)]
pub struct MetricExportStats {
    pub exported: AtomicU64,
    pub failed: AtomicU64,
    pub points: AtomicU64,
}

/// The periodic export task.
pub struct MetricExport {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    stats: Arc<MetricExportStats>,
}

impl MetricExport {
    /// Starts exporting `registry` (and `extra`) every `interval` on the current
    /// Tokio runtime.
    pub fn spawn(
        transport: Transport,
        registry: Arc<Mutex<MetricsRegistry>>,
        extra: Option<Extra>,
        interval: Duration,
    ) -> Self {
        let (stop, stopped) = oneshot::channel();
        let stats = Arc::new(MetricExportStats::default());
        let task = tokio::spawn(run(
            transport,
            registry,
            extra,
            interval,
            stopped,
            stats.clone(),
        ));
        MetricExport { stop, task, stats }
    }

    /// (exported, failed) requests so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.stats.exported.load(Ordering::Relaxed),
            self.stats.failed.load(Ordering::Relaxed),
        )
    }

    /// Exports one last time and stops.
    pub async fn shutdown(self) -> (u64, u64) {
        let MetricExport { stop, task, stats } = self;
        let _ = stop.send(());
        let abort = task.abort_handle();
        if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
            abort.abort();
            warn!("last metrics export did not finish in {SHUTDOWN_GRACE:?}: abandoned");
        }
        (
            stats.exported.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
        )
    }
}

async fn run(
    transport: Transport,
    registry: Arc<Mutex<MetricsRegistry>>,
    extra: Option<Extra>,
    interval: Duration,
    mut stopped: oneshot::Receiver<()>,
    stats: Arc<MetricExportStats>,
) {
    let period = if interval.is_zero() {
        Duration::from_secs(60)
    } else {
        interval
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = &mut stopped => true,
        };
        let mut collected = match registry.lock() {
            Ok(mut r) => r.collect(),
            Err(_) => {
                warn!("metrics registry poisoned: metrics export stops");
                break;
            }
        };
        collected.extend(extra.as_ref().and_then(|f| f()));
        if !collected.is_empty() {
            let points = data_points(&collected);
            let body = Bytes::from(encode_metrics(&collected));
            match transport.export(body, points).await {
                Ok(done) => {
                    stats.exported.fetch_add(1, Ordering::Relaxed);
                    stats.points.fetch_add(done.accepted(), Ordering::Relaxed);
                }
                Err(e) => {
                    let before = stats.failed.fetch_add(1, Ordering::Relaxed);
                    warn!(total_failed = before + 1, "metrics export failed: {e}");
                }
            }
        }
        if last {
            break;
        }
    }
}
