use std::io::Result as IoResult;
use std::io::{Error as IoError, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

/// kvs patch: a stream over an accepted socket that both halves of a
/// connection use through a shared reference (a TLS session). Reads and
/// writes of one connection never overlap (one request at a time is read,
/// then answered), but they may come from different threads. Timeouts
/// and shutdown act on the socket underneath.
pub trait SharedStream: Send + Sync {
    fn read(&self, buf: &mut [u8]) -> IoResult<usize>;
    fn write(&self, buf: &[u8]) -> IoResult<usize>;
    fn flush(&self) -> IoResult<()>;
    /// Ends the stream before the socket's write half is shut down (TLS
    /// sends its close_notify alert).
    fn close(&self) {}
}

/// kvs patch: an accepted socket, as an upgrade (`ConnectionLimits::upgrade`)
/// reads and writes it.
#[derive(Clone)]
pub struct RawSocket(pub(crate) Arc<Connection>);

impl RawSocket {
    /// Reads without taking the bytes (the first bytes tell TLS from HTTP).
    pub fn peek(&self, buf: &mut [u8]) -> IoResult<usize> {
        match &*self.0 {
            Connection::Tcp(s) => s.peek(buf),
            #[cfg(unix)]
            Connection::Unix(_) => Err(IoError::new(ErrorKind::Unsupported, "peek on a Unix socket")),
        }
    }

    pub fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> IoResult<()> {
        self.0.set_timeouts(read, write)
    }

    pub fn shutdown(&self) {
        self.0.shutdown(Shutdown::Both).ok();
    }

    /// Sends small writes at once (TLS writes a handshake flight, then
    /// session tickets, then the answer: Nagle's algorithm would hold the
    /// later ones for the peer's delayed acknowledgement).
    pub fn set_nodelay(&self) -> IoResult<()> {
        match &*self.0 {
            Connection::Tcp(s) => s.set_nodelay(true),
            #[cfg(unix)]
            Connection::Unix(_) => Ok(()),
        }
    }
}

impl Read for &RawSocket {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for &RawSocket {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        Ok(())
    }
}

pub(crate) enum Stream {
    // kvs patch: shared, not cloned: one file descriptor per connection
    Http(Arc<Connection>),
    // kvs patch: the socket and the stream an upgrade made of it
    Wrapped(Arc<Connection>, Arc<dyn SharedStream>),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Clone for Stream {
    fn clone(&self) -> Self {
        match self {
            Stream::Http(tcp_stream) => Stream::Http(tcp_stream.clone()),
            Stream::Wrapped(raw, s) => Stream::Wrapped(raw.clone(), s.clone()),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Stream::Https(ssl_stream.clone()),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(Arc::new(tcp_stream))
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            Stream::Wrapped(..) => true,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) | Stream::Wrapped(tcp_stream, _) => match **tcp_stream {
                Connection::Tcp(ref s) => s.peer_addr().map(Some),
                #[cfg(unix)]
                Connection::Unix(_) => Ok(None),
            },
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) | Stream::Wrapped(tcp_stream, _) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }

    fn set_timeout(&self, half: Half, t: Duration) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) | Stream::Wrapped(tcp_stream, _) => match half {
                Half::Read => tcp_stream.set_read_timeout(Some(t)),
                Half::Write => tcp_stream.set_write_timeout(Some(t)),
            },
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Ok(()),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => (&**tcp_stream).read(buf),
            Stream::Wrapped(_, s) => s.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => (&**tcp_stream).write(buf),
            Stream::Wrapped(_, s) => s.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => (&**tcp_stream).flush(),
            Stream::Wrapped(_, s) => s.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

/// kvs patch: a deadline for one half of a connection, shared between the
/// connection's thread (which sets it) and whoever reads or writes that
/// half. A socket timeout alone bounds one read or write, so a client that
/// sends or takes one byte at a time could hold a connection for ever; a
/// deadline bounds the whole request head, body or response.
pub(crate) struct Deadline {
    /// Milliseconds since `epoch()`, or `NO_DEADLINE` / `ARMED`.
    at: AtomicU64,
    /// With `ARMED`, the first read or write sets the deadline this far
    /// ahead (a response's clock starts when its first byte is written,
    /// not while the request waits for an answer).
    armed_for: Duration,
}

const NO_DEADLINE: u64 = u64::MAX;
const ARMED: u64 = u64::MAX - 1;

/// The socket timeout may run past the deadline by at most this much: the
/// timeout is not set again for every read of a busy connection.
const TIMEOUT_SLACK: Duration = Duration::from_millis(100);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Deadline {
    pub(crate) fn new(armed_for: Duration) -> Arc<Deadline> {
        Arc::new(Deadline {
            at: AtomicU64::new(NO_DEADLINE),
            armed_for,
        })
    }

    /// The deadline is `d` from now.
    pub(crate) fn set_in(&self, d: Duration) {
        let at = now_ms().saturating_add(d.as_millis() as u64).min(ARMED - 1);
        self.at.store(at, Ordering::Release);
    }

    /// The next read or write starts the clock.
    pub(crate) fn arm(&self) {
        self.at.store(ARMED, Ordering::Release);
    }

    /// True once the deadline has passed.
    pub(crate) fn passed(&self) -> bool {
        let at = self.at.load(Ordering::Acquire);
        at < ARMED && now_ms() >= at
    }

    /// The time left (`None`: no deadline), or `TimedOut` once it passed.
    fn remaining(&self) -> IoResult<Option<Duration>> {
        let mut at = self.at.load(Ordering::Acquire);
        if at == ARMED {
            self.set_in(self.armed_for);
            at = self.at.load(Ordering::Acquire);
        }
        if at == NO_DEADLINE {
            return Ok(None);
        }
        let now = now_ms();
        if now >= at {
            return Err(IoError::new(ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(Some(Duration::from_millis(at - now)))
    }
}

#[derive(Clone, Copy)]
enum Half {
    Read,
    Write,
}

/// kvs patch: closes a connection from another thread (the accept loop
/// closes the longest-waiting idle connection when every slot is taken).
#[derive(Clone)]
pub(crate) struct Closer(Stream);

impl Closer {
    pub(crate) fn of(socket: &Arc<Connection>) -> Closer {
        Closer(Stream::Http(socket.clone()))
    }

    pub(crate) fn close(&self) {
        self.0.clone().shutdown(Shutdown::Both).ok();
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    // kvs patch: this half's deadline, the socket timeout used when no
    // deadline is set, and the timeout last set on the socket
    deadline: Arc<Deadline>,
    fallback: Duration,
    applied: Option<Duration>,
}

impl RefinedTcpStream {
    /// kvs patch: the read half and the write half, each with its deadline
    /// and the timeout it uses when that deadline is not set.
    pub(crate) fn new<S>(
        stream: S,
        read: (Arc<Deadline>, Duration),
        write: (Arc<Deadline>, Duration),
    ) -> (RefinedTcpStream, RefinedTcpStream)
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let (read_stream, write_stream) = (stream.clone(), stream);

        let read = RefinedTcpStream {
            stream: read_stream,
            close_read: true,
            close_write: false,
            deadline: read.0,
            fallback: read.1,
            applied: None,
        };

        let write = RefinedTcpStream {
            stream: write_stream,
            close_read: false,
            close_write: true,
            deadline: write.0,
            fallback: write.1,
            applied: None,
        };

        (read, write)
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// kvs patch: a handle that can close this connection from elsewhere.
    pub(crate) fn closer(&self) -> Closer {
        Closer(self.stream.clone())
    }

    /// kvs patch: sends FIN; the peer sees the end of the response.
    pub(crate) fn shutdown_write(&mut self) {
        self.stream.shutdown(Shutdown::Write).ok();
    }

    /// kvs patch: sets the socket timeout so that one blocking call ends by
    /// the deadline (within `TIMEOUT_SLACK`); returns whether a deadline
    /// is set.
    fn apply_deadline(&mut self, half: Half) -> IoResult<bool> {
        let remaining = self.deadline.remaining()?;
        let want = remaining
            .unwrap_or(self.fallback)
            .max(Duration::from_millis(1));
        let stale = match self.applied {
            None => true,
            Some(a) if remaining.is_none() => a != want,
            Some(a) => a > want + TIMEOUT_SLACK,
        };
        if stale {
            self.stream.set_timeout(half, want)?;
            self.applied = Some(want);
        }
        Ok(remaining.is_some())
    }
}

/// A socket timeout shows as `WouldBlock` (EAGAIN) or `TimedOut`.
fn timed_out(e: &IoError) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            // kvs patch: a wrapped stream ends first
            if let Stream::Wrapped(_, s) = &self.stream {
                s.close();
            }
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        loop {
            let has_deadline = self.apply_deadline(Half::Read)?;
            match self.stream.read(buf) {
                // the socket timeout is shorter than the deadline: go on
                Err(ref e) if has_deadline && timed_out(e) => continue,
                Err(ref e) if timed_out(e) => {
                    return Err(IoError::new(ErrorKind::TimedOut, "read timed out"))
                }
                other => return other,
            }
        }
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        loop {
            let has_deadline = self.apply_deadline(Half::Write)?;
            match self.stream.write(buf) {
                Err(ref e) if has_deadline && timed_out(e) => continue,
                Err(ref e) if timed_out(e) => {
                    return Err(IoError::new(ErrorKind::TimedOut, "write timed out"))
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        // kvs patch: a wrapped stream's flush writes (what TLS still
        // holds), within the deadline like a write
        loop {
            let has_deadline = self.apply_deadline(Half::Write)?;
            match self.stream.flush() {
                Err(ref e) if has_deadline && timed_out(e) => continue,
                Err(ref e) if timed_out(e) => {
                    return Err(IoError::new(ErrorKind::TimedOut, "write timed out"))
                }
                other => return other,
            }
        }
    }
}
