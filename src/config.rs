//! Node configuration: the YAML file, command-line overrides, defaults and
//! validation.
//!
//! Every key of the original daemon keeps its name and default. A file is read
//! into [`RawConfig`] (all keys optional, unknown keys refused), options given
//! on the command line are read the same way one key at a time and win over
//! the file, and [`Config::from_raw`] fills in defaults and refuses impossible
//! values. Every error names the key it is about.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, phrased for the operator.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Every key once: its type in YAML, whether an option's value is text
/// (so that `--node-id 123` stays a string), its default as the new
/// `config.yaml` shows it, and its meaning. From this one list come
/// [`RawConfig`], [`KEYS`] (the file template and `--help`),
/// `RawConfig::merge`, `is_string_key` and the defaults themselves
/// (`RawConfig::defaults` reads them back); [`Config::from_raw`] gives
/// each its validated type. A default in parentheses is derived there.
macro_rules! config_keys {
    ($( $name:ident : $ty:ty, $kind:ident, $default:literal, $meaning:literal; )*) => {
        /// The keys as written in YAML; `None` means "not given".
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawConfig {
            $( pub $name: Option<$ty>, )*
        }

        /// Every key, with its default and meaning, as written into a new
        /// `config.yaml`. The order here is the order of the file and of
        /// `--help`.
        pub const KEYS: &[(&str, &str, &str)] = &[
            $( (stringify!($name), $default, $meaning), )*
        ];

        impl RawConfig {
            /// Takes every key that `other` sets.
            fn merge(&mut self, other: RawConfig) {
                $( if other.$name.is_some() { self.$name = other.$name; } )*
            }
        }

        /// Whether a key's option value is taken as text.
        fn is_string_key(key: &str) -> bool {
            match key {
                $( stringify!($name) => config_keys!(@text $kind), )*
                _ => false,
            }
        }
    };
    (@text text) => { true };
    (@text value) => { false };
}

config_keys! {
    node_id: String, text, "(host name)", "unique name of this node in the cluster";
    bind_address: String, text, "\"127.0.0.1\"", "address the HTTP server binds";
    port: u16, value, "8080", "HTTP port, for clients and peers alike";
    data_dir: PathBuf, text, "\"./data\"", "LMDB directory, created if missing";
    seed_nodes: Vec<String>, value, "[]", "\"host:port\" peers to join through; empty = standalone";
    read_only: bool, value, "false", "refuse client writes (403); replication still applies";
    log_level: String, text, "\"info\"", "debug, info, warn or error";
    log_file: String, text, "\"\"", "file to append the log to (empty: stderr); SIGHUP reopens it";
    log_format: String, text, "\"text\"", "text (one line per event) or json";
    join_timeout: f64, value, "60", "seconds a new node waits for a seed before serving as a cluster of one";
    gossip_interval_min: f64, value, "60", "seconds; each gossip round waits a random time";
    gossip_interval_max: f64, value, "120", "seconds; ... between min and max";
    sync_interval: f64, value, "300", "seconds between regular syncs (latest 15 versions)";
    catchup_interval: f64, value, "120", "seconds between catch-up syncs while behind";
    bootstrap_max_age_hours: f64, value, "720", "hours of history a new node fetches; tombstone lifetime";
    throttle_delay_ms: u64, value, "100", "milliseconds between sync pages asked of one peer";
    fetch_delay_ms: u64, value, "50", "milliseconds between individual fetches";
    failure_timeout: f64, value, "300", "seconds a member stays suspected (its probes unanswered) before it is unhealthy";
    removal_timeout: f64, value, "600", "seconds a member stays suspected before it is dropped";
    antientropy_interval: f64, value, "600", "seconds between Merkle exchanges with a random peer";
    advertise_address: String, text, "(bind_address:port)", "host:port that peers should dial";
    max_value_bytes: usize, value, "1048576", "largest accepted body in bytes (413 above)";
    http_threads: usize, value, "8", "requests handled at once (each on its connection's thread)";
    max_connections: usize, value, "512", "open client connections; more wait for a free slot";
    header_timeout: f64, value, "10", "seconds a client has to send a whole request head";
    max_members: usize, value, "1024", "largest member table; entries beyond are refused and logged";
    scrub_interval: f64, value, "86400", "seconds between background checks of every stored version";
    map_size_mb: u64, value, "1024", "LMDB map size in MiB (507 when full)";
    client_tokens: Vec<serde_yaml::Value>, value, "[]", "bearer tokens for client endpoints: strings (full access) or scoped entries (see the README); empty = open; SIGHUP reloads them";
    write_acks: serde_yaml::Value, value, "1", "nodes a write waits for before its 200 (this one included): a number, quorum or all; ?w= overrides";
    write_ack_timeout: f64, value, "2", "seconds a write waits for write_acks nodes before a 504 (the write stays)";
    cluster_secret: String, text, "\"\"", "shared secret for internal endpoints; empty = open";
    tls_cert_file: String, text, "\"\"", "PEM certificate chain: with tls_key_file, the port speaks HTTPS only";
    tls_key_file: String, text, "\"\"", "PEM private key of tls_cert_file";
    tls_ca_file: String, text, "\"\"", "PEM CA that peers' and clients' certificates are checked against";
    tls_client_auth: String, text, "\"none\"", "none, peers (internal endpoints need a certificate from the CA) or all";
}

