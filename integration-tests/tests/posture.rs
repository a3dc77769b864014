//! Security posture end to end: `tandem-loader capabilities` run with exact capability
//! sets (setpriv as uid 65534), the serving loader's drop to its run-time set after
//! attaching (read back from /proc and over gRPC), and the processor's refusal to
//! run privileged.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tandem_integration_tests::*;
use tandem_proto::v1::loader_client::LoaderClient;
use tandem_proto::v1::{CapabilityReportRequest, CapabilityReportResponse};

/// What the serving loader keeps after attaching with every feature it uses on
/// (syscall capture, sock tracepoints, process discovery, TLS), per
/// `tandem_security::FEATURES`' run-time needs: SYS_PTRACE, DAC_READ_SEARCH and
/// CHECKPOINT_RESTORE, as /proc/<pid>/status prints them (names in capability
/// number order, as the report lists them).
const REDUCED: &str = "0000010000080004";
const REDUCED_NAMES: [&str; 3] = [
    "CAP_DAC_READ_SEARCH",
    "CAP_SYS_PTRACE",
    "CAP_CHECKPOINT_RESTORE",
];

/// Runs `tandem-loader capabilities --json --strict` with `caps`; returns the exit
/// code and the report.
fn report_with(caps: &[&str]) -> (i32, Value) {
    let out = as_nobody(caps, &loader_bin())
        .args([
            "capabilities",
            "--json",
            "--strict",
            "--allow-uid",
            "0,1000",
        ])
        .stderr(Stdio::piped())
        .output()
        .expect("run tandem-loader capabilities under setpriv");
    let code = out.status.code().expect("exit code");
    let text = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, report)
}

fn feature<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["features"]
        .as_array()
        .expect("features")
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no feature {id} in {report}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

const FEATURES: [&str; 4] = [
    "syscall_capture",
    "sock_tracepoints",
    "process_discovery",
    "tls_uprobes",
];

