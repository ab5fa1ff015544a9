//! Offline tools that work on a stopped node's data directory:
//! `test-conflict` (the original's conflict fixture), `load` (bulk data for
//! tests and benchmarks), `verify` (the anti-entropy summary self-check)
//! and `restore` (a data directory from a `GET /backup` file).

use std::path::PathBuf;

use crate::clock;
use crate::output::{Output, OutputError};
use crate::store::{check_key, Stamp, Store, StoreError, Version, VersionId};

/// Why a tool failed.
#[derive(Debug)]
pub enum ToolError {
    /// Wrong arguments (exit status 2, like the client's usage errors).
    Usage(String),
    /// A file or directory could not be read or written.
    Io(String, std::io::Error),
    /// A data directory's store failed (what was being done, why).
    Store(String, StoreError),
    /// The data does not pass a check, or is not what the tool needs.
    Rejected(String),
    /// What the tool prints could not be written (exit 2), or stdout was
    /// closed early (exit 0, quietly).
    Output(OutputError),
}

impl From<OutputError> for ToolError {
    fn from(e: OutputError) -> Self {
        ToolError::Output(e)
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolError::Usage(m) | ToolError::Rejected(m) => write!(f, "{m}"),
            ToolError::Io(what, e) => write!(f, "{what}: {e}"),
            ToolError::Store(what, e) => write!(f, "{what}: {e}"),
            ToolError::Output(e) => write!(f, "{e}"),
        }
    }
}

impl ToolError {
    /// The process's exit status.
    pub fn exit_status(&self) -> u8 {
        match self {
            ToolError::Output(OutputError::Closed) => 0,
            ToolError::Usage(_) | ToolError::Output(_) => 2,
            ToolError::Io(..) | ToolError::Store(..) | ToolError::Rejected(_) => 1,
        }
    }
}

/// A store failure while doing `what`.
fn in_store(what: impl std::fmt::Display) -> impl FnOnce(StoreError) -> ToolError {
    move |e| ToolError::Store(what.to_string(), e)
}

/// An I/O failure on `what`.
fn in_io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ToolError {
    move |e| ToolError::Io(what.to_string(), e)
}

/// Map size the tools open data directories with (MiB).
const TOOL_MAP_SIZE_MB: u64 = 1024;
/// `kvs verify` lists at most this many invalid values.
const VERIFY_LIST_MAX: usize = 100;

/// Options given as `--name value`.
type Options = Vec<(String, String)>;

/// Splits `args` into positional arguments and `--name value` options.
fn parse(args: &[String], options: &[&str]) -> Result<(Vec<String>, Options), ToolError> {
    let mut positional = Vec::new();
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if let Some(name) = args[i].strip_prefix("--") {
            if !options.contains(&name) {
                return Err(ToolError::Usage(format!("unknown option --{name}")));
            }
            let value = args
                .get(i + 1)
                .ok_or_else(|| ToolError::Usage(format!("option --{name} needs a value")))?;
            opts.push((name.to_string(), value.clone()));
            i += 2;
        } else {
            positional.push(args[i].clone());
            i += 1;
        }
    }
    Ok((positional, opts))
}

fn option<'a>(opts: &'a [(String, String)], name: &str) -> Option<&'a str> {
    opts.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn number(opts: &[(String, String)], name: &str, default: u64) -> Result<u64, ToolError> {
    match option(opts, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ToolError::Usage(format!("--{name}: {v:?} is not a number"))),
    }
}

/// Writes versions into a data directory in one transaction.
fn write_all(dir: &str, versions: &[(String, Version)]) -> Result<(), ToolError> {
    let store = Store::open(&PathBuf::from(dir), TOOL_MAP_SIZE_MB).map_err(in_store(dir))?;
    store
        .write_versions(versions)
        .map_err(in_store(format!("writing to {dir}")))?;
    Ok(())
}

