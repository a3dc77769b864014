//! The processor's side of `tandem.loader.v1`: connect over the Unix socket,
//! check the loader's version, subscribe, and reconnect with backoff.

use std::path::PathBuf;
use std::time::Duration;

use std::collections::BTreeMap;
use tandem_proto::uds::connect;
use tandem_proto::v1::loader_client::LoaderClient;

use tandem_proto::v1::{
    AckRequest, CapabilityReportRequest, CapabilitySummary, InfoRequest, SubscribeRequest,
};
use tandem_proto::{check_compatible, selection, EventBatch, Selection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

/// Longest an acknowledgement waits to be sent (they are coalesced: the loader keeps
/// at most half its queue unacknowledged, far more than this holds at any rate).
const ACK_INTERVAL: Duration = Duration::from_millis(20);

/// Shortest and longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What to subscribe with.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub socket: PathBuf,
    pub name: String,
    pub selection: Selection,
    /// Where the loader's capability posture goes after each connection (fetched
    /// with `CapabilityReport`; absent from loaders without it). It is logged
    /// whether or not this is set.
    pub posture: Option<watch::Sender<Option<CapabilitySummary>>>,
    /// When given, the selection follows this channel (Kubernetes discovery): each
    /// change re-subscribes under the same name, so the loader keeps the
    /// subscription's queue and resends what was not acknowledged.
    pub selection_updates: Option<watch::Receiver<Selection>>,
    /// Told whether the processor is subscribed now (the health endpoint).
    pub health: Option<std::sync::Arc<crate::health::Health>>,
    /// When given, acknowledgements follow it (the watermark and resume state of
    /// `crate::resume`) instead of every batch as soon as it was handed over.
    pub progress: Option<std::sync::Arc<crate::resume::Progress>>,
}

