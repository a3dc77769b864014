//! `tandem.loader.v1`: the versioned API between the privileged loader and
//! unprivileged processors, plus the capture file format (`capture`).

#![forbid(unsafe_code)]

pub mod capture;
pub mod process;
pub mod selection;
pub mod uds;

/// Generated code for the protobuf package `tandem.loader.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("tandem.loader.v1");
}

pub use v1::{event::Kind as EventKind, Event, EventBatch, ProtocolVersion, Selection};

/// Major version of the protocol this build speaks. Bump only for breaking changes.
pub const PROTOCOL_MAJOR: u32 = 1;
/// Minor version: bumped for additive changes.
pub const PROTOCOL_MINOR: u32 = 3;

/// The protocol version this build speaks.
pub fn protocol_version() -> ProtocolVersion {
    ProtocolVersion {
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
    }
}

/// A peer spoke another major version of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "protocol major version mismatch: this {local_side} speaks tandem.loader.v{local_major} \
     ({local_major}.{local_minor}) but the {peer_side} speaks {peer_major}.{peer_minor}; \
     run a {peer_side} built for tandem.loader.v{local_major}"
)]
pub struct VersionMismatch {
    pub local_side: &'static str,
    pub peer_side: &'static str,
    pub local_major: u32,
    pub local_minor: u32,
    pub peer_major: u32,
    pub peer_minor: u32,
}

/// Checks that `peer` is compatible with this build: same major version. A missing
/// version (`None`) counts as major 0, which is never compatible.
pub fn check_compatible(
    peer: Option<&ProtocolVersion>,
    local_side: &'static str,
    peer_side: &'static str,
) -> Result<(), VersionMismatch> {
    let (peer_major, peer_minor) = peer.map_or((0, 0), |p| (p.major, p.minor));
    if peer_major == PROTOCOL_MAJOR {
        Ok(())
    } else {
        Err(VersionMismatch {
            local_side,
            peer_side,
            local_major: PROTOCOL_MAJOR,
            local_minor: PROTOCOL_MINOR,
            peer_major,
            peer_minor,
        })
    }
}

impl Event {
    /// The pid this event belongs to, if it belongs to one process.
    pub fn pid(&self) -> Option<u32> {
        match self.kind.as_ref()? {
            EventKind::ProcessStarted(p) => Some(p.pid),
            EventKind::ProcessExited(p) => Some(p.pid),
            EventKind::ConnectionOpened(c) => Some(c.pid),
            EventKind::ConnectionClosed(c) => Some(c.pid),
            EventKind::Data(d) => Some(d.pid),
            EventKind::Loss(_) => None,
        }
    }

    /// Builds a loss event.
    pub fn loss(mono_ns: u64, count: u64, location: v1::LossLocation, reason: &str) -> Event {
        Event {
            seq: 0,
            mono_ns,
            kind: Some(EventKind::Loss(v1::Loss {
                count,
                location: location as i32,
                reason: reason.to_owned(),
            })),
        }
    }
}

impl Selection {
    /// True when the selection names nothing, which selects every process.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
            && self.exe_globs.is_empty()
            && self.pids.is_empty()
            && self.container_ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_is_compatible_whatever_the_minor() {
        let peer = ProtocolVersion {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR + 7,
        };
        assert_eq!(
            check_compatible(Some(&peer), "loader", "subscriber"),
            Ok(())
        );
    }

    #[test]
    fn other_major_is_refused_with_both_versions_named() {
        let peer = ProtocolVersion {
            major: PROTOCOL_MAJOR + 1,
            minor: 3,
        };
        let err = check_compatible(Some(&peer), "loader", "subscriber").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("major version mismatch"), "{msg}");
        assert!(msg.contains(&format!("{}.3", PROTOCOL_MAJOR + 1)), "{msg}");
        assert!(msg.contains("tandem.loader.v1"), "{msg}");
    }

    #[test]
    fn missing_version_is_refused() {
        assert!(check_compatible(None, "loader", "subscriber").is_err());
    }
}