#[test]
fn the_report_names_missing_and_excess_capabilities_and_strict_fails_on_them() {
    if !require_root_bpf(
        "the_report_names_missing_and_excess_capabilities_and_strict_fails_on_them",
    ) {
        return;
    }
    // Exactly the model's set: every feature available, nothing excess, strict passes.
    let (code, r) = report_with(&loader_caps());
    assert_eq!(code, 0, "strict with the model's capabilities: {r:#}");
    assert_eq!(r["process"]["uid"][1], 65534);
    let mut eff = strings(&r["process"]["capabilities"]["effective"]);
    eff.sort();
    assert_eq!(
        eff,
        [
            "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
            "CAP_DAC_READ_SEARCH",
            "CAP_PERFMON",
            "CAP_SYS_PTRACE"
        ]
    );
    for id in FEATURES {
        let f = feature(&r, id);
        assert_eq!(f["available"], true, "{id}: {f}");
        assert!(strings(&f["missing_capabilities"]).is_empty(), "{f}");
    }
    assert!(strings(&r["problems"]).is_empty());
    assert_eq!(r["excess"].as_array().map(Vec::len), Some(0));
    assert!(r["privileged"].is_null());
    assert_eq!(r["socket_allowlist"]["uids"], serde_json::json!([0, 1000]));
    for key in [
        "release",
        "btf",
        "perf_event_paranoid",
        "unprivileged_bpf_disabled",
    ] {
        assert!(r["kernel"].get(key).is_some(), "kernel.{key} in {r}");
    }
    assert_eq!(r["process"]["no_new_privs"], false);
    assert!(r["process"]["seccomp"].is_string());

    // Without CHECKPOINT_RESTORE: TLS is unavailable and names it.
    let without: Vec<&str> = loader_caps()
        .into_iter()
        .filter(|c| *c != "CHECKPOINT_RESTORE")
        .collect();
    let (code, r) = report_with(&without);
    assert_ne!(code, 0, "strict must fail when a feature is unavailable");
    let tls = feature(&r, "tls_uprobes");
    assert_eq!(tls["available"], false);
    assert_eq!(
        strings(&tls["missing_capabilities"]),
        ["CAP_CHECKPOINT_RESTORE"]
    );
    for id in FEATURES.iter().filter(|id| **id != "tls_uprobes") {
        assert_eq!(feature(&r, id)["available"], true, "{id}");
    }
    assert_eq!(r["excess"].as_array().map(Vec::len), Some(0));

    // With NET_RAW added (no feature opens raw or packet sockets; the model has no
    // socket filter): excess, with its risk note, but not privileged-equivalent.
    let mut with: Vec<&str> = loader_caps();
    with.push("NET_RAW");
    let (code, r) = report_with(&with);
    assert_ne!(
        code, 0,
        "strict must fail on CAP_NET_RAW, which no feature needs"
    );
    for id in FEATURES {
        assert_eq!(feature(&r, id)["available"], true, "{id}");
    }
    let excess = r["excess"].as_array().expect("excess");
    assert_eq!(excess.len(), 1, "{excess:?}");
    assert_eq!(excess[0]["capability"], "CAP_NET_RAW");
    let risk = excess[0]["risk"].as_str().expect("risk note");
    assert!(risk.contains("packet sockets"), "{risk}");
    assert!(r["privileged"].is_null());

    // With SYS_ADMIN added: excess, with a risk note, and privileged-equivalent.
    let mut with: Vec<&str> = loader_caps();
    with.push("SYS_ADMIN");
    let (code, r) = report_with(&with);
    assert_ne!(code, 0, "strict must fail on an excess capability");
    let excess = r["excess"].as_array().expect("excess");
    assert_eq!(excess.len(), 1, "{excess:?}");
    assert_eq!(excess[0]["capability"], "CAP_SYS_ADMIN");
    let risk = excess[0]["risk"].as_str().expect("risk note");
    assert!(risk.contains("CAP_BPF + CAP_PERFMON"), "{risk}");
    assert_eq!(r["privileged"], "holds CAP_SYS_ADMIN");

    // The text form says the same for people.
    let out = as_nobody(&with, &loader_bin())
        .arg("capabilities")
        .output()
        .expect("run tandem-loader capabilities");
    assert_eq!(
        out.status.code(),
        Some(0),
        "without --strict it only reports"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Excess capabilities (1)"), "{text}");
    assert!(text.contains("CAP_SYS_ADMIN"), "{text}");
    assert!(text.contains("Strict: FAIL"), "{text}");
}

fn capability_report(socket: &Path) -> CapabilityReportResponse {
    runtime().block_on(async {
        let channel = tandem_proto::uds::connect(socket)
            .await
            .expect("connect to loader");
        LoaderClient::new(channel)
            .capability_report(CapabilityReportRequest {})
            .await
            .expect("CapabilityReport")
            .into_inner()
    })
}

/// `Key:\tvalue` of a /proc status text.
fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map_or("", |v| v.trim_start_matches(':').trim())
}

