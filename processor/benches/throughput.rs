//! Processor throughput from capture files, through the processor's own event loop
//! (`tandem_processor::engine::Engine`, the code the binary runs): events in
//! batches as the loader sends them, stitching (every protocol), routes, metrics,
//! spans with sampling, and OTLP protobuf encoding of the sampled spans (the trace
//! export with an encode-only output: the same queue, batching and encoder, no
//! network).
//!
//! ```bash
//! cargo run -q --release -p tandem-loader -- record --source synthetic \
//!     --synthetic-requests 200000 -o /tmp/bench.tcap
//! sudo bash integration-tests/bench/record-mixed.sh          # /tmp/mixed.tcap
//! cargo bench -p tandem-processor --bench throughput -- /tmp/bench.tcap /tmp/mixed.tcap
//! ```
//!
//! Capture files are the arguments (or `TANDEM_BENCH_CAPTURE`, comma-separated);
//! `TANDEM_BENCH_ITERATIONS` (default 5) sets how many times each pass runs. Events
//! are read into memory first. For each capture four passes run, each from fresh
//! state, and each pass's median iteration (by CPU time) is reported, with the best
//! iteration of the whole processor (this machine is shared and noisy):
//!
//! 1. `stitch`: the stitcher alone;
//! 2. `+ route, span`: the engine with a pipeline that builds every span (handed to
//!    a sink that only counts them; printer disabled) but records no metric
//!    and exports nothing;
//! 3. `+ metrics`: the same, recording every transaction's metrics;
//! 4. `+ OTLP encode` (the whole processor): and exporting sampled spans through
//!    the trace export's queue into encoded `ExportTraceServiceRequest` bodies.
//!
//! `TANDEM_BENCH_PASSES` (e.g. `4`, or `1,4`) runs only some passes.
//!
//! The per-core figure is transactions per second of CPU time (every thread of the
//! process: the event loop and the export task), from `/proc/self/task/*/schedstat`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_proto::capture::CaptureReader;
use tandem_proto::{Event, EventBatch};

use tandem_processor::engine::Engine;
use tandem_processor::export::sink::{OtlpTraces, Sink, SinkReport};
use tandem_processor::export::traces::{Batching, TraceExport};
use tandem_processor::pipeline::metrics::MetricsRegistry;
use tandem_processor::pipeline::Pipeline;
use tandem_processor::printer::{PrintFormat, Printer};
use tandem_processor::settings::{ExportSettings, RoutesSettings};
use tandem_processor::stitch::Stitcher;

const DEFAULT_ITERATIONS: usize = 5;
/// Events per batch, as the loader sends them.
const BATCH: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pass {
    Stitch,
    Spans,
    Metrics,
    Encode,
}

impl Pass {
    const ALL: [Pass; 4] = [Pass::Stitch, Pass::Spans, Pass::Metrics, Pass::Encode];

    fn name(self) -> &'static str {
        match self {
            Pass::Stitch => "stitch",
            Pass::Spans => "+ route, span",
            Pass::Metrics => "+ metrics",
            Pass::Encode => "+ OTLP encode",
        }
    }
}

/// One iteration of one pass.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    wall: Duration,
    cpu: Duration,
    events: u64,
    transactions: u64,
    spans_encoded: u64,
    encoded_bytes: u64,
    requests: u64,
}

fn main() -> ExitCode {
    match main_() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput: {e}");
            ExitCode::from(2)
        }
    }
}

