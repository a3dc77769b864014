//! The `tandem.loader.v1.Loader` service on a Unix socket.
//!
//! Every RPC first checks the peer's credentials (SO_PEERCRED, captured by tonic for
//! each accepted Unix connection) against the allowlist; a refused peer gets
//! `PERMISSION_DENIED` with the reason, and the loader logs one line naming it.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tandem_proto::v1::loader_server::{Loader, LoaderServer};
use tandem_proto::v1::{
    AckRequest, AckResponse, CapabilityReportRequest, CapabilityReportResponse, InfoRequest,
    InfoResponse, SubscribeRequest,
};
use tandem_proto::{check_compatible, EventBatch};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::hub::{self, Attachment, Hub, Next, Peer};
use crate::posture::Posture;

/// How long a subscription's stream, woken by new events, waits for more before it
/// sends a batch (a batch that is full goes at once).
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(2);
/// How long shutdown waits for connected processors to go away.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Who may talk to the loader.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Allowlist {
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }

    pub fn describe(&self) -> String {
        let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        format!("uids [{}], gids [{}]", list(&self.uids), list(&self.gids))
    }
}

/// Socket placement and permissions.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    pub path: PathBuf,
    /// Group that owns the socket (so that a processor in that group may connect).
    pub group: Option<u32>,
}

/// The service implementation.
pub struct LoaderService {
    hub: Arc<Hub>,
    posture: Arc<Posture>,
    allow: Allowlist,
    shutdown: CancellationToken,
}

/// Takes the peer's credentials from the request, or refuses it.
fn check_peer<T>(request: &Request<T>, allow: &Allowlist) -> Result<Peer, Status> {
    let cred = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred);
    let Some(cred) = cred else {
        warn!("refused a peer whose credentials could not be read (SO_PEERCRED)");
        return Err(Status::permission_denied(
            "the loader could not read this peer's credentials (SO_PEERCRED); only local \
             Unix-socket peers are served",
        ));
    };
    let peer = Peer {
        pid: cred.pid().map_or(0, |p| p as u32),
        uid: cred.uid(),
        gid: cred.gid(),
    };
    if allow.allows(peer.uid, peer.gid) {
        return Ok(peer);
    }
    warn!(
        peer_pid = peer.pid,
        peer_uid = peer.uid,
        peer_gid = peer.gid,
        allowlist = %allow.describe(),
        "refused peer: uid/gid not in the allowlist"
    );
    Err(Status::permission_denied(format!(
        "peer uid {} gid {} (pid {}) is not allowed by this loader (allowlist: {}); run the \
         processor as an allowed user or start the loader with --allow-uid {} / --allow-gid {}",
        peer.uid,
        peer.gid,
        peer.pid,
        allow.describe(),
        peer.uid,
        peer.gid
    )))
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<EventBatch, Status>> + Send>>;

/// Detaches the subscription when the response stream is dropped (client gone).
struct DetachOnDrop {
    hub: Arc<Hub>,
    attachment: Attachment,
}

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        self.hub.detach(&self.attachment);
    }
}