/// The validated configuration of one node (defaults: [`KEYS`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// Unique name of this node in the cluster.
    pub node_id: String,
    /// Address the HTTP server binds.
    pub bind_address: IpAddr,
    /// HTTP port for clients and peers; 0 picks a free port (only for a
    /// standalone node, as peers could not find it).
    pub port: u16,
    /// LMDB directory, created if missing.
    pub data_dir: PathBuf,
    /// `host:port` peers to join through.
    pub seed_nodes: Vec<String>,
    /// Refuse client writes with 403; replication still applies.
    pub read_only: bool,
    /// Log level: debug, info, warn or error.
    pub log_level: log::LevelFilter,
    /// Where the log goes; None: stderr.
    pub log_file: Option<PathBuf>,
    /// One JSON object per log line instead of text.
    pub log_json: bool,
    /// How long a new node waits for a seed before serving alone.
    pub join_timeout: Duration,
    /// Lower bound of the random wait between gossip rounds.
    pub gossip_interval_min: Duration,
    /// Upper bound of the random wait between gossip rounds.
    pub gossip_interval_max: Duration,
    /// Time between regular syncs.
    pub sync_interval: Duration,
    /// Time between catch-up syncs while behind.
    pub catchup_interval: Duration,
    /// How far back a new node fetches history, and how long tombstones live.
    pub bootstrap_max_age: Duration,
    /// Pause between sync pages asked of one peer.
    pub throttle_delay: Duration,
    /// Pause between individual fetches.
    pub fetch_delay: Duration,
    /// Time a member stays suspected before it is unhealthy.
    pub failure_timeout: Duration,
    /// Time a member stays suspected before it is dropped.
    pub removal_timeout: Duration,
    /// Time between anti-entropy exchanges.
    pub antientropy_interval: Duration,
    /// `host:port` peers dial.
    pub advertise_address: String,
    /// Largest accepted body in bytes.
    pub max_value_bytes: usize,
    /// Request worker threads.
    pub http_threads: usize,
    /// Open client connections.
    pub max_connections: usize,
    /// Time a client has to send a whole request head.
    pub header_timeout: Duration,
    /// Members (this node included) the table holds at most.
    pub max_members: usize,
    /// Time between scrub passes over every stored version.
    pub scrub_interval: Duration,
    /// LMDB map size in MiB.
    pub map_size_mb: u64,
    /// Bearer tokens accepted on client endpoints, with their scopes;
    /// empty means open.
    pub client_tokens: Vec<crate::auth::Token>,
    /// Nodes a client write waits for by default.
    pub write_acks: crate::cluster::acks::Wanted,
    /// How long a write waits for them.
    pub write_ack_timeout: Duration,
    /// Shared secret for internal endpoints; empty means open.
    pub cluster_secret: String,
    /// TLS on the port and to peers; None: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
}

