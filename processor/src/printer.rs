//! One readable line per raw event: text for people, JSON for tools.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, UNIX_EPOCH};

use clap::ValueEnum;
use serde_json::{json, Value};
use tandem_proto::v1::{Direction, LossLocation, Role, SocketAddress};
use tandem_proto::{Event, EventKind};

/// How received events are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrintFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
    /// Print nothing (count only).
    None,
}

/// Most payload bytes shown on a text line (JSON lines carry the whole capture).
const TEXT_PAYLOAD_PREVIEW: usize = 160;

/// Formats `addr` as `ip:port` (`[ip]:port` for IPv6).
pub fn format_addr(addr: Option<&SocketAddress>) -> String {
    let Some(a) = addr else {
        return "?".into();
    };
    let ip: Option<IpAddr> = match a.ip.len() {
        4 => <[u8; 4]>::try_from(a.ip.as_ref())
            .ok()
            .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        16 => <[u8; 16]>::try_from(a.ip.as_ref())
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    };
    match ip {
        Some(IpAddr::V6(v6)) => format!("[{v6}]:{}", a.port),
        Some(v4) => format!("{v4}:{}", a.port),
        None => format!("?:{}", a.port),
    }
}

/// Wall-clock time of an event in RFC 3339 with nanoseconds.
pub fn wall_time(mono_ns: u64, realtime_offset_ns: i64) -> String {
    let ns = i128::from(mono_ns) + i128::from(realtime_offset_ns);
    let ns = u64::try_from(ns.max(0)).unwrap_or(0);
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Server) => "server",
        Ok(Role::Client) => "client",
        _ => "unknown",
    }
}

fn direction_name(direction: i32) -> &'static str {
    match Direction::try_from(direction) {
        Ok(Direction::Ingress) => "ingress",
        Ok(Direction::Egress) => "egress",
        _ => "unknown",
    }
}

/// Stable snake_case name of a loss location.
pub fn location_name(location: i32) -> &'static str {
    match LossLocation::try_from(location) {
        Ok(LossLocation::KernelRingBuffer) => "kernel_ring_buffer",
        Ok(LossLocation::SubscriberQueue) => "subscriber_queue",
        Ok(LossLocation::Source) => "source",
        Ok(LossLocation::InTransit) => "in_transit",
        Ok(LossLocation::SubscriptionRestarted) => "subscription_restarted",
        _ => "unspecified",
    }
}

/// Escapes bytes for a one-line preview (`\r`, `\n`, non-printables as `\xNN`).
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// One text line for `event` (no trailing newline).
pub fn text_line(event: &Event, realtime_offset_ns: i64) -> String {
    let head = format!(
        "{} #{}",
        wall_time(event.mono_ns, realtime_offset_ns),
        event.seq
    );
    let body = match &event.kind {
        Some(EventKind::ProcessStarted(p)) => format!(
            "process_started pid={} ppid={} uid={} exe={} container={} preexisting={} cmdline=\"{}\"",
            p.pid,
            p.ppid,
            p.uid,
            p.exe_path,
            if p.container_id.is_empty() { "-" } else { &p.container_id },
            p.preexisting,
            escape(p.cmdline.join(" ").as_bytes())
        ),
        Some(EventKind::ProcessExited(p)) => {
            format!("process_exited pid={} exit_code={}", p.pid, p.exit_code)
        }
        Some(EventKind::ConnectionOpened(c)) => format!(
            "connection_opened pid={} tid={} conn={} role={} local={} peer={}{}",
            c.pid,
            c.tid,
            c.conn_id,
            role_name(c.role),
            format_addr(c.local.as_ref()),
            format_addr(c.peer.as_ref()),
            if c.preexisting { " preexisting" } else { "" }
        ),
        Some(EventKind::ConnectionClosed(c)) => format!(
            "connection_closed pid={} tid={} conn={}",
            c.pid, c.tid, c.conn_id
        ),
        Some(EventKind::Data(d)) => {
            let shown = &d.payload[..d.payload.len().min(TEXT_PAYLOAD_PREVIEW)];
            format!(
                "data pid={} tid={} conn={} {} len={} captured={}{} \"{}{}\"",
                d.pid,
                d.tid,
                d.conn_id,
                direction_name(d.direction),
                d.total_len,
                d.payload.len(),
                if d.truncated { " truncated" } else { "" },
                escape(shown),
                if shown.len() < d.payload.len() { "..." } else { "" }
            )
        }
        Some(EventKind::Loss(l)) => format!(
            "loss count={} location={} reason=\"{}\"",
            l.count,
            location_name(l.location),
            escape(l.reason.as_bytes())
        ),
        None => "unknown (an event kind newer than this processor)".into(),
    };
    format!("{head} {body}")
}

