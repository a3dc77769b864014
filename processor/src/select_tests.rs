//! The exact selection: AND within an entry, OR between entries, every exclusion
//! kind, the default exclusions, inheritance, ports learnt from connections.

use std::collections::BTreeMap;
use std::sync::Arc;

use tandem_proto::v1::{ConnectionOpened, ProcessStarted, Role, SocketAddress};
use tandem_proto::Selection;

use super::*;
use crate::config::Discovery;
use crate::kube::meta::PodMeta;
use crate::kube::Store;

fn entries(yaml: &str) -> Vec<InstrumentSelector> {
    yaml_serde::from_str(yaml).expect(yaml)
}

fn discovery(instrument: &str, exclude: &str) -> Discovery {
    Discovery {
        instrument: if instrument.is_empty() {
            vec![]
        } else {
            entries(instrument)
        },
        exclude_instrument: if exclude.is_empty() {
            vec![]
        } else {
            entries(exclude)
        },
        ..Discovery::default()
    }
}

fn started(pid: u32, ppid: u32, exe: &str, args: &[&str], container: &str) -> ProcessStarted {
    ProcessStarted {
        pid,
        ppid,
        exe_path: exe.into(),
        cmdline: std::iter::once(exe)
            .chain(args.iter().copied())
            .map(String::from)
            .collect(),
        container_id: container.into(),
        ..Default::default()
    }
}

fn connection(pid: u32, role: Role, local: u32, peer: u32) -> ConnectionOpened {
    let addr = |port| {
        Some(SocketAddress {
            ip: vec![127, 0, 0, 1].into(),
            port,
        })
    };
    ConnectionOpened {
        pid,
        conn_id: 1,
        local: addr(local),
        peer: addr(peer),
        role: role as i32,
        ..Default::default()
    }
}

/// A selector over `d` that has seen the processes `procs`.
fn judged(d: &Discovery, procs: &[ProcessStarted]) -> Selector {
    let mut s = Selector::new(d, &Selection::default());
    for p in procs {
        s.on_started(p);
    }
    s
}

#[test]
fn criteria_of_one_entry_are_anded() {
    let d = discovery(
        "- exe_path: '*/python3*'\n  cmd_args: '*--port 8080*'\n",
        "",
    );
    let mut s = judged(
        &d,
        &[
            started(
                10,
                1,
                "/usr/bin/python3.11",
                &["app.py", "--port", "8080"],
                "",
            ),
            started(
                11,
                1,
                "/usr/bin/python3.11",
                &["other.py", "--port", "9090"],
                "",
            ),
            started(12, 1, "/usr/bin/ruby", &["app.rb", "--port", "8080"], ""),
        ],
    );
    assert!(s.admits(10), "exe and cmd_args both match");
    assert!(!s.admits(11), "exe matches, cmd_args does not");
    assert!(!s.admits(12), "cmd_args matches, exe does not");
    assert_eq!(s.stats().selected, 1);
    assert_eq!(s.stats().not_matching, 2);
    assert_eq!(s.stats().events_dropped, 2);
}

#[test]
fn entries_are_ored() {
    let d = discovery("- exe_path: '*/nginx'\n- languages: python\n", "");
    let mut s = judged(
        &d,
        &[
            started(10, 1, "/usr/sbin/nginx", &[], ""),
            started(11, 1, "/usr/bin/python3", &["x.py"], ""),
            started(12, 1, "/usr/bin/node", &["x.js"], ""),
        ],
    );
    assert!(s.admits(10));
    assert!(s.admits(11));
    assert!(!s.admits(12));
}