#[test]
fn the_serving_loader_drops_what_it_no_longer_needs_after_attaching() {
    if !require_root_bpf("the_serving_loader_drops_what_it_no_longer_needs_after_attaching") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod 0777 the socket's parent directory");
    let socket = dir.path().join("run").join("loader.sock");
    let mut cmd = as_nobody(&loader_caps(), &loader_bin());
    cmd.arg("--socket").arg(&socket).args(["--allow-uid", "0"]);
    let loader = Running::spawn(cmd, "tandem-loader (uid 65534)");
    loader.stderr.wait_for("serving tandem.loader.v1", PATIENCE);
    wait_ebpf_ready(&loader);

    // Every thread holds only SYS_PTRACE + DAC_READ_SEARCH (process discovery) and
    // CHECKPOINT_RESTORE (TLS: libraries found later), with no_new_privs.
    let reduced = REDUCED;
    // The constants above are the model's run-time set.
    let model: Vec<String> = tandem_security::runtime_capabilities(
        [
            "syscall_capture",
            "sock_tracepoints",
            "process_discovery",
            "tls_uprobes",
        ]
        .iter()
        .map(|id| tandem_security::feature(id).expect("a feature of the model")),
    )
    .iter()
    .map(|c| c.to_string())
    .collect();
    let mut names = REDUCED_NAMES.to_vec();
    names.sort();
    let mut model_sorted = model.clone();
    model_sorted.sort();
    assert_eq!(
        model_sorted, names,
        "REDUCED_NAMES is the model's run-time set"
    );
    let tasks = std::fs::read_dir(format!("/proc/{}/task", loader.pid())).expect("tasks");
    let mut threads = 0;
    for task in tasks {
        let path = task.expect("task").path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue; // the thread exited meanwhile
        };
        threads += 1;
        assert_eq!(field(&status, "CapEff"), reduced, "{path:?}:\n{status}");
        assert_eq!(field(&status, "CapPrm"), reduced, "{path:?}:\n{status}");
        assert_eq!(field(&status, "CapInh"), "0000000000000000", "{status}");
        assert_eq!(field(&status, "CapAmb"), "0000000000000000", "{status}");
        assert_eq!(field(&status, "NoNewPrivs"), "1", "{status}");
        assert_eq!(field(&status, "Uid"), "65534\t65534\t65534\t65534");
    }
    assert!(
        threads >= 2,
        "a multi-threaded loader, got {threads} thread(s)"
    );
    // Without CAP_SETPCAP the bounding set stays as it was (the model's set).
    let status = std::fs::read_to_string(format!("/proc/{}/status", loader.pid())).expect("status");
    let model_mask: u64 = loader_caps().into_iter().map(cap_bit).sum();
    assert_eq!(
        field(&status, "CapBnd"),
        format!("{model_mask:016x}"),
        "{status}"
    );
    let log = loader.stderr.text();
    assert!(
        log.contains("dropped the capabilities no longer needed after attaching"),
        "{log}"
    );

    // The same over gRPC: before (the model's five) and after (three).
    let r = capability_report(&socket);
    let current = r.current.expect("current summary");
    assert_eq!(current.uid, 65534);
    assert_eq!(current.effective, REDUCED_NAMES);
    assert_eq!(current.permitted, REDUCED_NAMES);
    assert!(current.no_new_privs);
    assert!(current.excess.is_empty(), "{:?}", current.excess);
    assert!(current.unavailable_features.is_empty());
    assert!(current.privileged.is_empty());
    assert!(current.strict_ok);
    let mut dropped = r.dropped.clone();
    dropped.sort();
    assert_eq!(dropped, ["CAP_BPF", "CAP_PERFMON"]);
    assert_eq!(r.allowed_uids, [0]);
    let before: Value = serde_json::from_str(&r.before_json).expect("before_json");
    let after: Value = serde_json::from_str(&r.after_json).expect("after_json");
    assert_eq!(before["stage"], "attach");
    assert_eq!(after["stage"], "running");
    assert_eq!(
        strings(&before["process"]["capabilities"]["effective"]).len(),
        loader_caps().len(),
        "{before}"
    );
    // At start-up this loader uses every feature of the model: nothing is excess.
    let before_excess: Vec<String> = before["excess"]
        .as_array()
        .expect("excess")
        .iter()
        .map(|e| e["capability"].as_str().expect("name").to_owned())
        .collect();
    assert!(before_excess.is_empty(), "{before_excess:?}");
    assert!(
        before["problems"].as_array().expect("problems").is_empty(),
        "{before}"
    );
    assert_eq!(before["process"]["no_new_privs"], false);
    assert_eq!(after["process"]["no_new_privs"], true);
    assert_eq!(after["socket_allowlist"]["uids"], serde_json::json!([0]));

    // A processor fetches the report on connect and logs its summary.
    let p = start_subscribed_processor(&socket, "posture", &["--pid", "1"]);
    let line = p.stderr.wait_for("loader capabilities:", PATIENCE);
    assert!(line.contains("INFO"), "{line}");
    assert!(
        line.contains("uid 65534") && line.contains(&REDUCED_NAMES.join(",")),
        "{line}"
    );
    assert!(line.contains("excess [none]"), "{line}");
}

