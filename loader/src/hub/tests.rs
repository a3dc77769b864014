//! The hub's routing, queues, resends and bounds.
use super::*;
use bytes::Bytes;
use futures::FutureExt;
use tandem_proto::v1::{ConnectionOpened, Data, ProcessStarted, SocketAddress};

fn hub(capacity: usize, max_batch: usize) -> Arc<Hub> {
    Hub::new(HubConfig {
        queue_capacity: capacity,
        max_batch,
        ..HubConfig::default()
    })
}

fn started(pid: u32, exe: &str) -> Event {
    Event {
        seq: 0,
        mono_ns: 0,
        kind: Some(EventKind::ProcessStarted(ProcessStarted {
            pid,
            exe_path: exe.into(),
            ..Default::default()
        })),
    }
}

/// A connection `pid` accepted on `port`.
fn accepted(pid: u32, port: u32) -> Event {
    Event {
        seq: 0,
        mono_ns: 0,
        kind: Some(EventKind::ConnectionOpened(ConnectionOpened {
            pid,
            local: Some(SocketAddress {
                ip: vec![127, 0, 0, 1].into(),
                port,
            }),
            role: Role::Server as i32,
            ..Default::default()
        })),
    }
}

fn data(pid: u32, n: u8) -> Event {
    Event {
        seq: 0,
        mono_ns: u64::from(n),
        kind: Some(EventKind::Data(Data {
            pid,
            payload: vec![n].into(),
            ..Default::default()
        })),
    }
}

fn batch(hub: &Hub, a: &Attachment) -> EventBatch {
    match hub.next_batch(a) {
        Next::Batch(b) => b,
        Next::Empty => panic!("expected a batch, queue empty"),
        Next::TakenOver => panic!("expected a batch, taken over"),
    }
}

impl Hub {
    /// A batch of at most `n` events, whatever max_batch says.
    fn next_batch_limited(&self, a: &Attachment, n: usize) -> EventBatch {
        let mut q = lock(&a.subscription.queue);
        let events: Vec<Event> = q.events.drain(..n).collect();
        EventBatch {
            events,
            ..Default::default()
        }
    }
}

fn payloads(b: &EventBatch) -> Vec<String> {
    b.events
        .iter()
        .map(|e| match &e.kind {
            Some(EventKind::Data(d)) => d.payload[0].to_string(),
            Some(EventKind::Loss(l)) => format!("loss{}", l.count),
            _ => "?".into(),
        })
        .collect()
}

#[test]
fn overflow_drops_counts_and_marks_the_gap_in_place() {
    let h = hub(3, 100);
    let a = h
        .attach("p", Selection::default(), false, Peer::default())
        .unwrap();
    h.publish((0..5).map(|n| data(1, n)));
    // 3 queued, 2 dropped: the marker follows the last event queued before the gap.
    assert_eq!(payloads(&batch(&h, &a)), ["0", "1", "2", "loss2"]);
    h.publish(vec![data(1, 5)]);
    assert_eq!(payloads(&batch(&h, &a)), ["5"]);
    // With room freed before the drain ends, the marker precedes the next event.
    h.publish((6..10).map(|n| data(1, n))); // 6,7,8 queued, 9 dropped
    let first = h.next_batch_limited(&a, 1);
    assert_eq!(payloads(&first), ["6"]);
    h.publish(vec![data(1, 10)]);
    assert_eq!(payloads(&batch(&h, &a)), ["7", "8", "loss1", "10"]);
    let info = h.info();
    assert_eq!(info.subscribers[0].dropped, 3);
    assert_eq!(info.events_ingested, 11);
}

#[test]
fn a_loss_at_the_end_is_reported_when_the_queue_drains() {
    let h = hub(2, 100);
    let a = h
        .attach("p", Selection::default(), false, Peer::default())
        .unwrap();
    h.publish((0..4).map(|n| data(1, n)));
    assert_eq!(payloads(&batch(&h, &a)), ["0", "1", "loss2"]);
    assert!(matches!(h.next_batch(&a), Next::Empty));
}