impl RawConfig {
    /// Reads a YAML file. An empty file is a file with no keys.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Self::from_yaml(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses YAML text; serde_yaml's messages name the offending key.
    pub fn from_yaml(text: &str) -> Result<RawConfig, ConfigError> {
        match serde_yaml::from_str::<Option<RawConfig>>(text) {
            Ok(raw) => Ok(raw.unwrap_or_default()),
            Err(e) => err(e.to_string()),
        }
    }

    /// Applies one `key: value` given on the command line. The value is read
    /// as YAML, so `--port 8081`, `--seed_nodes '[a:1, b:2]'` and
    /// `--sync_interval 0.5` are checked exactly like the file.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        if !KEYS.iter().any(|(k, _, _)| *k == key) {
            return err(format!("unknown option --{}", key.replace('_', "-")));
        }
        // Strings given on the command line are taken literally, so a node id
        // such as "yes" or "123" stays a string.
        let yaml_value = if is_string_key(key) {
            serde_yaml::to_string(value).unwrap_or_default()
        } else {
            value.to_string()
        };
        let one = Self::from_yaml(&format!("{key}: {yaml_value}"))
            .map_err(|e| ConfigError(format!("option --{}: {}", key.replace('_', "-"), e.0)))?;
        self.merge(one);
        Ok(())
    }
}

/// A key's value: given, or its default from [`KEYS`] (every key without
/// a derived default has one, so this fails only if that list is broken).
fn given<T>(key: &str, value: Option<T>) -> Result<T, ConfigError> {
    value.ok_or_else(|| ConfigError(format!("{key}: no value and no default")))
}

/// A whole number within bounds.
fn within<T>(key: &str, value: Option<T>, lo: T, hi: T) -> Result<T, ConfigError>
where
    T: PartialOrd + fmt::Display + Copy,
{
    let v = given(key, value)?;
    if v < lo || v > hi {
        return err(format!("{key}: {v} is not between {lo} and {hi}"));
    }
    Ok(v)
}

