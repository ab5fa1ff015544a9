//! The hostile-client attacks again, over TLS (DESIGN §11 "Bounded"):
//! handshakes that stall or carry garbage, slowloris after the handshake,
//! header bombs and smuggling inside the TLS stream, and clients that
//! never read their replies. Each checks that a fresh TLS client is
//! served while the attack runs, and that the node stays up and small.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use common::{read_reply_from, trickle, Attack, Reply, TestNode};

const FRESH_CLIENT_DEADLINE: Duration = Duration::from_secs(5);

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A node speaking HTTPS with a certificate from a CA made for the test.
struct TlsNode {
    node: TestNode,
    client: Arc<ClientConfig>,
    dir: PathBuf,
}

impl TlsNode {
    fn start(extra: &[&str]) -> TlsNode {
        let dir = std::env::temp_dir().join(format!(
            "kvs-tls-it-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = env!("CARGO_BIN_EXE_kvs");
        let d = dir.to_str().unwrap();
        for args in [
            vec!["tls", "ca", "--dir", d],
            vec!["tls", "cert", "node", "--dir", d],
        ] {
            let out = Command::new(bin).args(&args).output().unwrap();
            assert!(out.status.success(), "kvs {args:?}: {out:?}");
        }
        let (cert, key) = (dir.join("node.pem"), dir.join("node-key.pem"));
        let mut args = vec![
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let node = TestNode::start(&args);
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        TlsNode {
            node,
            client: Arc::new(client),
            dir,
        }
    }

    /// A TLS connection, handshake done.
    fn connect(&self) -> std::io::Result<Tls> {
        let tcp = TcpStream::connect(&self.node.addr)?;
        tcp.set_read_timeout(Some(FRESH_CLIENT_DEADLINE))?;
        tcp.set_write_timeout(Some(FRESH_CLIENT_DEADLINE))?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn =
            ClientConnection::new(self.client.clone(), name).map_err(std::io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(tls)
    }

    /// One request on a new TLS connection.
    fn call(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<Reply> {
        let mut tls = self.connect()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes())?;
        tls.write_all(body)?;
        tls.flush()?;
        read_reply_from(&mut BufReader::new(tls))
    }

    /// A fresh TLS client gets `/health` within the deadline; the node is
    /// the process that was started.
    fn assert_serving(&mut self) {
        let started = Instant::now();
        let reply = self.call("GET", "/health", b"");
        assert!(
            matches!(reply, Ok(ref r) if r.status == 200),
            "a fresh TLS client was not served within {FRESH_CLIENT_DEADLINE:?} (waited {:?}): {:?}",
            started.elapsed(),
            reply.err()
        );
        assert!(self.node.alive(), "the node process is gone");
    }

    fn put(&self, key: &str, value: &str) {
        let r = self
            .call("PUT", &format!("/kv/{key}"), value.as_bytes())
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }

    fn assert_value(&self, key: &str, value: &str) {
        let r = self.call("GET", &format!("/kv/{key}"), b"").unwrap();
        assert_eq!(r.status, 200, "{key} is gone");
        assert_eq!(String::from_utf8_lossy(&r.body), value, "{key} changed");
    }

    fn assert_no_panic(&self) {
        let log = self.node.log();
        assert!(!log.to_lowercase().contains("panic"), "{log}");
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn stalled_and_garbage_handshakes_do_not_lock_out_fresh_clients() {
    let mut node = TlsNode::start(&["--max-connections", "20"]);
    node.put("keep", "{\"a\":1}");
    // What each attacker sends first, then trickles: a ClientHello cut
    // short, an SSLv2 hello, an SSLv3 record, bytes that are no TLS at all.
    let openings: [&[u8]; 4] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x10",
        b"\x16\x03\x00\x00\x2d\x01\x00\x00\x29\x03\x00",
        b"\x00\xff\xfe\xfd\x00\x00\x00\x00",
    ];
    let mut attack = Attack::new();
    for i in 0..60 {
        let addr = node.node.addr.clone();
        let opening = openings[i % openings.len()];
        attack.spawn(move |stop, started| {
            let mut first = true;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(&addr) else {
                    return;
                };
                if s.write_all(opening).is_err() {
                    continue;
                }
                if first {
                    started.fetch_add(1, Ordering::Relaxed);
                    first = false;
                }
                trickle(&mut s, &[0x01; 4096], Duration::from_millis(200), stop);
            }
        });
    }
    attack.wait_started();
    for _ in 0..3 {
        node.assert_serving();
    }
    node.assert_value("keep", "{\"a\":1}");
    let rss = node.node.rss_mib();
    assert!(rss < 100, "RSS grew to {rss} MiB");
    drop(attack);
    node.assert_no_panic();
}

#[test]
fn slowloris_inside_tls_does_not_lock_out_fresh_clients() {
    let mut node = TlsNode::start(&["--max-connections", "20"]);
    node.put("keep", "{\"a\":1}");
    let client = node.client.clone();
    let addr = node.node.addr.clone();
    let mut attack = Attack::new();
    for _ in 0..40 {
        let (client, addr) = (client.clone(), addr.clone());
        attack.spawn(move |stop, started| {
            let mut first = true;
            while !stop.load(Ordering::Relaxed) {
                let Ok(tcp) = TcpStream::connect(&addr) else {
                    return;
                };
                let name = ServerName::try_from("127.0.0.1").unwrap();
                let Ok(conn) = ClientConnection::new(client.clone(), name) else {
                    return;
                };
                let mut tls = StreamOwned::new(conn, tcp);
                if tls.write_all(b"G").and_then(|()| tls.flush()).is_err() {
                    continue;
                }
                if first {
                    started.fetch_add(1, Ordering::Relaxed);
                    first = false;
                }
                let head = b"ET /health HTTP/1.1\r\nX-Slow: ".repeat(100);
                trickle(&mut tls, &head, Duration::from_millis(200), stop);
            }
        });
    }
    attack.wait_started();
    for _ in 0..3 {
        node.assert_serving();
    }
    node.assert_value("keep", "{\"a\":1}");
    drop(attack);
    node.assert_no_panic();
}

/// Sends `request` on a TLS connection and reads until the node closes.
/// The node may stop reading (and close) before it has all of a refused
/// request: what it answered is read from the socket even though the rest
/// of the request could not be sent.
fn tls_raw(node: &TlsNode, request: &[u8]) -> String {
    let mut tls = node.connect().unwrap();
    let _ = tls.write_all(request).and_then(|()| tls.flush());
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tls.conn.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        match tls.conn.read_tls(&mut tls.sock) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if tls.conn.process_new_packets().is_err() {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn header_bombs_and_smuggling_inside_tls_are_refused() {
    let mut node = TlsNode::start(&[]);
    node.put("victim", "{\"a\":1}");
    let junk = vec![b'a'; 4 * 1024 * 1024];
    let mut long = b"GET /health HTTP/1.1\r\nX-Long: ".to_vec();
    long.extend_from_slice(&junk);
    let text = tls_raw(&node, &long);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    let mut many = b"GET /health HTTP/1.1\r\n".to_vec();
    for n in 0..50_000 {
        many.extend_from_slice(format!("X-{n}: y\r\n").as_bytes());
    }
    let text = tls_raw(&node, &many);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    let smuggle = b"PUT /kv/victim HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\
Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nPUT /kv/victim HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"b\":666}";
    let text = tls_raw(&node, smuggle);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        !text.contains("HTTP/1.1 200"),
        "a smuggled request was served: {text}"
    );
    node.assert_value("victim", "{\"a\":1}");
    let rss = node.node.rss_mib();
    assert!(rss < 100, "RSS grew to {rss} MiB");
    node.assert_serving();
    node.assert_no_panic();
}

#[test]
fn tls_clients_that_never_read_their_replies_hold_no_handler() {
    let mut node = TlsNode::start(&["--http-threads", "1"]);
    let big = format!("\"{}\"", "y".repeat(900 * 1024));
    node.put("big", &big);
    let client = node.client.clone();
    let addr = node.node.addr.clone();
    let mut attack = Attack::new();
    for _ in 0..4 {
        let (client, addr) = (client.clone(), addr.clone());
        attack.spawn(move |stop, started| {
            let Ok(tcp) = TcpStream::connect(&addr) else {
                return;
            };
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let Ok(conn) = ClientConnection::new(client, name) else {
                return;
            };
            let mut tls = StreamOwned::new(conn, tcp);
            // Pipelined GETs of the big value, and never a read.
            let rq = b"GET /kv/big HTTP/1.1\r\nHost: t\r\n\r\n".repeat(50);
            if tls.write_all(&rq).and_then(|()| tls.flush()).is_err() {
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
        node.assert_serving();
        node.put(&format!("fresh/{i}"), "{\"ok\":true}");
        node.assert_value(&format!("fresh/{i}"), "{\"ok\":true}");
    }
    drop(attack);
    node.assert_no_panic();
}

#[test]
fn over_tls_unsupported_versions_get_505_and_a_stalled_head_408() {
    let mut node = TlsNode::start(&["--max-connections", "20", "--header-timeout", "1"]);
    for _ in 0..25 {
        let text = tls_raw(&node, b"GET /health HTTP/2.0\r\n\r\n");
        assert!(text.starts_with("HTTP/1.1 505"), "{text}");
        assert!(text.contains("{\"error\":"), "{text}");
    }
    // A head that stops half-way inside the TLS stream: 408 once the head
    // timeout passes, then the connection is closed.
    let started = Instant::now();
    let text = tls_raw(&node, b"GET /health HTTP/1.1\r\nHost: t");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A handshake that never finishes is closed by the same deadline.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(&node.node.addr).unwrap();
    stalled.write_all(b"\x16\x03\x01\x02\x00\x01").unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = matches!(stalled.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "a stalled handshake was not closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a stalled handshake stayed open {:?}",
        started.elapsed()
    );
    node.assert_serving();
    node.assert_no_panic();
}