#[test]
fn routing_follows_each_subscribers_selection() {
    let h = hub(100, 100);
    let by_pid = h
        .attach(
            "pid",
            Selection {
                pids: vec![7],
                ..Default::default()
            },
            false,
            Peer::default(),
        )
        .unwrap();
    let by_exe = h
        .attach(
            "exe",
            Selection {
                exe_globs: vec!["*/nginx".into()],
                ..Default::default()
            },
            false,
            Peer::default(),
        )
        .unwrap();
    let by_port = h
        .attach(
            "port",
            Selection {
                ports: tandem_proto::selection::parse_port_ranges("8000-8999").unwrap(),
                ..Default::default()
            },
            false,
            Peer::default(),
        )
        .unwrap();
    let (start, serve) = (started, accepted);
    h.publish(vec![
        start(7, "/bin/seven"),
        start(8, "/usr/sbin/nginx"),
        start(9, "/usr/bin/python3"),
        serve(9, 8080),
        data(9, 1),
        data(10, 2), // unknown, unselected process
    ]);
    let pids = |a: &Attachment| -> Vec<u32> {
        batch(&h, a).events.iter().filter_map(Event::pid).collect()
    };
    assert_eq!(pids(&by_pid), [7]);
    assert_eq!(pids(&by_exe), [8]);
    // Selected from the connection on; its ProcessStarted comes first.
    let port_events = batch(&h, &by_port).events;
    assert!(matches!(
        port_events[0].kind,
        Some(EventKind::ProcessStarted(_))
    ));
    assert_eq!(
        port_events
            .iter()
            .filter_map(Event::pid)
            .collect::<Vec<_>>(),
        [9, 9, 9]
    );
    assert_eq!(h.info().events_unrouted, 2);
    let union = h.selection().borrow().clone().unwrap();
    assert_eq!(union.pids, [7]);
    assert_eq!(union.exe_globs, ["*/nginx"]);
}

#[test]
fn late_selectors_learn_the_process_first() {
    let h = hub(100, 100);
    let early = h
        .attach("early", Selection::default(), false, Peer::default())
        .unwrap();
    let started = started(5, "/usr/sbin/nginx");
    h.publish(vec![started]);
    assert_eq!(batch(&h, &early).events.len(), 1);
    // A subscriber attaching later gets the ProcessStarted before new events...
    let late = h
        .attach(
            "late",
            Selection {
                ports: tandem_proto::selection::parse_port_ranges("80").unwrap(),
                exe_globs: vec!["*/nginx".into()],
                ..Default::default()
            },
            false,
            Peer::default(),
        )
        .unwrap();
    h.publish(vec![data(5, 1)]);
    let kinds = |b: EventBatch| -> Vec<&'static str> {
        b.events
            .iter()
            .map(|e| match e.kind {
                Some(EventKind::ProcessStarted(_)) => "started",
                Some(EventKind::Data(_)) => "data",
                _ => "other",
            })
            .collect()
    };
    assert_eq!(kinds(batch(&h, &late)), ["started", "data"]);
    // ...and the early one does not get it twice.
    assert_eq!(kinds(batch(&h, &early)), ["data"]);
}

#[test]
fn unacknowledged_batches_go_to_the_next_connection() {
    let h = hub(100, 2);
    let first = h
        .attach("p", Selection::default(), true, Peer::default())
        .unwrap();
    h.publish((0..5).map(|n| data(1, n)));
    let b1 = batch(&h, &first);
    let b2 = batch(&h, &first);
    assert_eq!((b1.subscription_seq, b2.subscription_seq), (1, 3));
    assert!(h.ack("p", b1.subscription_epoch, 2, Bytes::new()));
    assert!(
        !h.ack("p", b1.subscription_epoch + 1, 2, Bytes::new()),
        "wrong epoch"
    );
    assert_eq!(h.info().subscribers[0].unacknowledged, 2);
    h.detach(&first);
    // The second batch was never acknowledged: it comes again, then what is new.
    let second = h
        .attach("p", Selection::default(), true, Peer::default())
        .unwrap();
    let again = batch(&h, &second);
    assert_eq!(again.subscription_seq, 3);
    assert_eq!(payloads(&again), ["2", "3"]);
    assert_eq!(payloads(&batch(&h, &second)), ["4"]);
    assert_eq!(h.info().subscribers[0].connections, 2);
}