#[test]
fn a_processor_warns_when_privileged_and_refuses_with_the_flag() {
    if !require_root_bpf("a_processor_warns_when_privileged_and_refuses_with_the_flag") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // No loader: the processor keeps retrying, which is enough to see its start-up.
    let socket = dir.path().join("absent.sock");

    // As root (this test runs as root): a WARN line.
    let mut root = start_processor(&socket, "root", &[]);
    let line = root.stderr.wait_for("running privileged", PATIENCE);
    assert!(line.contains("WARN") && line.contains("uid 0"), "{line}");
    root.stop();

    // As root with the flag, or its variable: refused, exit status 2.
    for (flag, env) in [(true, None), (false, Some("true"))] {
        let mut cmd = Command::new(processor_bin());
        cmd.arg("--socket").arg(&socket);
        if flag {
            cmd.arg("--refuse-privileged");
        }
        if let Some(v) = env {
            cmd.env("TANDEM_REFUSE_PRIVILEGED", v);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("run the processor");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("refusing to run privileged") && stderr.contains("uid 0"),
            "{stderr}"
        );
    }

    // As uid 65534 with no capability, even with the flag: no warning, keeps running.
    let mut cmd = as_nobody(&[], &processor_bin());
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--refuse-privileged")
        .args(["--name", "nobody"]);
    let mut nobody = Running::spawn(cmd, "tandem-processor (uid 65534)");
    nobody.stderr.wait_for("loader unavailable", PATIENCE);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        nobody.child.try_wait().expect("try_wait").is_none(),
        "the unprivileged processor must keep running:\n{}",
        nobody.stderr.text()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", nobody.pid())).expect("status");
    assert_eq!(field(&status, "CapEff"), "0000000000000000", "{status}");
    let log = nobody.stderr.text();
    assert!(!log.contains("privileged"), "no warning expected:\n{log}");
    nobody.stop();
}

/// With `--export-loader-posture` the loader's posture reaches an OTLP receiver as
/// `tandem.loader.*` resource attributes of the exported spans (here: a replaying
/// loader running as root, which holds everything and needs nothing).
#[test]
fn the_loader_posture_is_exported_as_resource_attributes_on_request() {
    use tandem_integration_tests::otlp::{start_exporting_processor, write_config, Receiver};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = Receiver::start();
    let capture = synthetic_capture(dir.path(), 3);
    let socket = dir.path().join("run").join("loader.sock");
    let _loader = start_loader(
        &socket,
        &[
            "--replay",
            capture.to_str().expect("utf-8 path"),
            "--wait-subscribers",
            "1",
        ],
    );
    let config = write_config(dir.path(), "routes:\n  patterns:\n    - /users/{id}\n");
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.grpc_port),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("TANDEM_EXPORT_LOADER_POSTURE", "true".to_owned()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned()),
    ];
    let p = start_exporting_processor(&socket, "posture-export", &config, &env);
    receiver.until("a span", PATIENCE, &|| p.stderr.text(), |records| {
        records.iter().any(|r| r["signal"] == "traces")
    });
    let span = receiver.spans()[0].clone();
    let resource = &span["resource"];
    let uid = nix::unistd::geteuid().as_raw().to_string();
    assert_eq!(resource["tandem.loader.uid"], uid.as_str(), "{resource}");
    let privileged = if uid == "0" { "true" } else { "false" };
    assert_eq!(
        resource["tandem.loader.privileged"], privileged,
        "{resource}"
    );
    assert_eq!(
        resource["tandem.loader.no_new_privs"], "false",
        "{resource}"
    );
    for key in [
        "tandem.loader.gid",
        "tandem.loader.capabilities.effective",
        "tandem.loader.capabilities.excess",
    ] {
        assert!(resource[key].is_string(), "{key} in {resource}");
    }

    // The metric of excess capabilities, under the processor's own resource (the
    // replaying loader runs as this test's user and attaches nothing: as root, every
    // capability it holds is excess).
    receiver.until(
        "tandem.loader.excess_capabilities",
        PATIENCE,
        &|| p.stderr.text(),
        |records| {
            records.iter().any(|r| {
                r["signal"] == "metrics" && r["name"] == "tandem.loader.excess_capabilities"
            })
        },
    );
    let gauge = receiver
        .records
        .iter()
        .rev()
        .find(|r| r["signal"] == "metrics" && r["name"] == "tandem.loader.excess_capabilities")
        .expect("the gauge")
        .clone();
    assert_eq!(gauge["kind"], "gauge", "{gauge}");
    assert_eq!(
        gauge["resource"]["service.name"], "posture-export",
        "{gauge}"
    );
    let point = &gauge["points"][0];
    let excess = resource["tandem.loader.capabilities.excess"]
        .as_str()
        .expect("excess attribute");
    let count = if excess.is_empty() {
        0
    } else {
        excess.split(',').count()
    };
    assert_eq!(point["value"], count, "{gauge}");
    assert_eq!(
        point["attributes"]["tandem.loader.capabilities.excess"], excess,
        "{gauge}"
    );
}