/// Seconds given as a number (fractions allowed) become a duration.
fn seconds(key: &str, value: Option<f64>) -> Result<Duration, ConfigError> {
    let v = given(key, value)?;
    if !v.is_finite() || v <= 0.0 || v > 1e9 {
        return err(format!(
            "{key}: must be a positive number of seconds, got {v}"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Milliseconds, at most an hour.
fn milliseconds(key: &str, value: Option<u64>) -> Result<Duration, ConfigError> {
    let v = given(key, value)?;
    if v > 3_600_000 {
        return err(format!("{key}: {v} is more than an hour"));
    }
    Ok(Duration::from_millis(v))
}

/// The machine's host name, the default node id.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kvs-node".to_string())
}

/// Checks a `host:port` peer address.
pub fn check_host_port(key: &str, addr: &str) -> Result<(), ConfigError> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return err(format!("{key}: \"{addr}\" is not host:port"));
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return err(format!("{key}: \"{addr}\" has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => err(format!("{key}: \"{addr}\" has no valid port (1-65535)")),
    }
}

/// The parts of a configuration checked together (the order of the file).
struct Network {
    node_id: String,
    bind_address: IpAddr,
    port: u16,
    seed_nodes: Vec<String>,
    advertise_address: String,
}

struct Logging {
    log_level: log::LevelFilter,
    log_file: Option<PathBuf>,
    log_json: bool,
}

struct Timing {
    join_timeout: Duration,
    gossip_interval_min: Duration,
    gossip_interval_max: Duration,
    sync_interval: Duration,
    catchup_interval: Duration,
    bootstrap_max_age: Duration,
    throttle_delay: Duration,
    fetch_delay: Duration,
    failure_timeout: Duration,
    removal_timeout: Duration,
    antientropy_interval: Duration,
    header_timeout: Duration,
    scrub_interval: Duration,
}

struct Limits {
    max_value_bytes: usize,
    http_threads: usize,
    max_connections: usize,
    max_members: usize,
    map_size_mb: u64,
}

struct Access {
    client_tokens: Vec<crate::auth::Token>,
    cluster_secret: String,
    tls: Option<crate::tls::TlsFiles>,
}

impl RawConfig {
    /// The literal defaults of [`KEYS`]; the keys whose default is derived
    /// (shown in parentheses) stay unset.
    fn defaults() -> RawConfig {
        let text: String = KEYS
            .iter()
            .filter(|(_, default, _)| !default.starts_with('('))
            .map(|(key, default, _)| format!("{key}: {default}\n"))
            .collect();
        Self::from_yaml(&text).unwrap_or_default()
    }

    fn network(&mut self) -> Result<Network, ConfigError> {
        let node_id = self.node_id.take().unwrap_or_else(host_name);
        if node_id.is_empty() || node_id.len() > 128 {
            return err("node_id: must be 1 to 128 characters");
        }
        if node_id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return err("node_id: must not contain spaces or control characters");
        }
        let bind_text = given("bind_address", self.bind_address.take())?;
        let bind_address: IpAddr = bind_text.parse().map_err(|_| {
            ConfigError(format!(
                "bind_address: \"{bind_text}\" is not an IP address"
            ))
        })?;
        let port = given("port", self.port)?;
        let seed_nodes = given("seed_nodes", self.seed_nodes.take())?;
        for seed in &seed_nodes {
            check_host_port("seed_nodes", seed)?;
        }
        if port == 0 && !seed_nodes.is_empty() && self.advertise_address.is_none() {
            return err("port: 0 (a random port) cannot be used with seed_nodes: peers could not reach this node; set a port or advertise_address");
        }
        let advertise_address = match self.advertise_address.take() {
            Some(a) => {
                check_host_port("advertise_address", &a)?;
                a
            }
            None => {
                if bind_address.is_unspecified() && !seed_nodes.is_empty() {
                    return err(format!(
                        "advertise_address: must be set when bind_address is {bind_address}: peers cannot dial it"
                    ));
                }
                match bind_address {
                    IpAddr::V6(v6) => format!("[{v6}]:{port}"),
                    IpAddr::V4(v4) => format!("{v4}:{port}"),
                }
            }
        };
        Ok(Network {
            node_id,
            bind_address,
            port,
            seed_nodes,
            advertise_address,
        })
    }

    fn logging(&mut self) -> Result<Logging, ConfigError> {
        let level_text = given("log_level", self.log_level.take())?;
        let log_level = match level_text.to_ascii_lowercase().as_str() {
            "debug" => log::LevelFilter::Debug,
            "info" => log::LevelFilter::Info,
            "warn" | "warning" => log::LevelFilter::Warn,
            "error" => log::LevelFilter::Error,
            _ => {
                return err(format!(
                    "log_level: \"{level_text}\" is not one of debug, info, warn, error"
                ))
            }
        };
        let log_file = self
            .log_file
            .take()
            .filter(|f| !f.is_empty())
            .map(PathBuf::from);
        let log_json = match given("log_format", self.log_format.take())?.as_str() {
            "text" => false,
            "json" => true,
            other => return err(format!("log_format: \"{other}\" is not one of text, json")),
        };
        Ok(Logging {
            log_level,
            log_file,
            log_json,
        })
    }

    fn timing(&self) -> Result<Timing, ConfigError> {
        let gossip_interval_min = seconds("gossip_interval_min", self.gossip_interval_min)?;
        let gossip_interval_max = seconds("gossip_interval_max", self.gossip_interval_max)?;
        if gossip_interval_min > gossip_interval_max {
            return err(format!(
                "gossip_interval_min: {} is greater than gossip_interval_max ({})",
                gossip_interval_min.as_secs_f64(),
                gossip_interval_max.as_secs_f64()
            ));
        }
        let max_age_hours = given("bootstrap_max_age_hours", self.bootstrap_max_age_hours)?;
        if !max_age_hours.is_finite() || max_age_hours <= 0.0 || max_age_hours > 1e6 {
            return err(format!(
                "bootstrap_max_age_hours: must be a positive number of hours, got {max_age_hours}"
            ));
        }
        let failure_timeout = seconds("failure_timeout", self.failure_timeout)?;
        let removal_timeout = seconds("removal_timeout", self.removal_timeout)?;
        if failure_timeout > removal_timeout {
            return err(format!(
                "failure_timeout: {} is greater than removal_timeout ({})",
                failure_timeout.as_secs_f64(),
                removal_timeout.as_secs_f64()
            ));
        }
        Ok(Timing {
            join_timeout: seconds("join_timeout", self.join_timeout)?,
            gossip_interval_min,
            gossip_interval_max,
            sync_interval: seconds("sync_interval", self.sync_interval)?,
            catchup_interval: seconds("catchup_interval", self.catchup_interval)?,
            bootstrap_max_age: Duration::from_secs_f64(max_age_hours * 3600.0),
            throttle_delay: milliseconds("throttle_delay_ms", self.throttle_delay_ms)?,
            fetch_delay: milliseconds("fetch_delay_ms", self.fetch_delay_ms)?,
            failure_timeout,
            removal_timeout,
            antientropy_interval: seconds("antientropy_interval", self.antientropy_interval)?,
            header_timeout: seconds("header_timeout", self.header_timeout)?,
            scrub_interval: seconds("scrub_interval", self.scrub_interval)?,
        })
    }

    fn limits(&self) -> Result<Limits, ConfigError> {
        let max_value_bytes = within(
            "max_value_bytes",
            self.max_value_bytes,
            1,
            512 * 1024 * 1024,
        )?;
        let map_size_mb = within("map_size_mb", self.map_size_mb, 1, 16 * 1024 * 1024)?;
        if (max_value_bytes as u64) > map_size_mb * 1024 * 1024 / 2 {
            return err(format!(
                "max_value_bytes: {max_value_bytes} does not fit twice in map_size_mb ({map_size_mb} MiB)"
            ));
        }
        Ok(Limits {
            max_value_bytes,
            http_threads: within("http_threads", self.http_threads, 1, 1024)?,
            max_connections: within("max_connections", self.max_connections, 1, 65_536)?,
            max_members: within("max_members", self.max_members, 2, 100_000)?,
            map_size_mb,
        })
    }

    fn access(&mut self) -> Result<Access, ConfigError> {
        let client_tokens =
            crate::auth::parse_tokens(&given("client_tokens", self.client_tokens.take())?)
                .map_err(ConfigError)?;
        let cluster_secret = given("cluster_secret", self.cluster_secret.take())?;
        if cluster_secret.chars().any(|c| c.is_control() || c == ' ') {
            return err("cluster_secret: must not contain spaces or control characters");
        }
        let tls = self.tls()?;
        let peers_certified = tls
            .as_ref()
            .is_some_and(|t| t.client_auth != crate::tls::ClientAuth::None);
        if !client_tokens.is_empty() && cluster_secret.is_empty() && !peers_certified {
            // The internal API serves every value and takes any version:
            // tokens on the client API alone would protect nothing.
            return err(
                "client_tokens is set but cluster_secret is empty: the internal API would serve \
                 and accept every value without credentials; set cluster_secret too (or \
                 tls_client_auth: peers)",
            );
        }
        Ok(Access {
            client_tokens,
            cluster_secret,
            tls,
        })
    }

    fn tls(&mut self) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
        let path = |v: Option<String>| v.filter(|p| !p.is_empty()).map(PathBuf::from);
        let cert = path(self.tls_cert_file.take());
        let key = path(self.tls_key_file.take());
        let ca = path(self.tls_ca_file.take());
        let auth_text = given("tls_client_auth", self.tls_client_auth.take())?;
        let client_auth = crate::tls::ClientAuth::parse(&auth_text).ok_or_else(|| {
            ConfigError(format!(
                "tls_client_auth: \"{auth_text}\" is not one of none, peers, all"
            ))
        })?;
        let (cert, key) = match (cert, key) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => {
                if client_auth != crate::tls::ClientAuth::None || ca.is_some() {
                    return err(
                        "tls_client_auth and tls_ca_file need tls_cert_file and tls_key_file",
                    );
                }
                return Ok(None);
            }
            (Some(_), None) => return err("tls_key_file: must be set with tls_cert_file"),
            (None, Some(_)) => return err("tls_cert_file: must be set with tls_key_file"),
        };
        if client_auth != crate::tls::ClientAuth::None && ca.is_none() {
            return err("tls_ca_file: must be set when tls_client_auth is peers or all");
        }
        Ok(Some(crate::tls::TlsFiles {
            cert,
            key,
            ca,
            client_auth,
        }))
    }
}