#[test]
fn ports_are_learnt_from_connections_and_anded_with_the_rest() {
    let d = discovery("- open_ports: 8080\n  exe_path: '*/python3'\n", "");
    let mut s = judged(
        &d,
        &[
            started(10, 1, "/usr/bin/python3", &[], ""),
            started(11, 1, "/usr/bin/node", &[], ""),
        ],
    );
    assert!(!s.admits(10), "no port seen yet");
    s.on_connection(&connection(10, Role::Server, 9090, 40000));
    assert!(!s.admits(10), "another port");
    s.on_connection(&connection(10, Role::Server, 8080, 40001));
    assert!(s.admits(10), "serves on 8080 and is python3");
    s.on_connection(&connection(11, Role::Server, 8080, 40002));
    assert!(!s.admits(11), "serves on 8080 but is node");
    // As the loader reads ports: a client's peer port counts.
    let d = discovery("- open_ports: 6379\n", "");
    let mut s = judged(&d, &[started(20, 1, "/usr/bin/python3", &[], "")]);
    s.on_connection(&connection(20, Role::Client, 50000, 6379));
    assert!(s.admits(20));
}

#[test]
fn ports_the_loader_hands_with_a_process_select_it_at_once() {
    // A processor taking over sees no connection opened before it started: the
    // loader's facts carry the ports the process used.
    let d = discovery(
        "- open_ports: 8080
",
        "",
    );
    let with_ports = |pid, ports: Vec<u32>| ProcessStarted {
        ports,
        ..started(pid, 1, "/usr/bin/python3", &[], "")
    };
    let mut s = judged(
        &d,
        &[with_ports(10, vec![8080]), with_ports(11, vec![9090])],
    );
    assert!(s.admits(10));
    assert!(!s.admits(11));
}

#[test]
fn languages_containers_only_and_target_pids() {
    let cid = "a".repeat(64);
    let d = discovery(
        "- languages: '{nodejs,java}'\n  containers_only: true\n- target_pids: [30]\n",
        "",
    );
    let mut s = judged(
        &d,
        &[
            started(10, 1, "/usr/bin/node", &["server.js"], &cid),
            started(11, 1, "/usr/bin/node", &["server.js"], ""),
            started(12, 1, "/opt/jdk/bin/java", &["-jar", "x.jar"], &cid),
            started(13, 1, "/usr/bin/python3", &[], &cid),
            started(30, 1, "/usr/local/bin/server", &[], ""),
        ],
    );
    assert!(s.admits(10), "node in a container");
    assert!(!s.admits(11), "node, not in a container");
    assert!(s.admits(12), "java in a container");
    assert!(!s.admits(13), "python is not asked for");
    assert!(s.admits(30), "by pid");
    assert_eq!(language_of("/usr/bin/python3.11"), Some("python"));
    assert_eq!(language_of("/usr/local/bin/goapp"), None);
}

#[test]
fn every_exclusion_kind_wins_over_inclusion() {
    let cid = "b".repeat(64);
    let d = discovery(
        "- exe_path: '*'\n",
        "- exe_path: '*/prometheus'\n\
         - cmd_args: '*--no-trace*'\n\
         - languages: ruby\n\
         - open_ports: 9100\n\
         - target_pids: [15]\n\
         - containers_only: true\n",
    );
    let mut s = judged(
        &d,
        &[
            started(10, 1, "/usr/bin/prometheus", &[], ""),
            started(11, 1, "/usr/bin/python3", &["app.py", "--no-trace"], ""),
            started(12, 1, "/usr/bin/ruby", &["app.rb"], ""),
            started(13, 1, "/usr/bin/exporter", &[], ""),
            started(15, 1, "/usr/bin/anything", &[], ""),
            started(16, 1, "/usr/bin/anything", &[], &cid),
            started(17, 1, "/usr/bin/anything", &[], ""),
        ],
    );
    s.on_connection(&connection(13, Role::Server, 9100, 40000));
    for pid in [10, 11, 12, 13, 15, 16] {
        assert!(!s.admits(pid), "pid {pid} is excluded");
    }
    assert!(s.admits(17), "nothing excludes it");
    assert_eq!(s.stats().excluded, 6);
}

