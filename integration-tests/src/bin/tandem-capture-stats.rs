//! `tandem-capture-stats`: what a capture file (.tcap) holds, per TCP port.
//!
//! ```text
//! tandem-capture-stats FILE [LABEL=PORT ...]
//! ```
//!
//! Prints the file's header, its events by kind and what was lost (`Loss` events, by
//! place), then one line per port: the connections opened to or from it and the
//! `Data` events and payload bytes on them (both directions, both ends). With
//! `LABEL=PORT` arguments (e.g. `redis=6379`) only those ports are listed, under
//! their labels, and the exit status is 1 when one of them has no data event.
//! Used by `integration-tests/bench/record-mixed.sh` to show which protocols a
//! capture holds.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use tandem_proto::capture::CaptureReader;
use tandem_proto::v1::{LossLocation, Role};
use tandem_proto::EventKind;

#[derive(Default)]
struct PortStats {
    connections: u64,
    data: u64,
    bytes: u64,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tandem-capture-stats: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next().map(PathBuf::from) else {
        bail!("usage: tandem-capture-stats FILE [LABEL=PORT ...]");
    };
    let mut labels: Vec<(String, u32)> = Vec::new();
    for a in args {
        let (label, port) = a
            .split_once('=')
            .with_context(|| format!("{a:?}: expected LABEL=PORT"))?;
        let port = port
            .parse()
            .with_context(|| format!("{a:?}: {port:?} is not a port"))?;
        labels.push((label.to_owned(), port));
    }

    let mut reader = CaptureReader::open(&file)?;
    let header = reader.header().clone();
    // (pid, conn_id) -> the connection's service port: the local port of the side
    // that accepted it, the peer port of the side that opened it.
    let mut conn_port: HashMap<(u32, u64), u32> = HashMap::new();
    let mut ports: BTreeMap<u32, PortStats> = BTreeMap::new();
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut lost: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut events, mut unattributed) = (0u64, 0u64);
    let (mut first_ns, mut last_ns) = (u64::MAX, 0u64);
    while let Some(event) = reader.next_event()? {
        events += 1;
        first_ns = first_ns.min(event.mono_ns);
        last_ns = last_ns.max(event.mono_ns);
        let kind = match &event.kind {
            Some(EventKind::ProcessStarted(_)) => "process_started",
            Some(EventKind::ProcessExited(_)) => "process_exited",
            Some(EventKind::ConnectionOpened(c)) => {
                let local = c.local.as_ref().map_or(0, |a| a.port);
                let peer = c.peer.as_ref().map_or(0, |a| a.port);
                let port = match Role::try_from(c.role) {
                    Ok(Role::Server) => local,
                    Ok(Role::Client) => peer,
                    // Unknown role: the lower port is the likelier service port.
                    _ => local.min(peer),
                };
                conn_port.insert((c.pid, c.conn_id), port);
                ports.entry(port).or_default().connections += 1;
                "connection_opened"
            }
            Some(EventKind::ConnectionClosed(_)) => "connection_closed",
            Some(EventKind::Data(d)) => {
                match conn_port.get(&(d.pid, d.conn_id)) {
                    Some(port) => {
                        let s = ports.entry(*port).or_default();
                        s.data += 1;
                        s.bytes += d.payload.len() as u64;
                    }
                    None => unattributed += 1,
                }
                "data"
            }
            Some(EventKind::Loss(l)) => {
                let place = match LossLocation::try_from(l.location) {
                    Ok(LossLocation::KernelRingBuffer) => "kernel ring buffer",
                    Ok(LossLocation::SubscriberQueue) => "loader queue",
                    Ok(LossLocation::Source) => "source",
                    Ok(LossLocation::InTransit) => "in transit",
                    _ => "unspecified",
                };
                *lost.entry(place).or_default() += l.count;
                "loss"
            }
            _ => "other",
        };
        *kinds.entry(kind).or_default() += 1;
    }

    let size = std::fs::metadata(&file).map_or(0, |m| m.len());
    let span = if last_ns >= first_ns {
        (last_ns - first_ns) as f64 / 1e9
    } else {
        0.0
    };
    println!(
        "file {} ({:.1} MB), source {}, written by {}",
        file.display(),
        size as f64 / 1e6,
        header.source,
        header.created_by
    );
    println!("events {events} over {span:.1} s");
    let by_kind: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!("by kind: {}", by_kind.join(" "));
    let lost_total: u64 = lost.values().sum();
    let by_place: Vec<String> = lost.iter().map(|(p, n)| format!("{n} in {p}")).collect();
    if lost_total == 0 {
        println!("lost 0");
    } else {
        println!("lost {lost_total} ({})", by_place.join(", "));
    }
    if unattributed > 0 {
        println!("data events on connections opened before the capture: {unattributed}");
    }

    let mut all_present = true;
    if labels.is_empty() {
        for (port, s) in &ports {
            print_port(&port.to_string(), *port, s);
        }
    } else {
        let empty = PortStats::default();
        for (label, port) in &labels {
            let s = ports.get(port).unwrap_or(&empty);
            print_port(label, *port, s);
            all_present &= s.data > 0;
        }
    }
    Ok(all_present)
}

fn print_port(label: &str, port: u32, s: &PortStats) {
    println!(
        "{label:<12} port {port:<5} data_events {:>8}  connections {:>6}  payload_bytes {:>11}",
        s.data, s.connections, s.bytes
    );
}
