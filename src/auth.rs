//! Client tokens (`client_tokens`, DESIGN §11): plain strings with full
//! access, and scoped entries that may read or write only under some key
//! prefixes, or reach the admin endpoints.
//!
//! Every token is kept as its SHA-256 digest only, whether the file gave
//! it in clear (`"..."` or `token:`) or hashed (`token_sha256:`), so a
//! request's token is hashed once and compared with every digest in time
//! that does not depend on which one (or where) it matches. The set is
//! swapped whole on SIGHUP.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ring::digest::{digest, SHA256};

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    /// Prefixes whose keys it may read: its `read` and `write` entries,
    /// sorted, with any prefix that another one already covers removed.
    read: Vec<String>,
    /// Prefixes whose keys it may write, the same way.
    write: Vec<String>,
    /// `/metrics`, `/members/`, a client's leave and `/backup`.
    admin: bool,
}

/// One accepted token: its digest and its scope (`None`: everything).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    digest: [u8; 32],
    scope: Option<Arc<Scope>>,
}

impl fmt::Debug for Token {
    // The digest of a token is as good as the token against a weak one:
    // it never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// What one request may do, once its token is known.
#[derive(Debug, Clone)]
pub enum Access {
    /// No tokens configured, or a full-access token.
    Full,
    Scoped(Arc<Scope>),
}

/// Why a request's credentials were refused, as counted in
/// `kvs_auth_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No `Authorization: Bearer` token.
    Missing,
    /// A token that is not in `client_tokens`.
    Unknown,
    /// A known token used outside its scope (403).
    Scope,
    /// An internal call without the right cluster secret.
    ClusterSecret,
    /// An internal call on a connection without a client certificate
    /// (`tls_client_auth: peers`).
    ClientCertificate,
}

impl Failure {
    pub const ALL: [Failure; 5] = [
        Failure::Missing,
        Failure::Unknown,
        Failure::Scope,
        Failure::ClusterSecret,
        Failure::ClientCertificate,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing_token",
            Failure::Unknown => "unknown_token",
            Failure::Scope => "out_of_scope",
            Failure::ClusterSecret => "cluster_secret",
            Failure::ClientCertificate => "client_certificate",
        }
    }
}

fn covers(prefixes: &[String], key: &str) -> bool {
    prefixes.iter().any(|p| key.starts_with(p.as_str()))
}

impl Access {
    pub fn is_admin(&self) -> bool {
        match self {
            Access::Full => true,
            Access::Scoped(s) => s.admin,
        }
    }

    pub fn may_read(&self, key: &str) -> bool {
        match self {
            Access::Full => true,
            Access::Scoped(s) => covers(&s.read, key),
        }
    }

    pub fn may_write(&self, key: &str) -> bool {
        match self {
            Access::Full => true,
            Access::Scoped(s) => covers(&s.write, key),
        }
    }

    /// Whether every key that starts with `prefix` may be written.
    pub fn may_write_all(&self, prefix: &str) -> bool {
        self.may_write(prefix)
    }

    /// Whether every key that starts with `prefix` may be read.
    pub fn may_read_all(&self, prefix: &str) -> bool {
        self.may_read(prefix)
    }

    /// For a listing under `prefix`: `None` when every key there may be
    /// read, else the sorted prefixes under `prefix` that may be (none at
    /// all: nothing is shown).
    pub fn readable_under(&self, prefix: &str) -> Option<Vec<String>> {
        match self {
            Access::Full => None,
            Access::Scoped(_) if self.may_read_all(prefix) => None,
            Access::Scoped(s) => Some(
                s.read
                    .iter()
                    .filter(|r| r.starts_with(prefix))
                    .cloned()
                    .collect(),
            ),
        }
    }
}

/// The tokens in force, swapped whole when the configuration reloads.
#[derive(Debug)]
pub struct Tokens {
    current: RwLock<Arc<Vec<Token>>>,
    /// Whether `current` holds any token: an open node answers without
    /// touching the lock (every request asks, from every thread).
    any: AtomicBool,
}

impl Tokens {
    pub fn new(tokens: Vec<Token>) -> Tokens {
        Tokens {
            any: AtomicBool::new(!tokens.is_empty()),
            current: RwLock::new(Arc::new(tokens)),
        }
    }

