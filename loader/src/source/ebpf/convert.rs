//! Raw ring buffer records (`tandem_ebpf_common`) -> parsed records -> API events.

use std::net::IpAddr;

use tandem_ebpf_common::{
    conn_flags, data_offset, direction, kind, role, CloseEvent, ConnEvent, Header, PortSelectEvent,
    ProcessEvent, DATA_OFFSET, MAX_CAPTURE_BYTES,
};
use tandem_proto::v1::{self, Direction, Role, SocketAddress};
use tandem_proto::{Event, EventKind};

use super::proc::ProcessInfo;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// A record read from the ring buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Exec(ProcessEvent),
    Fork(ProcessEvent),
    Exit(ProcessEvent),
    PortSelected(PortSelectEvent),
    ConnOpen(ConnEvent),
    ConnClose(CloseEvent),
    Data(DataRecord),
}

/// A data record with its payload copied out of the ring buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct DataRecord {
    pub header: Header,
    pub conn_id: u64,
    pub total_len: u64,
    pub direction: u8,
    pub syscall: u8,
    pub goroutine: u64,
    pub goroutine_parent: u64,
    pub payload: Vec<u8>,
}

/// A record user space cannot decode: a kernel/user version mismatch or a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error(
        "ring buffer record of {len} bytes is shorter than the {need} bytes its kind {kind} needs"
    )]
    Short { kind: u32, len: usize, need: usize },
    #[error("ring buffer record has unknown kind {0} (eBPF object and loader out of sync?)")]
    UnknownKind(u32),
    #[error("data record claims {captured} captured bytes but carries {available}")]
    BadLength { captured: usize, available: usize },
}

fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, RecordError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(RecordError::Short {
            kind,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is a #[repr(C)] struct of integers and byte
    // arrays (every bit pattern valid); read_unaligned has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring buffer record.
pub fn parse(bytes: &[u8]) -> Result<Record, RecordError> {
    let header: Header = read(bytes, 0)?;
    let k = header.kind;
    Ok(match k {
        kind::EXEC => Record::Exec(read(bytes, k)?),
        kind::FORK => Record::Fork(read(bytes, k)?),
        kind::EXIT => Record::Exit(read(bytes, k)?),
        kind::PORT_SELECTED => Record::PortSelected(read(bytes, k)?),
        kind::CONN_OPEN => Record::ConnOpen(read(bytes, k)?),
        kind::CONN_CLOSE => Record::ConnClose(read(bytes, k)?),
        kind::DATA => {
            if bytes.len() < DATA_OFFSET {
                return Err(RecordError::Short {
                    kind: k,
                    len: bytes.len(),
                    need: DATA_OFFSET,
                });
            }
            let u64_at = |o: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[o..o + 8]);
                u64::from_ne_bytes(b)
            };
            let mut cap = [0u8; 4];
            cap.copy_from_slice(&bytes[data_offset::CAPTURED_LEN..data_offset::CAPTURED_LEN + 4]);
            let captured = u32::from_ne_bytes(cap) as usize;
            let available = bytes.len() - DATA_OFFSET;
            if captured > available || captured > MAX_CAPTURE_BYTES {
                return Err(RecordError::BadLength {
                    captured,
                    available,
                });
            }
            Record::Data(DataRecord {
                header,
                conn_id: u64_at(data_offset::CONN_ID),
                total_len: u64_at(data_offset::TOTAL_LEN),
                direction: bytes[data_offset::DIRECTION],
                syscall: bytes[data_offset::SYSCALL],
                goroutine: u64_at(data_offset::GOROUTINE),
                goroutine_parent: u64_at(data_offset::GOROUTINE_PARENT),
                payload: bytes[DATA_OFFSET..DATA_OFFSET + captured].to_vec(),
            })
        }
        other => return Err(RecordError::UnknownKind(other)),
    })
}