/// `kvs test-conflict DIR1 DIR2 [DIR3...] [--key K] [--tombstone-in DIR]`:
/// the same key, the same timestamp, different data (and uuids) in each
/// directory; the directory named by `--tombstone-in` gets a tombstone.
pub fn test_conflict(args: &[String]) -> Result<(), ToolError> {
    let usage = "usage: kvs test-conflict DIR1 DIR2 [DIR3...] [--key KEY] [--tombstone-in DIR]";
    let (dirs, opts) = parse(args, &["key", "tombstone-in"])?;
    if dirs.len() < 2 {
        return Err(ToolError::Usage(usage.into()));
    }
    let key = option(&opts, "key").unwrap_or("test/conflict").to_string();
    check_key(&key, false).map_err(|e| ToolError::Usage(format!("--key: {e}")))?;
    let tombstone_in = option(&opts, "tombstone-in");
    if let Some(t) = tombstone_in {
        if !dirs.iter().any(|d| d == t) {
            return Err(ToolError::Usage(format!(
                "--tombstone-in {t} is not one of the directories"
            )));
        }
    }
    let timestamp = clock::now_ms();
    let mut out = Output::stdout();
    out.line(format_args!("key: {key}"))?;
    out.line(format_args!("timestamp: {timestamp}"))?;
    for (i, dir) in dirs.iter().enumerate() {
        let deleted = tombstone_in == Some(dir.as_str());
        let data = if deleted {
            Vec::new()
        } else {
            let doc = serde_json::json!({ "value": format!("version {}", i + 1), "dir": dir });
            doc.to_string().into_bytes()
        };
        let version = Version {
            stamp: Stamp {
                timestamp,
                uuid: VersionId::new_random(),
                deleted,
            },
            expires: None,
            data,
        };
        write_all(dir, &[(key.clone(), version.clone())])?;
        if deleted {
            out.line(format_args!("{dir}: uuid {} tombstone", version.stamp.uuid))?;
        } else {
            out.line(format_args!(
                "{dir}: uuid {} data {}",
                version.stamp.uuid,
                String::from_utf8_lossy(&version.data)
            ))?;
        }
    }
    Ok(out.finish()?)
}

/// `kvs load DIR --count N [--prefix P] [--size B] [--timestamp MS]`:
/// generated keys `P000000001`... with a JSON value of about B bytes.
pub fn load(args: &[String]) -> Result<(), ToolError> {
    let (dirs, opts) = parse(args, &["count", "prefix", "size", "timestamp"])?;
    let [dir] = dirs.as_slice() else {
        return Err(ToolError::Usage(
            "usage: kvs load DIR --count N [--prefix P] [--size BYTES] [--timestamp MS]".into(),
        ));
    };
    let count = number(&opts, "count", 0)?;
    if count == 0 {
        return Err(ToolError::Usage("--count must be at least 1".into()));
    }
    let prefix = option(&opts, "prefix").unwrap_or("load/").to_string();
    let size = number(&opts, "size", 100)? as usize;
    let timestamp = number(&opts, "timestamp", clock::now_ms())?;
    let filler = "x".repeat(size.saturating_sub(40));
    const CHUNK: u64 = 50_000;
    let mut start = 0;
    while start < count {
        let end = (start + CHUNK).min(count);
        let versions: Vec<(String, Version)> = (start..end)
            .map(|i| {
                let key = format!("{prefix}{i:09}");
                let data = format!("{{\"n\":{i},\"fill\":\"{filler}\"}}").into_bytes();
                let version = Version {
                    stamp: Stamp {
                        timestamp,
                        uuid: VersionId::new_random(),
                        deleted: false,
                    },
                    expires: None,
                    data,
                };
                (key, version)
            })
            .collect();
        check_key(&versions[0].0, false).map_err(|e| ToolError::Usage(format!("--prefix: {e}")))?;
        write_all(dir, &versions)?;
        start = end;
    }
    Ok(crate::output::print(format_args!(
        "loaded {count} keys into {dir}"
    ))?)
}

