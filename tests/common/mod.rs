//! Helpers shared by the integration tests: a node started from the real
//! binary (killed, its directory removed and its log printed on failure)
//! and a minimal HTTP/1.1 client over a raw socket.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A node started for one test; killed, and its directory removed, on drop.
/// If the test fails, its log is printed.
pub struct TestNode {
    pub child: Option<Child>,
    pub addr: String,
    dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl TestNode {
    pub fn start(extra: &[&str]) -> TestNode {
        Self::start_with(&[], extra)
    }

    /// Starts the node through a wrapper command (e.g. `prlimit ...`).
    pub fn start_with(wrapper: &[&str], extra: &[&str]) -> TestNode {
        let dir = std::env::temp_dir().join(format!(
            "kvs-it-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = env!("CARGO_BIN_EXE_kvs");
        let mut command = match wrapper.split_first() {
            None => Command::new(bin),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
        };
        let mut child = command
            .current_dir(&dir)
            .args(["--port", "0", "--node-id", "it", "--data-dir", "data"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvs");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("node did not start; log:\n{}", log.lock().unwrap()));
        TestNode {
            child: Some(child),
            addr,
            dir,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// True while the process started for this test still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// The node's resident memory in MiB, from /proc.
    pub fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb / 1024
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- node log -----\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response: status, headers (lower-cased names), body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Reads one HTTP/1.1 response with a Content-Length.
pub fn read_reply(stream: &mut TcpStream) -> std::io::Result<Reply> {
    read_reply_from(&mut BufReader::new(stream))
}

/// Reads one response from a buffered reader that is kept between
/// responses (pipelined replies on one connection).
#[allow(dead_code)]
pub fn read_reply_from(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// One request on a fresh connection.
pub fn call(addr: &str, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_reply(&mut s).unwrap()
}

/// Attack threads that run until stopped (joined on drop).
pub struct Attack {
    stop: Arc<AtomicBool>,
    /// Attackers that have connected and sent their first bytes.
    started: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Attack {
    pub fn new() -> Attack {
        Attack {
            stop: Arc::new(AtomicBool::new(false)),
            started: Arc::new(AtomicUsize::new(0)),
            threads: Vec::new(),
        }
    }

    /// Runs `f` on a thread until `stop`; `f` gets the stop flag and a
    /// counter to bump once it has started attacking.
    pub fn spawn(&mut self, f: impl FnOnce(&AtomicBool, &AtomicUsize) + Send + 'static) {
        let (stop, started) = (self.stop.clone(), self.started.clone());
        self.threads
            .push(std::thread::spawn(move || f(&stop, &started)));
    }

    /// Waits until every attacker has started (at most 10 s).
    pub fn wait_started(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.started.load(Ordering::Relaxed) < self.threads.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "the attack did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends `bytes` one at a time with a pause between pieces, until stopped
/// or the node closes the connection.
pub fn trickle(s: &mut impl Write, bytes: &[u8], pause: Duration, stop: &AtomicBool) {
    for piece in bytes.chunks(1) {
        if stop.load(Ordering::Relaxed) || s.write_all(piece).and_then(|()| s.flush()).is_err() {
            return;
        }
        std::thread::sleep(pause);
    }
}