impl Config {
    /// Fills in the defaults (from [`KEYS`], the one list) and checks every
    /// value, part by part in the order of the file; every error names its
    /// key.
    pub fn from_raw(given_keys: RawConfig) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::defaults();
        raw.merge(given_keys);
        let n = raw.network()?;
        let data_dir = given("data_dir", raw.data_dir.take())?;
        if data_dir.as_os_str().is_empty() {
            return err("data_dir: must not be empty");
        }
        let l = raw.logging()?;
        let t = raw.timing()?;
        let m = raw.limits()?;
        let a = raw.access()?;
        let write_acks = match given("write_acks", raw.write_acks.take())? {
            serde_yaml::Value::Number(n) => crate::cluster::acks::Wanted::parse(&n.to_string()),
            serde_yaml::Value::String(t) => crate::cluster::acks::Wanted::parse(&t),
            other => Err(format!("not {other:?}")),
        }
        .map_err(|e| ConfigError(format!("write_acks: {e}")))?;
        let write_ack_timeout = seconds("write_ack_timeout", raw.write_ack_timeout)?;
        if a.tls.as_ref().is_some_and(|t| t.ca.is_none()) && !n.seed_nodes.is_empty() {
            return err("tls_ca_file: must be set when TLS is on and the node has seed_nodes: peers' certificates are checked against it");
        }
        Ok(Config {
            node_id: n.node_id,
            bind_address: n.bind_address,
            port: n.port,
            data_dir,
            seed_nodes: n.seed_nodes,
            read_only: given("read_only", raw.read_only)?,
            log_level: l.log_level,
            log_file: l.log_file,
            log_json: l.log_json,
            join_timeout: t.join_timeout,
            gossip_interval_min: t.gossip_interval_min,
            gossip_interval_max: t.gossip_interval_max,
            sync_interval: t.sync_interval,
            catchup_interval: t.catchup_interval,
            bootstrap_max_age: t.bootstrap_max_age,
            throttle_delay: t.throttle_delay,
            fetch_delay: t.fetch_delay,
            failure_timeout: t.failure_timeout,
            removal_timeout: t.removal_timeout,
            antientropy_interval: t.antientropy_interval,
            advertise_address: n.advertise_address,
            max_value_bytes: m.max_value_bytes,
            http_threads: m.http_threads,
            max_connections: m.max_connections,
            header_timeout: t.header_timeout,
            max_members: m.max_members,
            scrub_interval: t.scrub_interval,
            map_size_mb: m.map_size_mb,
            client_tokens: a.client_tokens,
            cluster_secret: a.cluster_secret,
            write_acks,
            write_ack_timeout,
            tls: a.tls,
        })
    }

    /// The keys whose values differ between two configurations, by the names
    /// they have in the file.
    pub fn changed_keys(&self, other: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        macro_rules! cmp {
            ($($field:ident => $key:literal),* $(,)?) => {
                $( if self.$field != other.$field { out.push($key); } )*
            };
        }
        cmp!(
            node_id => "node_id",
            bind_address => "bind_address",
            port => "port",
            data_dir => "data_dir",
            seed_nodes => "seed_nodes",
            read_only => "read_only",
            log_level => "log_level",
            log_file => "log_file",
            log_json => "log_format",
            join_timeout => "join_timeout",
            gossip_interval_min => "gossip_interval_min",
            gossip_interval_max => "gossip_interval_max",
            sync_interval => "sync_interval",
            catchup_interval => "catchup_interval",
            bootstrap_max_age => "bootstrap_max_age_hours",
            throttle_delay => "throttle_delay_ms",
            fetch_delay => "fetch_delay_ms",
            failure_timeout => "failure_timeout",
            removal_timeout => "removal_timeout",
            antientropy_interval => "antientropy_interval",
            advertise_address => "advertise_address",
            max_value_bytes => "max_value_bytes",
            http_threads => "http_threads",
            max_connections => "max_connections",
            header_timeout => "header_timeout",
            max_members => "max_members",
            scrub_interval => "scrub_interval",
            map_size_mb => "map_size_mb",
            client_tokens => "client_tokens",
            cluster_secret => "cluster_secret",
            write_acks => "write_acks",
            write_ack_timeout => "write_ack_timeout",
            tls => "tls_cert_file, tls_key_file, tls_ca_file, tls_client_auth",
        );
        out
    }

    /// A random wait between the gossip bounds.
    pub fn gossip_wait(&self) -> Duration {
        let min = self.gossip_interval_min.as_secs_f64();
        let max = self.gossip_interval_max.as_secs_f64();
        Duration::from_secs_f64(min + (max - min) * fastrand::f64())
    }
}

