//! Event sources: where the loader's events come from.
//!
//! Every source implements [`EventSource`]. A source runs as one task: it reads the
//! union of all subscribers' selections from [`SourceContext::selection`] (and
//! follows its changes, e.g. to program the kernel's pid map), publishes events in
//! batches through [`SourceContext::sink`], reports what it had to drop as loss
//! events, and returns when it is done or when `shutdown` fires.

pub mod ebpf;
#[cfg(feature = "dev-sources")]
pub mod replay;
#[cfg(feature = "dev-sources")]
pub mod synthetic;

use std::sync::Arc;

use futures::future::BoxFuture;
use tandem_proto::v1::AttachedProbe;
use tandem_proto::Selection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::posture::Posture;

/// What a source needs to run.
pub struct SourceContext {
    /// Where events go. Publishing never blocks on subscribers.
    pub sink: Arc<Hub>,
    /// Union of all subscriptions' selections: `None` while nobody subscribes, an
    /// empty selection for "every process". Sources that capture everything they
    /// are given (replay, synthetic) ignore it; the hub filters per subscriber anyway.
    pub selection: watch::Receiver<Option<Selection>>,
    /// Fires on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// The loader's capability posture: a source that attaches probes calls
    /// [`Posture::drop_after_attach`] once they are attached.
    pub posture: Arc<Posture>,
}

/// A producer of loader events.
pub trait EventSource: Send {
    /// Short name shown in `Info` and capture headers ("replay", "ebpf", ...).
    fn name(&self) -> &'static str;

    /// Runs until the source is exhausted or `ctx.shutdown` fires. Probe status is
    /// reported with [`Hub::set_probes`], losses with [`Hub::report_source_loss`].
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// A probe entry for [`Hub::set_probes`].
pub fn probe(name: &str, kind: &str, result: Result<(), String>) -> AttachedProbe {
    AttachedProbe {
        name: name.to_owned(),
        kind: kind.to_owned(),
        attached: result.is_ok(),
        error: result.err().unwrap_or_default(),
    }
}

/// Waits until at least `n` subscriptions exist. Returns false when shutdown fired
/// first.
#[cfg(feature = "dev-sources")]
pub async fn wait_for_subscribers(ctx: &SourceContext, n: usize) -> anyhow::Result<bool> {
    let mut count = ctx.sink.subscriber_count();
    tokio::select! {
        r = count.wait_for(|have| *have >= n) => { r?; Ok(true) }
        _ = ctx.shutdown.cancelled() => Ok(false),
    }
}
