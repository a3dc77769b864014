//! Linking Go processes by goroutine (`stitch/link.rs`, rule 3 of client spans):
//! the loader names the goroutine each data event moved bytes for and its creator.

use super::link::Unlinked;
use super::tests::{IN, OUT};
use super::tests_link::{by_path, get, ids, Script, OK};
use super::*;

use crate::model::LinkKind;

/// Goroutine ids as the loader gives them (top bit set).
const ACCEPT: u64 = 1 << 63 | 1;
const SERVE_A: u64 = 1 << 63 | 2;
const SERVE_B: u64 = 1 << 63 | 3;
const WORKER: u64 = 1 << 63 | 4;

/// curl (pid 1) → a Go server (pid 10) whose goroutine `serve` (created by
/// `ACCEPT`) reads the request; the client request to pid 20 is written for
/// `client` (the loader's goroutine pair); threads change on purpose.
fn go_two_tier(serve: u64, client: (u64, u64)) -> Script {
    let mut s = Script::default();
    s.process(1, "/usr/bin/curl", "")
        .process(10, "/srv/goblog", "")
        .process(20, "/usr/bin/python3.11", "")
        .conn(1, 100, Role::Client, 40000, 8443)
        .conn(10, 200, Role::Server, 8443, 40000)
        .data(1, 1, 100, OUT, &get("/front"))
        .go(10, 11, (serve, ACCEPT), 200, IN, &get("/front"))
        .conn(10, 201, Role::Client, 40001, 9000)
        .conn(20, 300, Role::Server, 9000, 40001)
        .go(10, 13, client, 201, OUT, &get("/down"))
        .data(20, 21, 300, IN, &get("/down"))
        .data(20, 21, 300, OUT, OK)
        .go(10, 14, (1 << 63 | 99, ACCEPT), 201, IN, OK)
        .go(10, 12, (serve, ACCEPT), 200, OUT, OK)
        .data(1, 1, 100, IN, OK);
    s
}

#[test]
fn a_go_client_call_is_a_child_of_the_request_on_its_goroutine() {
    let (txs, stitcher) = go_two_tier(SERVE_A, (SERVE_A, ACCEPT)).run();
    assert_eq!(txs.len(), 4, "{txs:#?}");
    let curl = ids(by_path(&txs, 1, "/front"));
    let front = ids(by_path(&txs, 10, "/front"));
    let call = ids(by_path(&txs, 10, "/down"));
    let down = ids(by_path(&txs, 20, "/down"));
    assert_eq!(front.parent_span_id, curl.span_id);
    assert_eq!(
        (call.parent_span_id, call.trace_id, call.link),
        (front.span_id, curl.trace_id, LinkKind::Goroutine)
    );
    assert_eq!(
        (down.parent_span_id, down.link),
        (call.span_id, LinkKind::Connection)
    );
    let l = stitcher.link_stats();
    assert_eq!((l.client_by_goroutine, l.client_by_thread), (1, 0));
    assert_eq!(stitcher.linker.entries(), 0);
}

#[test]
fn a_goroutine_started_by_the_handler_links_through_its_creator() {
    let (txs, stitcher) = go_two_tier(SERVE_A, (WORKER, SERVE_A)).run();
    let front = ids(by_path(&txs, 10, "/front"));
    let call = ids(by_path(&txs, 10, "/down"));
    assert_eq!(
        (call.parent_span_id, call.link),
        (front.span_id, LinkKind::Goroutine)
    );
    assert_eq!(stitcher.link_stats().client_by_goroutine, 1);
}

#[test]
fn a_call_for_another_goroutine_or_an_unknown_writer_is_not_linked() {
    // Written for a goroutine that serves nothing, created by one that serves
    // nothing either (a background job).
    let (txs, stitcher) = go_two_tier(SERVE_A, (SERVE_B, ACCEPT)).run();
    assert_eq!(ids(by_path(&txs, 10, "/down")).link, LinkKind::Root);
    // (curl's own request is the other one.)
    assert_eq!(stitcher.link_stats().unlinked(Unlinked::NoServerRequest), 2);
    // The writer's caller unknown: no goroutine; Go is not linked by thread.
    let (txs, stitcher) = go_two_tier(SERVE_A, (0, 0)).run();
    assert_eq!(ids(by_path(&txs, 10, "/down")).link, LinkKind::Root);
    assert_eq!(stitcher.link_stats().unlinked(Unlinked::Runtime), 1);
}

#[test]
fn two_goroutines_serving_at_once_each_get_their_own_calls() {
    let mut s = Script::default();
    s.process(10, "/srv/goblog", "")
        .conn(10, 200, Role::Server, 8443, 40000)
        .conn(10, 210, Role::Server, 8443, 40010)
        // Both requests read, on one thread, by two goroutines.
        .go(10, 11, (SERVE_A, ACCEPT), 200, IN, &get("/a"))
        .go(10, 11, (SERVE_B, ACCEPT), 210, IN, &get("/b"))
        .conn(10, 201, Role::Client, 40001, 9000)
        .conn(10, 211, Role::Client, 40011, 9000)
        // B's call first, then A's; written on one thread.
        .go(10, 12, (SERVE_B, ACCEPT), 211, OUT, &get("/b-down"))
        .go(10, 12, (SERVE_A, ACCEPT), 201, OUT, &get("/a-down"))
        .go(10, 12, (SERVE_A, ACCEPT), 201, IN, OK)
        .go(10, 12, (SERVE_B, ACCEPT), 211, IN, OK)
        .go(10, 11, (SERVE_A, ACCEPT), 200, OUT, OK)
        .go(10, 11, (SERVE_B, ACCEPT), 210, OUT, OK);
    let (txs, stitcher) = s.run();
    assert_eq!(txs.len(), 4, "{txs:#?}");
    for (server, call) in [("/a", "/a-down"), ("/b", "/b-down")] {
        let server = ids(by_path(&txs, 10, server));
        let call = ids(by_path(&txs, 10, call));
        assert_eq!(
            (call.parent_span_id, call.trace_id, call.link),
            (server.span_id, server.trace_id, LinkKind::Goroutine)
        );
    }
    // One thread read two connections' requests at once: a thread would be an
    // event loop, a goroutine is not.
    assert_eq!(stitcher.link_stats().multiplexing_processes, 0);
    assert_eq!(stitcher.linker.entries(), 0);
}

#[test]
fn two_requests_in_flight_on_one_goroutine_are_ambiguous() {
    let mut s = Script::default();
    s.process(10, "/srv/goblog", "")
        .conn(10, 200, Role::Server, 8443, 40000)
        .go(10, 11, (SERVE_A, ACCEPT), 200, IN, &get("/one"))
        .go(10, 11, (SERVE_A, ACCEPT), 200, IN, &get("/two"))
        .conn(10, 201, Role::Client, 40001, 9000)
        .go(10, 12, (WORKER, SERVE_A), 201, OUT, &get("/down"))
        .go(10, 12, (WORKER, SERVE_A), 201, IN, OK);
    let (txs, stitcher) = s.run();
    assert_eq!(ids(by_path(&txs, 10, "/down")).link, LinkKind::Root);
    assert_eq!(stitcher.link_stats().unlinked(Unlinked::Ambiguous), 1);
}
