//! `tandem-loader record`: runs a source and writes what it produces to a capture
//! file, through the same hub as serving, but with backpressure: the hub never drops
//! for the writer, and the source waits while the writer's queue is full. Only a
//! source that cannot wait loses events (the kernel, when its ring buffer fills while
//! the ebpf source waits); those losses arrive as `Loss` events and are written too.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_proto::capture::CaptureWriter;
use tandem_proto::v1::{CaptureHeader, LossLocation};
use tracing::{info, warn};

use crate::cli::RecordArgs;
use crate::clock::realtime_offset_ns;
use crate::hub::{Hub, HubConfig, Next, Peer};
use crate::source::SourceContext;
use tandem_proto::process::shutdown_on_signals;

pub async fn record(args: RecordArgs) -> anyhow::Result<()> {
    // The recorder itself is the only subscriber; it attaches before the source
    // starts, so the source need not wait for anyone. It records what the selection
    // flags select (everything without flags).
    let selection = args.source.ebpf.selection()?.unwrap_or_default();
    let source = args.source.build(0)?;
    if args.queue_capacity == 0 {
        anyhow::bail!("--queue-capacity must be at least 1");
    }
    let hub = Hub::new(HubConfig {
        queue_capacity: args.queue_capacity,
        backpressure: true,
        ..HubConfig::default()
    });
    hub.set_source(source.name());
    let attachment = hub.attach("", selection, false, Peer::default())?;
    let header = CaptureHeader {
        protocol: Some(tandem_proto::protocol_version()),
        realtime_offset_ns: realtime_offset_ns(),
        source: source.name().to_owned(),
        created_by: format!("tandem-loader {}", env!("CARGO_PKG_VERSION")),
        created_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    let mut writer = CaptureWriter::create(&args.output, &header)?;
    let shutdown = shutdown_on_signals()?;
    let ctx = SourceContext {
        sink: hub.clone(),
        selection: hub.selection(),
        shutdown: shutdown.clone(),
        posture: std::sync::Arc::new(crate::posture::Posture::new(&args.source.features(), None)),
    };
    let mut source_task = tokio::spawn(source.run(ctx));
    let deadline = (args.duration_secs > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs(args.duration_secs));
    let mut source_done = false;
    let mut lost = 0u64;
    let mut lost_at: BTreeMap<&'static str, u64> = BTreeMap::new();
    'outer: loop {
        let notified = attachment.subscription.notified();
        match hub.next_batch(&attachment) {
            Next::Batch(batch) => {
                for event in batch.events {
                    if let Some(tandem_proto::EventKind::Loss(l)) = &event.kind {
                        lost += l.count;
                        *lost_at.entry(location_name(l.location)).or_default() += l.count;
                    }
                    writer.write_event(&event)?;
                    if args.max_events > 0 && writer.events_written() >= args.max_events {
                        break 'outer;
                    }
                }
                continue;
            }
            Next::TakenOver => break,
            Next::Empty if source_done => break,
            Next::Empty => {}
        }
        let sleep_until =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = notified => {}
            r = &mut source_task, if !source_done => {
                source_done = true;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("source failed: {e:#}"),
                    Err(e) => warn!("source task failed: {e}"),
                }
            }
            _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => break,
            _ = shutdown.cancelled() => break,
        }
    }
    shutdown.cancel();
    let events = writer.events_written();
    writer.finish()?;
    if lost == 0 {
        info!(file = %args.output.display(), events, lost, "capture written");
    } else {
        let at = lost_at
            .iter()
            .map(|(place, n)| format!("{n} {place}"))
            .collect::<Vec<_>>()
            .join(", ");
        info!(
            file = %args.output.display(),
            events,
            lost,
            lost_at = %at,
            "capture written"
        );
        let kernel = location_name(LossLocation::KernelRingBuffer as i32);
        let advice = if lost_at.contains_key(kernel) {
            "; the kernel ring buffer overflowed: the loader did not drain it in time (it \
             does not while the file writer is behind, or the ring is too small for the \
             traffic): raise --ring-buffer-kib or lower --capture-bytes"
        } else {
            ""
        };
        warn!("{lost} events were lost ({at}); Loss events in the file mark the gaps{advice}");
    }
    Ok(())
}

/// Where a `Loss` happened, for the summary line.
fn location_name(location: i32) -> &'static str {
    match LossLocation::try_from(location) {
        Ok(LossLocation::KernelRingBuffer) => "in the kernel ring buffer",
        Ok(LossLocation::SubscriberQueue) => "in the loader queue",
        Ok(LossLocation::Source) => "at the source",
        Ok(LossLocation::InTransit) => "in transit",
        Ok(LossLocation::SubscriptionRestarted) => "at a subscription restart",
        Ok(LossLocation::Unspecified) | Err(_) => "at an unspecified place",
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;
    use tandem_proto::capture::CaptureReader;
    use tandem_proto::{Event, EventKind};

    use crate::cli::{Cli, Command};

    /// Runs `tandem-loader record ARGS -o OUT` in this process and reads the file back.
    async fn record(args: &[&str], out: &Path) -> Vec<Event> {
        let mut argv = vec!["tandem-loader", "record", "-o", out.to_str().unwrap()];
        argv.extend_from_slice(args);
        let Some(Command::Record(args)) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not a record command");
        };
        super::record(args).await.unwrap();
        CaptureReader::open(out)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn losses(events: &[Event]) -> u64 {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(EventKind::Loss(l)) => Some(l.count),
                _ => None,
            })
            .sum()
    }

    /// The hub stamps every published event with the next sequence number, before
    /// routing: an event dropped for the writer leaves a gap.
    fn assert_gapless(events: &[Event]) {
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1, "event {i} of {}", events.len());
        }
    }

    // A 64-event queue is far smaller than what either source publishes between two
    // writer turns (the synthetic source yields every 256 events, replay publishes
    // 256 at a time): without backpressure both would drop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recording_through_a_tiny_queue_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let requests = 20_000u64;
        let synthetic = dir.path().join("synthetic.tcap");
        let events = record(
            &[
                "--source",
                "synthetic",
                "--synthetic-requests",
                &requests.to_string(),
                "--queue-capacity",
                "64",
            ],
            &synthetic,
        )
        .await;
        assert_eq!(losses(&events), 0);
        assert_eq!(events.len() as u64, 4 * requests + 1);
        assert_gapless(&events);
        let data = events
            .iter()
            .filter(|e| matches!(e.kind, Some(EventKind::Data(_))))
            .count() as u64;
        assert_eq!(data, 2 * requests);

        // Replaying that file records it again, event for event.
        let replayed = record(
            &[
                "--replay",
                synthetic.to_str().unwrap(),
                "--queue-capacity",
                "64",
            ],
            &dir.path().join("replayed.tcap"),
        )
        .await;
        assert_eq!(replayed.len(), events.len());
        assert_gapless(&replayed);
        for (a, b) in events.iter().zip(&replayed) {
            assert_eq!((a.mono_ns, &a.kind), (b.mono_ns, &b.kind));
        }
    }
}
