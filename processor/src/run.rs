//! The processor as a whole: Kubernetes metadata and discovery, the loader client,
//! the [`Engine`] and its pipeline, the periodic summary and the internal metrics.
//! `tandem-processor` is this plus its command line.

use std::path::PathBuf;
use std::time::Duration;

use tandem_proto::{selection, Selection};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::{self, ClientConfig};
use crate::config::{Config, KubeEnable};
use crate::engine::Engine;
use crate::internal::InternalMetrics;
use crate::kube::discovery::KubeDiscovery;
use crate::pipeline::{self, Pipeline};
use crate::printer::{PrintFormat, Printer as RawPrinter};
use crate::summary::Summary;

/// How often the internal metrics' counts are refreshed while batches come.
const INTERNAL_UPDATE: Duration = Duration::from_secs(1);

/// What the command line adds to the configuration.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The loader's Unix socket.
    pub socket: PathBuf,
    /// Subscription name.
    pub name: String,
    /// Processes selected by flags, in addition to the configuration's.
    pub extra_selection: Selection,
    /// Raw events printed on stdout.
    pub print: PrintFormat,
    /// Add the loader's posture to every resource.
    pub export_loader_posture: bool,
    /// How often the summary is logged (zero: only at exit).
    pub summary_interval: Duration,
}

/// `configured` plus what the flags add.
fn with_flags(configured: Selection, flags: &Selection) -> Selection {
    if flags.is_empty() {
        return configured;
    }
    if configured.is_empty() {
        return flags.clone();
    }
    selection::union([&configured, flags]).unwrap_or_default()
}

/// Runs until `shutdown` (or a fatal error): subscribes, processes, exports. Logs
/// the summary every `summary_interval` and at exit, and returns the last one.
pub async fn run(
    opts: RunOptions,
    config: Config,
    privileged: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    if let Some(why) = privileged {
        warn!(
            "running privileged: this process {why}. The processor needs no privileges; \
             whoever owns it gets them: run it as a non-root user with no capabilities \
             (--refuse-privileged makes this fatal)"
        );
    }
    // Kubernetes metadata (decoration, and discovery of k8s_* entries).
    let mut kube = None;
    if crate::kube::enabled(&config.kubernetes) {
        match crate::kube::Kube::start(&config.kubernetes).await {
            Ok(k) => kube = Some(k),
            Err(e) if config.kubernetes.enable == KubeEnable::True => return Err(e.into()),
            Err(e) => warn!("kubernetes metadata off (autodetect): {e}"),
        }
    }
    let discovery = KubeDiscovery::new(
        &config.discovery.instrument,
        &config.discovery.exclude_instrument,
    );
    for warning in config.warnings_for(kube.is_some()) {
        warn!("configuration: {warning}");
    }
    let mut selection_updates = None;
    let selection = match kube.as_mut() {
        Some(k) if discovery.is_active() => {
            let base = with_flags(
                config.selection_without_kubernetes_entries(),
                &opts.extra_selection,
            );
            let rx = k.selection_updates(discovery, base);
            let first = rx.borrow().clone();
            selection_updates = Some(rx);
            first
        }
        _ => with_flags(config.selection(), &opts.extra_selection),
    };
    if selection.is_empty() {
        warn!("no selection given (OTEL_EBPF_OPEN_PORT, OTEL_EBPF_AUTO_TARGET_EXE, discovery.instrument, --open-port, --exe, --pid, --container-id): subscribing to every process");
    }
    let host_name = pipeline::resource::local_host_name();
    let internal = InternalMetrics::new(&opts.name, &host_name);
    let export = &config.export;
    let mut pipeline = Pipeline::build(
        &config.routes,
        export,
        host_name,
        crate::export::printer::Printer::stdout(export.trace_printer),
        None,
        internal.sinks(&export.internal_metrics),
    )?;
    if let Some(k) = &kube {
        pipeline.set_kubernetes(k.store.clone());
    }
    let mut engine = Engine::new(pipeline, RawPrinter::new(opts.print));
    let mut selector = crate::select::Selector::new(&config.discovery, &opts.extra_selection);
    if let Some(k) = &kube {
        selector.set_kubernetes(k.store.clone());
    }
    engine.set_selector(selector);
    // Acknowledge only what is delivered, so that a processor killed and replaced
    // loses nothing (`crate::resume`); span ids derive from a random key unless a
    // predecessor's state hands its key over.
    let progress = std::sync::Arc::new(crate::resume::Progress::new(random_key()));
    engine.set_progress(progress.clone());
    let (posture_tx, mut posture_rx) = tokio::sync::watch::channel(None);
    let health = std::sync::Arc::new(crate::health::Health::default());
    let health_endpoint = crate::health::start(&config.health_check, health.clone())?;
    let client_config = ClientConfig {
        socket: opts.socket.clone(),
        name: opts.name.clone(),
        selection,
        posture: Some(posture_tx),
        selection_updates,
        health: Some(health),
        progress: Some(progress),
    };
    let interval = opts.summary_interval;
    let mut next_summary = (!interval.is_zero()).then(|| tokio::time::Instant::now() + interval);
    let mut next_update = tokio::time::Instant::now();
    let result = client::run(client_config, shutdown, |batch| {
        if posture_rx.has_changed().unwrap_or(false) {
            if let Some(summary) = posture_rx.borrow_and_update().as_ref() {
                let p = engine.pipeline_mut();
                p.set_loader_posture(
                    &opts.name,
                    &pipeline::metrics::LoaderPosture {
                        excess: summary.excess.clone(),
                        privileged: summary.privileged.clone(),
                    },
                );
                if opts.export_loader_posture {
                    p.set_loader_attributes(client::posture_attributes(summary));
                }
            }
        }
        engine.on_batch(&batch);
        // The summary is made at most once a second (for the internal metrics) and
        // at each summary interval, not per batch.
        let now = tokio::time::Instant::now();
        if now < next_update {
            return;
        }
        next_update = now + INTERNAL_UPDATE;
        let summary = engine.summary();
        if next_summary.is_some_and(|t| now >= t) {
            next_summary = Some(now + interval);
            info!("processor summary after {:.0?}:\n{summary}", summary.uptime);
        }
        internal.update(summary);
    })
    .await;
    let summary = engine.finish().await;
    internal.update(summary.clone());
    if let Some(h) = health_endpoint {
        h.shutdown().await;
    }
    if let Some(k) = &kube {
        let (pods, deleted, replicasets, services) = k.store.sizes();
        info!(
            pods,
            deleted,
            replicasets,
            services,
            pods_synced = k.pods_synced(),
            pods_not_kept = k
                .store
                .overflow
                .pods
                .load(std::sync::atomic::Ordering::Relaxed),
            objects_not_kept = k
                .store
                .overflow
                .objects
                .load(std::sync::atomic::Ordering::Relaxed),
            "kubernetes metadata at exit"
        );
    }
    info!("processor stopped after {:.1?}:\n{summary}", summary.uptime);
    result.map_err(anyhow::Error::from)?;
    Ok(summary)
}

/// A random key for span ids (the standard library's per-process random hash keys
/// and the time).
fn random_key() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now()) | 1
}