#[tonic::async_trait]
impl Loader for LoaderService {
    type SubscribeStream = BatchStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = check_peer(&request, &self.allow)?;
        let req = request.into_inner();
        if let Err(mismatch) = check_compatible(req.protocol.as_ref(), "loader", "subscriber") {
            warn!(peer_pid = peer.pid, subscriber = %req.name, error = %mismatch, "refused subscriber");
            return Err(Status::failed_precondition(mismatch.to_string()));
        }
        let selection = req.selection.unwrap_or_default();
        let attachment = self
            .hub
            .attach(&req.name, selection, req.acknowledge, peer)
            .map_err(|e| Status::invalid_argument(format!("invalid selection: {e}")))?;
        let guard = DetachOnDrop {
            hub: self.hub.clone(),
            attachment,
        };
        let shutdown = self.shutdown.clone();
        let stream = futures::stream::unfold(guard, move |guard| {
            let shutdown = shutdown.clone();
            async move {
                loop {
                    let s = guard.attachment.subscription.clone();
                    // Registered before looking at the queue so no wake-up is missed.
                    let notified = s.notified();
                    match guard.hub.next_batch(&guard.attachment) {
                        Next::Batch(b) => return Some((Ok(b), guard)),
                        Next::TakenOver => {
                            info!("subscription taken over by a newer connection; ending the older stream");
                            return None;
                        }
                        Next::Empty => {}
                    }
                    tokio::select! {
                        _ = notified => {}
                        _ = shutdown.cancelled() => return None,
                    }
                    // Woken by new events: let more come for a moment, so that a
                    // trickle of events goes out in batches, not one message (and one
                    // wake-up of the processor) per event.
                    tokio::select! {
                        _ = tokio::time::sleep(BATCH_LINGER) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        check_peer(&request, &self.allow)?;
        let req = request.into_inner();
        if req.resume_state.len() > hub::MAX_RESUME_STATE {
            return Err(Status::invalid_argument(format!(
                "resume_state is {} bytes; at most {} are kept",
                req.resume_state.len(),
                hub::MAX_RESUME_STATE
            )));
        }
        if self.hub.ack(
            &req.name,
            req.subscription_epoch,
            req.processed_through,
            req.resume_state,
        ) {
            Ok(Response::new(AckResponse {}))
        } else {
            Err(Status::not_found(format!(
                "no subscription {:?} with epoch {} (it expired or the loader restarted)",
                req.name, req.subscription_epoch
            )))
        }
    }

    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        check_peer(&request, &self.allow)?;
        Ok(Response::new(self.hub.info()))
    }

    async fn capability_report(
        &self,
        request: Request<CapabilityReportRequest>,
    ) -> Result<Response<CapabilityReportResponse>, Status> {
        check_peer(&request, &self.allow)?;
        Ok(Response::new(self.posture.response()))
    }
}

/// Binds the socket: creates its directory, refuses to steal a live socket, removes
/// a stale one, and sets mode 0660 (and the group) explicitly.
pub fn bind(config: &SocketConfig) -> anyhow::Result<UnixListener> {
    let path = &config.path;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create the socket directory {}: {e}", dir.display())
        })?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "another process is already serving on {} (is a loader running?); stop it \
                     or choose another --socket",
                    path.display()
                );
            }
            fs::remove_file(path).map_err(|e| {
                anyhow::anyhow!("cannot remove the stale socket {}: {e}", path.display())
            })?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot inspect {}: {e}", path.display()),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .map_err(|e| anyhow::anyhow!("cannot set mode 0660 on {}: {e}", path.display()))?;
    if let Some(gid) = config.group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| anyhow::anyhow!("cannot give {} to group {gid}: {e}", path.display()))?;
    }
    Ok(listener)
}

/// Serves until `shutdown` fires, then removes the socket.
pub async fn serve(
    listener: UnixListener,
    socket: &Path,
    hub: Arc<Hub>,
    posture: Arc<Posture>,
    allow: Allowlist,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    info!(socket = %socket.display(), allowlist = %allow.describe(), "serving tandem.loader.v1");
    let service = LoaderService {
        hub,
        posture,
        allow,
        shutdown: shutdown.clone(),
    };
    let server = tonic::transport::Server::builder()
        .add_service(LoaderServer::new(service))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    // Graceful shutdown waits for every connection to close; a stuck peer (e.g. a
    // stopped processor) must not keep the loader alive.
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        r = server => r,
        _ = deadline => {
            warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "connections still open after the grace period; closing them");
            Ok(())
        }
    };
    if let Err(e) = fs::remove_file(socket) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(socket = %socket.display(), error = %e, "could not remove the socket");
        }
    }
    result.map_err(|e| anyhow::anyhow!("gRPC server on {} failed: {e}", socket.display()))
}