/// One JSON object for `event`.
pub fn json_value(event: &Event, realtime_offset_ns: i64) -> Value {
    let mut v = match &event.kind {
        Some(EventKind::ProcessStarted(p)) => json!({
            "kind": "process_started", "pid": p.pid, "ppid": p.ppid, "uid": p.uid,
            "exe_path": p.exe_path, "cmdline": p.cmdline, "cgroup_path": p.cgroup_path,
            "container_id": p.container_id, "pid_namespace": p.pid_namespace,
            "preexisting": p.preexisting,
        }),
        Some(EventKind::ProcessExited(p)) => json!({
            "kind": "process_exited", "pid": p.pid, "exit_code": p.exit_code,
        }),
        Some(EventKind::ConnectionOpened(c)) => json!({
            "kind": "connection_opened", "pid": c.pid, "tid": c.tid, "conn_id": c.conn_id,
            "role": role_name(c.role), "local": format_addr(c.local.as_ref()),
            "peer": format_addr(c.peer.as_ref()), "preexisting": c.preexisting,
        }),
        Some(EventKind::ConnectionClosed(c)) => json!({
            "kind": "connection_closed", "pid": c.pid, "tid": c.tid, "conn_id": c.conn_id,
        }),
        Some(EventKind::Data(d)) => json!({
            "kind": "data", "pid": d.pid, "tid": d.tid, "conn_id": d.conn_id,
            "direction": direction_name(d.direction), "total_len": d.total_len,
            "captured": d.payload.len(), "truncated": d.truncated,
            "payload": String::from_utf8_lossy(&d.payload),
        }),
        Some(EventKind::Loss(l)) => json!({
            "kind": "loss", "count": l.count, "location": location_name(l.location),
            "reason": l.reason,
        }),
        None => json!({ "kind": "unknown" }),
    };
    if let Value::Object(m) = &mut v {
        m.insert("seq".into(), json!(event.seq));
        m.insert("mono_ns".into(), json!(event.mono_ns));
        m.insert(
            "time".into(),
            json!(wall_time(event.mono_ns, realtime_offset_ns)),
        );
    }
    v
}

/// Writes events to stdout in the chosen format.
pub struct Printer {
    format: PrintFormat,
}

impl Printer {
    pub fn new(format: PrintFormat) -> Self {
        Printer { format }
    }

    /// Prints `events` and flushes once.
    pub fn print(&self, events: &[Event], realtime_offset_ns: i64) -> io::Result<()> {
        if self.format == PrintFormat::None {
            return Ok(());
        }
        let stdout = io::stdout();
        let mut out = io::BufWriter::new(stdout.lock());
        for e in events {
            match self.format {
                PrintFormat::Text => writeln!(out, "{}", text_line(e, realtime_offset_ns))?,
                PrintFormat::Json => writeln!(out, "{}", json_value(e, realtime_offset_ns))?,
                PrintFormat::None => {}
            }
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::v1;

    #[test]
    fn addresses_print_like_socket_addrs() {
        let v4 = SocketAddress {
            ip: vec![127, 0, 0, 1].into(),
            port: 8080,
        };
        let mut v6ip = vec![0u8; 16];
        v6ip[15] = 1;
        let v6 = SocketAddress {
            ip: v6ip.into(),
            port: 443,
        };
        assert_eq!(format_addr(Some(&v4)), "127.0.0.1:8080");
        assert_eq!(format_addr(Some(&v6)), "[::1]:443");
        assert_eq!(format_addr(None), "?");
    }

    #[test]
    fn data_line_escapes_and_marks_truncation() {
        let e = Event {
            seq: 9,
            mono_ns: 1_000_000_000,
            kind: Some(EventKind::Data(v1::Data {
                pid: 1,
                tid: 2,
                conn_id: 3,
                direction: Direction::Ingress as i32,
                total_len: 5000,
                payload: b"GET / HTTP/1.1\r\n\x01".to_vec().into(),
                truncated: true,
                ..Default::default()
            })),
        };
        let line = text_line(&e, 1_700_000_000_000_000_000);
        assert!(
            line.starts_with("2023-11-14T22:13:21.000000000Z #9 data"),
            "{line}"
        );
        assert!(
            line.contains("ingress len=5000 captured=17 truncated"),
            "{line}"
        );
        assert!(line.contains(r#""GET / HTTP/1.1\r\n\x01""#), "{line}");
        let j = json_value(&e, 0);
        assert_eq!(j["direction"], "ingress");
        assert_eq!(j["payload"], "GET / HTTP/1.1\r\n\u{1}");
        assert_eq!(j["seq"], 9);
    }
}
