//! `GET /backup`: a consistent, compacted copy of the database, streamed.
//!
//! LMDB copies the database from one read transaction into a file in the
//! data directory (unlinked as soon as it is created, so nothing is left
//! behind, whatever happens); the writer keeps committing meanwhile. Then
//! the file is streamed to the client, which holds no transaction: a slow
//! download costs a worker thread and disk space, never the writer.
//! One backup runs at a time.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tiny_http::{Method, Request, Response, StatusCode};

use super::{allow, check_client_auth, header, send_error, ApiError};
use crate::clock;
use crate::metrics::Route;
use crate::node::Node;

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

/// `GET /backup`.
pub fn backup(node: &Node, rq: Request, started: Instant) {
    let prepared = allow(&rq, "GET", &[Method::Get])
        .and_then(|()| check_client_auth(node, &rq))
        .and_then(|()| {
            if RUNNING.swap(true, Ordering::AcqRel) {
                return Err(ApiError::Busy(
                    "a backup is already running on this node; retry when it is done".into(),
                ));
            }
            let running = Running;
            let copy = make_copy(node)?;
            Ok((copy, running))
        });
    let ((file, len), _running) = match prepared {
        Ok(p) => p,
        Err(e) => return send_error(node, rq, e, Route::Other, started),
    };
    let took = started.elapsed();
    let secs = (len / (1024 * 1024)).min(MAX_DOWNLOAD_TIME.as_secs());
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
    let response = Response::new(StatusCode(200), headers, file, Some(len as usize), None)
        .with_chunked_threshold(usize::MAX);
    match rq.respond(response) {
        Ok(()) => log::info!(
            "backup: {len} bytes copied in {} ms, sent in {} ms",
            took.as_millis(),
            (started.elapsed() - took).as_millis()
        ),
        Err(e) => log::warn!("backup: {len} bytes copied, not all sent: {e}"),
    }
    node.metrics.observe(Route::Other, 200, started.elapsed());
}

/// Copies the database into an unlinked file of the data directory;
/// returns it at its start, with its length.
fn make_copy(node: &Node) -> Result<(File, u64), ApiError> {
    let path = node.config.data_dir.join(format!(
        "backup-{}-{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let io = |what: &str, e: std::io::Error| {
        if e.raw_os_error() == Some(28) {
            ApiError::NoSpace
        } else {
            ApiError::Internal(format!("backup: cannot {what} {}: {e}", path.display()))
        }
    };
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io("create", e))?;
    // The open descriptor keeps the data; no name is left behind.
    std::fs::remove_file(&path).map_err(|e| io("unlink", e))?;
    node.store.backup_to(&mut file)?;
    let len = file.seek(SeekFrom::End(0)).map_err(|e| io("measure", e))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| io("rewind", e))?;
    Ok((file, len))
}
