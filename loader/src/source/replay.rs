//! The replay source: events from a capture file (see `tandem_proto::capture`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tandem_proto::capture::{CaptureError, CaptureReader};
use tandem_proto::v1::{CaptureHeader, LossLocation};
use tracing::{error, info};

use super::{probe, wait_for_subscribers, EventSource, SourceContext};
use crate::clock::monotonic_ns;

/// Events published per batch when not rate-limited.
const BATCH: usize = 256;

/// Replays a capture file once.
pub struct ReplaySource {
    path: PathBuf,
    header: CaptureHeader,
    events: u64,
    /// Events per second; 0 means as fast as subscribers are fed.
    rate: f64,
    /// Subscriptions to wait for before the first event.
    wait_subscribers: usize,
}

impl ReplaySource {
    /// Opens `path` and checks the whole file, so that a corrupt or truncated
    /// capture is refused before the loader serves anything.
    pub fn open(path: &Path, rate: f64, wait_subscribers: usize) -> Result<Self, CaptureError> {
        let mut reader = CaptureReader::open(path)?;
        let header = reader.header().clone();
        let mut events = 0u64;
        while reader.next_event()?.is_some() {
            events += 1;
        }
        Ok(ReplaySource {
            path: path.to_owned(),
            header,
            events,
            rate,
            wait_subscribers,
        })
    }

    async fn replay(self, ctx: SourceContext) -> anyhow::Result<()> {
        let hub = ctx.sink.clone();
        hub.set_realtime_offset(self.header.realtime_offset_ns);
        hub.set_probes(vec![probe(
            &format!("replay:{}", self.path.display()),
            "replay",
            Ok(()),
        )]);
        if self.wait_subscribers > 0 {
            info!(
                file = %self.path.display(),
                events = self.events,
                waiting_for = self.wait_subscribers,
                "replay ready; waiting for subscribers"
            );
            if !wait_for_subscribers(&ctx, self.wait_subscribers).await? {
                return Ok(());
            }
        }
        info!(file = %self.path.display(), events = self.events, rate = self.rate, "replay started");
        let mut reader = CaptureReader::open(&self.path)?;
        let (batch, interval) = if self.rate > 0.0 {
            (1, Some(Duration::from_secs_f64(1.0 / self.rate)))
        } else {
            (BATCH, None)
        };
        let mut ticker = interval.map(tokio::time::interval);
        let mut sent = 0u64;
        loop {
            if let Some(t) = ticker.as_mut() {
                tokio::select! {
                    _ = t.tick() => {}
                    _ = ctx.shutdown.cancelled() => break,
                }
            } else if ctx.shutdown.is_cancelled() {
                break;
            }
            let mut events = Vec::with_capacity(batch);
            let mut failure = None;
            while events.len() < batch {
                match reader.next_event() {
                    Ok(Some(e)) => events.push(e),
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let done = events.len() < batch;
            // At once when serving; while the file writer catches up when recording.
            tokio::select! {
                _ = hub.wait_for_room(events.len()) => {}
                _ = ctx.shutdown.cancelled() => break,
            }
            sent += events.len() as u64;
            hub.publish(events);
            if let Some(e) = failure {
                // The file changed after it was checked at start-up.
                error!(error = %e, "replay stopped");
                hub.report_source_loss(monotonic_ns(), 1, LossLocation::Source, &e.to_string());
                return Err(e.into());
            }
            if done {
                break;
            }
            if ticker.is_none() {
                tokio::task::yield_now().await;
            }
        }
        info!(file = %self.path.display(), events = sent, "replay finished");
        Ok(())
    }
}

impl EventSource for ReplaySource {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, anyhow::Result<()>> {
        self.replay(ctx).boxed()
    }
}