/// An address of a connection as the API carries it.
pub fn socket_address(ip: IpAddr, port: u16) -> SocketAddress {
    let ip = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    SocketAddress {
        ip: ip.into(),
        port: u32::from(port),
    }
}

/// The addresses of a kernel connection record (`None` when the family is unknown).
pub fn kernel_addresses(ev: &ConnEvent) -> Option<(SocketAddress, SocketAddress)> {
    let len = match ev.family {
        AF_INET => 4,
        AF_INET6 => 16,
        _ => return None,
    };
    let addr = |ip: &[u8; 16], port: u16| SocketAddress {
        ip: ip[..len].to_vec().into(),
        port: u32::from(port),
    };
    Some((
        addr(&ev.local_addr, ev.local_port),
        addr(&ev.peer_addr, ev.peer_port),
    ))
}

pub fn kernel_role(r: u8) -> Role {
    match r {
        role::SERVER => Role::Server,
        role::CLIENT => Role::Client,
        _ => Role::Unspecified,
    }
}

/// Whether the kernel filled in the connection's addresses and role.
pub fn tuple_known(ev: &ConnEvent) -> bool {
    ev.flags & conn_flags::TUPLE_KNOWN != 0
}

/// `ConnectionOpened` from a kernel record whose tuple the kernel knew, or from
/// one resolved through /proc (`resolved`).
pub fn connection_opened(
    ev: &ConnEvent,
    resolved: Option<(SocketAddress, SocketAddress, Role)>,
    preexisting: bool,
) -> Event {
    let (local, peer, role) = match resolved {
        Some(r) => (Some(r.0), Some(r.1), r.2),
        None => match kernel_addresses(ev) {
            Some((l, p)) => (Some(l), Some(p), kernel_role(ev.role)),
            None => (None, None, Role::Unspecified),
        },
    };
    Event {
        seq: 0,
        mono_ns: ev.header.ts_ns,
        kind: Some(EventKind::ConnectionOpened(v1::ConnectionOpened {
            pid: ev.header.pid,
            tid: ev.header.tid,
            conn_id: ev.conn_id,
            local,
            peer,
            role: role as i32,
            preexisting,
        })),
    }
}

pub fn connection_closed(ev: &CloseEvent) -> Event {
    Event {
        seq: 0,
        mono_ns: ev.header.ts_ns,
        kind: Some(EventKind::ConnectionClosed(v1::ConnectionClosed {
            pid: ev.header.pid,
            tid: ev.header.tid,
            conn_id: ev.conn_id,
        })),
    }
}

pub fn data(d: DataRecord) -> Event {
    let direction = match d.direction {
        direction::INGRESS => Direction::Ingress,
        direction::EGRESS => Direction::Egress,
        _ => Direction::Unspecified,
    };
    let truncated = (d.payload.len() as u64) < d.total_len;
    Event {
        seq: 0,
        mono_ns: d.header.ts_ns,
        kind: Some(EventKind::Data(v1::Data {
            pid: d.header.pid,
            tid: d.header.tid,
            conn_id: d.conn_id,
            direction: direction as i32,
            total_len: d.total_len,
            payload: d.payload.into(),
            truncated,
            goroutine: d.goroutine,
            goroutine_parent: d.goroutine_parent,
        })),
    }
}

pub fn process_exited(ev: &ProcessEvent) -> Event {
    Event {
        seq: 0,
        mono_ns: ev.header.ts_ns,
        kind: Some(EventKind::ProcessExited(v1::ProcessExited {
            pid: ev.header.pid,
            exit_code: ev.exit_code,
        })),
    }
}

