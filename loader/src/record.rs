//! `tandem-loader record`: runs a source and writes what it produces to a capture
//! file, through the same hub (and so the same loss accounting) as serving.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_proto::capture::CaptureWriter;
use tandem_proto::v1::CaptureHeader;
use tracing::{info, warn};

use crate::cli::RecordArgs;
use crate::hub::{realtime_offset_ns, Hub, HubConfig, Next, Peer};
use crate::source::SourceContext;
use tandem_proto::process::shutdown_on_signals;

pub async fn record(args: RecordArgs) -> anyhow::Result<()> {
    // The recorder itself is the only subscriber; it attaches before the source
    // starts, so the source need not wait for anyone. It records what the selection
    // flags select (everything without flags).
    let selection = args.source.ebpf.selection()?.unwrap_or_default();
    let source = args.source.build(0)?;
    let hub = Hub::new(HubConfig::default());
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
    'outer: loop {
        let notified = attachment.subscription.notified();
        match hub.next_batch(&attachment) {
            Next::Batch(batch) => {
                for event in batch.events {
                    if let Some(tandem_proto::EventKind::Loss(l)) = &event.kind {
                        lost += l.count;
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
    info!(file = %args.output.display(), events, lost, "capture written");
    Ok(())
}
