//! The loader API end to end: real `tandem-loader` and `tandem-processor` processes
//! talking gRPC over a real Unix socket, fed from capture files.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tandem_integration_tests::*;
use tandem_proto::v1::loader_client::LoaderClient;
use tandem_proto::v1::loader_server::{Loader, LoaderServer};
use tandem_proto::v1::{
    AckRequest, AckResponse, InfoRequest, InfoResponse, ProtocolVersion, SubscribeRequest,
};
use tandem_proto::{EventBatch, EventKind};

fn socket_in(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("run").join("loader.sock")
}

/// The JSON kind and payload of a capture-file event, as the processor prints them.
fn expected(e: &tandem_proto::Event) -> (String, String) {
    match &e.kind {
        Some(EventKind::ProcessStarted(_)) => ("process_started".into(), String::new()),
        Some(EventKind::ConnectionOpened(_)) => ("connection_opened".into(), String::new()),
        Some(EventKind::ConnectionClosed(_)) => ("connection_closed".into(), String::new()),
        Some(EventKind::Data(d)) => ("data".into(), String::from_utf8_lossy(&d.payload).into()),
        other => panic!("unexpected event in capture: {other:?}"),
    }
}

fn printed(e: &Value) -> (String, String) {
    (
        e["kind"].as_str().unwrap_or_default().to_owned(),
        e["payload"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn replay_reaches_the_processor_complete_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let capture = synthetic_capture(dir.path(), 50);
    let want: Vec<_> = capture_events(&capture).iter().map(expected).collect();
    assert_eq!(want.len(), 201);

    let socket = socket_in(&dir);
    let mut loader = start_loader(&socket, &["--replay", capture.to_str().unwrap()]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode");

    let p = start_processor(&socket, "only", &[]);
    let got = read_events(&p, want.len(), PATIENCE);
    assert_eq!(got.iter().map(printed).collect::<Vec<_>>(), want);
    assert_eq!(seqs(&got), (1..=201).collect::<Vec<u64>>());
    // Wall time is derived from the recorded clock offset.
    assert!(
        got[0]["time"].as_str().unwrap().starts_with("20"),
        "{}",
        got[0]
    );

    let info = loader_info(&socket);
    assert_eq!(info.events_ingested, 201);
    assert_eq!(info.subscribers[0].dropped, 0);
    assert_eq!(info.protocol.unwrap().major, tandem_proto::PROTOCOL_MAJOR);

    // SIGTERM: clean exit and the socket is gone.
    assert!(loader.stop().success(), "{}", loader.stderr.text());
    assert!(!socket.exists(), "socket left behind");
}

#[test]
fn two_subscribers_each_receive_everything() {
    let dir = tempfile::tempdir().unwrap();
    let capture = synthetic_capture(dir.path(), 25);
    let socket = socket_in(&dir);
    let _loader = start_loader(
        &socket,
        &[
            "--replay",
            capture.to_str().unwrap(),
            "--wait-subscribers",
            "2",
        ],
    );
    let a = start_processor(&socket, "a", &[]);
    let b = start_processor(&socket, "b", &[]);
    let from_a = read_events(&a, 101, PATIENCE);
    let from_b = read_events(&b, 101, PATIENCE);
    assert_eq!(seqs(&from_a), (1..=101).collect::<Vec<u64>>());
    assert_eq!(seqs(&from_b), seqs(&from_a));
    let info = loader_info(&socket);
    let names: BTreeSet<_> = info.subscribers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["a", "b"]));
    assert!(info
        .subscribers
        .iter()
        .all(|s| s.dropped == 0 && s.delivered == 101));
}

#[test]
fn a_replacement_processor_receives_what_happened_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let capture = synthetic_capture(dir.path(), 40); // 161 events
    let socket = socket_in(&dir);
    // 50 events/s: about 3 s of traffic, with the processor swapped in the middle.
    let _loader = start_loader(
        &socket,
        &["--replay", capture.to_str().unwrap(), "--rate", "50"],
    );
    let mut first = start_processor(&socket, "swap", &[]);
    read_events(&first, 30, PATIENCE);
    assert!(first.stop().success(), "{}", first.stderr.text());
    let first_events: Vec<Value> = first
        .stdout
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // Events keep coming while no processor is connected.
    thread::sleep(Duration::from_millis(1000));
    let queued = loader_info(&socket).subscribers[0].queue_depth;
    assert!(
        queued > 0,
        "the loader should be queueing for the absent processor"
    );

    // The replacement first learns the live process (its ProcessStarted, sent
    // again: the capture has one process), then gets everything it missed.
    let second = start_processor(&socket, "swap", &[]);
    let rest = read_events(&second, 161 - first_events.len() + 1, PATIENCE);
    assert_eq!(rest[0]["kind"], "process_started", "{}", rest[0]);
    assert!(
        seqs(&first_events).contains(&seqs(&rest)[0]),
        "sent again: {}",
        rest[0]
    );
    let mut all = seqs(&first_events);
    all.extend(seqs(&rest[1..]));
    assert_eq!(
        all,
        (1..=161).collect::<Vec<u64>>(),
        "both processors together saw every event exactly once, in order"
    );
    let info = loader_info(&socket);
    let s = &info.subscribers[0];
    assert_eq!((s.name.as_str(), s.dropped, s.connections), ("swap", 0, 2));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(loader_info(&socket).subscribers[0].unacknowledged, 0);
}

