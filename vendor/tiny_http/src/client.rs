// kvs patch: this file is rewritten. The released version read lines and
// headers without bounds, parsed `Content-Length` and `Transfer-Encoding`
// leniently (a request could hide another in its body), answered an
// unsupported HTTP version through a writer that waited for the request's
// own, and left bodies to be read (and drained) by the application's worker
// threads. Here one connection's thread reads each request whole (head
// within size bounds and a deadline, framing per RFC 9112, the body within
// a deadline and a shared memory budget, after the application admitted the
// head) and hands it out only then; malformed or refused requests are
// answered with a JSON error and the connection is closed.

use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ascii::AsciiString;

use crate::common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
use crate::guard::{BodyBudget, ConnectionLimits, Refusal, Reservation, Slot};
use crate::util::refined_tcp_stream::Deadline;
use crate::util::RefinedTcpStream;
use crate::Request;

/// How long a refusal may take to write, and how long the rest of a
/// refused request is read and thrown away before closing.
const REFUSAL_WRITE_TIME: Duration = Duration::from_secs(5);
const LINGER_TIME: Duration = Duration::from_secs(1);
/// Empty lines tolerated before a request line (RFC 9112 §2.2).
const MAX_LEADING_EMPTY_LINES: usize = 4;
/// A chunked body's framing (size lines and trailers) may take this many
/// bytes beyond the body's own size.
const CHUNK_OVERHEAD_BYTES: usize = 64 * 1024;
/// The budget for a chunked body grows by at least this much at a time.
const CHUNK_RESERVE_STEP: usize = 64 * 1024;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: Option<SocketAddr>,

    // the read half, buffered
    source: BufReader<RefinedTcpStream>,

    // kvs patch: the write half, shared by the requests' writers; one
    // request at a time is read and answered (see lib.rs), so the writers
    // of one connection never overlap and need no sequencing
    sink: SharedWriter,

    read_deadline: Arc<Deadline>,
    write_deadline: Arc<Deadline>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true until the first request has been read
    first_request: bool,

    // true if the connection goes through SSL
    secure: bool,

    // kvs patch: the client presented a verified certificate
    client_certified: bool,

    limits: ConnectionLimits,
    budget: Arc<BodyBudget>,
    slot: Slot,
}

/// kvs patch: a handle on a connection's buffered write half.
#[derive(Clone)]
pub(crate) struct SharedWriter(Arc<Mutex<BufWriter<RefinedTcpStream>>>);

impl SharedWriter {
    fn lock(&self) -> std::sync::MutexGuard<'_, BufWriter<RefinedTcpStream>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.lock().write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.lock().flush()
    }
}

/// Why no request was read.
enum Failure {
    /// Close without an answer: the client went away, or stayed idle.
    Close,
    /// Answer with this status and message, then close.
    Answer(u16, String),
    /// Answer with the application's refusal, then close.
    Refused(Refusal),
}

impl Failure {
    fn answer(status: u16, msg: impl Into<String>) -> Failure {
        Failure::Answer(status, msg.into())
    }
}

/// How the body of a request is delimited (RFC 9112 §6.3).
enum Framing {
    Length(u64),
    Chunked,
}

/// Why a line could not be read.
enum LineError {
    TooLong,
    Eof,
    Io(std::io::Error),
    BareCr,
}