fn main_() -> Result<(), String> {
    // `cargo bench` passes `--bench`; the other arguments are capture files.
    let mut paths: Vec<PathBuf> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .collect();
    if paths.is_empty() {
        if let Ok(v) = std::env::var("TANDEM_BENCH_CAPTURE") {
            paths = v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
    }
    if paths.is_empty() {
        return Err(
            "no capture file: give them as arguments or in TANDEM_BENCH_CAPTURE \
                    (make one with `cargo run -q --release -p tandem-loader -- record --source \
                    synthetic --synthetic-requests 200000 -o /tmp/bench.tcap`)"
                .into(),
        );
    }
    let iterations = match std::env::var("TANDEM_BENCH_ITERATIONS") {
        Ok(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or(format!(
            "TANDEM_BENCH_ITERATIONS={v:?} is not a positive integer"
        ))?,
        Err(_) => DEFAULT_ITERATIONS,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    for path in paths {
        bench_capture(&runtime, &path, iterations)?;
    }
    match peak_rss_kib() {
        Some(kib) => println!(
            "peak RSS (VmHWM) {:.1} MiB (includes the events held in memory)",
            kib as f64 / 1024.0
        ),
        None => println!("peak RSS: /proc/self/status has no VmHWM"),
    }
    Ok(())
}

fn bench_capture(
    runtime: &tokio::runtime::Runtime,
    path: &std::path::Path,
    iterations: usize,
) -> Result<(), String> {
    let reader = CaptureReader::open(path).map_err(|e| e.to_string())?;
    let offset = reader.header().realtime_offset_ns;
    let source = reader.header().source.clone();
    let events: Vec<Event> = reader
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let batches = into_batches(events, offset);
    let n_events: usize = batches.iter().map(|b| b.events.len()).sum();
    println!(
        "capture {}: {n_events} events (source {source:?}) in {} batches of up to {BATCH}; \
         {iterations} iterations per pass",
        path.display(),
        batches.len()
    );
    let mut medians = Vec::new();
    // TANDEM_BENCH_PASSES=4 runs only the whole processor (1-4: the passes above).
    let only: Vec<usize> = std::env::var("TANDEM_BENCH_PASSES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    for (i, pass) in Pass::ALL.into_iter().enumerate() {
        if !only.is_empty() && !only.contains(&(i + 1)) {
            continue;
        }
        let mut runs = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            runs.push(runtime.block_on(iteration(pass, &batches))?);
        }
        runs.sort_by_key(|r| r.cpu);
        let (Some(r), Some(best)) = (runs.get(runs.len() / 2).copied(), runs.first().copied())
        else {
            return Err("no iteration ran".into());
        };
        if r.transactions == 0 {
            return Err(format!(
                "{}: the capture produced no transactions",
                path.display()
            ));
        }
        medians.push((pass, r, best));
    }
    println!(
        "  pass (median)    transactions/s per core  (wall)      us/transaction (CPU)   this stage"
    );
    let mut previous = 0.0;
    for (pass, r, _) in &medians {
        let us = r.cpu.as_secs_f64() * 1e6 / r.transactions as f64;
        println!(
            "  {:<16} {:>12.0}            ({:>9.0})   {:>8.3}               {:>+8.3}",
            pass.name(),
            per_sec(r.transactions, r.cpu),
            per_sec(r.transactions, r.wall),
            us,
            us - previous
        );
        previous = us;
    }
    if let Some((_, r, best)) = medians.last() {
        println!(
            "  whole processor: {:.0} transactions/s per core (median; best iteration {:.0}), {:.0} events/s; {} spans encoded in {} requests, {:.1} bytes/span",
            per_sec(r.transactions, r.cpu),
            per_sec(best.transactions, best.cpu),
            per_sec(r.events, r.cpu),
            r.spans_encoded,
            r.requests,
            r.encoded_bytes as f64 / r.spans_encoded.max(1) as f64
        );
    }
    Ok(())
}

/// The events in batches as the loader sends them (contiguous sequence numbers).
fn into_batches(events: Vec<Event>, offset: i64) -> Vec<EventBatch> {
    let mut out = Vec::new();
    let mut seq = 1;
    let mut it = events.into_iter().peekable();
    while it.peek().is_some() {
        let events: Vec<Event> = it.by_ref().take(BATCH).collect();
        let len = events.len() as u64;
        out.push(EventBatch {
            subscription_seq: seq,
            events,
            realtime_offset_ns: offset,
            subscription_epoch: 1,
            resume_state: Default::default(),
        });
        seq += len;
    }
    out
}

async fn iteration(pass: Pass, batches: &[EventBatch]) -> Result<Run, String> {
    let mut run = Run::default();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    if pass == Pass::Stitch {
        let mut stitcher = Stitcher::new();
        let mut out = Vec::new();
        for b in batches {
            for e in &b.events {
                stitcher.push(e, b.realtime_offset_ns, &mut out);
                run.transactions += out.len() as u64;
                out.clear();
            }
            run.events += b.events.len() as u64;
        }
        std::hint::black_box(&stitcher);
    } else {
        let export = ExportSettings::default();
        let registry =
            (pass != Pass::Spans).then(|| Arc::new(Mutex::new(MetricsRegistry::default())));
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if pass != Pass::Encode {
            // A sink that reads spans, so that the pipeline builds them.
            sinks.push(Box::new(LastSpan(0)));
        } else {
            // The queue holds every span: the bench measures the work, not how the
            // two threads are scheduled (the export's own bound is tested elsewhere).
            sinks.push(Box::new(OtlpTraces(TraceExport::encode_only(Batching {
                max_queue_size: usize::MAX / 2,
                max_export_batch_size: export.max_export_batch_size,
                batch_timeout: export.batch_timeout,
            }))));
        }
        let pipeline = Pipeline::with_sinks(
            &RoutesSettings::default(),
            &export,
            "bench".into(),
            registry.clone(),
            sinks,
        )
        .map_err(|e| e.to_string())?;
        let mut engine = Engine::new(pipeline, Printer::new(PrintFormat::None));
        // Acknowledging by watermark, as the processor does.
        engine.set_progress(std::sync::Arc::new(
            tandem_processor::resume::Progress::new(1),
        ));
        for b in batches {
            engine.on_batch(b);
            // Let the export task run, as the loader's batches come with pauses.
            tokio::task::yield_now().await;
        }
        let summary = engine.finish().await;
        if let Some(r) = registry {
            let collected = r.lock().map(|mut r| r.collect()).unwrap_or_default();
            std::hint::black_box(collected);
        }
        run.events = summary.input.events;
        run.transactions = summary.transactions_total();
        let e = summary.pipeline.span_export;
        run.spans_encoded = e.exported;
        run.encoded_bytes = e.bytes;
        run.requests = e.requests;
        if pass == Pass::Encode && e.lost() > 0 {
            return Err(format!("the encode-only export lost spans: {e:?}"));
        }
    }
    run.wall = t0.elapsed();
    run.cpu = cpu_time().saturating_sub(cpu0);
    Ok(run)
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// CPU time of every thread of this process (`/proc/self/task/*/schedstat`, ns).
fn cpu_time() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// Peak resident set size in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Counts the spans it is handed (the pipeline builds spans only for sinks that
/// read them): passes 2 and 3 measure building spans, not exporting them.
struct LastSpan(u64);

impl Sink for LastSpan {
    fn name(&self) -> &'static str {
        "bench-last-span"
    }

    fn span(
        &mut self,
        span: &tandem_processor::pipeline::span::SpanRecord,
        _tx: &tandem_processor::model::Transaction,
        _process: &Arc<tandem_processor::pipeline::resource::ProcessResource>,
    ) {
        std::hint::black_box(span);
        self.0 += 1;
    }

    fn reads_spans(&self) -> bool {
        true
    }

    fn report(&self) -> SinkReport {
        SinkReport::default()
    }

    fn shutdown(self: Box<Self>) -> futures::future::BoxFuture<'static, SinkReport> {
        Box::pin(async { SinkReport::default() })
    }
}