/// `kvs verify DIR`: the summary kept by writes equals one rebuilt from
/// the versions.
pub fn verify(args: &[String]) -> Result<(), ToolError> {
    let (dirs, _) = parse(args, &[])?;
    let [dir] = dirs.as_slice() else {
        return Err(ToolError::Usage("usage: kvs verify DIR".into()));
    };
    let store = Store::open(&PathBuf::from(dir), TOOL_MAP_SIZE_MB).map_err(in_store(dir))?;
    let (versions, tombstones) = store.counts().map_err(in_store(dir))?;
    let (damaged, unchecked) = store
        .damaged_values(VERIFY_LIST_MAX)
        .map_err(in_store(dir))?;
    let mut out = Output::stdout();
    if unchecked > 0 {
        out.line(format_args!(
            "{unchecked} version(s) were written before checksums and cannot be checked \
             (they get one when next written)"
        ))?;
    }
    if !damaged.is_empty() {
        for (key, reason) in &damaged {
            out.line(format_args!("damaged: {key}: {reason}"))?;
        }
        out.flush()?;
        let more = if damaged.len() >= VERIFY_LIST_MAX {
            ", first ones only"
        } else {
            ""
        };
        return Err(ToolError::Rejected(format!(
            "{} version(s) in {dir} cannot be served as stored (listed above{more}); \
             a node does not serve them: write those keys again",
            damaged.len()
        )));
    }
    if store.verify_tree().map_err(in_store(dir))? {
        out.line(format_args!(
            "ok: {versions} versions ({tombstones} tombstones), summary root {:016x}",
            store.tree_root()
        ))?;
        Ok(out.finish()?)
    } else {
        Err(ToolError::Rejected(format!(
            "the anti-entropy summary of {dir} does not match its data"
        )))
    }
}

/// `kvs restore FILE DIR`: makes a new data directory from a backup file.
/// The data is kept whole; the identity of the node that made the backup
/// (its id, `joined_timestamp`, generation, known peers) is not, so the
/// node started on it joins as a new member.
pub fn restore(args: &[String]) -> Result<(), ToolError> {
    let (paths, _) = parse(args, &[])?;
    let [file, dir] = paths.as_slice() else {
        return Err(ToolError::Usage(
            "usage: kvs restore BACKUP_FILE NEW_DATA_DIR".into(),
        ));
    };
    let dir = PathBuf::from(dir);
    let meta = std::fs::metadata(file).map_err(in_io(file))?;
    if !meta.is_file() || meta.len() == 0 {
        return Err(ToolError::Rejected(format!(
            "{file}: not a backup file (empty or not a file)"
        )));
    }
    let created = match std::fs::read_dir(&dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ToolError::Rejected(format!(
                    "{}: not empty; restore into a new or empty directory",
                    dir.display()
                )));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir).map_err(in_io(dir.display()))?;
            true
        }
        Err(e) => return Err(ToolError::Io(dir.display().to_string(), e)),
    };
    let result = restore_into(file, &dir, meta.len());
    if result.is_err() {
        // Leave nothing half-made behind.
        for name in [
            "data.mdb",
            "lock.mdb",
            "kvs.lock",
            crate::store::datafile::MARKER,
        ] {
            let _ = std::fs::remove_file(dir.join(name));
        }
        if created {
            let _ = std::fs::remove_dir(&dir);
        }
    }
    result
}

fn restore_into(file: &str, dir: &std::path::Path, len: u64) -> Result<(), ToolError> {
    let target = dir.join("data.mdb");
    std::fs::copy(file, &target).map_err(in_io(format!("copying {file}")))?;
    std::fs::File::open(&target)
        .and_then(|f| f.sync_all())
        .map_err(in_io(target.display()))?;
    let map_mb = (len / (1024 * 1024) * 2 + 64).max(TOOL_MAP_SIZE_MB);
    let store =
        Store::open(dir, map_mb).map_err(in_store(format!("{file} is not a kvs backup")))?;
    let (versions, tombstones) = store.counts().map_err(in_store(file))?;
    if !store.verify_tree().map_err(in_store(file))? {
        return Err(ToolError::Rejected(format!(
            "{file}: its anti-entropy summary does not match its data (a damaged backup?)"
        )));
    }
    store
        .meta_delete(&crate::store::schema::IDENTITY)
        .map_err(in_store(dir.display()))?;
    Ok(crate::output::print(format_args!(
        "restored {} keys ({versions} versions, {tombstones} tombstones) into {}; \
         start a node with data_dir: {} and its own node_id",
        versions - tombstones,
        dir.display(),
        dir.display()
    ))?)
}

