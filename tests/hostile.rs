//! Hostile clients against the real binary, one test per attack that once
//! stopped a node (README, "Hostile clients"). Each test checks that while
//! or after the attack a fresh client is served, the data is unchanged, the
//! memory stays bounded and the process is the one that was started.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{call, read_reply, trickle, Attack, TestNode};

/// A fresh client must be answered within this long while an attack runs:
/// generous for a loaded 2-core machine running other tests beside this
/// one (a node that is locked out never answers, so any bound tells the two
/// apart).
const FRESH_CLIENT_DEADLINE: Duration = Duration::from_secs(5);

/// Sends one request on a new connection and returns everything the node
/// answers until it closes the connection (or `wait` passes).
fn raw(addr: &str, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    // The node may close before taking all of a refused request.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status of the first response in `text` (0 if none).
fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Asserts that a fresh client gets `/health` within the deadline, and
/// that the node is still the process that was started.
fn assert_serving(node: &mut TestNode) {
    let started = Instant::now();
    let mut s = TcpStream::connect(&node.addr).unwrap();
    s.set_read_timeout(Some(FRESH_CLIENT_DEADLINE)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut s);
    assert!(
        matches!(reply, Ok(ref r) if r.status == 200),
        "a fresh client was not served within {FRESH_CLIENT_DEADLINE:?} (waited {:?})",
        started.elapsed()
    );
    assert!(node.alive(), "the node process is gone");
}

fn put(node: &TestNode, key: &str, value: &str) {
    let r = call(&node.addr, "PUT", &format!("/kv/{key}"), value.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn assert_value(node: &TestNode, key: &str, value: &str) {
    let r = call(&node.addr, "GET", &format!("/kv/{key}"), b"");
    assert_eq!(r.status, 200, "{key} is gone");
    assert_eq!(String::from_utf8_lossy(&r.body), value, "{key} changed");
}

#[test]
fn unsupported_http_versions_get_505_and_never_stop_the_node() {
    let mut node = TestNode::start(&["--max-connections", "20"]);
    for _ in 0..25 {
        let text = raw(
            &node.addr,
            b"GET /health HTTP/2.0\r\n\r\n",
            Duration::from_secs(5),
        );
        assert_eq!(status_of(&text), 505, "{text}");
        assert!(text.contains("{\"error\":"), "{text}");
    }
    // The HTTP/2 connection preface is refused the same way.
    let text = raw(
        &node.addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&text), 505, "{text}");
    assert_serving(&mut node);
}

#[test]
fn endless_lines_and_many_headers_are_cut_off_with_bounded_memory() {
    let mut node = TestNode::start(&[]);
    put(&node, "keep", "{\"a\":1}");
    let junk = vec![b'a'; 20 * 1024 * 1024];
    let cases: [(&[u8], u16); 4] = [
        (b"GET /health HTTP/1.1\r\nX-Long: ", 431),
        (b"GET /", 414),
        (
            b"PUT /kv/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=",
            400,
        ),
        (b"GET /health HTTP/1.1\r\n", 431),
    ];
    for (i, (start, want)) in cases.iter().enumerate() {
        let mut request = start.to_vec();
        if i == 3 {
            // many small headers instead of one long line
            for n in 0..200_000 {
                request.extend_from_slice(format!("X-{n}: y\r\n").as_bytes());
            }
        } else {
            request.extend_from_slice(&junk);
        }
        let text = raw(&node.addr, &request, Duration::from_secs(5));
        assert_eq!(status_of(&text), *want, "case {i}: {text}");
        assert!(text.contains("Connection: close"), "case {i}: {text}");
    }
    let rss = node.rss_mib();
    assert!(rss < 100, "RSS grew to {rss} MiB");
    assert_value(&node, "keep", "{\"a\":1}");
    assert_serving(&mut node);
}

#[test]
fn slow_and_endless_bodies_hold_no_worker() {
    let mut node = TestNode::start(&[
        "--http-threads",
        "2",
        "--client-tokens",
        "[secret-token]",
        "--cluster-secret",
        "cluster-secret",
    ]);
    let auth = "Authorization: Bearer secret-token\r\n";
    let addr = node.addr.clone();
    let authed = |method: &str, path: &str, body: &[u8]| {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        read_reply(&mut s).unwrap()
    };
    assert_eq!(authed("PUT", "/kv/keep", b"{\"a\":1}").status, 200);

    let mut attack = Attack::new();
    let heads: Vec<String> = vec![
        // slow bodies with credentials, to a key and to /health
        format!("PUT /kv/slow HTTP/1.1\r\n{auth}Content-Length: 100000\r\n\r\n\"aaaaaaaa"),
        "POST /health HTTP/1.1\r\nContent-Length: 60000\r\n\r\n".to_string(),
        // an endless chunked body, and chunk extensions
        format!("PUT /kv/slow HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"),
        "POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a=b;c=d;".to_string(),
        // without credentials, to endpoints that refuse them
        "PUT /kv/slow HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n".to_string(),
        "POST /members/leave HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n".to_string(),
        "POST /internal/push HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n".to_string(),
    ];
    for i in 0..14 {
        let head = heads[i % heads.len()].clone();
        let addr = node.addr.clone();
        attack.spawn(move |stop, started| {
            let Ok(mut s) = TcpStream::connect(&addr) else {
                return;
            };
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            started.fetch_add(1, Ordering::Relaxed);
            let body: Vec<u8> = if head.contains("chunked") {
                b"1\r\na\r\n".repeat(100_000)
            } else {
                vec![b'a'; 100_000]
            };
            trickle(&mut s, &body, Duration::from_millis(50), stop);
        });
    }
    attack.wait_started();
    for _ in 0..3 {
        assert_serving(&mut node);
        let r = authed("PUT", "/kv/fresh", b"{\"b\":2}");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // Without credentials, a body is refused before it is read.
    let text = raw(
        &node.addr,
        b"PUT /kv/keep HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&text), 401, "{text}");
    drop(attack);
    assert_eq!(
        String::from_utf8_lossy(&authed("GET", "/kv/keep", b"").body),
        "{\"a\":1}"
    );
    assert!(node.alive());
}

#[test]
fn a_body_that_does_not_arrive_in_time_gets_408() {
    let mut node = TestNode::start(&["--header-timeout", "1"]);
    // A head that stops half-way is answered 408 once the head timeout
    // passes, and the connection is closed.
    let started = Instant::now();
    let text = raw(
        &node.addr,
        b"GET /health HTTP/1.1\r\nHost: t",
        Duration::from_secs(10),
    );
    assert_eq!(status_of(&text), 408, "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_serving(&mut node);
}

#[test]
fn slowloris_does_not_lock_out_fresh_clients() {
    // What keeps fresh clients served is not the head timeout (10 s) but
    // that a connection still sending its head may be closed to make room.
    let mut node = TestNode::start(&["--max-connections", "20"]);
    put(&node, "keep", "{\"a\":1}");
    let mut attack = Attack::new();
    for _ in 0..60 {
        let addr = node.addr.clone();
        attack.spawn(move |stop, started| {
            // Reconnect whenever the node closes the connection.
            let mut first = true;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(&addr) else {
                    return;
                };
                if s.write_all(b"G").is_err() {
                    continue;
                }
                if first {
                    started.fetch_add(1, Ordering::Relaxed);
                    first = false;
                }
                let head = b"ET /health HTTP/1.1\r\nX-Slow: ".repeat(100);
                trickle(&mut s, &head, Duration::from_millis(200), stop);
            }
        });
    }
    attack.wait_started();
    for _ in 0..3 {
        assert_serving(&mut node);
    }
    assert_value(&node, "keep", "{\"a\":1}");
}

#[test]
fn a_flood_of_idle_connections_under_a_low_descriptor_limit() {
    // With 128 descriptors, 512 connections cannot fit: the node says so
    // and serves fewer. The flood holds far more connections than fit.
    let mut node = TestNode::start_with(&["prlimit", "--nofile=128:128", "--"], &[]);
    put(&node, "keep", "{\"a\":1}");
    let idle: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(&node.addr).ok())
        .collect();
    assert!(idle.len() >= 100, "only {} connections opened", idle.len());
    assert_serving(&mut node);
    assert_value(&node, "keep", "{\"a\":1}");
    drop(idle);
    assert_serving(&mut node);
    assert!(
        node.log().contains("does not fit in the open-file limit"),
        "no warning about the descriptor limit"
    );
}

#[test]
fn ambiguous_framing_is_refused_and_nothing_is_smuggled() {
    let mut node = TestNode::start(&[]);
    put(&node, "victim", "{\"a\":1}");
    let hidden = "DELETE /kv/victim HTTP/1.1\r\nHost: t\r\n\r\n";
    let cases = [
        format!(
            "PUT /kv/x HTTP/1.1\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
            5 + hidden.len()
        ),
        format!(
            "PUT /kv/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{hidden}"
        ),
        format!("PUT /kv/x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n\"a\"{hidden}"),
        format!("PUT /kv/x HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n\"a\"{hidden}"),
        format!("PUT /kv/x HTTP/1.1\r\nContent-Length: +3\r\n\r\n\"a\"{hidden}"),
        format!("PUT /kv/x HTTP/1.1\r\nContent-Length : 3\r\n\r\n\"a\"{hidden}"),
        format!("PUT /kv/x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{hidden}"),
        format!("PUT /kv/x HTTP/1.1\r\nX: a\r\n folded\r\nContent-Length: 3\r\n\r\n\"a\"{hidden}"),
    ];
    for case in &cases {
        let text = raw(&node.addr, case.as_bytes(), Duration::from_secs(5));
        let status = status_of(&text);
        assert!(status == 400 || status == 501, "{case:?}: {text}");
        assert_eq!(text.matches("HTTP/1.1").count(), 1, "{case:?}: {text}");
    }
    assert_value(&node, "victim", "{\"a\":1}");
    assert_eq!(call(&node.addr, "GET", "/kv/x", b"").status, 404);
    assert_serving(&mut node);
}

#[test]
fn bodies_to_refused_requests_are_not_held() {
    let mut node = TestNode::start(&[
        "--client-tokens",
        "[secret-token]",
        "--cluster-secret",
        "cluster-secret",
    ]);
    // 300 connections each announcing a 1 MiB body without credentials:
    // each is answered 401 from its head alone.
    let mut conns: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(&node.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"PUT /kv/x HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let body = vec![b'a'; 256 * 1024];
    for s in &mut conns {
        let _ = s.write_all(&body);
    }
    for s in &mut conns {
        assert_eq!(read_reply(s).map(|r| r.status).unwrap_or(0), 401);
    }
    let rss = node.rss_mib();
    assert!(rss < 100, "RSS {rss} MiB");
    drop(conns);
    assert_serving(&mut node);
}

#[test]
fn values_must_be_utf8_and_peers_cannot_store_otherwise() {
    let mut node = TestNode::start(&[]);
    let r = call(&node.addr, "PUT", "/kv/bad", b"{\"a\": \"\xff\xfe\"}");
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("UTF-8"));
    assert_eq!(call(&node.addr, "GET", "/kv/bad", b"").status, 404);
    // A push from a peer with the same bytes is refused too.
    let push = format!(
        "{{\"from\":\"x\",\"versions\":[{{\"key\":\"bad\",\"uuid\":\"{}\",\"timestamp\":5,\"data\":\"\\\"",
        "6a1f9a2e-3f1c-4d3a-9b7e-2f4c8e9d0a11"
    );
    let mut body = push.into_bytes();
    body.extend_from_slice(b"\xff\\\"\"}]}");
    let r = call(&node.addr, "POST", "/internal/push", &body);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(call(&node.addr, "GET", "/kv/bad", b"").status, 404);
    assert_serving(&mut node);
}

/// Threads of the node process, from /proc.
fn threads_of(node: &TestNode) -> usize {
    std::fs::read_to_string(format!("/proc/{}/status", node.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

fn fake_members(n: usize) -> Vec<u8> {
    let members: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{\"id\":\"fake{i}\",\"address\":\"127.0.0.1:{}\",\"joined_timestamp\":1,\"generation\":1,\"heartbeat\":1}}",
                20000 + i
            )
        })
        .collect();
    format!("{{\"members\":[{}]}}", members.join(",")).into_bytes()
}

#[test]
fn strangers_cannot_grow_the_member_table_without_bound() {
    let mut node = TestNode::start(&["--max-members", "300"]);
    let r = call(&node.addr, "POST", "/internal/gossip", &fake_members(1000));
    assert_eq!(r.status, 200);
    let members = call(&node.addr, "GET", "/members/", b"");
    let listed = String::from_utf8_lossy(&members.body)
        .matches("\"id\":")
        .count();
    assert!(listed <= 300, "{listed} members listed");
    assert!(listed > 100, "only {listed} members listed");
    assert!(
        node.log().contains("member table full"),
        "no warning logged"
    );
    // Writes now push to every listed member: the push threads are a small
    // pool whatever the number of members, and memory stays bounded.
    let value = format!("\"{}\"", "v".repeat(500_000));
    for i in 0..3 {
        put(&node, &format!("big/{i}"), &value);
    }
    let threads = threads_of(&node);
    assert!(threads < 80, "{threads} threads for {listed} members");
    let rss = node.rss_mib();
    assert!(rss < 300, "RSS {rss} MiB");
    assert_serving(&mut node);
}

#[test]
fn with_a_cluster_secret_strangers_cannot_touch_membership() {
    let mut node = TestNode::start(&["--cluster-secret", "s3cret"]);
    let r = call(&node.addr, "POST", "/internal/gossip", &fake_members(10));
    assert_eq!(r.status, 401);
    let r = call(
        &node.addr,
        "POST",
        "/members/join",
        b"{\"id\":\"x\",\"address\":\"127.0.0.1:9\",\"joined_timestamp\":1,\"generation\":1,\"heartbeat\":1}",
    );
    assert_eq!(r.status, 401);
    let members = call(&node.addr, "GET", "/members/", b"");
    let listed = String::from_utf8_lossy(&members.body)
        .matches("\"id\":")
        .count();
    assert_eq!(listed, 1, "only the node itself");
    assert_serving(&mut node);
}

/// A client that asks for a backup and never reads it holds one worker and
/// the one backup slot, nothing else: fresh clients are served, a second
/// backup gets 503 with Retry-After, and a blocking query that waits does
/// not take a worker either.
#[test]
fn a_backup_nobody_reads_and_waiting_queries_hold_no_one_up() {
    let mut node = TestNode::start(&["--http-threads", "2"]);
    // 20 MB of values: more than the socket buffers can swallow, so the
    // backup cannot finish while nobody reads it.
    let filler = "x".repeat(4000);
    for batch in 0..10 {
        let ops: Vec<String> = (0..500)
            .map(|i| {
                format!("{{\"op\":\"put\",\"key\":\"fill/{batch}/{i}\",\"value\":\"{filler}\"}}")
            })
            .collect();
        let r = call(
            &node.addr,
            "POST",
            "/batch",
            format!("[{}]", ops.join(",")).as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // Ask for a backup and read nothing of it.
    let mut stalled = TcpStream::connect(&node.addr).unwrap();
    stalled
        .write_all(b"GET /backup HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        let r = call(&node.addr, "GET", "/backup", b"");
        if r.status != 200 || Instant::now() > deadline {
            break r;
        }
        // The stalled one had not started yet; this one was served whole.
    };
    assert_eq!(second.status, 503, "a second backup while one is running");
    assert!(
        second
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("retry-after")),
        "no Retry-After"
    );
    // Waiting queries: more of them than there are workers.
    let index = call(&node.addr, "GET", "/kv/w/0", b"")
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-kvs-index"))
        .map(|(_, v)| v.clone())
        .expect("X-Kvs-Index");
    let waiting: Vec<TcpStream> = (0..10)
        .map(|i| {
            let mut s = TcpStream::connect(&node.addr).unwrap();
            let rq = format!("GET /kv/w/{i}?index={index}&wait=60s HTTP/1.1\r\nHost: t\r\n\r\n");
            s.write_all(rq.as_bytes()).unwrap();
            s
        })
        .collect();
    assert_serving(&mut node);
    put(&node, "after", "1");
    assert_value(&node, "after", "1");
    assert_value(&node, "fill/9/499", &format!("\"{filler}\""));
    assert!(node.rss_mib() < 100, "RSS {} MiB", node.rss_mib());
    drop(waiting);
    drop(stalled);
}

#[test]
fn clients_that_never_read_their_replies_hold_no_handler() {
    let mut node = TestNode::start(&["--http-threads", "1"]);
    // A 900 KB value: a few replies fill any socket buffer.
    let big = format!("\"{}\"", "y".repeat(900 * 1024));
    put(&node, "big", &big);
    let mut attack = Attack::new();
    for _ in 0..4 {
        let addr = node.addr.clone();
        attack.spawn(move |stop, started| {
            let Ok(mut s) = TcpStream::connect(&addr) else {
                return;
            };
            // Pipelined GETs of the big value, and never a read.
            let rq = b"GET /kv/big HTTP/1.1\r\nHost: t\r\n\r\n".repeat(50);
            if s.write_all(&rq).is_err() {
                return;
            }
            started.fetch_add(1, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
    attack.wait_started();
    for i in 0..3 {
        assert_serving(&mut node);
        put(&node, &format!("fresh/{i}"), "{\"ok\":true}");
        assert_value(&node, &format!("fresh/{i}"), "{\"ok\":true}");
    }
    drop(attack);
    assert!(node.alive());
}