/// What the loader keeps after its drop is what following processes needs, measured:
/// a root-owned server started after the drop and selected by a subscription made
/// after it is found by the rescan (listing its /proc/<pid>/fd takes
/// CAP_DAC_READ_SEARCH), described with its executable (CAP_SYS_PTRACE), and its
/// exchange is captured through maps updated without CAP_BPF.
#[test]
fn after_the_drop_the_loader_still_finds_and_captures_new_processes() {
    if !require_root_bpf("after_the_drop_the_loader_still_finds_and_captures_new_processes") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod 0777 the socket's parent directory");
    let socket = dir.path().join("run").join("loader.sock");
    let mut cmd = as_nobody(&loader_caps(), &loader_bin());
    cmd.arg("--socket").arg(&socket).args(["--allow-uid", "0"]);
    let loader = Running::spawn(cmd, "tandem-loader (uid 65534)");
    wait_ebpf_ready(&loader);
    let status = std::fs::read_to_string(format!("/proc/{}/status", loader.pid())).expect("status");
    assert_eq!(field(&status, "CapEff"), REDUCED, "{status}");

    // Started after the drop, before anybody asked for it.
    let www = dir.path().join("www");
    std::fs::create_dir(&www).expect("create www");
    std::fs::write(www.join("after.txt"), "after the drop\n").expect("write a file");
    let port = free_port();
    let mut server = start_python_http_server(&www, "127.0.0.1", port);
    wait_listening(&mut server, port, PATIENCE);
    let server_pid = i64::from(server.pid());

    let p = start_subscribed_processor(&socket, "after-drop", &["--open-port", &port.to_string()]);
    wait_instrumenting(&loader, &format!("ports {port}"));
    curl(&[&format!("http://127.0.0.1:{port}/after.txt")]);
    let mut log = EventLog::new(&p);
    log.until("the server's response", PATIENCE, |events| {
        events.iter().any(|e| {
            e["kind"] == "data"
                && e["pid"] == server_pid
                && e["payload"]
                    .as_str()
                    .is_some_and(|s| s.contains("after the drop"))
        })
    });
    let started = log
        .events
        .iter()
        .find(|e| e["kind"] == "process_started" && e["pid"] == server_pid)
        .unwrap_or_else(|| panic!("no process_started for the server:\n{}", log.dump()));
    let exe = started["exe_path"].as_str().unwrap_or_default();
    assert!(exe.contains("python"), "the server's executable: {started}");
    assert!(
        log.events.iter().any(|e| e["kind"] == "connection_opened"
            && e["pid"] == server_pid
            && e["role"] == "server"),
        "{}",
        log.dump()
    );
}