impl ClientConnection {
    /// kvs patch: takes the two halves of the connection, their deadlines,
    /// its slot and the shared body budget.
    pub(crate) fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        deadlines: (Arc<Deadline>, Arc<Deadline>),
        limits: ConnectionLimits,
        budget: Arc<BodyBudget>,
        slot: Slot,
        client_certified: bool,
    ) -> ClientConnection {
        // kvs patch: a client that already went away has no address; that
        // is not a reason to panic
        let remote_addr = read_socket.peer_addr().ok().flatten();
        let secure = read_socket.secure();
        let (read_deadline, write_deadline) = deadlines;
        // a new connection must send its first request head in time: the
        // deadline was set at the accept (an upgrade's handshake counts)

        ClientConnection {
            source: BufReader::with_capacity(8 * 1024, read_socket),
            sink: SharedWriter(Arc::new(Mutex::new(BufWriter::with_capacity(8 * 1024, write_socket)))),
            remote_addr,
            read_deadline,
            write_deadline,
            no_more_requests: false,
            first_request: true,
            secure,
            client_certified,
            limits,
            budget,
            slot,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads one line, ended by LF or CRLF, of at most `max` bytes; every
    /// byte read, line end included, is taken from `budget`.
    fn read_line(&mut self, max: usize, budget: &mut usize) -> Result<Vec<u8>, LineError> {
        let mut line = Vec::new();
        loop {
            let buf = match self.source.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(LineError::Io(e)),
            };
            if buf.is_empty() {
                return Err(LineError::Eof);
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if take > *budget || line.len() + take > max + 2 {
                return Err(LineError::TooLong);
            }
            *budget -= take;
            line.extend_from_slice(&buf[..take]);
            self.source.consume(take);
            if done {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > max {
                    return Err(LineError::TooLong);
                }
                if line.contains(&b'\r') {
                    return Err(LineError::BareCr);
                }
                return Ok(line);
            }
        }
    }

    /// Reads a request head, admits it, reads its body.
    fn read(&mut self) -> Result<Request, Failure> {
        // Until its head is complete (a whole head normally comes in one
        // packet), the connection may be closed to make room for others.
        self.slot.waiting();
        if !self.first_request {
            self.read_deadline.set_in(self.limits.idle_timeout);
        }
        loop {
            match self.source.fill_buf() {
                Ok([]) => return Err(Failure::Close),
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(Failure::Close),
            }
        }
        if !self.first_request {
            self.read_deadline.set_in(self.limits.head_timeout);
        }
        self.first_request = false;

        let (max_line, max_header, max_head) = (
            self.limits.max_request_line,
            self.limits.max_header_line,
            self.limits.max_head_bytes,
        );
        let too_long = |status: u16| {
            if status == 414 {
                Failure::answer(
                    414,
                    format!("the request line is longer than {max_line} bytes"),
                )
            } else {
                Failure::answer(
                    431,
                    format!(
                        "request headers over the limit ({max_header} bytes a line, \
                         {max_head} bytes in all)"
                    ),
                )
            }
        };
        let head_error = |e: LineError, status: u16| match e {
            LineError::TooLong => too_long(status),
            LineError::BareCr => Failure::answer(400, "a line of the request head holds a bare CR"),
            LineError::Io(ref io) if io.kind() == ErrorKind::TimedOut => {
                Failure::answer(408, "the request head did not arrive in time")
            }
            LineError::Eof | LineError::Io(_) => Failure::Close,
        };

        let mut head_budget = self.limits.max_head_bytes;
        let mut line = Vec::new();
        for _ in 0..=MAX_LEADING_EMPTY_LINES {
            line = self
                .read_line(self.limits.max_request_line, &mut head_budget)
                .map_err(|e| head_error(e, 414))?;
            if !line.is_empty() {
                break;
            }
        }
        let (method, path, version) = parse_request_line(&line)?;

        let mut headers = Vec::new();
        loop {
            let line = self
                .read_line(self.limits.max_header_line, &mut head_budget)
                .map_err(|e| head_error(e, 431))?;
            if line.is_empty() {
                break;
            }
            if headers.len() >= self.limits.max_headers {
                return Err(Failure::answer(
                    431,
                    format!("more than {} header lines", self.limits.max_headers),
                ));
            }
            headers.push(parse_header(&line)?);
        }

        self.slot.busy();
        let framing = framing(&headers, &version)?;
        let max_body = match &self.limits.admission {
            Some(admit) => {
                admit(&method, &path, &headers, self.client_certified).map_err(Failure::Refused)?
            }
            None => self.limits.default_body_limit,
        };
        if let Some(Framing::Length(n)) = framing {
            if n > max_body as u64 {
                return Err(Failure::answer(
                    413,
                    format!("body is larger than the limit of {max_body} bytes"),
                ));
            }
        }

        // the writer for this request's answer (and a `100 Continue`)
        let mut writer = self.sink.clone();
        if let Some(expect) = header_value(&headers, "Expect") {
            if !expect.eq_ignore_ascii_case("100-continue") {
                return Err(Failure::answer(
                    417,
                    "only Expect: 100-continue is understood",
                ));
            }
            let has_body = !matches!(framing, None | Some(Framing::Length(0)));
            if has_body && version == HTTPVersion(1, 1) {
                self.write_deadline.set_in(REFUSAL_WRITE_TIME);
                writer
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .and_then(|_| writer.flush())
                    .map_err(|_| Failure::Close)?;
            }
        }

        self.read_deadline.set_in(self.limits.body_timeout);
        let mut reservation = self.budget.empty();
        let body = match framing {
            None => Vec::new(),
            Some(Framing::Length(n)) => self.read_sized_body(n as usize, &mut reservation)?,
            Some(Framing::Chunked) => self.read_chunked_body(max_body, &mut reservation)?,
        };
        self.read_deadline.set_in(self.limits.idle_timeout);

        // the answer's clock starts with its first byte
        self.write_deadline.arm();
        let mut request = crate::request::new_request(
            self.secure,
            method,
            path,
            version,
            headers,
            self.remote_addr,
            body,
            writer,
            reservation,
        );
        request.client_certified = self.client_certified;
        request.response_deadline = Some(self.write_deadline.clone());
        Ok(request)
    }

    fn body_error(e: std::io::Error) -> Failure {
        if e.kind() == ErrorKind::TimedOut {
            Failure::answer(408, "the request body did not arrive in time")
        } else {
            Failure::Close
        }
    }

    fn reserve(&self, reservation: &mut Reservation, bytes: usize) -> Result<(), Failure> {
        if reservation.grow(bytes, self.limits.budget_wait) {
            Ok(())
        } else {
            Err(Failure::Refused(Refusal {
                status: 503,
                headers: vec![("Retry-After".into(), "1".into())],
                body: json_error("too many request bodies in progress; retry shortly"),
            }))
        }
    }

    fn read_sized_body(
        &mut self,
        n: usize,
        reservation: &mut Reservation,
    ) -> Result<Vec<u8>, Failure> {
        if n == 0 {
            return Ok(Vec::new());
        }
        self.reserve(reservation, n)?;
        let mut body = Vec::with_capacity(n);
        (&mut self.source)
            .take(n as u64)
            .read_to_end(&mut body)
            .map_err(Self::body_error)?;
        if body.len() != n {
            // the client went away before sending the whole body
            return Err(Failure::Close);
        }
        Ok(body)
    }

    /// Decodes a chunked body (RFC 9112 §7.1) of at most `max` bytes.
    fn read_chunked_body(
        &mut self,
        max: usize,
        reservation: &mut Reservation,
    ) -> Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        let mut overhead = 0usize;
        let line_error = |e: LineError| match e {
            LineError::TooLong => Failure::answer(400, "a chunk-size line is over the limit"),
            LineError::BareCr => Failure::answer(400, "a chunk-size line holds a bare CR"),
            LineError::Io(io) => Self::body_error(io),
            LineError::Eof => Failure::Close,
        };
        loop {
            let mut line_budget = (CHUNK_OVERHEAD_BYTES + body.len()).saturating_sub(overhead);
            let before = line_budget;
            let line = self
                .read_line(self.limits.max_chunk_line, &mut line_budget)
                .map_err(line_error)?;
            overhead += before - line_budget;
            let size = parse_chunk_size(&line)?;
            if size == 0 {
                break;
            }
            if size > (max - body.len()) as u64 {
                return Err(Failure::answer(
                    413,
                    format!("body is larger than the limit of {max} bytes"),
                ));
            }
            let size = size as usize;
            if body.len() + size > reservation.bytes() {
                let need = body.len() + size - reservation.bytes();
                let step = CHUNK_RESERVE_STEP.min(max - reservation.bytes());
                self.reserve(reservation, need.max(step))?;
            }
            let start = body.len();
            (&mut self.source)
                .take(size as u64)
                .read_to_end(&mut body)
                .map_err(Self::body_error)?;
            if body.len() - start != size {
                return Err(Failure::Close);
            }
            let mut crlf_budget = 2;
            match self.read_line(0, &mut crlf_budget) {
                Ok(_) => {}
                Err(LineError::Io(io)) => return Err(Self::body_error(io)),
                Err(LineError::Eof) => return Err(Failure::Close),
                Err(_) => return Err(Failure::answer(400, "a chunk is longer than its size")),
            }
            overhead += 2 - crlf_budget;
        }
        // trailer fields: read within the header limits and ignored
        let mut trailer_budget = self.limits.max_head_bytes;
        let mut count = 0;
        loop {
            let line = self
                .read_line(self.limits.max_header_line, &mut trailer_budget)
                .map_err(|e| match e {
                    LineError::TooLong => Failure::answer(431, "trailer fields over the limit"),
                    other => line_error(other),
                })?;
            if line.is_empty() {
                break;
            }
            count += 1;
            if count > self.limits.max_headers {
                return Err(Failure::answer(431, "too many trailer fields"));
            }
        }
        Ok(body)
    }

    /// Answers a request that will not be served, then closes: the
    /// connection's position in the byte stream is no longer known, or
    /// the client must not go on sending.
    fn refuse(&mut self, status: u16, headers: &[(String, String)], body: &[u8]) {
        self.write_deadline.set_in(REFUSAL_WRITE_TIME);
        {
            let mut writer = self.sink.clone();
            let mut head = format!(
                "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                status,
                StatusCode(status).default_reason_phrase(),
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = writer
                .write_all(head.as_bytes())
                .and_then(|_| writer.write_all(body))
                .and_then(|_| writer.flush());
        }
        self.linger();
    }

    /// Sends FIN, then reads and drops what the client still sends for a
    /// short while, so that closing does not reset the connection before
    /// the client has read the answer.
    fn linger(&mut self) {
        self.source.get_mut().shutdown_write();
        self.read_deadline.set_in(LINGER_TIME);
        let mut drained = self.source.buffer().len();
        let buffered = drained;
        self.source.consume(buffered);
        let mut buf = [0u8; 8192];
        while drained <= self.limits.drain_limit {
            match self.source.get_mut().read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        let rq = match self.read() {
            Ok(rq) => rq,
            Err(Failure::Close) => return None,
            Err(Failure::Answer(status, msg)) => {
                log::debug!("refused a request: {} {}", status, msg);
                self.refuse(status, &[], &json_error(&msg));
                return None;
            }
            Err(Failure::Refused(r)) => {
                self.refuse(r.status, &r.headers, &r.body);
                return None;
            }
        };

        // updating the status of the connection
        let lowercase = header_value(rq.headers(), "Connection").map(|h| h.to_ascii_lowercase());

        match lowercase {
            Some(ref val) if val.contains("close") => self.no_more_requests = true,
            Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
            Some(ref val)
                if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
            {
                self.no_more_requests = true
            }
            None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
            _ => (),
        };

        Some(rq)
    }
}

/// `{"error": msg}`.
fn json_error(msg: &str) -> Vec<u8> {
    let mut out = String::from("{\"error\":\"");
    for c in msg.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str("\"}");
    out.into_bytes()
}

fn header_value<'a>(headers: &'a [Header], name: &'static str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `METHOD SP target SP HTTP/x.y`.
fn parse_request_line(line: &[u8]) -> Result<(Method, String, HTTPVersion), Failure> {
    let bad = || Failure::answer(400, "malformed request line");
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(bad()),
    };
    let version = match version {
        b"HTTP/1.1" => HTTPVersion(1, 1),
        b"HTTP/1.0" => HTTPVersion(1, 0),
        v if v.starts_with(b"HTTP/")
            && v.len() > 5
            && v[5..].iter().all(|&b| b.is_ascii_digit() || b == b'.') =>
        {
            return Err(Failure::answer(
                505,
                "only HTTP/1.0 and HTTP/1.1 are served",
            ))
        }
        _ => return Err(bad()),
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(bad());
    }
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(Failure::answer(400, "malformed request target"));
    }
    // both are ASCII by now
    let method = Method::from_str(&String::from_utf8_lossy(method)).map_err(|_| bad())?;
    let target = String::from_utf8_lossy(target).into_owned();
    Ok((method, target, version))
}

