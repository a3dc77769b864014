//! Processor throughput from a capture file: transactions per second on ONE core
//! through stitching (parse), routing, metrics, span building with sampling, and
//! OTLP protobuf encoding of the sampled spans (no network).
//!
//! ```bash
//! cargo run -q --release -p tandem-loader -- record --source synthetic \
//!     --synthetic-requests 200000 -o /tmp/bench.tcap \
//!   && cargo bench -p tandem-processor --bench throughput -- /tmp/bench.tcap
//! ```
//!
//! The capture file is the first argument, or `TANDEM_BENCH_CAPTURE`;
//! `TANDEM_BENCH_ITERATIONS` (default 5) sets how many times the events are run. All
//! events are read into memory first, so reading the file is not measured. Each
//! iteration starts from fresh stages (stitcher, router, process map, metrics
//! registry) and feeds every event, in order, on the current thread, exactly as the
//! processor's event loop does:
//!
//! 1. `stitch`: `Stitcher::push` (HTTP/1 parsing and pairing);
//! 2. `route+span`: `Router::route`, the process's resource, `build_span` with the
//!    default sampler (`parentbased_always_on`, random ids);
//! 3. `metrics`: `MetricsRegistry::record` (the OpenTelemetry SDK histograms);
//! 4. `encode`: sampled spans in batches of `traces::MAX_BATCH`, grouped by process
//!    and encoded to `ExportTraceServiceRequest` bytes (`export::encode`), what the
//!    OTLP exporter would send.
//!
//! It prints each iteration and a summary of the median iteration: events/s,
//! transactions/s and spans encoded/s (all single-threaded, so per core), the share
//! of each stage, bytes per encoded span, and the peak resident memory of the
//! benchmark process (`VmHWM`, which includes the events held in memory).

use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_sdk::trace::{RandomIdGenerator, SpanData};
use tandem_proto::capture::CaptureReader;
use tandem_proto::{Event, EventKind};

use tandem_processor::export::encode::encode_spans;
use tandem_processor::export::traces::MAX_BATCH;
use tandem_processor::model::Transaction;
use tandem_processor::pipeline::metrics::MetricsRegistry;
use tandem_processor::pipeline::resource::{ProcessMap, ProcessResource, ResourceSettings};
use tandem_processor::pipeline::route::Router;
use tandem_processor::pipeline::span::build_span;
use tandem_processor::settings::{RoutesSettings, Sampler};
use tandem_processor::stitch::Stitcher;

const DEFAULT_ITERATIONS: usize = 5;