#[test]
fn default_exclusions_apply_unless_replaced() {
    let collectors = [
        started(10, 1, "/usr/bin/otelcol-contrib", &[], ""),
        started(11, 1, "/opt/obi", &[], ""),
        started(12, 1, "/usr/local/bin/tandem-processor", &[], ""),
        started(13, 1, "/usr/bin/beyla", &[], ""),
        started(14, 1, "/usr/bin/python3", &[], ""),
    ];
    let d = discovery("", "");
    let mut s = judged(&d, &collectors);
    for pid in [10, 11, 12, 13] {
        assert!(!s.admits(pid), "pid {pid}: excluded by default");
    }
    assert!(s.admits(14));
    // An empty list removes the defaults; a list replaces them.
    let mut d = discovery("", "");
    d.default_exclude_instrument = Some(vec![]);
    let mut s = judged(&d, &collectors);
    assert!((10..=14).all(|pid| s.admits(pid)));
    d.default_exclude_instrument = Some(entries("- exe_path: '*/python3'\n"));
    let mut s = judged(&d, &collectors);
    assert!((10..=13).all(|pid| s.admits(pid)));
    assert!(!s.admits(14));
}

#[test]
fn children_of_a_selected_process_are_selected_unless_excluded() {
    let d = discovery(
        "- exe_path: '*/gunicorn'\n",
        "- cmd_args: '*healthcheck*'\n",
    );
    let mut s = judged(
        &d,
        &[
            started(10, 1, "/usr/bin/gunicorn", &[], ""),
            started(11, 10, "/usr/bin/python3", &["worker"], ""),
            started(12, 10, "/usr/bin/python3", &["healthcheck"], ""),
            started(13, 1, "/usr/bin/python3", &["worker"], ""),
        ],
    );
    assert!(s.admits(11), "forked worker of the selected server");
    assert!(!s.admits(12), "a child, but excluded");
    assert!(!s.admits(13), "not a child");
}

#[test]
fn the_environment_entry_ands_port_and_executable() {
    let d = Discovery {
        open_port: tandem_proto::selection::parse_port_ranges("8443").unwrap(),
        auto_target_exe: Some("*/goblog".into()),
        ..Discovery::default()
    };
    let mut s = judged(
        &d,
        &[
            started(10, 1, "/app/goblog", &[], ""),
            started(11, 1, "/app/other", &[], ""),
        ],
    );
    s.on_connection(&connection(10, Role::Server, 8443, 40000));
    s.on_connection(&connection(11, Role::Server, 8443, 40001));
    assert!(s.admits(10));
    assert!(!s.admits(11), "port matches, executable does not");
}

#[test]
fn flags_are_alternatives_and_unknown_processes_pass() {
    let d = discovery("- exe_path: '*/nginx'\n", "");
    let flags = Selection {
        pids: vec![20],
        ..Selection::default()
    };
    let mut s = Selector::new(&d, &flags);
    s.on_started(&started(20, 1, "/usr/bin/python3", &[], ""));
    assert!(s.admits(20), "--pid 20");
    assert!(s.admits(99), "never seen starting: not judged");
    assert_eq!(s.stats().unjudged_events, 1);
}

#[test]
fn kubernetes_criteria_read_the_pod_and_nothing_without_metadata() {
    let cid = "c".repeat(64);
    let d = discovery(
        "- k8s_namespace: shop\n  exe_path: '*/python3'\n- container_name: sidecar\n",
        "- k8s_pod_labels:\n    skip: 'true'\n",
    );
    let procs = [
        started(10, 1, "/usr/bin/python3", &[], &cid),
        started(11, 1, "/usr/bin/node", &[], &cid),
    ];
    let mut s = judged(&d, &procs);
    assert!(
        !s.admits(10),
        "no Kubernetes metadata: k8s criteria match nothing"
    );
    let store = Arc::new(Store::new(None));
    s.set_kubernetes(store.clone());
    assert!(!s.admits(10), "pod not known yet");
    let pod = |labels: &[(&str, &str)]| PodMeta {
        uid: "u1".into(),
        name: "checkout-1".into(),
        namespace: "shop".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        containers: vec![(cid.clone(), "app".into())],
        node_name: "node-1".into(),
        start_time: None,
        owner: None,
        annotations: BTreeMap::new(),
        ips: vec![],
    };
    store.pod_apply(pod(&[]));
    assert!(s.admits(10), "learnt late: the store's version changed");
    assert!(!s.admits(11), "namespace matches, executable does not");
    store.pod_apply(pod(&[("skip", "true")]));
    assert!(!s.admits(10), "excluded by label");
}
