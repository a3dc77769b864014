//! Issue 17, processes keep their identity when short-lived: a curl that exits
//! before the loader reads its /proc entry is still named `curl` — from the task
//! name (`comm`) of the kernel's selection record, carried in `ProcessStarted.comm`.

use std::process::Command;
use std::time::Duration;

use tandem_integration_tests::otlp::*;
use tandem_integration_tests::*;

#[test]
fn short_lived_clients_are_named_by_the_kernel() {
    let test = "short_lived_clients_are_named_by_the_kernel";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let socket = dir.path().join("loader.sock");
    let loader = start_ebpf_loader(&socket, &[]);
    let mut receiver = Receiver::start();
    let config = write_config(dir.path(), "routes:\n  unmatched: path\n");
    let env = grpc_export_env(&receiver, port);
    let exporter = start_exporting_processor(&socket, test, &config, &env);
    wait_instrumenting(&loader, &format!("ports {port}"));
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port.to_string(),
    ])
    .current_dir(dir.path());
    let mut server = Running::spawn(cmd, &format!("python http.server :{port}"));
    wait_listening(&mut server, port, PATIENCE);
    const CLIENTS: usize = 20;
    let pids: Vec<i64> = (0..CLIENTS)
        .map(|i| {
            let run = curl_with(&format!("http://127.0.0.1:{port}/missing-{i}"), &[]);
            assert_eq!(run.status, 404);
            run.pid
        })
        .collect();
    let client_spans = |r: &[serde_json::Value]| -> Vec<serde_json::Value> {
        spans(r)
            .into_iter()
            .filter(|s| {
                s["kind"] == 3 && pids.contains(&s["resource"]["process.pid"].as_i64().unwrap_or(0))
            })
            .cloned()
            .collect()
    };
    receiver.until(
        "every curl's client span",
        Duration::from_secs(30),
        &|| stderr_of(&[("loader", &loader), ("processor", &exporter)]),
        |r| client_spans(r).len() >= CLIENTS,
    );
    let all = client_spans(&receiver.records);
    let by_kernel_name = all
        .iter()
        .filter(|s| s["resource"]["process.executable.path"].is_null())
        .count();
    eprintln!(
        "{by_kernel_name} of {} curl spans named from the kernel's record",
        all.len()
    );
    for s in &all {
        assert_eq!(s["resource"]["service.name"], "curl", "{s}");
        assert_eq!(s["resource"]["process.executable.name"], "curl", "{s}");
    }
}