#[test]
fn a_stalled_subscriber_loses_counted_events_and_the_other_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let capture = synthetic_capture(dir.path(), 2000); // 8001 events, ~1.5 MB
    let total = 8001u64;
    let socket = socket_in(&dir);
    let _loader = start_loader(
        &socket,
        &[
            "--replay",
            capture.to_str().unwrap(),
            "--wait-subscribers",
            "2",
            "--queue-capacity",
            "500",
            // 5000 events/s: easy for a running processor, too much for a stopped one.
            "--rate",
            "5000",
        ],
    );
    let stalled = start_processor(&socket, "stalled", &[]);
    stalled
        .stderr
        .wait_for("connected to loader; subscribed", PATIENCE);
    stalled.signal(Signal::SIGSTOP);
    let healthy = start_processor(&socket, "healthy", &[]);
    let healthy_events = read_events(&healthy, total as usize, Duration::from_secs(60));
    assert_eq!(seqs(&healthy_events).len() as u64, total);
    assert!(healthy_events.iter().all(|e| e["kind"] != "loss"));

    let info = loader_info(&socket);
    let by_name = |n: &str| {
        info.subscribers
            .iter()
            .find(|s| s.name == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("healthy").dropped, 0);
    let dropped = by_name("stalled").dropped;
    assert!(
        dropped > 0,
        "the stalled subscriber's queue should have overflowed"
    );

    // Once it resumes it is told exactly how many it lost, where they were lost.
    stalled.signal(Signal::SIGCONT);
    let mut received = 0u64;
    let mut lost = 0u64;
    while received + lost < total {
        let line = stalled
            .stdout
            .next(PATIENCE)
            .unwrap_or_else(|| panic!("stalled processor stopped early at {received}+{lost}"));
        let e: Value = serde_json::from_str(&line).unwrap();
        if e["kind"] == "loss" {
            assert_eq!(e["location"], "subscriber_queue");
            lost += e["count"].as_u64().unwrap();
        } else {
            received += 1;
        }
    }
    assert_eq!(lost, dropped);
    assert_eq!(received + lost, total);
}

#[test]
fn a_peer_outside_the_allowlist_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let capture = synthetic_capture(dir.path(), 1);
    let socket = socket_in(&dir);
    // Only uid 4242424 may connect: not the uid these tests run as.
    let loader = start_loader(
        &socket,
        &[
            "--replay",
            capture.to_str().unwrap(),
            "--allow-uid",
            "4242424",
        ],
    );
    let mut p = start_processor(&socket, "intruder", &[]);
    let status = p.wait(PATIENCE);
    assert_eq!(status.code(), Some(2), "{}", p.stderr.text());
    let me = nix::unistd::getuid();
    let msg = p.stderr.wait_for("refused this processor", PATIENCE);
    assert!(msg.contains(&format!("peer uid {me}")), "{msg}");
    assert!(msg.contains("--allow-uid"), "{msg}");
    let log = loader.stderr.wait_for("refused peer", PATIENCE);
    assert!(log.contains(&format!("peer_uid={me}")), "{log}");
}

#[test]
fn a_subscriber_of_another_major_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let capture = synthetic_capture(dir.path(), 1);
    let socket = socket_in(&dir);
    let loader = start_loader(&socket, &["--replay", capture.to_str().unwrap()]);
    let status = runtime().block_on(async {
        let channel = tandem_proto::uds::connect(&socket).await.unwrap();
        let request = SubscribeRequest {
            protocol: Some(ProtocolVersion { major: 2, minor: 0 }),
            name: "future".into(),
            ..Default::default()
        };
        match LoaderClient::new(channel).subscribe(request).await {
            Ok(_) => panic!("a v2 subscriber must be refused"),
            Err(status) => status,
        }
    });
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("major version mismatch") && status.message().contains("2.0"),
        "{}",
        status.message()
    );
    loader.stderr.wait_for("refused subscriber", PATIENCE);
}

/// A loader that claims to speak tandem.loader.v2, to check the processor's side.
struct FutureLoader;

#[tonic::async_trait]
impl Loader for FutureLoader {
    type SubscribeStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<EventBatch, tonic::Status>> + Send>>;

    async fn subscribe(
        &self,
        _: tonic::Request<SubscribeRequest>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        Err(tonic::Status::internal(
            "a v1 processor must not get this far",
        ))
    }

