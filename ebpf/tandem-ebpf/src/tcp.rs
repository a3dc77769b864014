//! The TCP state capture point: `inet_sock_set_state` records each socket's
//! tuple and role at the handshake, selects processes by port at listen/connect,
//! and reports closes.

use super::*;

// ---------------------------------------------------------------------------
// TCP state: sock/inet_sock_set_state
// ---------------------------------------------------------------------------

#[inline(always)]
pub(crate) fn port_selected(port: u16) -> bool {
    PORTS
        .get(u32::from(port >> 6))
        .is_some_and(|w| *w & (1u64 << (port & 63)) != 0)
}

/// Listening on / connecting to a selected port selects the current process.
#[inline(always)]
pub(crate) fn select_by_port(port: u16, how: u16) {
    if port == 0 || !port_selected(port) {
        return;
    }
    let Some(id) = current_id(bpf_get_current_pid_tgid()) else {
        return;
    };
    let tgid = (id >> 32) as u32;
    if tgid == 0 || is_traced(tgid) || config().is_none_or(|c| c.loader_pid == tgid) {
        return;
    }
    if PIDS
        .insert(&tgid, &reason::PORT, BPF_NOEXIST as u64)
        .is_err()
    {
        bump(counter::PIDS_FULL);
        return;
    }
    emit(&PortSelectEvent {
        header: header(kind::PORT_SELECTED, tgid, id as u32),
        port,
        how,
        _pad: 0,
        comm: comm(),
    });
}

/// sock/inet_sock_set_state. Fields: skaddr 8, oldstate 16, newstate 20, sport 24,
/// dport 26 (host order), family 28, protocol 30, saddr 32, daddr 36, saddr_v6 40,
/// daddr_v6 56.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let protocol: u16 = field(&ctx, tp::PROTOCOL.1);
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let old: i32 = field(&ctx, tp::OLDSTATE.1);
    let new: i32 = field(&ctx, tp::NEWSTATE.1);
    let sk: u64 = field(&ctx, tp::SKADDR.1);
    match new {
        TCP_ESTABLISHED => {
            let role = match old {
                TCP_SYN_SENT => role::CLIENT,
                TCP_SYN_RECV => role::SERVER,
                _ => return 0,
            };
            let family: u16 = field(&ctx, tp::FAMILY.1);
            let mut info = ConnInfo {
                conn_id: next_conn_id(),
                announced_pid: 0,
                family,
                role,
                flags: conn_flags::TUPLE_KNOWN,
                local_port: field(&ctx, tp::SPORT.1),
                peer_port: field(&ctx, tp::DPORT.1),
                _pad: 0,
                local_addr: [0; 16],
                peer_addr: [0; 16],
            };
            if family == AF_INET {
                let s: u32 = field(&ctx, tp::SADDR.1);
                let d: u32 = field(&ctx, tp::DADDR.1);
                info.local_addr[..4].copy_from_slice(&s.to_ne_bytes());
                info.peer_addr[..4].copy_from_slice(&d.to_ne_bytes());
            } else if family == AF_INET6 {
                info.local_addr = field16(&ctx, tp::SADDR_V6.1);
                info.peer_addr = field16(&ctx, tp::DADDR_V6.1);
            } else {
                return 0;
            }
            let _ = CONNS.insert(&sk, &info, BPF_ANY as u64);
        }
        TCP_CLOSE => {
            // SAFETY: the value is copied out at once.
            if let Some(c) = unsafe { CONNS.get(&sk) }.copied() {
                if c.announced_pid != 0 {
                    emit(&CloseEvent {
                        header: header(kind::CONN_CLOSE, c.announced_pid, 0),
                        conn_id: c.conn_id,
                    });
                }
                let _ = CONNS.remove(&sk);
            }
        }
        TCP_LISTEN if old == TCP_CLOSE => {
            select_by_port(field(&ctx, tp::SPORT.1), port_how::LISTEN)
        }
        TCP_SYN_SENT if old == TCP_CLOSE => {
            select_by_port(field(&ctx, tp::DPORT.1), port_how::CONNECT)
        }
        _ => {}
    }
    0
}