/// The commented default configuration written when `./config.yaml` is
/// missing: every key with its default.
pub fn default_file_text() -> String {
    let mut out = String::from(
        "# kvs configuration. Every key is shown with its default; remove the\n\
         # leading '#' to change one. Intervals are seconds and accept fractions.\n\n",
    );
    for (key, default, meaning) in KEYS {
        out.push_str(&format!("# {meaning}\n#{key}: {default}\n\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_raw(RawConfig::from_yaml(yaml)?)
    }

    /// The defaults come from the file template's list itself: each
    /// literal default parses, passes its check, and setting every key to
    /// it explicitly changes nothing.
    #[test]
    fn every_documented_default_is_the_default() {
        let mut yaml = String::new();
        for (key, default, _) in KEYS {
            if default.starts_with('(') {
                continue; // derived (host name, bind address and port)
            }
            yaml.push_str(&format!("{key}: {default}\n"));
        }
        let documented = parse(&yaml).unwrap();
        let built_in = parse("").unwrap();
        assert_eq!(documented.changed_keys(&built_in), Vec::<&str>::new());
        assert!(
            yaml.lines().count() >= KEYS.len() - 2,
            "only {} keys have a literal default",
            yaml.lines().count()
        );
    }

    #[test]
    fn defaults_match_the_original() {
        let c = parse("").unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.bind_address.to_string(), "127.0.0.1");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(c.seed_nodes.is_empty());
        assert!(!c.read_only);
        assert_eq!(c.gossip_interval_min, Duration::from_secs(60));
        assert_eq!(c.gossip_interval_max, Duration::from_secs(120));
        assert_eq!(c.sync_interval, Duration::from_secs(300));
        assert_eq!(c.catchup_interval, Duration::from_secs(120));
        assert_eq!(c.bootstrap_max_age, Duration::from_secs(720 * 3600));
        assert_eq!(c.throttle_delay, Duration::from_millis(100));
        assert_eq!(c.fetch_delay, Duration::from_millis(50));
        assert_eq!(c.failure_timeout, Duration::from_secs(300));
        assert_eq!(c.removal_timeout, Duration::from_secs(600));
        assert_eq!(c.antientropy_interval, Duration::from_secs(600));
        assert_eq!(c.advertise_address, "127.0.0.1:8080");
        assert_eq!(c.max_value_bytes, 1_048_576);
        assert_eq!(c.http_threads, 8);
        assert_eq!(c.max_connections, 512);
        assert_eq!(c.map_size_mb, 1024);
        assert_eq!(c.node_id, host_name());
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert_eq!(c.log_file, None);
        assert!(!c.log_json);
        assert_eq!(c.join_timeout, Duration::from_secs(60));
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.max_members, 1024);
        assert_eq!(c.scrub_interval, Duration::from_secs(86_400));
        assert!(c.client_tokens.is_empty());
        assert_eq!(c.cluster_secret, "");
    }

    #[test]
    fn fractional_intervals_are_accepted() {
        let c = parse("gossip_interval_min: 0.2\ngossip_interval_max: 0.4\nsync_interval: 0.5")
            .unwrap();
        assert_eq!(c.gossip_interval_min, Duration::from_millis(200));
        assert_eq!(c.sync_interval, Duration::from_millis(500));
        let w = c.gossip_wait();
        assert!(w >= Duration::from_millis(200) && w <= Duration::from_millis(400));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("nosuchkey: 1", "nosuchkey"),
            ("port: abc", "port"),
            ("port: 70000", "port"),
            ("read_only: maybe", "read_only"),
            (
                "gossip_interval_min: 10\ngossip_interval_max: 5",
                "gossip_interval_min",
            ),
            ("sync_interval: 0", "sync_interval"),
            ("sync_interval: -3", "sync_interval"),
            ("log_level: loud", "log_level"),
            ("bind_address: nowhere", "bind_address"),
            ("seed_nodes: [\"nohost\"]", "seed_nodes"),
            ("seed_nodes: [\"a:0\"]", "seed_nodes"),
            ("port: 0\nseed_nodes: [\"127.0.0.1:9\"]", "port"),
            ("failure_timeout: 10\nremoval_timeout: 5", "failure_timeout"),
            ("http_threads: 0", "http_threads"),
            ("max_connections: 0", "max_connections"),
            ("max_value_bytes: 0", "max_value_bytes"),
            ("map_size_mb: 0", "map_size_mb"),
            ("throttle_delay_ms: 1.5", "throttle_delay_ms"),
            ("node_id: \"a b\"", "node_id"),
            ("client_tokens: [\"\"]", "client_tokens"),
            ("client_tokens: [\"t\"]", "cluster_secret"),
            (
                "bind_address: 0.0.0.0\nseed_nodes: [\"10.0.0.1:8080\"]",
                "advertise_address",
            ),
        ];
        for (yaml, key) in cases {
            match parse(yaml) {
                Ok(_) => panic!("{yaml:?} was accepted"),
                Err(e) => assert!(e.0.contains(key), "{yaml:?}: {e} does not name {key}"),
            }
        }
    }

    #[test]
    fn command_line_values_override_and_are_checked() {
        let mut raw = RawConfig::from_yaml("port: 9000\nnode_id: filenode").unwrap();
        raw.set("port", "8081").unwrap();
        raw.set("node_id", "123").unwrap();
        raw.set("sync_interval", "0.25").unwrap();
        raw.set("seed_nodes", "[\"127.0.0.1:8080\"]").unwrap();
        let c = Config::from_raw(raw).unwrap();
        assert_eq!(c.port, 8081);
        assert_eq!(c.node_id, "123");
        assert_eq!(c.sync_interval, Duration::from_millis(250));
        assert_eq!(c.seed_nodes, vec!["127.0.0.1:8080".to_string()]);

        let mut raw = RawConfig::default();
        let e = raw.set("port", "eighty").unwrap_err();
        assert!(e.0.contains("--port"), "{e}");
        let e = raw.set("colour", "blue").unwrap_err();
        assert!(e.0.contains("--colour"), "{e}");
    }

    #[test]
    fn the_default_file_parses_to_the_defaults() {
        let text = default_file_text();
        for (key, _, _) in KEYS {
            assert!(text.contains(&format!("#{key}: ")), "{key} missing");
        }
        // Uncommenting every line with a literal default gives the defaults.
        let uncommented: String = text
            .lines()
            .filter(|l| l.starts_with('#') && l.contains(": ") && !l.contains('('))
            .map(|l| format!("{}\n", &l[1..]))
            .filter(|l| !l.starts_with(' '))
            .collect();
        let c = parse(&uncommented).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.max_connections, 512);
    }
}
