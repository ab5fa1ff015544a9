//! Errors as HTTP statuses: the one place where a failure gets its status
//! code and its JSON body `{"error": "<readable message>"}`.

use crate::cluster::ClusterError;
use crate::store::StoreError;

/// A request that cannot be served, with the status it maps to.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed (bad JSON, bad key, bad parameter).
    BadRequest(String),
    /// 401: credentials missing or wrong.
    Unauthorized,
    /// 401: an internal call without a client certificate from the CA.
    CertificateRequired,
    /// 403: client writes are refused in read-only mode.
    ReadOnly,
    /// 403: the token may not do this (its scope, `client_tokens`).
    Forbidden(String),
    /// 404: no such key, or no such endpoint.
    NotFound(String),
    /// 405: the method is not served on this path.
    MethodNotAllowed(&'static str),
    /// 409: the request conflicts with the cluster's state.
    Conflict(String),
    /// 412: an If-Match / If-None-Match condition failed.
    PreconditionFailed(String),
    /// 413: the body is over max_value_bytes.
    TooLarge(usize),
    /// 503: the node is bootstrapping; retry later.
    Syncing,
    /// 503: the node is stopping.
    Stopping,
    /// 503: the node left the cluster; writes wait for a restart.
    Left,
    /// 503: back from a long absence, the node is reconciling with a peer.
    Reconciling,
    /// 503: a one-at-a-time task (a backup) is already running.
    Busy(String),
    /// 503: fewer healthy members than a write asked to wait for (`?w=`);
    /// nothing was written.
    TooFewHealthy { healthy: usize, wanted: usize },
    /// 507: the LMDB map is full.
    StorageFull,
    /// 507: the disk under the data directory is full.
    NoSpace,
    /// 500: a failure on our side.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized | ApiError::CertificateRequired => 401,
            ApiError::ReadOnly | ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Conflict(_) => 409,
            ApiError::PreconditionFailed(_) => 412,
            ApiError::TooLarge(_) => 413,
            ApiError::Syncing
            | ApiError::Stopping
            | ApiError::Reconciling
            | ApiError::Left
            | ApiError::Busy(_)
            | ApiError::TooFewHealthy { .. } => 503,
            ApiError::StorageFull | ApiError::NoSpace => 507,
            ApiError::Internal(_) => 500,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::PreconditionFailed(m)
            | ApiError::Busy(m)
            | ApiError::Internal(m) => m.clone(),
            ApiError::Unauthorized => "missing or wrong credentials".into(),
            ApiError::CertificateRequired => "client certificate required".into(),
            ApiError::ReadOnly => "this node is read-only: client writes are refused".into(),
            ApiError::Forbidden(what) => what.clone(),
            ApiError::MethodNotAllowed(allow) => {
                format!("method not allowed here; allowed: {allow}")
            }
            ApiError::TooLarge(limit) => format!("body is larger than the limit of {limit} bytes"),
            ApiError::Syncing => "this node is syncing with the cluster; retry shortly".into(),
            ApiError::Reconciling => {
                "this node is back from a long absence and reconciling with a peer".into()
            }
            ApiError::Stopping => "this node is stopping".into(),
            ApiError::TooFewHealthy { healthy, wanted } => format!(
                "the write asks for {wanted} nodes but {healthy} are healthy: nothing was written"
            ),
            ApiError::Left => {
                "this node left the cluster: client writes are refused until it is restarted".into()
            }
            ApiError::StorageFull => {
                "storage is full: the write was not made (raise map_size_mb)".into()
            }
            ApiError::NoSpace => {
                "no space left on device: the write was not made (free disk space)".into()
            }
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let value = match self {
            ApiError::TooFewHealthy { healthy, wanted } => serde_json::json!({
                "error": self.message(), "healthy": healthy, "wanted": wanted
            }),
            _ => serde_json::json!({ "error": self.message() }),
        };
        serde_json::to_vec(&value).unwrap_or_else(|_| b"{\"error\":\"error\"}".to_vec())
    }

    /// Extra headers this error carries.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::MethodNotAllowed(allow) => vec![("Allow", allow.to_string())],
            ApiError::Syncing | ApiError::Stopping | ApiError::Reconciling => {
                vec![("Retry-After", "1".to_string())]
            }
            ApiError::Busy(_) => vec![("Retry-After", "10".to_string())],
            ApiError::Unauthorized => vec![("WWW-Authenticate", "Bearer".to_string())],
            _ => Vec::new(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::MapFull => ApiError::StorageFull,
            StoreError::NoSpace => ApiError::NoSpace,
            StoreError::WriterStopped => ApiError::Stopping,
            other => {
                log::error!("{other}");
                ApiError::Internal(other.to_string())
            }
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(r: ClusterError) -> Self {
        match r {
            ClusterError::Invalid(m) => ApiError::BadRequest(m),
            ClusterError::Store(e) => ApiError::from(e),
            // A receiver that called a peer itself and failed.
            other => ApiError::Internal(other.to_string()),
        }
    }
}