    async fn info(
        &self,
        _: tonic::Request<InfoRequest>,
    ) -> Result<tonic::Response<InfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(InfoResponse {
            protocol: Some(ProtocolVersion { major: 2, minor: 1 }),
            ..Default::default()
        }))
    }

    async fn ack(
        &self,
        _: tonic::Request<AckRequest>,
    ) -> Result<tonic::Response<AckResponse>, tonic::Status> {
        Ok(tonic::Response::new(AckResponse {}))
    }

    async fn capability_report(
        &self,
        _: tonic::Request<tandem_proto::v1::CapabilityReportRequest>,
    ) -> Result<tonic::Response<tandem_proto::v1::CapabilityReportResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not part of this test"))
    }
}

#[test]
fn the_processor_refuses_a_loader_of_another_major_version() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("future.sock");
    let rt = runtime();
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(&socket).unwrap() });
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(LoaderServer::new(FutureLoader))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let mut p = start_processor(&socket, "v1", &[]);
    let status = p.wait(PATIENCE);
    assert_eq!(status.code(), Some(2));
    let msg = p.stderr.wait_for("major version mismatch", PATIENCE);
    assert!(
        msg.contains("2.1") && msg.contains("tandem.loader.v1"),
        "{msg}"
    );
}

#[test]
fn a_corrupt_or_truncated_capture_is_refused_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let good = synthetic_capture(dir.path(), 3);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.tcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap();
    // A whole record whose bytes are not an Event (field 1 with wire type 7).
    let mut garbled = bytes.clone();
    garbled.extend_from_slice(&[3, 0x0f, 0xff, 0xff]);
    let corrupt = dir.path().join("corrupt.tcap");
    std::fs::write(&corrupt, &garbled).unwrap();

    for (file, what) in [
        (&cut, "truncated at byte offset"),
        (&corrupt, "corrupt record"),
    ] {
        let out = Command::new(loader_bin())
            .args(["--socket"])
            .arg(dir.path().join("never.sock"))
            .arg("--replay")
            .arg(file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(&file.display().to_string()), "{stderr}");
        assert!(stderr.contains(what), "{stderr}");
        assert!(!dir.path().join("never.sock").exists());
    }
}

#[test]
fn record_holds_its_source_back_instead_of_losing_events() {
    // A 64-event queue between the source and the file writer: the source outruns
    // the writer at every turn, and must wait for it rather than drop.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.tcap");
    let requests = 200_000u64;
    let out = Command::new(loader_bin())
        .args(["record", "--source", "synthetic", "--synthetic-requests"])
        .arg(requests.to_string())
        .args(["--queue-capacity", "64", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary = format!(
        "capture written file={} events={} lost=0",
        path.display(),
        4 * requests + 1
    );
    assert!(stderr.contains(&summary), "{stderr}");
    let events = capture_events(&path);
    assert_eq!(events.len() as u64, 4 * requests + 1);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, Some(EventKind::Loss(_)))),
        "a Loss event in the capture"
    );
    // Stamped before routing: a dropped event would leave a gap.
    assert!(events.iter().zip(1..).all(|(e, n)| e.seq == n));
}

#[test]
fn the_processor_rides_out_a_loader_restart() {
    let dir = tempfile::tempdir().unwrap();
    let capture = synthetic_capture(dir.path(), 2);
    let socket = socket_in(&dir);
    let replay = ["--replay", capture.to_str().unwrap()];
    let mut loader = start_loader(&socket, &replay);
    let p = start_processor(&socket, "steady", &[]);
    read_events(&p, 9, PATIENCE);
    assert!(loader.stop().success());

    // While the loader is away the processor retries, and says so once.
    thread::sleep(Duration::from_millis(1500));
    let _loader = start_loader(&socket, &replay);
    // The restart is a gap of unknown size, reported in place, then the new stream.
    let again = read_events(&p, 10, PATIENCE);
    assert_eq!(again[0]["kind"], "loss", "{}", again[0]);
    assert_eq!(
        again[0]["location"], "subscription_restarted",
        "{}",
        again[0]
    );
    assert_eq!(seqs(&again[1..]), (1..=9).collect::<Vec<u64>>());
    assert_eq!(
        p.stderr.count("loader unavailable"),
        1,
        "{}",
        p.stderr.text()
    );
    assert_eq!(
        p.stderr.count("connected to loader"),
        2,
        "{}",
        p.stderr.text()
    );
}

#[test]
fn both_binaries_explain_themselves() {
    for bin in [loader_bin(), processor_bin()] {
        let out = Command::new(&bin).arg("--help").output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("--socket") && text.contains("--log-format"),
            "{text}"
        );
    }
    let out = Command::new(loader_bin())
        .args([
            "--socket",
            "/nonexistent-dir-for-tandem/x.sock",
            "--source",
            "replay",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--replay FILE"));
}