pub fn process_started(mono_ns: u64, info: &ProcessInfo, preexisting: bool) -> Event {
    Event {
        seq: 0,
        mono_ns,
        kind: Some(EventKind::ProcessStarted(v1::ProcessStarted {
            pid: info.pid,
            ppid: info.ppid,
            exe_path: info.exe_path.clone(),
            cmdline: info.cmdline.clone(),
            cgroup_path: info.cgroup_path.clone(),
            container_id: info.container_id.clone(),
            pid_namespace: info.pid_namespace,
            uid: info.uid,
            preexisting,
            otel_env: info.otel_env.clone(),
            comm: info.comm.clone(),
            ports: Vec::new(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tandem_ebpf_common::{syscall, DataEvent};

    fn bytes_of<T>(v: &T, len: usize) -> Vec<u8> {
        assert!(len <= std::mem::size_of::<T>());
        // SAFETY: reading `len` initialised bytes of a repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), len).to_vec() }
    }

    fn header(kind: u32) -> Header {
        Header {
            kind,
            pid: 100,
            tid: 101,
            _pad: 0,
            ts_ns: 5_000,
        }
    }

    #[test]
    fn data_record_keeps_only_the_captured_bytes() {
        let mut ev = Box::new(DataEvent {
            header: header(kind::DATA),
            conn_id: 77,
            total_len: 4000,
            captured_len: 5,
            direction: direction::INGRESS,
            syscall: syscall::READ,
            _pad: 0,
            goroutine: 0xc000_0a81a0,
            goroutine_parent: 0xc000_0061a0,
            data: [0; MAX_CAPTURE_BYTES],
        });
        ev.data[..5].copy_from_slice(b"GET /");
        let raw = bytes_of(&*ev, DATA_OFFSET + 5);
        let Record::Data(d) = parse(&raw).expect("parse") else {
            panic!("not data")
        };
        assert_eq!(d.payload, b"GET /");
        assert_eq!(
            (d.conn_id, d.total_len, d.syscall),
            (77, 4000, syscall::READ)
        );
        assert_eq!(
            (d.goroutine, d.goroutine_parent),
            (0xc000_0a81a0, 0xc000_0061a0)
        );
        let event = data(d);
        assert_eq!(event.mono_ns, 5_000);
        let Some(EventKind::Data(p)) = event.kind else {
            panic!("not data")
        };
        assert_eq!((p.pid, p.tid, p.conn_id), (100, 101, 77));
        assert_eq!(p.direction, Direction::Ingress as i32);
        assert!(p.truncated);
        assert_eq!(p.total_len, 4000);
    }

    #[test]
    fn data_record_claiming_more_than_it_carries_is_rejected() {
        let mut ev = Box::new(DataEvent {
            header: header(kind::DATA),
            conn_id: 1,
            total_len: 10,
            captured_len: 10,
            direction: direction::EGRESS,
            syscall: syscall::WRITE,
            _pad: 0,
            goroutine: 0,
            goroutine_parent: 0,
            data: [0; MAX_CAPTURE_BYTES],
        });
        ev.data[0] = b'x';
        let raw = bytes_of(&*ev, DATA_OFFSET + 3);
        assert_eq!(
            parse(&raw),
            Err(RecordError::BadLength {
                captured: 10,
                available: 3
            })
        );
    }

    #[test]
    fn complete_payload_is_not_truncated() {
        let d = DataRecord {
            header: header(kind::DATA),
            conn_id: 1,
            total_len: 2,
            direction: direction::EGRESS,
            syscall: syscall::SENDTO,
            goroutine: 0,
            goroutine_parent: 0,
            payload: b"ok".to_vec(),
        };
        let Some(EventKind::Data(p)) = data(d).kind else {
            panic!("not data")
        };
        assert!(!p.truncated);
        assert_eq!(p.direction, Direction::Egress as i32);
    }

    #[test]
    fn ipv4_connection_from_kernel_tuple() {
        let mut ev = ConnEvent {
            header: header(kind::CONN_OPEN),
            conn_id: 9,
            fd: 5,
            family: AF_INET,
            role: role::SERVER,
            flags: conn_flags::TUPLE_KNOWN,
            local_port: 8080,
            peer_port: 50000,
            ..ConnEvent::default()
        };
        ev.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.peer_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let raw = bytes_of(&ev, std::mem::size_of::<ConnEvent>());
        let Record::ConnOpen(parsed) = parse(&raw).expect("parse") else {
            panic!("not conn")
        };
        assert!(tuple_known(&parsed));
        let Some(EventKind::ConnectionOpened(c)) = connection_opened(&parsed, None, false).kind
        else {
            panic!("not opened")
        };
        assert_eq!(c.conn_id, 9);
        assert_eq!(c.role, Role::Server as i32);
        let local = c.local.expect("local");
        assert_eq!((local.ip.as_ref(), local.port), (&[127, 0, 0, 1][..], 8080));
        let peer = c.peer.expect("peer");
        assert_eq!((peer.ip.as_ref(), peer.port), (&[10, 0, 0, 2][..], 50000));
        assert!(!c.preexisting);
    }

    #[test]
    fn ipv6_and_resolved_connections() {
        let mut ev = ConnEvent {
            header: header(kind::CONN_OPEN),
            family: AF_INET6,
            role: role::CLIENT,
            flags: conn_flags::TUPLE_KNOWN,
            local_port: 1,
            peer_port: 443,
            ..ConnEvent::default()
        };
        ev.peer_addr[15] = 1;
        let (l, p) = kernel_addresses(&ev).expect("v6");
        assert_eq!(l.ip.len(), 16);
        assert_eq!(p.ip[15], 1);
        // A tuple the kernel did not know, resolved from /proc.
        let unknown = ConnEvent {
            header: header(kind::CONN_OPEN),
            conn_id: 3,
            ..ConnEvent::default()
        };
        assert!(!tuple_known(&unknown));
        let resolved = (
            socket_address(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            socket_address(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000),
            Role::Server,
        );
        let Some(EventKind::ConnectionOpened(c)) =
            connection_opened(&unknown, Some(resolved), true).kind
        else {
            panic!("not opened")
        };
        assert!(c.preexisting);
        assert_eq!(c.role, Role::Server as i32);
        assert_eq!(c.local.expect("local").port, 8080);
        // Unknown and unresolved: no addresses, no role.
        let Some(EventKind::ConnectionOpened(c)) = connection_opened(&unknown, None, true).kind
        else {
            panic!("not opened")
        };
        assert!(c.local.is_none() && c.role == Role::Unspecified as i32);
    }

    #[test]
    fn lifecycle_records() {
        let ev = ProcessEvent {
            header: header(kind::EXIT),
            child_pid: 0,
            exit_code: 3,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let raw = bytes_of(&ev, std::mem::size_of::<ProcessEvent>());
        assert_eq!(parse(&raw), Ok(Record::Exit(ev)));
        let Some(EventKind::ProcessExited(x)) = process_exited(&ev).kind else {
            panic!("not exit")
        };
        assert_eq!((x.pid, x.exit_code), (100, 3));
        let close = CloseEvent {
            header: header(kind::CONN_CLOSE),
            conn_id: 12,
        };
        let raw = bytes_of(&close, std::mem::size_of::<CloseEvent>());
        assert_eq!(parse(&raw), Ok(Record::ConnClose(close)));
        let info = ProcessInfo {
            pid: 100,
            ppid: 1,
            exe_path: "/usr/bin/x".into(),
            container_id: "ab".repeat(32),
            ..ProcessInfo::default()
        };
        let Some(EventKind::ProcessStarted(s)) = process_started(7, &info, true).kind else {
            panic!("not started")
        };
        assert_eq!(s.exe_path, "/usr/bin/x");
        assert!(s.preexisting);
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(matches!(parse(&[1, 2, 3]), Err(RecordError::Short { .. })));
        let h = header(999);
        let raw = bytes_of(&h, std::mem::size_of::<Header>());
        assert_eq!(parse(&raw), Err(RecordError::UnknownKind(999)));
        let h = header(kind::CONN_OPEN);
        let raw = bytes_of(&h, std::mem::size_of::<Header>());
        assert!(matches!(parse(&raw), Err(RecordError::Short { .. })));
    }
}