    pub fn replace(&self, tokens: Vec<Token>) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        self.any.store(!tokens.is_empty(), Ordering::Release);
        *current = Arc::new(tokens);
    }

    fn get(&self) -> Arc<Vec<Token>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The access of a request whose `Authorization` header is `header`.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Access, Failure> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(Access::Full);
        }
        let tokens = self.get();
        if tokens.is_empty() {
            return Ok(Access::Full);
        }
        let given = header
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Failure::Missing)?;
        // A request is authenticated twice on its connection's thread (from
        // its head, then in its handler): the second time is a lookup.
        if let Some(known) = LAST.with(|last| {
            last.borrow().as_ref().and_then(|(set, token, access)| {
                (Arc::ptr_eq(set, &tokens) && constant_time_eq(token, given.as_bytes()))
                    .then(|| access.clone())
            })
        }) {
            return known;
        }
        let result = Self::find(&tokens, given);
        LAST.with(|last| {
            *last.borrow_mut() = Some((tokens.clone(), given.as_bytes().to_vec(), result.clone()))
        });
        result
    }

    fn find(tokens: &[Token], given: &str) -> Result<Access, Failure> {
        let given = sha256(given.as_bytes());
        // Every digest is compared, so the time does not tell which one
        // matched; entries are distinct, so at most one does.
        let mut found = None;
        for t in tokens.iter() {
            if constant_time_eq(&t.digest, &given) {
                found = Some(t);
            }
        }
        match found {
            Some(Token { scope: None, .. }) => Ok(Access::Full),
            Some(Token { scope: Some(s), .. }) => Ok(Access::Scoped(s.clone())),
            None => Err(Failure::Unknown),
        }
    }
}

/// The last token a thread checked: against which set, the token, and
/// what it may do.
type LastCheck = Option<(Arc<Vec<Token>>, Vec<u8>, Result<Access, Failure>)>;

thread_local! {
    static LAST: std::cell::RefCell<LastCheck> = const { std::cell::RefCell::new(None) };
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A fresh random token (192 bits, hex) for `kvs token new`.
pub fn new_token() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random source failed".to_string())?;
    Ok(hex(&bytes))
}

fn check_token_text(t: &str) -> Result<(), String> {
    if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a token must be non-empty and contain no spaces".into());
    }
    Ok(())
}

/// Sorts prefixes and drops those that another one covers.
fn normalize(mut prefixes: Vec<String>) -> Vec<String> {
    prefixes.sort();
    prefixes.dedup();
    let mut out: Vec<String> = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        // Sorted: a covering prefix comes before everything it covers.
        if !covers(&out, &p) {
            out.push(p);
        }
    }
    out
}

fn prefix_list(field: &str, value: &serde_yaml::Value) -> Result<Vec<String>, String> {
    let items = value
        .as_sequence()
        .ok_or_else(|| format!("{field} must be a list of key prefixes"))?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let p = item
            .as_str()
            .ok_or_else(|| format!("{field}: every prefix must be a string"))?;
        if p.chars().any(char::is_control) || p.len() > 1024 {
            return Err(format!(
                "{field}: {p:?} is not a key prefix (no control characters, at most 1024 bytes)"
            ));
        }
        out.push(p.to_string());
    }
    Ok(out)
}

fn parse_entry(value: &serde_yaml::Value) -> Result<Token, String> {
    if let Some(t) = value.as_str() {
        check_token_text(t)?;
        return Ok(Token {
            digest: sha256(t.as_bytes()),
            scope: None,
        });
    }
    let map = value.as_mapping().ok_or(
        "an entry is a token (a string) or a mapping with token or token_sha256, \
         and read, write, admin",
    )?;
    let mut clear = None;
    let mut hashed = None;
    let mut read = Vec::new();
    let mut write = Vec::new();
    let mut admin = false;
    for (k, v) in map {
        match k.as_str().unwrap_or("") {
            "token" => {
                let t = v.as_str().ok_or("token must be a string")?;
                check_token_text(t)?;
                clear = Some(sha256(t.as_bytes()));
            }
            "token_sha256" => {
                let h = v.as_str().ok_or("token_sha256 must be a string")?;
                hashed = Some(from_hex(h).ok_or(
                    "token_sha256 must be 64 hexadecimal digits (the SHA-256 of the token)",
                )?);
            }
            "read" => read = prefix_list("read", v)?,
            "write" => write = prefix_list("write", v)?,
            "admin" => admin = v.as_bool().ok_or("admin must be true or false")?,
            _ => {
                return Err(format!(
                "unknown field {}: an entry takes token or token_sha256, and read, write, admin",
                serde_yaml::to_string(k).unwrap_or_default().trim()
            ))
            }
        }
    }
    let digest = match (clear, hashed) {
        (Some(d), None) | (None, Some(d)) => d,
        (Some(_), Some(_)) => return Err("give token or token_sha256, not both".into()),
        (None, None) => return Err("the entry has no token or token_sha256".into()),
    };
    // A token that may write a key may read it.
    read.extend(write.iter().cloned());
    Ok(Token {
        digest,
        scope: Some(Arc::new(Scope {
            read: normalize(read),
            write: normalize(write),
            admin,
        })),
    })
}

