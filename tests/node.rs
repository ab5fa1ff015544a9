//! Integration tests that spawn the real `kvs` binary: connection handling
//! (every keep-alive client answered, the connection bound), storage full,
//! bad internal requests, and a clean stop on SIGTERM.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{call, read_reply, read_reply_from, TestNode};

#[test]
fn sixty_four_keep_alive_clients_arriving_at_once_are_all_answered() {
    let node = TestNode::start(&[]);
    const CLIENTS: usize = 64;
    let start = Arc::new(Barrier::new(CLIENTS));
    // Every client keeps its connection open until all have been answered,
    // so none can free a thread for another by hanging up.
    let hold = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addr, start, hold) = (node.addr.clone(), start.clone(), hold.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let req = format!("GET /kv/nothing/{i} HTTP/1.1\r\nHost: t\r\n\r\n");
                s.write_all(req.as_bytes()).unwrap();
                let first = read_reply(&mut s).map(|r| r.status).unwrap_or(0);
                // The same keep-alive connection serves a second request.
                s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                    .unwrap();
                let second = read_reply(&mut s).map(|r| r.status).unwrap_or(0);
                hold.wait();
                (first, second)
            })
        })
        .collect();
    let results: Vec<(u16, u16)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let answered = results.iter().filter(|r| **r == (404, 200)).count();
    assert_eq!(answered, CLIENTS, "answers: {results:?}");
}

#[test]
fn pipelined_requests_on_many_connections_are_answered_in_order() {
    let node = TestNode::start(&["--http-threads", "2"]);
    const CLIENTS: usize = 32;
    const ROUNDS: usize = 10;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = node.addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                // All requests in one write: a PUT, a GET of what it wrote,
                // a GET of a missing key, round after round.
                let mut all = String::new();
                for r in 0..ROUNDS {
                    let body = format!("{{\"c\":{c},\"r\":{r}}}");
                    all += &format!(
                        "PUT /kv/pipe/{c}/{r} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    all += &format!("GET /kv/pipe/{c}/{r} HTTP/1.1\r\nHost: t\r\n\r\n");
                    all += &format!("GET /kv/none/{c}/{r} HTTP/1.1\r\nHost: t\r\n\r\n");
                }
                s.write_all(all.as_bytes()).unwrap();
                let mut reader = BufReader::new(s);
                let mut got = Vec::new();
                for r in 0..ROUNDS {
                    let put = read_reply_from(&mut reader).unwrap();
                    let get = read_reply_from(&mut reader).unwrap();
                    let missing = read_reply_from(&mut reader).unwrap();
                    let want = format!("{{\"c\":{c},\"r\":{r}}}");
                    got.push((
                        put.status,
                        get.status,
                        String::from_utf8_lossy(&get.body) == want,
                        missing.status,
                    ));
                }
                got
            })
        })
        .collect();
    for (c, t) in threads.into_iter().enumerate() {
        let got = t.join().unwrap();
        for (r, g) in got.iter().enumerate() {
            assert_eq!(*g, (200, 200, true, 404), "client {c}, round {r}: {got:?}");
        }
    }
}

#[test]
fn connections_beyond_the_bound_wait_for_a_free_slot() {
    let node = TestNode::start(&["--max-connections", "2"]);
    // Two connections in the middle of a request (a body still to come)
    // hold both slots.
    let busy: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut s = TcpStream::connect(&node.addr).unwrap();
            let head =
                format!("PUT /kv/slow/{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12");
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    // A third client is not served while they are open...
    let mut third = TcpStream::connect(&node.addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(
        read_reply(&mut third).is_err(),
        "served beyond max_connections"
    );
    // ...and is served as soon as one closes.
    drop(busy);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(read_reply(&mut third).unwrap().status, 200);
}

#[test]
fn idle_connections_make_room_for_new_clients() {
    let node = TestNode::start(&["--max-connections", "2"]);
    let mut idle: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&node.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert_eq!(read_reply(&mut s).unwrap().status, 200);
            s
        })
        .collect();
    // Both slots are held by kept-alive connections with nothing to say:
    // the one idle the longest is closed, and the new client is served.
    let mut third = TcpStream::connect(&node.addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut third).unwrap().status, 200);
    let mut buf = [0u8; 16];
    let closed = idle
        .iter_mut()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            match s.read(&mut buf) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .filter(|closed| *closed)
        .count();
    assert!(closed >= 1, "no idle connection was closed");
}