/// Parses `name: value` (RFC 9112 §5): no space before the colon, no line
/// folding, no control characters or non-ASCII bytes in the value.
fn parse_header(line: &[u8]) -> Result<Header, Failure> {
    let bad = || Failure::answer(400, "malformed header line");
    let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(bad());
    }
    let value = trim_ows(value);
    if !value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(Failure::answer(
            400,
            "a header value holds a control or non-ASCII byte",
        ));
    }
    let field = HeaderField::from_bytes(name.to_vec()).map_err(|_| bad())?;
    let value = AsciiString::from_ascii(value.to_vec()).map_err(|_| bad())?;
    Ok(Header { field, value })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// How the body is delimited, refusing anything two parsers could read
/// differently (RFC 9112 §6.3): `Content-Length` together with
/// `Transfer-Encoding`, several or invalid `Content-Length`s, a transfer
/// coding other than `chunked`, or chunked in HTTP/1.0.
fn framing(headers: &[Header], version: &HTTPVersion) -> Result<Option<Framing>, Failure> {
    let lengths: Vec<&str> = headers
        .iter()
        .filter(|h| h.field.equiv("Content-Length"))
        .map(|h| h.value.as_str())
        .collect();
    let codings: Vec<&str> = headers
        .iter()
        .filter(|h| h.field.equiv("Transfer-Encoding"))
        .map(|h| h.value.as_str())
        .collect();
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err(Failure::answer(
                400,
                "Content-Length together with Transfer-Encoding",
            ));
        }
        if *version == HTTPVersion(1, 0) {
            return Err(Failure::answer(
                400,
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
            return Err(Failure::answer(
                501,
                "only the chunked transfer coding is supported",
            ));
        }
        return Ok(Some(Framing::Chunked));
    }
    match lengths.as_slice() {
        [] => Ok(None),
        [one] => {
            let valid =
                !one.is_empty() && one.len() <= 18 && one.bytes().all(|b| b.is_ascii_digit());
            match one.parse::<u64>() {
                Ok(n) if valid => Ok(Some(Framing::Length(n))),
                _ => Err(Failure::answer(400, "invalid Content-Length")),
            }
        }
        _ => Err(Failure::answer(400, "more than one Content-Length")),
    }
}