/// `kvs token new [--read PREFIX]... [--write PREFIX]... [--admin]`: a
/// fresh random token, and the `client_tokens` entry that holds only its
/// hash (with the given scope; none given: full access).
pub fn token(args: &[String]) -> Result<(), ToolError> {
    const USAGE: &str = "usage: kvs token new [--read PREFIX]... [--write PREFIX]... [--admin]";
    let Some(("new", rest)) = args.split_first().map(|(f, r)| (f.as_str(), r)) else {
        return Err(ToolError::Usage(USAGE.into()));
    };
    let (mut read, mut write, mut admin) = (Vec::new(), Vec::new(), false);
    let mut i = 0;
    while i < rest.len() {
        match rest[i].as_str() {
            "--admin" => admin = true,
            flag @ ("--read" | "--write") => {
                let value = rest
                    .get(i + 1)
                    .ok_or_else(|| ToolError::Usage(format!("{flag} needs a key prefix")))?;
                if flag == "--read" {
                    &mut read
                } else {
                    &mut write
                }
                .push(value.clone());
                i += 1;
            }
            other => {
                return Err(ToolError::Usage(format!(
                    "unknown argument {other}; {USAGE}"
                )))
            }
        }
        i += 1;
    }
    let token = crate::auth::new_token().map_err(ToolError::Rejected)?;
    let hash = crate::auth::hex(&crate::auth::sha256(token.as_bytes()));
    let list = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    if read.is_empty() && write.is_empty() && !admin {
        // No scope given: everything, as a plain token has.
        write.push(String::new());
        admin = true;
    }
    let mut entry = format!("  - token_sha256: \"{hash}\"\n");
    if !read.is_empty() {
        entry.push_str(&format!("    read: {}\n", list(&read)));
    }
    if !write.is_empty() {
        entry.push_str(&format!("    write: {}\n", list(&write)));
    }
    if admin {
        entry.push_str("    admin: true\n");
    }
    let mut out = Output::stdout();
    out.line(format_args!("{token}"))?;
    out.line(format_args!(
        "# the entry for client_tokens in the config file (it holds only the token's hash):"
    ))?;
    out.line(format_args!("client_tokens:\n{}", entry.trim_end()))?;
    out.flush()?;
    Ok(())
}

/// `kvs tls ca [--dir D] [--days N]` and `kvs tls cert NAME [--ip A]...
/// [--dns H]... [--days N] [--dir D]`.
pub fn tls(args: &[String]) -> Result<(), ToolError> {
    const USAGE: &str = "usage: kvs tls ca [--dir D] [--days N] | \
                         kvs tls cert NAME [--ip A]... [--dns H]... [--days N] [--dir D]";
    let Some((what, rest)) = args.split_first() else {
        return Err(ToolError::Usage(USAGE.into()));
    };
    let (positional, opts) = parse(rest, &["dir", "days", "ip", "dns"])?;
    let dir = PathBuf::from(option(&opts, "dir").unwrap_or("."));
    let days = |default: u64| -> Result<u32, ToolError> {
        match number(&opts, "days", default)? {
            d @ 1..=36_500 => Ok(d as u32),
            d => Err(ToolError::Usage(format!(
                "--days {d}: give 1 to 36500 days"
            ))),
        }
    };
    let all = |name: &str| -> Vec<&str> {
        opts.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let (cert, key) = match (what.as_str(), positional.as_slice()) {
        ("ca", []) => {
            if !all("ip").is_empty() || !all("dns").is_empty() {
                return Err(ToolError::Usage("kvs tls ca takes no --ip or --dns".into()));
            }
            crate::certs::make_ca(&dir, days(1825)?).map_err(ToolError::Rejected)?
        }
        ("cert", [name]) => {
            let ips = all("ip")
                .into_iter()
                .map(|a| {
                    a.parse()
                        .map_err(|_| ToolError::Usage(format!("--ip {a}: not an IP address")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let names = crate::certs::Names {
                ips,
                dns: all("dns").into_iter().map(String::from).collect(),
            };
            crate::certs::make_cert(&dir, name, &names, days(365)?).map_err(ToolError::Rejected)?
        }
        _ => return Err(ToolError::Usage(USAGE.into())),
    };
    let mut out = Output::stdout();
    out.line(format_args!("wrote {}", cert.display()))?;
    out.line(format_args!("wrote {} (mode 0600)", key.display()))?;
    out.flush()?;
    Ok(())
}
