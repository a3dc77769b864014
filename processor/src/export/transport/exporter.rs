//! A task that exports bodies from a bounded queue, keeping up to the transport's
//! `max_in_flight` exports running, and accounting for every item it was given.
//!
//! Every item handed to [`Exporter::try_send`] / [`Exporter::send`] ends in exactly one
//! of: dropped at the door (queue full or shut down: [`ExporterStats::items_dropped`]),
//! exported, rejected by the collector, failed (the transport's counters), or
//! abandoned at shutdown ([`ExporterStats::items_abandoned`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::health::Health;
use super::{Transport, TransportStats};

/// A body the exporter did not take; its items are counted as dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the OTLP export queue is full")]
    Full,
    #[error("the OTLP exporter is shut down")]
    Closed,
}

/// The exporter's counters with its transport's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExporterStats {
    /// Bodies and items taken into the queue.
    pub exports_queued: u64,
    pub items_queued: u64,
    /// Bodies and items refused by `try_send`/`send` (queue full, shut down).
    pub exports_dropped: u64,
    pub items_dropped: u64,
    /// Exports running now.
    pub exports_in_flight: u64,
    /// Bodies and items still queued or running when the shutdown grace period ended.
    pub exports_abandoned: u64,
    pub items_abandoned: u64,
    pub transport: TransportStats,
}

struct Counters {
    exports_queued: AtomicU64,
    items_queued: AtomicU64,
    exports_dropped: AtomicU64,
    items_dropped: AtomicU64,
    exports_in_flight: AtomicU64,
    exports_abandoned: AtomicU64,
    items_abandoned: AtomicU64,
    /// Dropping or not (one WARN per change).
    dropping: Health,
}

impl Counters {
    fn new() -> Self {
        Counters {
            exports_queued: AtomicU64::new(0),
            items_queued: AtomicU64::new(0),
            exports_dropped: AtomicU64::new(0),
            items_dropped: AtomicU64::new(0),
            exports_in_flight: AtomicU64::new(0),
            exports_abandoned: AtomicU64::new(0),
            items_abandoned: AtomicU64::new(0),
            dropping: Health::new(),
        }
    }
}

struct Job {
    body: Bytes,
    items: u64,
}

/// Exports queued bodies in the background. Create it inside a Tokio runtime.
pub struct Exporter {
    queue: mpsc::Sender<Job>,
    transport: Transport,
    counters: Arc<Counters>,
    stop: oneshot::Sender<Instant>,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Starts the export task, with room for `queue` bodies waiting (at least 1).
    pub fn spawn(transport: Transport, queue: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (stop, stopped) = oneshot::channel();
        let counters = Arc::new(Counters::new());
        let task = tokio::spawn(run(transport.clone(), rx, counters.clone(), stopped));
        Exporter {
            queue: tx,
            transport,
            counters,
            stop,
            task,
        }
    }