/// The size in a chunk-size line: hex digits, then optional extensions.
fn parse_chunk_size(line: &[u8]) -> Result<u64, Failure> {
    let digits = line
        .iter()
        .position(|&b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = trim_ows(&line[digits..]);
    if digits == 0 || digits > 15 || !(rest.is_empty() || rest[0] == b';') {
        return Err(Failure::answer(400, "malformed chunk-size line"));
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| Failure::Close)?;
    u64::from_str_radix(hex, 16).map_err(|_| Failure::answer(400, "malformed chunk-size line"))
}

#[cfg(test)]
mod test {
    use super::*;

    fn status(r: Result<impl Sized, Failure>) -> u16 {
        match r {
            Ok(_) => 0,
            Err(Failure::Answer(s, _)) => s,
            Err(Failure::Refused(r)) => r.status,
            Err(Failure::Close) => 1,
        }
    }

    fn headers(lines: &[&str]) -> Vec<Header> {
        lines
            .iter()
            .map(|l| parse_header(l.as_bytes()).ok().unwrap())
            .collect()
    }

    #[test]
    fn request_lines() {
        let (method, path, ver) = parse_request_line(b"GET /hello HTTP/1.1").ok().unwrap();
        assert!(method == Method::Get);
        assert_eq!(path, "/hello");
        assert!(ver == HTTPVersion(1, 1));
        assert_eq!(status(parse_request_line(b"GET /hello")), 400);
        assert_eq!(status(parse_request_line(b"qsd qsd qsd")), 400);
        assert_eq!(status(parse_request_line(b"GET  /x HTTP/1.1")), 400);
        assert_eq!(status(parse_request_line(b"GET /x HTTP/2.0")), 505);
        assert_eq!(status(parse_request_line(b"GET /x HTTP/0.9")), 505);
        assert_eq!(status(parse_request_line(b"G(T /x HTTP/1.1")), 400);
        assert_eq!(status(parse_request_line(b"GET /\x01 HTTP/1.1")), 400);
    }

    #[test]
    fn header_lines() {
        assert_eq!(status(parse_header(b"Host: a")), 0);
        assert_eq!(status(parse_header(b"Content-Length : 5")), 400);
        assert_eq!(status(parse_header(b" folded")), 400);
        assert_eq!(status(parse_header(b"no colon")), 400);
        assert_eq!(status(parse_header(b"X: \x01")), 400);
        assert_eq!(status(parse_header(b"X: \xc3\xa9")), 400);
        assert_eq!(parse_header(b"X:  v \t").ok().unwrap().value.as_str(), "v");
    }

    #[test]
    fn framing_rules() {
        let v11 = HTTPVersion(1, 1);
        assert!(matches!(
            framing(&headers(&["Content-Length: 5"]), &v11),
            Ok(Some(Framing::Length(5)))
        ));
        assert!(matches!(
            framing(&headers(&["Transfer-Encoding: Chunked"]), &v11),
            Ok(Some(Framing::Chunked))
        ));
        assert!(matches!(framing(&headers(&["Host: x"]), &v11), Ok(None)));
        let cases: &[(&[&str], u16)] = &[
            (&["Content-Length: 5", "Transfer-Encoding: chunked"], 400),
            (&["Content-Length: 5", "Content-Length: 5"], 400),
            (&["Content-Length: 5, 5"], 400),
            (&["Content-Length: +5"], 400),
            (&["Content-Length: -1"], 400),
            (&["Content-Length: 0x10"], 400),
            (&["Content-Length: 99999999999999999999"], 400),
            (&["Content-Length:"], 400),
            (&["Transfer-Encoding: gzip, chunked"], 501),
            (
                &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
                501,
            ),
        ];
        for (lines, want) in cases {
            assert_eq!(status(framing(&headers(lines), &v11)), *want, "{lines:?}");
        }
        let te = headers(&["Transfer-Encoding: chunked"]);
        assert_eq!(status(framing(&te, &HTTPVersion(1, 0))), 400);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a").ok(), Some(26));
        assert_eq!(parse_chunk_size(b"0;name=value").ok(), Some(0));
        assert_eq!(parse_chunk_size(b"10 ; ext").ok(), Some(16));
        assert_eq!(status(parse_chunk_size(b"")), 400);
        assert_eq!(status(parse_chunk_size(b"zz")), 400);
        assert_eq!(status(parse_chunk_size(b"-1")), 400);
        assert_eq!(status(parse_chunk_size(b"1 2")), 400);
        assert_eq!(status(parse_chunk_size(b"1234567890abcdef0")), 400);
    }

    #[test]
    fn json_errors_are_escaped() {
        assert_eq!(
            json_error("a \"b\"\n"),
            b"{\"error\":\"a \\\"b\\\"\\u000a\"}"
        );
    }
}
