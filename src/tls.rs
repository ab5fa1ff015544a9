//! TLS (DESIGN §11): the node's certificate, key and CA loaded and
//! checked, the server side of a connection (handshake on the
//! connection's own thread, then a stream that the vendored tiny_http
//! reads requests from), and the client configuration peers are dialled
//! with. rustls with the ring provider; no OpenSSL.
//!
//! The loaded set is swapped whole on SIGHUP: new handshakes and new peer
//! connections use it, open connections keep theirs.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use tiny_http::{RawSocket, SharedStream, Upgraded};

/// Which connections must present a client certificate from the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// None must (none is asked for).
    None,
    /// Internal endpoints answer only connections that presented one.
    Peers,
    /// Every connection must (the handshake is refused otherwise).
    All,
}

impl ClientAuth {
    pub fn parse(text: &str) -> Option<ClientAuth> {
        match text {
            "none" => Some(ClientAuth::None),
            "peers" => Some(ClientAuth::Peers),
            "all" => Some(ClientAuth::All),
            _ => None,
        }
    }
}

/// The files TLS is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Peers' (and clients') certificates are checked against it.
    pub ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// What the files hold, checked against each other.
pub struct Material {
    pub server: Arc<ServerConfig>,
    /// For dialling peers: the CA as roots, this node's certificate as the
    /// client certificate.
    pub client: ureq::tls::TlsConfig,
    /// When the node's certificate expires, in seconds since the epoch.
    pub expires: i64,
}

/// ring's provider, with AES-128-GCM preferred: as safe, and cheaper per
/// byte than AES-256 on both ends of every connection.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    use rustls::crypto::ring::cipher_suite as cs;
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read(path).map_err(|e| format!("tls_key_file {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&text)
        .map_err(|e| format!("tls_key_file {}: no PEM private key: {e}", path.display()))
}

/// The expiry of a DER certificate, in seconds since the epoch.
pub fn expiry_of(der: &[u8]) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot read the certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Warns in the log when the certificate expires within 30 days.
pub fn warn_if_expiring(expires: i64) {
    let left = expires - crate::clock::now_ms() as i64 / 1000;
    if left < 30 * 86_400 {
        log::warn!(
            "the TLS certificate (tls_cert_file) expires in {} days: renew it and send SIGHUP",
            left / 86_400
        );
    }
}

/// Whether a DER certificate names `host` (a DNS name or an IP address)
/// among its subject alternative names.
pub fn names_host(der: &[u8], host: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = host.parse::<std::net::IpAddr>().ok();
    san.value.general_names.iter().any(|name| match name {
        GeneralName::DNSName(n) => n.eq_ignore_ascii_case(host),
        GeneralName::IPAddress(bytes) => match (ip, bytes.len()) {
            (Some(std::net::IpAddr::V4(v4)), 4) => v4.octets() == **bytes,
            (Some(std::net::IpAddr::V6(v6)), 16) => v6.octets() == **bytes,
            _ => false,
        },
        _ => false,
    })
}

/// The node's own certificate (the first of the chain).
pub fn own_certificate(files: &TlsFiles) -> Result<Vec<u8>, String> {
    Ok(read_certs("tls_cert_file", &files.cert)?[0]
        .as_ref()
        .to_vec())
}

/// Loads and checks the three files; every error names the file.
pub fn load(files: &TlsFiles) -> Result<Material, String> {
    let chain = read_certs("tls_cert_file", &files.cert)?;
    let key = read_key(&files.key)?;
    let roots = match &files.ca {
        Some(ca) => {
            let mut store = RootCertStore::empty();
            for c in read_certs("tls_ca_file", ca)? {
                store
                    .add(c)
                    .map_err(|e| format!("tls_ca_file {}: {e}", ca.display()))?;
            }
            Some(Arc::new(store))
        }
        None => None,
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match (files.client_auth, &roots) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(
                "tls_client_auth needs tls_ca_file: client certificates are checked against it"
                    .into(),
            )
        }
        (auth, Some(roots)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let verifier = if auth == ClientAuth::Peers {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| {
                format!(
                    "tls_ca_file {}: {e}",
                    files.ca.as_deref().unwrap_or(Path::new("")).display()
                )
            })?)
        }
    };
    let mut server = builder
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| {
            format!(
                "tls_key_file {}: does not go with the certificate in tls_cert_file {}: {e}",
                files.key.display(),
                files.cert.display()
            )
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    server.ignore_client_order = true;
    let expires =
        expiry_of(&chain[0]).map_err(|e| format!("tls_cert_file {}: {e}", files.cert.display()))?;
    let client = client_config(&chain, &files.key, files.ca.as_deref())?;
    Ok(Material {
        server: Arc::new(server),
        client,
        expires,
    })
}

fn client_config(
    chain: &[CertificateDer<'static>],
    key_file: &Path,
    ca: Option<&Path>,
) -> Result<ureq::tls::TlsConfig, String> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let certs: Vec<Certificate<'static>> = chain
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let pem =
        std::fs::read(key_file).map_err(|e| format!("tls_key_file {}: {e}", key_file.display()))?;
    let key = PrivateKey::from_pem(&pem)
        .map_err(|e| format!("tls_key_file {}: {e}", key_file.display()))?;
    let roots = match ca {
        Some(ca) => read_certs("tls_ca_file", ca)?
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect(),
        None => Vec::new(),
    };
    Ok(TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(&roots))
        .client_cert(Some(ClientCert::new_with_certs(&certs, key)))
        .build())
}

