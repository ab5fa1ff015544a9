//! `GET /backup`: a consistent, compacted copy of the database, streamed.
//!
//! LMDB's own compacting copy runs in a thread of its own from one read
//! transaction and writes into a pipe; the response streams the other end
//! to the client (chunked: the compacted size is not known in advance), so
//! the copy needs no disk space and writes nothing to the node's disk, and
//! the writer keeps committing meanwhile. The read transaction lasts as
//! long as the download: pages freed meanwhile are reused only after it,
//! so a slow download lets the data file grow by what is written in the
//! meantime (bounded by the download's deadline). A copy that fails ends
//! the response without its last chunk, which clients report as an error.
//! The download runs on a thread of its own, not on an HTTP worker. One
//! backup runs at a time; another request meanwhile gets `503`.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tiny_http::{Method, Request, Response, StatusCode};

use super::{allow, check_client_auth, forbidden, header, require_admin, send_error, ApiError};
use crate::clock;
use crate::metrics::{Metrics, Route};
use crate::node::Node;
use crate::store::StoreError;

/// A download gets at least this long, and one more second per MiB.
const MIN_DOWNLOAD_TIME: Duration = Duration::from_secs(60);
const MAX_DOWNLOAD_TIME: Duration = Duration::from_secs(6 * 3600);

/// Set while a backup is being made or sent.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Clears `RUNNING` when the backup ends, however it ends.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// `GET /backup`: checks, starts the copy and hands the response to a
/// thread of its own, so the download (minutes or hours for a large
/// store) holds no HTTP worker.
pub fn backup(node: &Node, rq: Request, started: Instant) {
    let prepared = allow(&rq, "GET", &[Method::Get])
        .and_then(|()| check_client_auth(node, &rq))
        .and_then(|access| {
            require_admin(node, &access, "/backup")?;
            if !access.may_read_all("") {
                return Err(forbidden(
                    node,
                    "/backup needs a token that may read every key".into(),
                ));
            }
            if RUNNING.swap(true, Ordering::AcqRel) {
                return Err(ApiError::Busy(
                    "a backup is already running on this node; retry when it is done".into(),
                ));
            }
            let running = Running;
            let (reader, writer) = std::io::pipe()
                .map_err(|e| ApiError::Internal(format!("backup: cannot make a pipe: {e}")))?;
            Ok((reader, writer, running))
        });
    let (reader, writer, running) = match prepared {
        Ok(p) => p,
        Err(e) => return send_error(node, rq, e, Route::Backup, started),
    };
    // The sending thread starts first and waits for its download, so that
    // a failure to start it can still be answered.
    let (hand_over, handed) = mpsc::sync_channel::<Download>(1);
    let metrics = node.metrics.clone();
    let sender = std::thread::Builder::new()
        .name("backup-send".into())
        .spawn(move || {
            if let Ok(download) = handed.recv() {
                download.send(&metrics);
            }
        });
    if let Err(e) = sender {
        let e = ApiError::Internal(format!("backup: cannot start a thread to send it: {e}"));
        return send_error(node, rq, e, Route::Backup, started);
    }
    let store = node.store.clone();
    let copier = std::thread::Builder::new()
        .name("backup".into())
        .spawn(move || {
            let mut out = File::from(OwnedFd::from(writer));
            store.backup_to(&mut out)
        });
    let copier = match copier {
        Ok(c) => c,
        Err(e) => {
            let e = ApiError::Internal(format!("backup: cannot start the copy: {e}"));
            return send_error(node, rq, e, Route::Backup, started);
        }
    };
    // A size-based deadline cannot be known up front: allow the longest.
    let size = node.store.data_file_bytes().unwrap_or(0);
    let secs = (size / (1024 * 1024)).min(MAX_DOWNLOAD_TIME.as_secs());
    rq.allow_response_time((MIN_DOWNLOAD_TIME + Duration::from_secs(secs)).min(MAX_DOWNLOAD_TIME));
    let name = format!(
        "attachment; filename=\"kvs-{}-{}.mdb\"",
        node.config.node_id,
        clock::real_now_ms()
    );
    let headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Disposition", name.as_str()),
        ("Server", concat!("kvs/", env!("CARGO_PKG_VERSION"))),
    ]
    .into_iter()
    .filter_map(|(k, v)| header(k, v))
    .collect();
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: reader,
        bytes: bytes.clone(),
    };
    let download = Download {
        rq,
        response: Response::new(StatusCode(200), headers, counted, None, None),
        copier,
        bytes,
        started,
        _running: running,
    };
    // The thread waits on this channel alone; it cannot be gone before
    // taking the one download it was started for.
    if hand_over.send(download).is_err() {
        log::error!("backup: the sending thread ended before its download");
    }
}

/// A backup under way: the request, its response streaming the pipe, and
/// the copy writing into it.
struct Download {
    rq: Request,
    response: Response<Counted<std::io::PipeReader>>,
    copier: JoinHandle<Result<(), StoreError>>,
    bytes: Arc<AtomicU64>,
    started: Instant,
    /// Held until the download ends: one backup at a time.
    _running: Running,
}

impl Download {
    /// Streams the backup to the client, then reports how it went.
    fn send(self, metrics: &Metrics) {
        let sent = self.rq.respond(self.response);
        let copied = self.copier.join().unwrap_or_else(|_| {
            Err(StoreError::from(std::io::Error::other(
                "the copy thread failed",
            )))
        });
        let n = self.bytes.load(Ordering::Relaxed);
        match (copied, sent) {
            (Ok(()), Ok(())) => log::info!(
                "backup: {n} bytes sent in {} ms",
                self.started.elapsed().as_millis()
            ),
            (Err(e), _) => log::warn!("backup failed after {n} bytes: {e}"),
            (Ok(()), Err(e)) => {
                log::warn!("backup: the client stopped reading after {n} bytes: {e}")
            }
        }
        metrics.observe(Route::Backup, 200, self.started.elapsed());
    }
}

/// A reader that counts what went through it.
struct Counted<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
