//! The CLI's HTTP client: one call to the node, and its answer.

use std::time::Duration;

use super::{CliError, Invocation};

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A node's answer.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: ureq::http::HeaderMap,
    pub(super) body: ureq::Body,
}

impl Answer {
    pub(super) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub(super) fn text(self) -> Result<String, CliError> {
        self.body
            .into_with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| CliError::Connection(format!("reading the answer: {e}")))
    }

    /// The node's error message for a refusal.
    pub(super) fn refusal(self, what: &str) -> CliError {
        let status = self.status;
        let text = self.text().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| text.chars().take(200).collect());
        CliError::Failed(format!("{what}: {status} {message}"))
    }
}

pub(super) struct Client {
    agent: ureq::Agent,
    pub(super) base: String,
    token: Option<String>,
    /// `w=...` for writes, when asked.
    pub(super) w: Option<String>,
}

/// Where the CA bundle is when `--cacert` is not given.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The TLS settings for an `https://` address.
fn tls_config(inv: &Invocation) -> Result<ureq::tls::TlsConfig, CliError> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};
    let read = |path: &str| {
        std::fs::read(path).map_err(|e| CliError::Usage(format!("cannot read {path}: {e}")))
    };
    let ca = inv.cacert.as_deref().unwrap_or(SYSTEM_CA_BUNDLE);
    let pem = read(ca).map_err(|e| match inv.cacert {
        Some(_) => e,
        None => CliError::Usage(format!(
            "https needs the node's CA: give --cacert FILE or $KVS_CACERT ({SYSTEM_CA_BUNDLE} is not there)"
        )),
    })?;
    let certificates = |pem: &[u8], file: &str| -> Result<Vec<Certificate<'static>>, CliError> {
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(CliError::Usage(format!("{file}: no PEM certificate in it")));
        }
        Ok(certs)
    };
    let roots = certificates(&pem, ca)?;
    let mut config = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(&roots));
    if let Some((cert, key)) = &inv.cert {
        let chain = certificates(&read(cert)?, cert)?;
        let key = PrivateKey::from_pem(&read(key)?)
            .map_err(|e| CliError::Usage(format!("{key}: no PEM private key: {e}")))?;
        check_pair(&chain, &key, cert)?;
        config = config.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(config.build())
}

/// A client certificate whose key does not match would abort the TLS
/// client; rustls checks the pair first.
fn check_pair(
    chain: &[ureq::tls::Certificate<'static>],
    key: &ureq::tls::PrivateKey<'static>,
    cert_file: &str,
) -> Result<(), CliError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let key = PrivateKeyDer::try_from(key.der().to_vec())
        .map_err(|e| CliError::Usage(format!("--key: {e}")))?;
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| {
        b.with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(certs, key)
    })
    .map(|_| ())
    .map_err(|e| CliError::Usage(format!("--key does not go with {cert_file}: {e}")))
}

impl Client {
    pub(super) fn new(inv: &Invocation) -> Result<Client, CliError> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .user_agent(concat!("kvs-cli/", env!("CARGO_PKG_VERSION")));
        if inv.https {
            config = config.tls_config(tls_config(inv)?);
        }
        Ok(Client {
            agent: config.build().into(),
            base: format!(
                "{}://{}",
                if inv.https { "https" } else { "http" },
                inv.addr
            ),
            token: inv.token.clone(),
            w: inv.w.clone(),
        })
    }

    /// One call. `timeout` None: no limit (a backup, a blocking query).
    pub(super) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<Answer, CliError> {
        let url = format!("{}{path}", self.base);
        let mut rq = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            rq = rq.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            rq = rq.header(*k, *v);
        }
        let connection = |e: String| CliError::Connection(format!("{}: {e}", self.base));
        let result = match body {
            Some(b) => {
                let rq = rq
                    .header("Content-Type", "application/json")
                    .body(b.to_vec())
                    .map_err(|e| connection(e.to_string()))?;
                self.send(rq, timeout)
            }
            None => {
                let rq = rq.body(()).map_err(|e| connection(e.to_string()))?;
                self.send(rq, timeout)
            }
        };
        let response = result.map_err(|e| connection(e.to_string()))?;
        let (parts, body) = response.into_parts();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// Runs a built request with this call's time limit.
    fn send(
        &self,
        rq: ureq::http::Request<impl ureq::AsSendBody>,
        timeout: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let rq = self
            .agent
            .configure_request(rq)
            .timeout_global(timeout)
            .build();
        self.agent.run(rq)
    }
}
