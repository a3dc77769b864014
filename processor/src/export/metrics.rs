//! Pushing metrics: every `metrics_interval` (and once at shutdown) one task collects
//! the per-process meters of [`MetricsRegistry`] and exports each process's metrics
//! with its resource through an OTLP metric exporter (which retries with backoff).
//! Metrics are cumulative, so a collector that is down loses nothing but the
//! intervals it missed, and holds no memory: nothing queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::pipeline::metrics::MetricsRegistry;

/// How long `shutdown` waits for the last export.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Export outcomes, counted per process export.
#[derive(Debug, Default)]
pub struct MetricExportStats {
    pub exported: AtomicU64,
    pub failed: AtomicU64,
}

/// The periodic export task.
pub struct MetricExport {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    stats: Arc<MetricExportStats>,
}

impl MetricExport {
    /// Starts exporting `registry` every `interval` on the current Tokio runtime.
    pub fn spawn<E: PushMetricExporter>(
        exporter: E,
        registry: Arc<Mutex<MetricsRegistry>>,
        interval: Duration,
    ) -> Self {
        let (stop, stopped) = oneshot::channel();
        let stats = Arc::new(MetricExportStats::default());
        let task = tokio::spawn(run(exporter, registry, interval, stopped, stats.clone()));
        MetricExport { stop, task, stats }
    }

    /// (exported, failed) process exports so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.stats.exported.load(Ordering::Relaxed),
            self.stats.failed.load(Ordering::Relaxed),
        )
    }

    /// Exports one last time and shuts the exporter down.
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

async fn run<E: PushMetricExporter>(
    exporter: E,
    registry: Arc<Mutex<MetricsRegistry>>,
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
        let collected = match registry.lock() {
            Ok(mut r) => r.collect(),
            Err(_) => {
                warn!("metrics registry poisoned: metrics export stops");
                break;
            }
        };
        for rm in &collected {
            match exporter.export(rm).await {
                Ok(()) => {
                    stats.exported.fetch_add(1, Ordering::Relaxed);
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
    if let Err(e) = exporter.shutdown() {
        debug!("metric exporter shutdown: {e}");
    }
}