/// Reads `client_tokens` as the YAML gave it; every error names the entry.
pub fn parse_tokens(values: &[serde_yaml::Value]) -> Result<Vec<Token>, String> {
    let mut out: Vec<Token> = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let t = parse_entry(v).map_err(|e| format!("client_tokens entry {}: {e}", i + 1))?;
        if let Some(j) = out.iter().position(|o| o.digest == t.digest) {
            return Err(format!(
                "client_tokens entry {}: the same token as entry {}",
                i + 1,
                j + 1
            ));
        }
        out.push(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(yaml: &str) -> Result<Vec<Token>, String> {
        let values: Vec<serde_yaml::Value> = serde_yaml::from_str(yaml).unwrap();
        parse_tokens(&values)
    }

    fn access(set: &Tokens, token: &str) -> Result<Access, Failure> {
        set.authenticate(Some(&format!("Bearer {token}")))
    }

    #[test]
    fn plain_and_scoped_tokens() {
        let hash = hex(&sha256(b"hashed-token"));
        let set = Tokens::new(
            tokens(&format!(
                "- full\n\
                 - token: app\n  read: [shared/config]\n  write: [app/]\n\
                 - token_sha256: \"{hash}\"\n  admin: true\n"
            ))
            .unwrap(),
        );
        assert!(matches!(access(&set, "full"), Ok(Access::Full)));
        let app = access(&set, "app").unwrap();
        assert!(app.may_read("app/x") && app.may_write("app/x"));
        assert!(app.may_read("shared/config") && !app.may_write("shared/config"));
        assert!(!app.may_read("shared/other") && !app.may_read("ap"));
        assert!(!app.is_admin());
        let admin = access(&set, "hashed-token").unwrap();
        assert!(admin.is_admin() && !admin.may_read("app/x"));
        assert_eq!(access(&set, "nope").unwrap_err(), Failure::Unknown);
        assert_eq!(set.authenticate(None).unwrap_err(), Failure::Missing);
        assert_eq!(
            set.authenticate(Some("Basic abc")).unwrap_err(),
            Failure::Missing
        );
        assert!(matches!(
            Tokens::new(Vec::new()).authenticate(None),
            Ok(Access::Full)
        ));
    }

    #[test]
    fn a_replaced_set_is_not_answered_from_the_last_check() {
        let set = Tokens::new(tokens("- a\n- {token: s, read: [x/]}").unwrap());
        assert!(matches!(access(&set, "a"), Ok(Access::Full)));
        assert!(
            matches!(access(&set, "a"), Ok(Access::Full)),
            "the second check"
        );
        assert!(matches!(access(&set, "s"), Ok(Access::Scoped(_))));
        assert_eq!(access(&set, "t").unwrap_err(), Failure::Unknown);
        set.replace(tokens("- b").unwrap());
        assert_eq!(access(&set, "a").unwrap_err(), Failure::Unknown);
        assert!(matches!(access(&set, "b"), Ok(Access::Full)));
        set.replace(Vec::new());
        assert!(matches!(access(&set, "nothing"), Ok(Access::Full)));
    }

    #[test]
    fn prefixes_under_a_listing() {
        let set = Tokens::new(tokens("- token: t\n  read: [a/b/, a/c, \"\"]\n").unwrap());
        // "" covers everything.
        assert_eq!(access(&set, "t").unwrap().readable_under("z/"), None);
        let set = Tokens::new(tokens("- token: t\n  read: [a/b/, a/c, a/b/x/, b/]\n").unwrap());
        let t = access(&set, "t").unwrap();
        assert_eq!(
            t.readable_under("a/"),
            Some(vec!["a/b/".to_string(), "a/c".to_string()])
        );
        assert_eq!(t.readable_under("a/b/q"), None);
        assert_eq!(t.readable_under("c/"), Some(vec![]));
        assert_eq!(t.readable_under("").unwrap().len(), 3);
    }

    #[test]
    fn bad_entries_are_named() {
        for (yaml, want) in [
            ("- \"\"", "entry 1"),
            ("- ok\n- \"has space\"", "entry 2"),
            (
                "- {token: a, token_sha256: 0000000000000000000000000000000000000000000000000000000000000000}",
                "not both",
            ),
            ("- {read: [a/]}", "no token"),
            ("- {token_sha256: abc}", "64 hexadecimal"),
            ("- {token: a, reed: [a/]}", "unknown field reed"),
            ("- {token: a, read: a/}", "list of key prefixes"),
            ("- {token: a, admin: yes please}", "true or false"),
            ("- a\n- {token: a, admin: true}", "same token as entry 1"),
            ("- [a]", "mapping"),
        ] {
            let e = tokens(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn debug_output_holds_no_digest() {
        let t = tokens("- secret-token").unwrap();
        let text = format!("{t:?}");
        assert!(!text.contains("digest") && text.contains("scope"), "{text}");
    }

    #[test]
    fn new_tokens_differ() {
        let a = new_token().unwrap();
        assert_eq!(a.len(), 48);
        assert_ne!(a, new_token().unwrap());
    }
}