/// Issue 17: a resumed subscription (a processor restarted under the same name)
/// begins with the facts of the processes it selects, at positions the previous
/// reader already processed: a new reader takes them, the same one skips them.
#[test]
fn a_resumed_subscription_begins_with_the_facts_of_its_processes() {
    let h = hub(100, 100);
    let first = h
        .attach("p", Selection::default(), true, Peer::default())
        .unwrap();
    let started = |pid: u32| Event {
        seq: 0,
        mono_ns: 0,
        kind: Some(EventKind::ProcessStarted(ProcessStarted {
            pid,
            exe_path: format!("/usr/bin/server{pid}"),
            ..Default::default()
        })),
    };
    h.publish(vec![started(7), started(5), data(5, 0), data(7, 1)]);
    let b = batch(&h, &first);
    assert_eq!((b.subscription_seq, b.events.len()), (1, 4));
    assert!(h.ack("p", b.subscription_epoch, 4, Bytes::new()));
    h.detach(&first);
    // Everything was acknowledged; a new processor resumes the subscription.
    let second = h
        .attach("p", Selection::default(), true, Peer::default())
        .unwrap();
    let facts = batch(&h, &second);
    let pids: Vec<u32> = facts
        .events
        .iter()
        .map(|e| match &e.kind {
            Some(EventKind::ProcessStarted(p)) => p.pid,
            other => panic!("only facts first: {other:?}"),
        })
        .collect();
    assert_eq!(pids, [5, 7]);
    // Just before the next new event's position (5): 3 and 4.
    assert_eq!(facts.subscription_seq, 3);
    h.publish(vec![data(5, 2)]);
    let next = batch(&h, &second);
    assert_eq!(
        (next.subscription_seq, payloads(&next)),
        (5, vec!["2".to_string()])
    );
    // With a batch to send again, the facts lead it.
    h.detach(&second);
    let third = h
        .attach("p", Selection::default(), true, Peer::default())
        .unwrap();
    // Nothing of the second reader was acknowledged: its facts batch (3, 4) and
    // the data (5) come again, the facts of now (1, 2) leading them.
    let again = batch(&h, &third);
    assert_eq!((again.subscription_seq, again.events.len()), (1, 4));
    assert!(again
        .events
        .iter()
        .all(|e| matches!(e.kind, Some(EventKind::ProcessStarted(_)))));
    let then = batch(&h, &third);
    assert_eq!(
        (then.subscription_seq, payloads(&then)),
        (5, vec!["2".to_string()])
    );
}

#[test]
fn the_resume_state_and_the_ports_seen_go_to_the_next_connection() {
    let h = hub(100, 100);
    let first = h
        .attach("p", Selection::default(), true, Peer::default())
        .unwrap();
    h.publish(vec![
        started(5, "/usr/bin/python3"),
        accepted(5, 8080),
        data(5, 0),
        data(5, 1),
    ]);
    let b = batch(&h, &first);
    assert!(b.resume_state.is_empty(), "no state was left yet");
    assert!(h.ack("p", b.subscription_epoch, 4, Bytes::from_static(b"state-1")));
    h.detach(&first);
    let second = h
        .attach("p", Selection::default(), true, Peer::default())
        .unwrap();
    let again = batch(&h, &second);
    assert_eq!(&again.resume_state[..], b"state-1");
    assert_eq!(
        again.subscription_seq, 4,
        "the facts just before what comes next"
    );
    match &again.events[..] {
        [Event {
            kind: Some(EventKind::ProcessStarted(p)),
            ..
        }] => assert_eq!(p.ports, [8080]),
        other => panic!("the facts: {other:?}"),
    }
    h.publish(vec![data(5, 2)]);
    let next = batch(&h, &second);
    assert!(
        next.resume_state.is_empty(),
        "only the first batch carries it"
    );
}

#[test]
fn unacknowledged_events_count_against_the_bound() {
    let h = hub(4, 100);
    let a = h
        .attach("p", Selection::default(), true, Peer::default())
        .unwrap();
    h.publish((0..4).map(|n| data(1, n)));
    // At most half the capacity may be in flight unacknowledged.
    assert_eq!(payloads(&batch(&h, &a)), ["0", "1"]);
    assert!(matches!(h.next_batch(&a), Next::Empty));
    h.publish(vec![data(1, 4)]); // 2 held + 2 queued = full: dropped
    assert_eq!(h.info().subscribers[0].dropped, 1);
    assert!(h.ack("p", a.subscription.epoch, 2, Bytes::new()));
    assert_eq!(payloads(&batch(&h, &a)), ["2", "3", "loss1"]);
}

#[test]
fn a_close_after_the_process_exited_still_reaches_its_subscriber() {
    let h = hub(100, 100);
    let by_port = h
        .attach(
            "port",
            Selection {
                ports: tandem_proto::selection::parse_port_ranges("8080").unwrap(),
                ..Default::default()
            },
            false,
            Peer::default(),
        )
        .unwrap();
    let ev = |kind: EventKind| Event {
        seq: 0,
        mono_ns: 0,
        kind: Some(kind),
    };
    h.publish(vec![
        ev(EventKind::ConnectionOpened(ConnectionOpened {
            pid: 3,
            conn_id: 9,
            peer: Some(SocketAddress {
                ip: vec![127, 0, 0, 1].into(),
                port: 8080,
            }),
            role: Role::Client as i32,
            ..Default::default()
        })),
        ev(EventKind::ProcessExited(v1::ProcessExited {
            pid: 3,
            exit_code: 0,
        })),
        ev(EventKind::ConnectionClosed(v1::ConnectionClosed {
            pid: 3,
            conn_id: 9,
            ..Default::default()
        })),
    ]);
    assert_eq!(batch(&h, &by_port).events.len(), 3);
    assert_eq!(h.info().events_unrouted, 0);
    // Forgotten after the grace period.
    h.expire(Instant::now() + EXITED_GRACE + Duration::from_secs(1));
    h.publish(vec![ev(EventKind::ConnectionClosed(
        v1::ConnectionClosed {
            pid: 3,
            conn_id: 10,
            ..Default::default()
        },
    ))]);
    assert_eq!(h.info().events_unrouted, 1);
}