/// The TLS material in force, swapped whole on SIGHUP.
pub struct Tls {
    pub files: TlsFiles,
    current: RwLock<Arc<Material>>,
}

impl Tls {
    pub fn new(files: TlsFiles, material: Material) -> Arc<Tls> {
        Arc::new(Tls {
            files,
            current: RwLock::new(Arc::new(material)),
        })
    }

    pub fn current(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files again; a bad file keeps the old set.
    pub fn reload(&self) -> Result<(), String> {
        let material = load(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(material);
        Ok(())
    }

    /// The server side of every accepted connection, for tiny_http.
    pub fn upgrade(self: &Arc<Self>) -> tiny_http::Upgrade {
        let tls = self.clone();
        Arc::new(move |socket: RawSocket, due: Instant| {
            handshake(tls.current().server.clone(), socket, due)
        })
    }
}

/// What a plain HTTP request on the TLS port gets before the close.
const PLAIN_HTTP_BODY: &str = "This port speaks HTTPS only: use https:// to reach it.\n";

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// The raw socket with every read and write bounded by `due`.
struct Timed<'a> {
    socket: &'a RawSocket,
    due: Instant,
}

impl Timed<'_> {
    fn arm(&self) -> io::Result<()> {
        let left = self.due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the handshake did not end in time",
            ));
        }
        self.socket.set_timeouts(Some(left), Some(left))
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        (&*self.socket).read(buf)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        (&*self.socket).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Answers a plain HTTP request with a `400` that says to use HTTPS, reads
/// (a little of) what the client sent so that it sees the answer, closes.
fn refuse_plain_http(socket: &RawSocket) {
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    );
    let _ = (&*socket).write_all(answer.as_bytes());
    let _ = socket.set_timeouts(Some(Duration::from_millis(200)), None);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match (&*socket).read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    socket.shutdown();
}

/// The server's handshake, by `due`.
fn handshake(
    config: Arc<ServerConfig>,
    socket: RawSocket,
    due: Instant,
) -> Result<Upgraded, String> {
    let mut io = Timed {
        socket: &socket,
        due,
    };
    io.arm().map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    match socket.peek(&mut first) {
        Ok(0) => return Err("closed before the handshake".into()),
        Ok(_) if first[0] == TLS_HANDSHAKE => {}
        Ok(_) if first[0].is_ascii_alphabetic() => {
            refuse_plain_http(&socket);
            return Err("a plain HTTP request on the TLS port".into());
        }
        Ok(_) => {
            return Err(format!(
                "not a TLS handshake (first byte {:#04x})",
                first[0]
            ))
        }
        Err(e) => return Err(format!("before the handshake: {e}")),
    }
    let _ = socket.set_nodelay();
    let mut conn = ServerConnection::new(config).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut io)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    let client_certified = conn.peer_certificates().is_some_and(|c| !c.is_empty());
    Ok(Upgraded {
        stream: Arc::new(TlsStream {
            socket: socket.clone(),
            tls: Mutex::new(conn),
            raw: Mutex::new(vec![0u8; READ_CHUNK]),
        }),
        client_certified,
    })
}

/// One TLS session over its socket. No lock is held while a read waits
/// on the socket, so that nothing a read waits for can hold up a write.
struct TlsStream {
    socket: RawSocket,
    tls: Mutex<ServerConnection>,
    /// Socket bytes on their way to `tls` (one reader at a time: never
    /// contended, kept to spare an allocation per read).
    raw: Mutex<Vec<u8>>,
}

/// Socket bytes read at once: at most one record's plaintext results,
/// which is what rustls keeps unread at most.
const READ_CHUNK: usize = 16 * 1024;

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl TlsStream {
    fn lock(&self) -> std::sync::MutexGuard<'_, ServerConnection> {
        self.tls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SharedStream for TlsStream {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut raw = self.raw.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match self.lock().reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let n = (&self.socket).read(&mut raw[..])?;
            if n == 0 {
                return Ok(0);
            }
            let mut tls = self.lock();
            let mut fed = &raw[..n];
            while !fed.is_empty() {
                if tls.read_tls(&mut fed)? == 0 {
                    break;
                }
                if let Err(e) = tls.process_new_packets() {
                    // The alert rustls queued tells the client why.
                    let _ = tls.write_tls(&mut &self.socket);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            // Session tickets, key updates, alerts.
            while tls.wants_write() {
                tls.write_tls(&mut &self.socket)?;
            }
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut tls = self.lock();
        // What an earlier write left is sent first; a timeout here has
        // taken nothing of `buf`, so the caller may try again.
        while tls.wants_write() {
            tls.write_tls(&mut &self.socket)?;
        }
        let n = tls.writer().write(buf)?;
        while tls.wants_write() {
            match tls.write_tls(&mut &self.socket) {
                Ok(_) => {}
                // Taken: the rest goes with the next write or the flush.
                Err(e) if timed_out(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn flush(&self) -> io::Result<()> {
        let mut tls = self.lock();
        while tls.wants_write() {
            tls.write_tls(&mut &self.socket)?;
        }
        Ok(())
    }

    /// The close_notify alert, so that the client sees a clean end
    /// rather than a truncation (best effort: 24 bytes into the socket's
    /// buffer, bounded by the write deadline).
    fn close(&self) {
        let mut tls = self.lock();
        tls.send_close_notify();
        while tls.wants_write() {
            if tls.write_tls(&mut &self.socket).is_err() {
                return;
            }
        }
    }
}