    /// Queues a body of `items` spans or data points without waiting; when the queue
    /// is full the body is dropped (and counted).
    pub fn try_send(&self, body: Bytes, items: u64) -> Result<(), SendError> {
        let result = self
            .queue
            .try_send(Job { body, items })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::Closed,
            });
        self.account(result, items)
    }

    /// Queues a body, waiting for room.
    pub async fn send(&self, body: Bytes, items: u64) -> Result<(), SendError> {
        let result = self
            .queue
            .send(Job { body, items })
            .await
            .map_err(|_| SendError::Closed);
        self.account(result, items)
    }

    fn account(&self, result: Result<(), SendError>, items: u64) -> Result<(), SendError> {
        let c = &*self.counters;
        match result {
            Ok(()) => {
                c.exports_queued.fetch_add(1, Ordering::Relaxed);
                c.items_queued.fetch_add(items, Ordering::Relaxed);
                if let Some(dropped) = c.dropping.succeeded() {
                    tracing::warn!(
                        "OTLP {} export queue has room again; {dropped} {} were dropped \
                         while it was full",
                        self.transport.signal(),
                        self.transport.signal().items()
                    );
                }
            }
            Err(e) => {
                c.exports_dropped.fetch_add(1, Ordering::Relaxed);
                c.items_dropped.fetch_add(items, Ordering::Relaxed);
                if c.dropping.failed(items) {
                    tracing::warn!(
                        "{e} ({} exports in flight to {}): dropping OTLP {} {} until it \
                         takes them again (counted, not logged each time)",
                        self.transport.max_in_flight(),
                        self.transport.endpoint(),
                        self.transport.signal(),
                        self.transport.signal().items()
                    );
                }
            }
        }
        result
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ExporterStats {
        stats(&self.counters, &self.transport)
    }

    /// Stops taking bodies, exports what is queued or running for at most `grace`
    /// (retries included), then abandons the rest and returns the final counters.
    pub async fn shutdown(self, grace: Duration) -> ExporterStats {
        let deadline = Instant::now().checked_add(grace);
        let Exporter {
            queue,
            transport,
            counters,
            stop,
            task,
        } = self;
        drop(queue);
        // Without a deadline (a grace too long to represent) the task ends when the
        // queue is empty and every export is done.
        if let Some(deadline) = deadline {
            let _ = stop.send(deadline);
        } else {
            drop(stop);
        }
        if task.await.is_err() {
            // The task panicked: whatever it did not account for is abandoned.
            let s = stats(&counters, &transport);
            let t = s.transport;
            let done = t.items_exported + t.items_rejected + t.items_failed + s.items_abandoned;
            let lost = s.items_queued.saturating_sub(done);
            counters.items_abandoned.fetch_add(lost, Ordering::Relaxed);
            tracing::error!("the OTLP export task failed; {lost} items abandoned");
        }
        let s = stats(&counters, &transport);
        if s.items_abandoned > 0 {
            tracing::warn!(
                "OTLP {} exporter shut down: {} {} in {} exports not sent within {grace:?}",
                transport.signal(),
                s.items_abandoned,
                transport.signal().items(),
                s.exports_abandoned
            );
        }
        s
    }
}

fn stats(c: &Counters, transport: &Transport) -> ExporterStats {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    ExporterStats {
        exports_queued: get(&c.exports_queued),
        items_queued: get(&c.items_queued),
        exports_dropped: get(&c.exports_dropped),
        items_dropped: get(&c.items_dropped),
        exports_in_flight: get(&c.exports_in_flight),
        exports_abandoned: get(&c.exports_abandoned),
        items_abandoned: get(&c.items_abandoned),
        transport: transport.stats(),
    }
}

async fn run(
    transport: Transport,
    mut rx: mpsc::Receiver<Job>,
    counters: Arc<Counters>,
    mut stop: oneshot::Receiver<Instant>,
) {
    let max = transport.max_in_flight();
    let mut running = FuturesUnordered::new();
    let mut in_flight_items = 0u64;
    let mut deadline: Option<Instant> = None;
    let mut stop_done = false;
    let mut queue_done = false;
    loop {
        if queue_done && running.is_empty() {
            break;
        }
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = until_deadline => break,
            at = &mut stop, if !stop_done => {
                stop_done = true;
                deadline = at.ok();
                rx.close();
            }
            Some(items) = running.next(), if !running.is_empty() => {
                in_flight_items -= items;
                counters.exports_in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            job = rx.recv(), if !queue_done && running.len() < max => match job {
                Some(Job { body, items }) => {
                    in_flight_items += items;
                    counters.exports_in_flight.fetch_add(1, Ordering::Relaxed);
                    let t = transport.clone();
                    running.push(async move {
                        // The transport counts the outcome (and logs failures).
                        let _ = t.export(body, items).await;
                        items
                    });
                }
                None => queue_done = true,
            },
        }
    }
    // The grace period is over (or everything is done): count what is left.
    let mut exports = running.len() as u64;
    let mut items = in_flight_items;
    drop(running);
    rx.close();
    while let Ok(job) = rx.try_recv() {
        exports += 1;
        items += job.items;
    }
    counters.exports_in_flight.store(0, Ordering::Relaxed);
    counters
        .exports_abandoned
        .fetch_add(exports, Ordering::Relaxed);
    counters.items_abandoned.fetch_add(items, Ordering::Relaxed);
}
