//! Issue 14: OBI's selection semantics with real processes, the real eBPF loader and
//! a real OTLP receiver: criteria of one `discovery.instrument` entry are AND-ed,
//! entries OR-ed; `exclude_instrument` and the default exclusions win. (The
//! SDK-instrumented process left alone is `traces.rs`'s
//! `a_process_exporting_otlp_itself_is_left_alone`; every criterion and exclusion
//! kind is unit-tested in `processor/src/select_tests.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tandem_integration_tests::otlp::*;
use tandem_integration_tests::{
    free_port, require_root_bpf, start_loader, wait_instrumenting, wait_listening, Running,
    PATIENCE,
};

const SERVER: i64 = 2;
const PYTHON: &str = "/usr/bin/python3";

fn service(python: &Path, port: u16, role: &str) -> Running {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/trace_service.py");
    let mut cmd = Command::new(python);
    cmd.env("PYTHONHOME", "/usr")
        .arg("-u")
        .arg(script)
        .arg(port.to_string())
        .args(["--role", role]);
    let mut s = Running::spawn(cmd, &format!("trace_service.py :{port} --role {role}"));
    wait_listening(&mut s, port, PATIENCE);
    s
}

/// A copy of Debian's interpreter named `name` (so its executable path is `dir/name`).
fn named_python(dir: &Path, name: &str) -> PathBuf {
    let real = std::fs::canonicalize(PYTHON).expect("resolve /usr/bin/python3");
    let copy = dir.join(name);
    std::fs::copy(&real, &copy).expect("copy the interpreter");
    copy
}

fn get(port: u16, path: &str) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "GET :{port}{path}"
    );
}

fn server_paths(all: &[&Value], pid: i32) -> Vec<String> {
    let mut v: Vec<String> = all
        .iter()
        .filter(|s| {
            s["kind"] == SERVER && s["resource"]["process.pid"].as_i64() == Some(i64::from(pid))
        })
        .map(|s| {
            s["attributes"]["url.path"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn and_within_entries_or_between_them_exclusions_win() {
    let test = "and_within_entries_or_between_them_exclusions_win";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let [keep, other_args, not_listed, collector, dropped] = [(); 5].map(|_| free_port());
    let yaml = format!(
        "discovery:
  instrument:
    # exe AND cmd_args AND port
    - open_ports: \"{keep},{other_args}\"
      exe_path: '*/python3*'
      cmd_args: '*--role keep*'
    # ports alone
    - open_ports: \"{collector},{dropped}\"
  exclude_instrument:
    - cmd_args: '*--role drop*'
  # default_exclude_instrument not given: OBI's list (otelcol-contrib, ...) applies
"
    );
    let config = write_config(dir.path(), &yaml);
    let socket = dir.path().join("run").join("loader.sock");
    let loader = start_loader(&socket, &["--source", "ebpf"]);
    loader.stderr.wait_for("ebpf source ready", PATIENCE);
    let mut receiver = Receiver::start();
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            receiver.endpoint(Protocol::Grpc),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
    ];
    let mut processor = start_exporting_processor(&socket, "selection", &config, &env);
    wait_instrumenting(&loader, "ports ");
    let python = Path::new(PYTHON);
    let svc_keep = service(python, keep, "keep");
    let svc_other = service(python, other_args, "other");
    let svc_not_listed = service(python, not_listed, "keep");
    let otelcol = named_python(dir.path(), "otelcol-contrib");
    let svc_collector = service(&otelcol, collector, "keep");
    let svc_dropped = service(python, dropped, "drop");
    for (port, name) in [
        (other_args, "other"),
        (not_listed, "not-listed"),
        (collector, "collector"),
        (dropped, "dropped"),
        (keep, "keep"),
    ] {
        get(port, &format!("/data/{name}"));
    }
    receiver.until(
        "the selected service's server span",
        Duration::from_secs(30),
        &|| format!("processor stderr:\n{}", processor.stderr.text()),
        |r| !server_paths(&spans(r), svc_keep.pid()).is_empty(),
    );
    // Everything sent before the last request has been handled by now; give the
    // export a moment for anything that should not be there.
    receiver.settle(Duration::from_millis(1500));
    let all = receiver.spans();
    assert_eq!(
        server_paths(&all, svc_keep.pid()),
        ["/data/keep"],
        "{}",
        receiver.dump()
    );
    for (svc, why) in [
        (&svc_other, "exe and port match, cmd_args does not (AND)"),
        (
            &svc_not_listed,
            "exe and cmd_args match, the port does not (AND)",
        ),
        (&svc_collector, "otelcol-contrib: excluded by default"),
        (&svc_dropped, "matches by port, excluded by cmd_args"),
    ] {
        assert_eq!(
            server_paths(&all, svc.pid()),
            Vec::<String>::new(),
            "{why}: {}",
            receiver.dump()
        );
    }
    let summary = stop_and_summary(&mut processor);
    let select = summary
        .lines()
        .find(|l| l.trim_start().starts_with("select"))
        .unwrap_or_else(|| panic!("no select line: {summary}"));
    let count = |after: &str| -> u64 {
        let at = select
            .find(after)
            .unwrap_or_else(|| panic!("{after}: {select}"));
        let digits: String = select[..at]
            .chars()
            .rev()
            .skip_while(|c| *c == ' ')
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .chars()
            .rev()
            .collect::<String>()
            .parse()
            .expect(select)
    };
    // At least the collector copy and the --role drop service (other processes
    // started meanwhile on this machine are judged too).
    assert!(count(" excluded") >= 2, "{summary}");
    assert!(count(" events of unselected") > 0, "{summary}");
}