impl ClientConfig {
    fn set_connected(&self, connected: bool) {
        if let Some(h) = &self.health {
            h.connected
                .store(connected, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn current_selection(&self) -> Selection {
        match &self.selection_updates {
            Some(rx) => rx.borrow().clone(),
            None => self.selection.clone(),
        }
    }
}

/// Errors that retrying cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("{0}")]
    Version(#[from] tandem_proto::VersionMismatch),
    #[error("the loader at {socket} refused this processor: {message}")]
    Refused { socket: String, message: String },
}

/// Why a session ended.
enum SessionEnd {
    Shutdown,
    /// The selection changed: subscribe again at once with the new one.
    Resubscribe,
    /// Try again after a pause; the string says why (logged once per change).
    Retry(String),
}

/// Connection states, logged once each time they change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting,
    Connected,
    Unavailable,
}

fn is_fatal(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::Unimplemented
    )
}

/// Subscribes and calls `on_batch` for every batch, reconnecting until `shutdown`.
/// Returns an error only for problems that retrying cannot fix.
pub async fn run<F>(
    mut config: ClientConfig,
    shutdown: CancellationToken,
    mut on_batch: F,
) -> Result<(), Fatal>
where
    F: FnMut(EventBatch),
{
    let mut state = State::Starting;
    let mut backoff = BACKOFF_MIN;
    info!(
        socket = %config.socket.display(),
        subscriber = %config.name,
        selection = %selection::describe(&config.selection),
        "processor starting"
    );
    loop {
        let end = session(
            &mut config,
            &shutdown,
            &mut state,
            &mut backoff,
            &mut on_batch,
        )
        .await;
        config.set_connected(false);
        let reason = match end? {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Resubscribe => {
                info!(
                    subscriber = %config.name,
                    selection = %selection::describe(&config.current_selection()),
                    "selection changed; subscribing again under the same name"
                );
                continue;
            }
            SessionEnd::Retry(reason) => reason,
        };
        if state != State::Unavailable {
            // Once per change of state, whatever the reasons of the retries that follow.
            warn!(socket = %config.socket.display(), "loader unavailable: {reason}; retrying with backoff (up to {}s)", BACKOFF_MAX.as_secs());
            state = State::Unavailable;
        } else {
            debug!("still unavailable: {reason}");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn session<F>(
    config: &mut ClientConfig,
    shutdown: &CancellationToken,
    state: &mut State,
    backoff: &mut Duration,
    on_batch: &mut F,
) -> Result<SessionEnd, Fatal>
where
    F: FnMut(EventBatch),
{
    let refused = |status: Status| Fatal::Refused {
        socket: config.socket.display().to_string(),
        message: status.message().to_owned(),
    };
    let channel = match connect(&config.socket).await {
        Ok(c) => c,
        Err(e) => {
            return Ok(SessionEnd::Retry(format!(
                "cannot connect: {}",
                error_chain(&e)
            )))
        }
    };
    let mut client = LoaderClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let info = match client.info(InfoRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) if is_fatal(&s) => return Err(refused(s)),
        Err(s) => return Ok(SessionEnd::Retry(format!("Info failed: {}", s.message()))),
    };
    check_compatible(info.protocol.as_ref(), "processor", "loader")?;
    if let Some(rx) = config.selection_updates.as_mut() {
        // What is subscribed now; later changes end the session.
        rx.mark_unchanged();
    }
    let request = SubscribeRequest {
        protocol: Some(tandem_proto::protocol_version()),
        name: config.name.clone(),
        selection: Some(config.current_selection()),
        acknowledge: true,
    };
    let mut stream = match client.subscribe(request).await {
        Ok(r) => r.into_inner(),
        Err(s) if is_fatal(&s) => return Err(refused(s)),
        Err(s) => {
            return Ok(SessionEnd::Retry(format!(
                "Subscribe failed: {}",
                s.message()
            )))
        }
    };
    if *state != State::Connected {
        fetch_posture(&mut client, config).await;
        info!(
            loader_version = %info.loader_version,
            source = %info.source,
            kernel = %info.kernel_release,
            "connected to loader; subscribed"
        );
        *state = State::Connected;
    }
    config.set_connected(true);
    *backoff = BACKOFF_MIN;
    if let Some(progress) = &config.progress {
        // The watermark may lag a quarter of the loader's queue: it holds what is
        // not acknowledged against its bound (and stops sending at half of it).
        if let Ok(info) = client.info(InfoRequest {}).await {
            let info = info.into_inner();
            let capacity = info
                .subscribers
                .iter()
                .find(|s| s.name == config.name)
                .or(info.subscribers.first())
                .map(|s| s.queue_capacity);
            if let Some(c) = capacity {
                progress.set_lag_max((c / 4).max(1));
            }
        }
    }
    // Acknowledgements go out from their own task, coalesced: only the latest
    // processed position matters (acks are cumulative).
    let (ack_tx, mut ack_rx) = watch::channel::<Option<AckRequest>>(None);
    let mut ack_client = client.clone();
    let name = config.name.clone();
    let progress = config.progress.clone();
    let ack_task = tokio::spawn(async move {
        match progress {
            Some(progress) => {
                // The watermark also moves without new batches (the collector
                // answers later): polled every ACK_INTERVAL, sent when it changed.
                let mut sent = None;
                loop {
                    tokio::time::sleep(ACK_INTERVAL).await;
                    let Some((version, ack)) = progress.ack() else {
                        continue;
                    };
                    if sent == Some(version) {
                        continue;
                    }
                    if let Err(s) = ack_client.ack(ack_request(&name, ack)).await {
                        debug!("ack failed: {}", s.message());
                    } else {
                        sent = Some(version);
                    }
                }
            }
            None => {
                while ack_rx.changed().await.is_ok() {
                    // At most one Ack per ACK_INTERVAL: acknowledgements are
                    // cumulative, and one per batch would cost a round trip (and
                    // wake-ups) per batch.
                    tokio::time::sleep(ACK_INTERVAL).await;
                    let Some(req) = ack_rx.borrow_and_update().clone() else {
                        continue;
                    };
                    if let Err(s) = ack_client.ack(req).await {
                        debug!("ack failed: {}", s.message());
                    }
                }
            }
        }
    });
    let name = config.name.clone();
    let end = receive(
        &mut stream,
        shutdown,
        &ack_tx,
        &name,
        config.selection_updates.as_mut(),
        on_batch,
        &refused,
    )
    .await;
    ack_task.abort();
    // Acknowledge the final position before leaving, so that the next processor with
    // this name starts exactly after it.
    let last = match &config.progress {
        Some(p) => p.ack().map(|(_, ack)| ack_request(&config.name, ack)),
        None => ack_tx.borrow().clone(),
    };
    if let Some(req) = last {
        let ack = client.ack(req);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(2), ack).await,
            Ok(Ok(_))
        ) {
            debug!("final ack did not reach the loader; it will resend the last batches");
        }
    }
    end
}

/// Asks the loader for its capability report, logs its summary (WARN when the loader
/// holds more than it needs) and publishes it.
async fn fetch_posture(
    client: &mut LoaderClient<tonic::transport::Channel>,
    config: &ClientConfig,
) {
    let summary = match client.capability_report(CapabilityReportRequest {}).await {
        Ok(r) => r.into_inner().current,
        Err(s) => {
            debug!("the loader gives no capability report: {}", s.message());
            None
        }
    };
    let Some(summary) = summary else {
        return;
    };
    let line = describe_posture(&summary);
    if summary.excess.is_empty() && summary.privileged.is_empty() {
        info!("loader capabilities: {line}");
    } else {
        warn!("loader capabilities: {line}; the loader holds capabilities no feature needs: grant only those `tandem-loader capabilities` lists");
    }
    if let Some(tx) = &config.posture {
        tx.send_replace(Some(summary));
    }
}

/// The posture summary on one line.
pub fn describe_posture(s: &CapabilitySummary) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else if v.len() > 8 {
            format!("{} capabilities", v.len())
        } else {
            v.join(",")
        }
    };
    format!(
        "uid {} gid {}, effective [{}], no_new_privs {}, seccomp {}, privileged {}, excess [{}], unavailable features [{}]",
        s.uid,
        s.gid,
        list(&s.effective),
        s.no_new_privs,
        s.seccomp,
        if s.privileged.is_empty() { "no" } else { &s.privileged },
        list(&s.excess),
        s.unavailable_features.join(",")
    )
}

