//! The processor's event loop body, as a library: one [`Engine`] takes the loader's
//! batches in order ([`Engine::on_batch`]) and drives every stage — sequence check,
//! stitching, the pipeline and its sinks, the raw-event printer. The binary
//! (`run`), the integration tests (through the binary) and the throughput
//! benchmark all go through it.

use std::collections::BTreeMap;
use std::time::Instant;

use tandem_proto::v1::LossLocation;
use tandem_proto::{Event, EventBatch, EventKind};
use tracing::{info, warn};

use crate::model::Transaction;
use crate::pipeline::Pipeline;
use crate::printer::Printer;
use crate::stats::{SeqCheck, Stats};
use crate::stitch::Stitcher;
use crate::summary::Summary;

/// Most processes remembered for the instrumented-processes count.
const MAX_PROCESSES: usize = 4096;

/// Raw events in, telemetry out.
pub struct Engine {
    input: Stats,
    stitcher: Stitcher,
    pipeline: Pipeline,
    raw: Printer,
    scratch: Vec<Transaction>,
    by_protocol: BTreeMap<&'static str, u64>,
    /// Live processes (seen starting, not yet exited) by pid: their executable's name.
    processes: BTreeMap<u32, String>,
    started: Instant,
}

impl Engine {
    /// An engine feeding `pipeline`, printing raw events with `raw`.
    pub fn new(pipeline: Pipeline, raw: Printer) -> Self {
        Self::with_stitcher(Stitcher::new(), pipeline, raw)
    }

    pub fn with_stitcher(stitcher: Stitcher, pipeline: Pipeline, raw: Printer) -> Self {
        Engine {
            input: Stats::default(),
            stitcher,
            pipeline,
            raw,
            scratch: Vec::new(),
            by_protocol: BTreeMap::new(),
            processes: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    pub fn pipeline_mut(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn stitcher(&self) -> &Stitcher {
        &self.stitcher
    }

    /// One batch from the loader: checked against the subscription's sequence
    /// (a gap becomes a `Loss` event at its place, events sent again are skipped),
    /// then every event through stitching and the pipeline; the sinks are flushed
    /// at the end.
    pub fn on_batch(&mut self, batch: &EventBatch) {
        let offset = batch.realtime_offset_ns;
        let check = self.input.record_batch(
            batch.subscription_epoch,
            batch.subscription_seq,
            &batch.events,
        );
        let mut gap = None;
        match check {
            SeqCheck::Contiguous => {}
            SeqCheck::Duplicate(n) => info!(
                skipped = n,
                "skipped events sent again after a reconnection (already processed)"
            ),
            SeqCheck::Gap(n) => {
                warn!(
                    lost = n,
                    "events lost in transit (gap in the subscription sequence)"
                );
                gap = Some(Event::loss(
                    batch.events.first().map_or(0, |e| e.mono_ns),
                    n,
                    LossLocation::InTransit,
                    "in transit: gap in the subscription sequence (a previous processor \
                     stopped with events in flight)",
                ));
            }
            SeqCheck::Restarted => {
                info!("subscription sequence restarted (new loader or expired subscription)")
            }
        }
        let events = batch.events.get(check.skip()..).unwrap_or_default();
        for event in gap.iter().chain(events) {
            self.event(event, offset);
        }
        self.pipeline.flush();
        if let Some(marker) = &gap {
            self.print_raw(std::slice::from_ref(marker), offset);
        }
        self.print_raw(events, offset);
    }

    fn event(&mut self, event: &Event, offset: i64) {
        match &event.kind {
            Some(EventKind::ProcessStarted(p)) => {
                self.pipeline.on_process(p);
                if self.processes.len() < MAX_PROCESSES || self.processes.contains_key(&p.pid) {
                    let name = p.exe_path.rsplit('/').next().unwrap_or_default();
                    self.processes.insert(p.pid, name.to_string());
                }
            }
            Some(EventKind::ProcessExited(p)) => {
                self.processes.remove(&p.pid);
            }
            _ => {}
        }
        self.stitcher.push(event, offset, &mut self.scratch);
        for tx in self.scratch.drain(..) {
            *self.by_protocol.entry(tx.protocol_name()).or_default() += 1;
            self.pipeline.on_transaction(&tx);
        }
        if let Some(EventKind::ProcessExited(p)) = &event.kind {
            // After the transactions its exit closed.
            self.pipeline.on_exit(p.pid);
        }
    }

    fn print_raw(&self, events: &[Event], offset: i64) {
        if let Err(e) = self.raw.print(events, offset) {
            warn!("cannot write to stdout: {e}");
        }
    }

    /// Everything counted so far.
    pub fn summary(&self) -> Summary {
        let mut processes: BTreeMap<String, u64> = BTreeMap::new();
        for name in self.processes.values() {
            *processes.entry(name.clone()).or_default() += 1;
        }
        Summary {
            uptime: self.started.elapsed(),
            input: self.input.clone(),
            stitch: self.stitcher.stats(),
            links: self.stitcher.link_stats(),
            connections: self.stitcher.connections(),
            transactions: self.by_protocol.clone(),
            pipeline: self.pipeline.stats(),
            processes,
        }
    }

    /// Stops the pipeline (its sinks deliver what they hold) and returns the final
    /// counts.
    pub async fn finish(self) -> Summary {
        let mut summary = self.summary();
        summary.pipeline = self.pipeline.shutdown().await;
        summary.uptime = self.started.elapsed();
        summary
    }
}