#[test]
fn a_second_connection_takes_the_subscription_over() {
    let h = hub(10, 10);
    let old = h
        .attach("p", Selection::default(), false, Peer::default())
        .unwrap();
    let new = h
        .attach("p", Selection::default(), false, Peer::default())
        .unwrap();
    assert!(matches!(h.next_batch(&old), Next::TakenOver));
    h.detach(&old); // must not disconnect the newer connection
    assert!(h.info().subscribers[0].connected);
    h.publish(vec![data(1, 1)]);
    assert_eq!(payloads(&batch(&h, &new)), ["1"]);
}

fn backpressure_hub(capacity: usize) -> Arc<Hub> {
    Hub::new(HubConfig {
        queue_capacity: capacity,
        max_batch: 2,
        backpressure: true,
        ..HubConfig::default()
    })
}

#[test]
fn without_backpressure_waiting_for_room_never_waits() {
    let h = hub(2, 100);
    let _a = h
        .attach("p", Selection::default(), false, Peer::default())
        .unwrap();
    h.publish((0..3).map(|n| data(1, n)));
    assert!(!h.backpressure());
    assert!(h.wait_for_room(10).now_or_never().is_some());
}

#[test]
fn with_backpressure_a_full_queue_holds_the_source_and_drops_nothing() {
    let h = backpressure_hub(4);
    let a = h
        .attach("", Selection::default(), false, Peer::default())
        .unwrap();
    assert!(h.wait_for_room(4).now_or_never().is_some(), "empty queue");
    h.publish((0..3).map(|n| data(1, n)));
    assert!(
        h.wait_for_room(1).now_or_never().is_some(),
        "3 + 1 fit in 4"
    );
    assert!(h.wait_for_room(2).now_or_never().is_none(), "3 + 2 do not");
    // A batch larger than the capacity waits for an empty queue, and is then
    // queued whole: nothing is dropped.
    assert!(h.wait_for_room(6).now_or_never().is_none());
    assert_eq!(payloads(&batch(&h, &a)), ["0", "1"]);
    assert!(h.wait_for_room(2).now_or_never().is_some());
    assert_eq!(payloads(&batch(&h, &a)), ["2"]);
    assert!(h.wait_for_room(6).now_or_never().is_some());
    h.publish((3..9).map(|n| data(1, n)));
    let mut got = Vec::new();
    while let Next::Batch(b) = h.next_batch(&a) {
        got.extend(payloads(&b));
    }
    assert_eq!(got, ["3", "4", "5", "6", "7", "8"]);
    assert_eq!(h.info().subscribers[0].dropped, 0);
}

#[tokio::test]
async fn draining_wakes_a_waiting_source() {
    let h = backpressure_hub(2);
    let a = h
        .attach("", Selection::default(), false, Peer::default())
        .unwrap();
    h.publish((0..2).map(|n| data(1, n)));
    let waiter = {
        let h = h.clone();
        tokio::spawn(async move { h.wait_for_room(1).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "the queue is full");
    assert_eq!(payloads(&batch(&h, &a)), ["0", "1"]);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the drain")
        .unwrap();
}

#[test]
fn named_subscriptions_expire_after_retention_and_ephemeral_ones_at_once() {
    let h = Hub::new(HubConfig {
        retention: Duration::from_secs(60),
        ..HubConfig::default()
    });
    let named = h
        .attach("p", Selection::default(), false, Peer::default())
        .unwrap();
    let eph = h
        .attach("", Selection::default(), false, Peer::default())
        .unwrap();
    h.detach(&eph);
    assert_eq!(h.info().subscribers.len(), 1);
    h.detach(&named);
    h.expire(Instant::now());
    assert_eq!(h.info().subscribers.len(), 1, "still within retention");
    h.expire(Instant::now() + Duration::from_secs(61));
    assert!(h.info().subscribers.is_empty());
    assert!(h.selection().borrow().is_none());
}
