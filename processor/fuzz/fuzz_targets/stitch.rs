//! The whole processor path after the loader: `Engine::on_batch` (sequence check,
//! the stitcher's connection table and protocol detection over every protocol, the
//! sessions, linking, then the pipeline: routes, metrics, spans and the trace
//! printer) fed events made from the segments of the input, over up to four
//! connections of one process.
//!
//! Flags: bits 0-1 the stitcher's limits (0 the defaults, else at most that many
//! connections, 2 pending requests and a 64-byte header block, so that eviction and
//! over-the-bound paths are reached by small inputs); bits 2-5 the role of
//! connections 0-3 (set: the process is the client); bit 6 the connections are
//! announced as preexisting; bit 7 the printer writes JSON rather than text.
//!
//! Each segment is a `Data` event (the server's bytes when `ctl` bit 0 is set,
//! otherwise the client's; the direction follows from the connection's role).
//! Segment actions: bits 0-1 the connection (0-3); bits 2-3 what else happens:
//! 0 nothing, 1 a `ConnectionOpened` before the data, 2 a `ConnectionClosed` after
//! it, 3 a `Loss` after it (connections 0, 2) or the process's exit (1, 3).
//!
//! Checked: no panic; connections and every session's footprint stay within the
//! stitcher's bounds.

#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use tandem_processor::engine::Engine;
use tandem_processor::export::printer::Printer as TracePrinterSink;
use tandem_processor::export::sink::Sink;
use tandem_processor::pipeline::metrics::MetricsRegistry;
use tandem_processor::pipeline::Pipeline;
use tandem_processor::printer::{PrintFormat, Printer};
use tandem_processor::settings::{ExportSettings, RoutesSettings, TracePrinter};
use tandem_processor::stitch::{Limits, Stitcher, MAX_STREAMS};
use tandem_processor_fuzz::{mono_ns, split};
use tandem_proto::v1::{
    ConnectionClosed, ConnectionOpened, Data, Direction, Loss, ProcessExited, ProcessStarted, Role,
    SocketAddress,
};
use tandem_proto::{Event, EventBatch, EventKind};

const PID: u32 = 4242;

fn event(mono_ns: u64, kind: EventKind) -> Event {
    Event {
        mono_ns,
        kind: Some(kind),
        ..Default::default()
    }
}

fn addr(port: u32) -> Option<SocketAddress> {
    Some(SocketAddress {
        ip: vec![127, 0, 0, 1].into(),
        port,
        ..Default::default()
    })
}

fuzz_target!(|input: &[u8]| {
    let (flags, segments) = split(input);
    let limits = match flags & 3 {
        0 => Limits::default(),
        n => Limits {
            max_connections: usize::from(n),
            max_pending: 2,
            max_head_bytes: 64,
        },
    };
    let printer_kind = if flags & 0x80 != 0 {
        TracePrinter::Json
    } else {
        TracePrinter::Text
    };
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(TracePrinterSink::new(
        printer_kind,
        Box::new(std::io::sink()),
    ))];
    let registry = Arc::new(Mutex::new(MetricsRegistry::default()));
    let Ok(pipeline) = Pipeline::with_sinks(
        &RoutesSettings::default(),
        &ExportSettings::default(),
        "fuzz".into(),
        Some(registry),
        sinks,
    ) else {
        return;
    };
    let mut engine = Engine::with_stitcher(
        Stitcher::with_limits(limits),
        pipeline,
        Printer::new(PrintFormat::None),
    );
    // Acknowledging by watermark, as the processor does.
    engine.set_progress(std::sync::Arc::new(
        tandem_processor::resume::Progress::new(1),
    ));
    let mut seq = 0u64;
    let mut batch = |engine: &mut Engine, events: Vec<Event>| {
        let n = u64::try_from(events.len()).unwrap_or(0);
        engine.on_batch(&EventBatch {
            subscription_seq: seq,
            events,
            realtime_offset_ns: 1_700_000_000_000_000_000,
            subscription_epoch: 1,
            ..Default::default()
        });
        seq += n;
    };
    batch(
        &mut engine,
        vec![event(
            mono_ns(0),
            EventKind::ProcessStarted(ProcessStarted {
                pid: PID,
                exe_path: "/usr/bin/fuzzd".into(),
                cmdline: vec!["fuzzd".into()],
                ..Default::default()
            }),
        )],
    );
    for (i, seg) in segments.enumerate() {
        let t = mono_ns(i + 1);
        let conn = seg.action() & 3;
        let conn_id = u64::from(conn) + 1;
        let tid = PID + u32::from(conn) + 1;
        let client = flags & (4 << conn) != 0;
        // The process receives requests as a server and answers as a client.
        let ingress = seg.response() == client;
        let mut events = Vec::new();
        let then = seg.action() >> 2;
        if then == 1 {
            let role = if client { Role::Client } else { Role::Server };
            events.push(event(
                t,
                EventKind::ConnectionOpened(ConnectionOpened {
                    pid: PID,
                    tid,
                    conn_id,
                    local: addr(8000 + u32::from(conn)),
                    peer: addr(40000 + u32::from(conn)),
                    role: role.into(),
                    preexisting: flags & 0x40 != 0,
                    ..Default::default()
                }),
            ));
        }
        let direction = if ingress {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        events.push(event(
            t,
            EventKind::Data(Data {
                pid: PID,
                tid,
                conn_id,
                direction: direction.into(),
                total_len: seg.total(),
                payload: seg.data.to_vec().into(),
                truncated: seg.uncaptured() > 0,
                ..Default::default()
            }),
        ));
        match (then, conn & 1) {
            (2, _) => events.push(event(
                t,
                EventKind::ConnectionClosed(ConnectionClosed {
                    pid: PID,
                    tid,
                    conn_id,
                    ..Default::default()
                }),
            )),
            (3, 0) => events.push(event(
                t,
                EventKind::Loss(Loss {
                    count: 1,
                    ..Default::default()
                }),
            )),
            (3, _) => events.push(event(
                t,
                EventKind::ProcessExited(ProcessExited {
                    pid: PID,
                    ..Default::default()
                }),
            )),
            _ => {}
        }
        batch(&mut engine, events);
        let stitcher = engine.stitcher();
        assert!(stitcher.connections() <= limits.max_connections.max(1));
        let f = stitcher.footprint();
        // HTTP/1: the header block; HTTP/2: a frame's payload and a header block;
        // the databases: a kept message body (all under 64 KiB).
        assert!(f.buffered <= 256 * 1024, "{} bytes buffered", f.buffered);
        // HTTP/1 pending requests, HTTP/2 streams, database operations.
        assert!(f.pending <= limits.max_pending.max(MAX_STREAMS).max(256));
    }
});