/// What one iteration did and how long each stage took.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    wall: Duration,
    stitch: Duration,
    route_span: Duration,
    metrics: Duration,
    encode: Duration,
    events: u64,
    transactions: u64,
    spans_encoded: u64,
    encoded_bytes: u64,
    batches: u64,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    // `cargo bench` passes `--bench`; the first other argument is the capture file.
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .or_else(|| std::env::var("TANDEM_BENCH_CAPTURE").ok())
        .map(PathBuf::from)
        .ok_or(
            "no capture file: give it as the first argument or in TANDEM_BENCH_CAPTURE \
             (make one with `cargo run -q --release -p tandem-loader -- record --source \
             synthetic --synthetic-requests 200000 -o /tmp/bench.tcap`)",
        )?;
    let iterations = match std::env::var("TANDEM_BENCH_ITERATIONS") {
        Ok(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or(format!(
            "TANDEM_BENCH_ITERATIONS={v:?} is not a positive integer"
        ))?,
        Err(_) => DEFAULT_ITERATIONS,
    };

    let reader = CaptureReader::open(&path).map_err(|e| e.to_string())?;
    let offset = reader.header().realtime_offset_ns;
    let source = reader.header().source.clone();
    let events: Vec<Event> = reader
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    println!(
        "capture {}: {} events (source {source:?}); {iterations} iterations, single thread",
        path.display(),
        events.len()
    );

    let mut runs = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let r = iteration(&events, offset)?;
        println!(
            "  iteration {}: {:>8.3} s  {:>10.0} events/s  {:>9.0} transactions/s  {:>9.0} spans encoded/s",
            i + 1,
            r.wall.as_secs_f64(),
            per_sec(r.events, r.wall),
            per_sec(r.transactions, r.wall),
            per_sec(r.spans_encoded, r.wall),
        );
        runs.push(r);
    }
    runs.sort_by_key(|r| r.wall);
    let Some(r) = runs.get(runs.len() / 2).copied() else {
        return Err("no iteration ran".into());
    };
    if r.transactions == 0 {
        return Err("the capture produced no HTTP transactions".into());
    }
    let share = |d: Duration| 100.0 * d.as_secs_f64() / r.wall.as_secs_f64();
    let per_tx_us = |d: Duration| d.as_secs_f64() * 1e6 / r.transactions as f64;
    println!("median iteration (one core; every stage on the same thread):");
    println!(
        "  events/s                      {:>12.0}",
        per_sec(r.events, r.wall)
    );
    println!(
        "  transactions/s per core       {:>12.0}",
        per_sec(r.transactions, r.wall)
    );
    println!(
        "  spans encoded/s per core      {:>12.0}",
        per_sec(r.spans_encoded, r.wall)
    );
    println!(
        "  bytes/span (OTLP protobuf)    {:>12.1}   ({} batches of up to {MAX_BATCH})",
        r.encoded_bytes as f64 / r.spans_encoded.max(1) as f64,
        r.batches
    );
    for (name, d) in [
        ("stitch", r.stitch),
        ("route+span", r.route_span),
        ("metrics", r.metrics),
        ("encode", r.encode),
    ] {
        println!(
            "  {name:<12} {:>6.2} us/transaction  {:>5.1} %",
            per_tx_us(d),
            share(d)
        );
    }
    match peak_rss_kib() {
        Some(kib) => println!(
            "  peak RSS (VmHWM)              {:>9.1} MiB (includes the {} events held in memory)",
            kib as f64 / 1024.0,
            r.events
        ),
        None => println!("  peak RSS: /proc/self/status has no VmHWM"),
    }
    Ok(())
}

fn iteration(events: &[Event], offset: i64) -> Result<Run, String> {
    let mut run = Run::default();
    let mut stitcher = Stitcher::new();
    let mut router = Router::new(&RoutesSettings::default()).map_err(|e| e.to_string())?;
    let mut processes = ProcessMap::new(ResourceSettings {
        host_name: "bench".into(),
        ..Default::default()
    });
    let mut metrics = MetricsRegistry::default();
    let ids = RandomIdGenerator::default();
    let sampler = Sampler::default();
    let mut transactions: Vec<Transaction> = Vec::new();
    let mut batch: Vec<(Arc<ProcessResource>, SpanData)> = Vec::with_capacity(MAX_BATCH);

    let started = Instant::now();
    for event in events {
        if let Some(EventKind::ProcessStarted(p)) = &event.kind {
            processes.on_started(p);
        }
        let t = Instant::now();
        stitcher.push(event, offset, &mut transactions);
        run.stitch += t.elapsed();
        run.events += 1;
        for tx in transactions.drain(..) {
            run.transactions += 1;
            let t = Instant::now();
            let path = tx.http().map_or("", |h| h.request.path.as_str());
            let routed = router.route(path);
            let process = processes.get(tx.pid);
            let t_metrics = Instant::now();
            if !routed.ignore_metrics {
                metrics.record(&process, &tx, routed.route.as_deref());
            }
            let t_span = Instant::now();
            run.metrics += t_span - t_metrics;
            if !routed.ignore_traces {
                let rec = build_span(&tx, routed.route.as_deref(), sampler, &ids);
                if rec.sampled {
                    batch.push((process, rec.data));
                }
            }
            run.route_span += (t_metrics - t) + t_span.elapsed();
            if batch.len() >= MAX_BATCH {
                encode(&mut batch, &mut run);
            }
        }
    }
    if !batch.is_empty() {
        encode(&mut batch, &mut run);
    }
    run.wall = started.elapsed();
    black_box(metrics.collect());
    Ok(run)
}

fn encode(batch: &mut Vec<(Arc<ProcessResource>, SpanData)>, run: &mut Run) {
    let spans = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
    let n = spans.len() as u64;
    let t = Instant::now();
    let bytes = black_box(encode_spans(spans));
    run.encode += t.elapsed();
    run.spans_encoded += n;
    run.encoded_bytes += bytes.len() as u64;
    run.batches += 1;
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Peak resident set size in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
