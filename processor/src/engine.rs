//! The processor's event loop body, as a library: one [`Engine`] takes the loader's
//! batches in order ([`Engine::on_batch`]) and drives every stage — sequence check,
//! stitching, the pipeline and its sinks, the raw-event printer. The binary
//! (`run`), the integration tests (through the binary) and the throughput
//! benchmark all go through it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tandem_proto::v1::{LossLocation, Role};
use tandem_proto::{Event, EventBatch, EventKind};
use tracing::{info, warn};

use crate::model::Transaction;
use crate::pipeline::Pipeline;
use crate::printer::Printer;
use crate::resume::{Begin, Progress, State};
use crate::select::Selector;
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
    /// The exact process selection (`crate::select`); `None`: every event passes.
    selector: Option<Selector>,
    started: Instant,
    /// What is acknowledged to the loader (`crate::resume`); `None`: every batch
    /// as soon as it was handed over.
    progress: Option<Arc<Progress>>,
    /// Transactions a predecessor already delivered, rebuilt from events sent
    /// again: not reported a second time.
    delivered_before: HashSet<Begin>,
    /// Transactions completed in the current batch.
    finished: Vec<Begin>,
    /// Transactions skipped as delivered by a predecessor.
    resent_skipped: u64,
    /// Reading what a predecessor processed already (after a takeover, until the
    /// first new event).
    taking_over: bool,
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
            selector: None,
            started: Instant::now(),
            progress: None,
            delivered_before: HashSet::new(),
            finished: Vec::new(),
            resent_skipped: 0,
            taking_over: false,
        }
    }

    /// Acknowledges through `progress` (see `crate::resume`); its sinks report
    /// what they hold to it.
    pub fn set_progress(&mut self, progress: Arc<Progress>) {
        self.stitcher.set_id_key(progress.key());
        self.pipeline.set_progress(&progress);
        self.progress = Some(progress);
    }

    /// Transactions rebuilt after a takeover and not reported again (their
    /// predecessor had delivered them).
    pub fn resent_skipped(&self) -> u64 {
        self.resent_skipped
    }

    /// A batch carrying a predecessor's resume state, before anything else was
    /// processed: continue where it stopped.
    fn take_over(&mut self, batch: &EventBatch) {
        let Some(progress) = &self.progress else {
            return;
        };
        let Some(state) = State::decode(&batch.resume_state) else {
            warn!(
                bytes = batch.resume_state.len(),
                "the loader handed back a resume state this processor cannot read; \
                 continuing without it (spans may be exported twice)"
            );
            return;
        };
        if !self
            .input
            .resume_at(batch.subscription_epoch, state.watermark)
        {
            return;
        }
        progress.resume(batch.subscription_epoch, &state);
        self.taking_over = true;
        self.stitcher.set_id_key(state.key);
        self.delivered_before = state.done.iter().copied().collect();
        if state.unprotected > 0 {
            *self.input.lost.entry("resume_bound").or_default() += state.unprotected;
            warn!(
                transactions = state.unprotected,
                "the previous processor stopped with transactions in progress beyond \
                 the resume bound (a quarter of the loader's queue): they are lost"
            );
        }
        info!(
            watermark = state.watermark,
            delivered = state.done.len(),
            "taking over from the previous processor: events after its watermark are \
             processed again, transactions it delivered are not reported twice"
        );
    }

    /// Judges every process with `selector`: events of processes it does not
    /// select are dropped before stitching.
    pub fn set_selector(&mut self, selector: Selector) {
        self.selector = Some(selector);
    }

    pub fn selector_mut(&mut self) -> Option<&mut Selector> {
        self.selector.as_mut()
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
        if !batch.resume_state.is_empty() {
            self.take_over(batch);
        }
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
                warn!(
                    "the subscription started again (a new loader, or it expired): what \
                     happened meanwhile was not captured, requests in progress are cut"
                );
                gap = Some(Event::loss(
                    batch.events.first().map_or(0, |e| e.mono_ns),
                    0,
                    LossLocation::SubscriptionRestarted,
                    "subscription restarted: the loader restarted or the subscription \
                     expired; what happened meanwhile is unknown",
                ));
            }
        }
        if let Some(p) = &self.progress {
            p.start_batch(batch.subscription_epoch);
        }
        let skip = check.skip();
        // A process's facts are handed to a resumed subscription at positions
        // already processed: a replacement needs them, a reader that read on
        // takes them again harmlessly. A replacement also takes the connections
        // opened and closed there (their ends, their role, their ports).
        let mut taken_again = Vec::new();
        for event in batch.events.iter().take(skip) {
            let wanted = match &event.kind {
                Some(EventKind::ProcessStarted(_)) => true,
                Some(EventKind::ConnectionOpened(_) | EventKind::ConnectionClosed(_)) => {
                    self.taking_over
                }
                _ => false,
            };
            if wanted {
                self.event(event, offset);
                if self.taking_over {
                    taken_again.push(event.clone());
                }
            }
        }
        if skip < batch.events.len() {
            self.taking_over = false;
        }
        let events = batch.events.get(skip..).unwrap_or_default();
        let first = batch.subscription_seq + skip as u64;
        if let Some(marker) = &gap {
            self.stitcher.set_position(batch.subscription_epoch, first);
            self.event(marker, offset);
        }
        for (i, event) in events.iter().enumerate() {
            self.stitcher
                .set_position(batch.subscription_epoch, first + i as u64);
            self.event(event, offset);
        }
        self.pipeline.flush();
        if let Some(progress) = &self.progress {
            let through = (batch.subscription_seq + batch.events.len() as u64).saturating_sub(1);
            let (pending, stale) = self.stitcher.pending(progress.lag_floor());
            progress.processed(through, pending, stale, &self.finished);
            if self.delivered_before.iter().all(|b| b.seq <= through) {
                self.delivered_before.clear();
            }
        }
        self.finished.clear();
        if !taken_again.is_empty() {
            self.print_raw(&taken_again, offset);
        }
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
            // An accepted connection's local address, before any of its requests
            // (and before the client calls they make) is reported.
            Some(EventKind::ConnectionOpened(c)) if c.role() == Role::Server => {
                if let Some(local) = c.local.as_ref().and_then(crate::stitch::socket_addr) {
                    self.pipeline.on_accepted(c.pid, local.ip());
                }
            }
            _ => {}
        }
        if !self.admits(event) {
            return;
        }
        self.stitcher.push(event, offset, &mut self.scratch);
        for tx in self.scratch.drain(..) {
            if self.progress.is_some() {
                let begin = tx.trace.map(|t| t.begin).unwrap_or_default();
                self.finished.push(begin);
                if self.delivered_before.remove(&begin) {
                    self.resent_skipped += 1;
                    continue;
                }
            }
            *self.by_protocol.entry(tx.protocol_name()).or_default() += 1;
            self.pipeline.on_transaction(&tx);
        }
        if let Some(EventKind::ProcessExited(p)) = &event.kind {
            // After the transactions its exit closed.
            self.pipeline.on_exit(p.pid);
        }
    }

    /// Whether the selector lets `event` through (process events always pass:
    /// a process's facts are needed to judge it).
    fn admits(&mut self, event: &Event) -> bool {
        let Some(sel) = &mut self.selector else {
            return true;
        };
        let pid = match &event.kind {
            Some(EventKind::ProcessStarted(p)) => {
                sel.on_started(p);
                return true;
            }
            Some(EventKind::ProcessExited(p)) => {
                sel.on_exited(p.pid);
                return true;
            }
            Some(EventKind::ConnectionOpened(c)) => {
                sel.on_connection(c);
                c.pid
            }
            Some(EventKind::ConnectionClosed(c)) => c.pid,
            Some(EventKind::Data(d)) => d.pid,
            Some(EventKind::Loss(_)) | None => return true,
        };
        sel.admits(pid)
    }

    fn print_raw(&self, events: &[Event], offset: i64) {
        if let Err(e) = self.raw.print(events, offset) {
            warn!("cannot write to stdout: {e}");
        }
    }

    /// Everything counted so far.
    pub fn summary(&self) -> Summary {
        let mut processes: BTreeMap<String, u64> = BTreeMap::new();
        for (pid, name) in &self.processes {
            if self.selector.as_ref().is_none_or(|s| s.is_selected(*pid)) {
                *processes.entry(name.clone()).or_default() += 1;
            }
        }
        Summary {
            uptime: self.started.elapsed(),
            input: self.input.clone(),
            stitch: self.stitcher.stats(),
            links: self.stitcher.link_stats(),
            connections: self.stitcher.connections(),
            transactions: self.by_protocol.clone(),
            pipeline: self.pipeline.stats(),
            selection: self
                .selector
                .as_ref()
                .map(Selector::stats)
                .unwrap_or_default(),
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