#[test]
fn a_full_map_answers_507_and_keeps_serving() {
    let node = TestNode::start(&["--map-size-mb", "2", "--max-value-bytes", "200000"]);
    let value = format!("\"{}\"", "x".repeat(150_000));
    let mut stored = Vec::new();
    let mut full = None;
    for i in 0..100 {
        let r = call(&node.addr, "PUT", &format!("/kv/big/{i}"), value.as_bytes());
        match r.status {
            200 => stored.push(i),
            507 => {
                full = Some(r);
                break;
            }
            other => panic!(
                "unexpected status {other}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    let full = full.expect("the map never filled up");
    assert!(String::from_utf8_lossy(&full.body).contains("\"error\""));
    assert!(!stored.is_empty());
    for i in &stored {
        let got = call(&node.addr, "GET", &format!("/kv/big/{i}"), b"").body;
        assert!(got == value.as_bytes(), "big/{i}: {} bytes back", got.len());
    }
    assert_eq!(call(&node.addr, "GET", "/health", b"").status, 200);
    // A small write either fits and is stored, or is refused and leaves
    // nothing behind: never half written.
    let small = call(&node.addr, "PUT", "/kv/small", b"1").status;
    let read = call(&node.addr, "GET", "/kv/small", b"");
    match small {
        200 => assert_eq!((read.status, read.body.as_slice()), (200, &b"1"[..])),
        507 => assert_eq!(read.status, 404, "a refused write left a value"),
        other => panic!("a small write on a full map answered {other}"),
    }
}

#[test]
fn malformed_internal_requests_are_400_and_change_nothing() {
    let node = TestNode::start(&[]);
    for (path, body) in [
        ("/internal/push", &b"not json"[..]),
        ("/internal/push", br#"{"from":"x","versions":[{"key":"a/../b","uuid":"00000000-0000-4000-8000-000000000000","timestamp":1,"data":"1"}]}"#),
        ("/internal/push", br#"{"from":"x","versions":[{"key":"a","uuid":"nope","timestamp":1,"data":"1"}]}"#),
        ("/internal/push", br#"{"from":"x","versions":[{"key":"a","uuid":"00000000-0000-4000-8000-000000000000","timestamp":1,"data":"{"}]}"#),
        ("/members/join", br#"{"id":"","address":"x"}"#),
        ("/members/join", br#"{"id":"p","address":"nohost","joined_timestamp":1,"generation":1,"heartbeat":1}"#),
        ("/internal/gossip", br#"{"members":[{"id":"p","address":"1.2.3.4:0","joined_timestamp":1,"generation":1,"heartbeat":1}]}"#),
        ("/internal/tree/children", br#"{"level":9,"nodes":[0]}"#),
        ("/internal/tree/children", br#"{"level":1,"nodes":[99999]}"#),
        ("/internal/fetch", br#"{"keys":5}"#),
    ] {
        let r = call(&node.addr, "POST", path, body);
        assert_eq!(r.status, 400, "{path} {}: {}", String::from_utf8_lossy(body), String::from_utf8_lossy(&r.body));
        assert!(String::from_utf8_lossy(&r.body).starts_with("{\"error\":"));
        assert!(r.headers.iter().any(|(k, v)| k == "content-type" && v == "application/json"));
    }
    assert_eq!(call(&node.addr, "GET", "/kv/a", b"").status, 404);
    let members = String::from_utf8(call(&node.addr, "GET", "/members/", b"").body).unwrap();
    assert_eq!(members.matches("\"id\"").count(), 1, "{members}");
}

#[test]
fn sigterm_finishes_requests_closes_lmdb_and_exits_zero() {
    let mut node = TestNode::start(&[]);
    assert_eq!(call(&node.addr, "PUT", "/kv/k", b"{\"v\":1}").status, 200);
    let status = Command::new("kill")
        .args(["-TERM", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(code) = node.child.as_mut().unwrap().try_wait().unwrap() {
            break code;
        }
        assert!(Instant::now() < deadline, "no exit within 15 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "exit status {code:?}");
    // Give the log reader a moment to drain the pipe.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node.log().contains("LMDB closed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = node.log();
    for step in [
        "SIGTERM received",
        "no longer accepting",
        "in-flight requests answered",
        "LMDB closed",
    ] {
        assert!(log.contains(step), "missing {step:?} in:\n{log}");
    }
}