/// The posture as `tandem.loader.*` resource attributes.
pub fn posture_attributes(s: &CapabilitySummary) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("tandem.loader.uid".to_owned(), s.uid.to_string()),
        ("tandem.loader.gid".to_owned(), s.gid.to_string()),
        (
            "tandem.loader.capabilities.effective".to_owned(),
            s.effective.join(","),
        ),
        (
            "tandem.loader.capabilities.excess".to_owned(),
            s.excess.join(","),
        ),
        (
            "tandem.loader.privileged".to_owned(),
            (!s.privileged.is_empty()).to_string(),
        ),
        (
            "tandem.loader.no_new_privs".to_owned(),
            s.no_new_privs.to_string(),
        ),
    ])
}

/// Receives batches until the stream ends or `shutdown`, publishing positions to ack.
async fn receive<F>(
    stream: &mut tonic::Streaming<EventBatch>,
    shutdown: &CancellationToken,
    ack_tx: &watch::Sender<Option<AckRequest>>,
    name: &str,
    mut updates: Option<&mut watch::Receiver<Selection>>,
    on_batch: &mut F,
    refused: &(dyn Fn(Status) -> Fatal + Sync),
) -> Result<SessionEnd, Fatal>
where
    F: FnMut(EventBatch),
{
    loop {
        let changed = async {
            match updates.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = changed => return Ok(SessionEnd::Resubscribe),
            // A batch dropped here by a shutdown was not acknowledged, so the loader
            // sends it to the next processor that resumes this subscription.
            msg = stream.message() => match msg {
                Ok(Some(batch)) => {
                    let processed = AckRequest {
                        name: name.to_owned(),
                        subscription_epoch: batch.subscription_epoch,
                        processed_through: (batch.subscription_seq + batch.events.len() as u64).saturating_sub(1),
                        resume_state: Default::default(),
                    };
                    on_batch(batch);
                    ack_tx.send_replace(Some(processed));
                }
                Ok(None) => return Ok(SessionEnd::Retry("the loader ended the stream".into())),
                Err(s) if is_fatal(&s) => return Err(refused(s)),
                Err(s) => return Ok(SessionEnd::Retry(format!("stream broke: {}", s.message()))),
            },
            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
        }
    }
}

fn ack_request(name: &str, ack: crate::resume::Ack) -> AckRequest {
    AckRequest {
        name: name.to_owned(),
        subscription_epoch: ack.epoch,
        processed_through: ack.through,
        resume_state: ack.state,
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod posture_tests {
    use super::*;

    #[test]
    fn posture_line_and_attributes() {
        let s = CapabilitySummary {
            uid: 65534,
            gid: 65534,
            effective: vec!["CAP_DAC_READ_SEARCH".into(), "CAP_SYS_PTRACE".into()],
            no_new_privs: true,
            seccomp: "disabled".into(),
            excess: vec!["CAP_NET_ADMIN".into()],
            ..Default::default()
        };
        let line = describe_posture(&s);
        assert!(line.contains("uid 65534"), "{line}");
        assert!(
            line.contains("effective [CAP_DAC_READ_SEARCH,CAP_SYS_PTRACE]"),
            "{line}"
        );
        assert!(line.contains("excess [CAP_NET_ADMIN]"), "{line}");
        assert!(line.contains("privileged no"), "{line}");
        let a = posture_attributes(&s);
        assert_eq!(a["tandem.loader.uid"], "65534");
        assert_eq!(a["tandem.loader.capabilities.excess"], "CAP_NET_ADMIN");
        assert_eq!(a["tandem.loader.privileged"], "false");
        assert_eq!(a["tandem.loader.no_new_privs"], "true");
    }
}
