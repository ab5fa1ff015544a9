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
}

impl Client {
    pub(super) fn new(inv: &Invocation) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .user_agent(concat!("kvs-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            base: format!("http://{}", inv.addr),
            token: inv.token.clone(),
        }
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
