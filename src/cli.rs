//! The command-line client, in the same binary as the node:
//! `kvs get|put|delete|ls|watch|members|backup|export|import`.
//!
//! It talks to one node over HTTP: `--addr HOST:PORT` or `$KVS_ADDR`
//! (default 127.0.0.1:8080), with the bearer token from `--token` or
//! `$KVS_TOKEN`. Exit status: 0 done; 1 not found, a failed condition or
//! any other refusal by the node; 2 a usage error or no connection.

use std::io::{BufRead, Read};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::escape::percent_encode;
use crate::output::{self, note, Output, OutputError};

/// The commands this module runs.
pub const COMMANDS: [&str; 9] = [
    "get", "put", "delete", "ls", "watch", "members", "backup", "export", "import",
];

pub const USAGE: &str = "\
Client commands (talk to a running node):
  kvs get KEY                      print the value (exit 1 if absent)
  kvs put KEY [VALUE] [--if-match ETAG] [--ttl SECONDS]
                                   store VALUE (JSON; read from stdin when
                                   not given)
  kvs delete KEY [--recurse]       delete a key, or every key under a prefix
  kvs ls [PREFIX]                  list keys, one per line
  kvs watch KEY|PREFIX/ [--wait SECONDS]
                                   print each change as a JSON line, until
                                   interrupted
  kvs members                      list the cluster's members
  kvs backup FILE                  save a consistent copy of the node's
                                   database (FILE - for stdout); restore it
                                   with kvs restore FILE DIR
  kvs export [PREFIX]              print every key as a JSON line
                                   {\"key\",\"value\",\"timestamp\",\"uuid\"}
  kvs import [FILE]                write JSON lines from FILE (or stdin)
                                   through POST /batch
Client options:
  --addr HOST:PORT   the node (default $KVS_ADDR, else 127.0.0.1:8080)
  --token TOKEN      a client token (default $KVS_TOKEN)
Exit status: 0 done, 1 not found / failed condition / refused, 2 usage or
connection error.
";

/// Ops per `POST /batch` on import (the node takes up to 1 000).
const IMPORT_BATCH_OPS: usize = 1000;
/// Bytes of values per import batch, well under the node's batch limit
/// (four values at `max_value_bytes`); a larger single value goes alone.
const IMPORT_BATCH_BYTES: usize = 1024 * 1024;
/// Keys per listing page for `ls` and `export`.
const PAGE: usize = 1000;
/// How often `import` reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a command failed, and so its exit status.
#[derive(Debug, PartialEq, Eq)]
pub enum CliError {
    /// Exit 2: the command line is wrong.
    Usage(String),
    /// Exit 2: the node could not be reached.
    Connection(String),
    /// Exit 1: not found, a failed condition, a refusal, bad input.
    Failed(String),
    /// Exit 2: what the command prints could not be written.
    Output(String),
    /// Exit 0, quietly: the reader of stdout has gone (`kvs ls | head`).
    Closed,
}

impl From<OutputError> for CliError {
    fn from(e: OutputError) -> Self {
        match e {
            OutputError::Closed => CliError::Closed,
            OutputError::Failed(_) => CliError::Output(e.to_string()),
        }
    }
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            CliError::Closed => 0,
            CliError::Failed(_) => 1,
            CliError::Usage(_) | CliError::Connection(_) | CliError::Output(_) => 2,
        }
    }

    fn message(&self) -> &str {
        match self {
            CliError::Usage(m)
            | CliError::Connection(m)
            | CliError::Failed(m)
            | CliError::Output(m) => m,
            CliError::Closed => "",
        }
    }
}

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub addr: String,
    pub token: Option<String>,
    pub command: Command,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: Option<String>,
        if_match: Option<String>,
        /// Seconds, as given (checked like the node checks `?ttl=`).
        ttl: Option<String>,
    },
    Delete {
        key: String,
        recurse: bool,
    },
    Ls {
        prefix: String,
    },
    Watch {
        target: String,
        wait: Option<u64>,
    },
    Members,
    Backup {
        file: String,
    },
    Export {
        prefix: String,
    },
    Import {
        file: Option<String>,
    },
}

fn usage(m: String) -> CliError {
    CliError::Usage(format!("{m} (see kvs --help)"))
}

/// The options of one command line, and its other arguments.
#[derive(Default)]
struct Options {
    addr: Option<String>,
    token: Option<String>,
    recurse: bool,
    if_match: Option<String>,
    ttl: Option<String>,
    wait: Option<u64>,
    positional: Vec<String>,
}

/// Parses `args` (the command name first); `env` reads the environment.
pub fn parse(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Invocation, CliError> {
    let name = args.first().ok_or_else(|| usage("no command".into()))?;
    let mut o = options(name, &args[1..])?;
    let addr = o
        .addr
        .take()
        .or_else(|| env("KVS_ADDR").filter(|a| !a.is_empty()))
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    if addr.contains('/') || addr.is_empty() {
        return Err(usage(format!("--addr {addr:?}: give HOST:PORT")));
    }
    let token = o
        .token
        .take()
        .or_else(|| env("KVS_TOKEN").filter(|t| !t.is_empty()));
    Ok(Invocation {
        addr,
        token,
        command: command(name, o)?,
    })
}

/// Reads the options a command takes (`--name value` or `--name=value`).
fn options(name: &str, args: &[String]) -> Result<Options, CliError> {
    let takes = |option: &str| -> bool {
        matches!(
            (name, option),
            (_, "addr" | "token") | ("put", "if-match" | "ttl") | ("watch", "wait")
        )
    };
    let mut o = Options::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--recurse" && name == "delete" {
            o.recurse = true;
            continue;
        }
        let Some(opt) = arg.strip_prefix("--") else {
            o.positional.push(arg.clone());
            continue;
        };
        let (opt, inline) = match opt.split_once('=') {
            Some((o, v)) => (o, Some(v.to_string())),
            None => (opt, None),
        };
        if !takes(opt) {
            return Err(usage(format!("kvs {name}: unknown option --{opt}")));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i - 1)
                    .cloned()
                    .ok_or_else(|| usage(format!("option --{opt} needs a value")))?
            }
        };
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| usage(format!("--{opt}: {v:?} is not a whole number")))
        };
        match opt {
            "addr" => o.addr = Some(value),
            "token" => o.token = Some(value),
            "if-match" => o.if_match = Some(value),
            "ttl" => {
                crate::clock::parse_ttl_ms(&value).map_err(|e| usage(format!("--ttl: {e}")))?;
                o.ttl = Some(value)
            }
            _ => o.wait = Some(number(&value)?),
        }
    }
    Ok(o)
}

/// The command, once its arguments are counted.
fn command(name: &str, o: Options) -> Result<Command, CliError> {
    let n = o.positional.len();
    let arity = |min: usize, max: usize, shape: &str| {
        if n < min || n > max {
            Err(usage(format!("usage: kvs {name} {shape}")))
        } else {
            Ok(())
        }
    };
    let mut args = o.positional.into_iter();
    let mut next = || args.next();
    Ok(match name {
        "get" => {
            arity(1, 1, "KEY")?;
            Command::Get {
                key: next().unwrap_or_default(),
            }
        }
        "put" => {
            arity(1, 2, "KEY [VALUE]")?;
            Command::Put {
                key: next().unwrap_or_default(),
                value: next(),
                if_match: o.if_match,
                ttl: o.ttl,
            }
        }
        "delete" => {
            arity(1, 1, "KEY [--recurse]")?;
            Command::Delete {
                key: next().unwrap_or_default(),
                recurse: o.recurse,
            }
        }
        "ls" => {
            arity(0, 1, "[PREFIX]")?;
            Command::Ls {
                prefix: next().unwrap_or_default(),
            }
        }
        "watch" => {
            arity(1, 1, "KEY|PREFIX/ [--wait SECONDS]")?;
            Command::Watch {
                target: next().unwrap_or_default(),
                wait: o.wait,
            }
        }
        "members" => {
            arity(0, 0, "")?;
            Command::Members
        }
        "backup" => {
            arity(1, 1, "FILE")?;
            Command::Backup {
                file: next().unwrap_or_default(),
            }
        }
        "export" => {
            arity(0, 1, "[PREFIX]")?;
            Command::Export {
                prefix: next().unwrap_or_default(),
            }
        }
        "import" => {
            arity(0, 1, "[FILE]")?;
            Command::Import {
                file: next().filter(|f| f != "-"),
            }
        }
        other => return Err(usage(format!("unknown command {other:?}"))),
    })
}

/// Runs a client command; `args` starts with its name.
pub fn main(args: &[String]) -> ExitCode {
    let result = parse(args, |name| std::env::var(name).ok())
        .and_then(|inv| Client::new(&inv).run(inv.command));
    match result {
        Ok(()) | Err(CliError::Closed) => ExitCode::SUCCESS,
        Err(e) => {
            note!("kvs: {}", e.message());
            ExitCode::from(e.code())
        }
    }
}

/// A node's answer.
struct Answer {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: ureq::Body,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    fn text(self) -> Result<String, CliError> {
        self.body
            .into_with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| CliError::Connection(format!("reading the answer: {e}")))
    }

    /// The node's error message for a refusal.
    fn refusal(self, what: &str) -> CliError {
        let status = self.status;
        let text = self.text().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| text.chars().take(200).collect());
        CliError::Failed(format!("{what}: {status} {message}"))
    }
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(inv: &Invocation) -> Client {
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
    fn call(
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
                let rq = self
                    .agent
                    .configure_request(rq)
                    .timeout_global(timeout)
                    .build();
                self.agent.run(rq)
            }
            None => {
                let rq = rq.body(()).map_err(|e| connection(e.to_string()))?;
                let rq = self
                    .agent
                    .configure_request(rq)
                    .timeout_global(timeout)
                    .build();
                self.agent.run(rq)
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

    fn run(&self, command: Command) -> Result<(), CliError> {
        match command {
            Command::Get { key } => self.get(&key),
            Command::Put {
                key,
                value,
                if_match,
                ttl,
            } => self.put(&key, value, if_match, ttl),
            Command::Delete { key, recurse } => self.delete(&key, recurse),
            Command::Ls { prefix } => self.ls(&prefix),
            Command::Watch { target, wait } => self.watch(&target, wait),
            Command::Members => self.members(),
            Command::Backup { file } => self.backup(&file),
            Command::Export { prefix } => self.export(&prefix),
            Command::Import { file } => self.import(file.as_deref()),
        }
    }

    fn get(&self, key: &str) -> Result<(), CliError> {
        let answer = self.call("GET", &kv_path(key), None, &[], Some(CALL_TIMEOUT))?;
        match answer.status {
            200 => {
                let text = answer.text()?;
                Ok(output::print(format_args!("{text}"))?)
            }
            404 => Err(CliError::Failed(format!("not found: {key}"))),
            _ => Err(answer.refusal(key)),
        }
    }

    fn put(
        &self,
        key: &str,
        value: Option<String>,
        if_match: Option<String>,
        ttl: Option<String>,
    ) -> Result<(), CliError> {
        let value = match value {
            Some(v) => v,
            None => {
                let mut v = String::new();
                std::io::stdin()
                    .read_to_string(&mut v)
                    .map_err(|e| CliError::Failed(format!("reading the value from stdin: {e}")))?;
                v
            }
        };
        let mut path = kv_path(key);
        if let Some(ttl) = ttl {
            path.push_str(&format!("?ttl={ttl}"));
        }
        let mut headers = Vec::new();
        if let Some(tag) = &if_match {
            headers.push(("If-Match", tag.as_str()));
        }
        let answer = self.call(
            "PUT",
            &path,
            Some(value.as_bytes()),
            &headers,
            Some(CALL_TIMEOUT),
        )?;
        match answer.status {
            200 | 201 => Ok(output::print(format_args!("{}", answer.text()?))?),
            _ => Err(answer.refusal(key)),
        }
    }

    fn delete(&self, key: &str, recurse: bool) -> Result<(), CliError> {
        let mut path = kv_path(key);
        if recurse {
            path.push_str("?recurse");
        }
        let answer = self.call("DELETE", &path, None, &[], Some(CALL_TIMEOUT))?;
        match answer.status {
            200 => Ok(output::print(format_args!("{}", answer.text()?))?),
            204 => Ok(()),
            404 => Err(CliError::Failed(format!("not found: {key}"))),
            _ => Err(answer.refusal(key)),
        }
    }

    /// Pages through `?keys` or `?recurse`, handing each entry's JSON text
    /// to `each`.
    fn pages(
        &self,
        prefix: &str,
        mode: &str,
        mut each: impl FnMut(&RawValue) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("{}?{mode}&limit={PAGE}", kv_path(prefix));
            if let Some(a) = &after {
                // The header is already percent-encoded.
                path.push_str(&format!("&after={a}"));
            }
            let answer = self.call("GET", &path, None, &[], Some(CALL_TIMEOUT))?;
            if answer.status != 200 {
                return Err(answer.refusal(&format!("listing {prefix:?}")));
            }
            let next = answer
                .header("X-Kvs-More")
                .filter(|m| m == "true")
                .and_then(|_| answer.header("X-Kvs-Next-After"));
            let text = answer.text()?;
            let entries: Vec<Box<RawValue>> = serde_json::from_str(&text).map_err(|e| {
                CliError::Failed(format!("the node's listing is not a JSON list: {e}"))
            })?;
            for entry in &entries {
                each(entry)?;
            }
            match next {
                Some(n) => after = Some(n),
                None => return Ok(()),
            }
        }
    }

    fn ls(&self, prefix: &str) -> Result<(), CliError> {
        let mut out = Output::stdout();
        self.pages(prefix, "keys", |entry| {
            let key: String = serde_json::from_str(entry.get())
                .map_err(|e| CliError::Failed(format!("a listed key is not a string: {e}")))?;
            Ok(out.line(format_args!("{key}"))?)
        })?;
        Ok(out.finish()?)
    }

    fn export(&self, prefix: &str) -> Result<(), CliError> {
        let mut out = Output::stdout();
        let mut n = 0u64;
        self.pages(prefix, "recurse", |entry| {
            n += 1;
            // A line break can only be whitespace between JSON tokens (in a
            // string it is escaped): a space keeps the value and the line.
            let line = entry.get().replace(['\n', '\r'], " ");
            Ok(out.line(format_args!("{line}"))?)
        })?;
        out.finish()?;
        note!("exported {n} keys");
        Ok(())
    }

    fn import(&self, file: Option<&str>) -> Result<(), CliError> {
        let input: Box<dyn BufRead> = match file {
            Some(f) => Box::new(std::io::BufReader::new(
                std::fs::File::open(f).map_err(|e| CliError::Failed(format!("{f}: {e}")))?,
            )),
            None => Box::new(std::io::stdin().lock()),
        };
        let name = file.unwrap_or("stdin");
        let started = Instant::now();
        let mut last_report = started;
        let mut batch = Batch::default();
        let mut imported = 0u64;
        for (i, line) in input.lines().enumerate() {
            let number = i + 1;
            let line = line.map_err(|e| CliError::Failed(format!("{name}: line {number}: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let entry: ImportLine = serde_json::from_str(&line).map_err(|e| {
                CliError::Failed(format!(
                    "{name}: line {number}: not an export line {{\"key\",\"value\",...}}: {e} \
                     ({imported} keys imported before it)"
                ))
            })?;
            batch.add(&entry.key, entry.value.get(), number);
            if batch.ops >= IMPORT_BATCH_OPS || batch.bytes >= IMPORT_BATCH_BYTES {
                imported += self.send_batch(&mut batch, name, imported)?;
            }
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                note!(
                    "imported {imported} keys ({:.0} keys/s)",
                    imported as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        if batch.ops > 0 {
            imported += self.send_batch(&mut batch, name, imported)?;
        }
        note!(
            "imported {imported} keys in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn send_batch(&self, batch: &mut Batch, name: &str, before: u64) -> Result<u64, CliError> {
        let body = batch.take();
        let answer = self.call("POST", "/batch", Some(&body.body), &[], Some(CALL_TIMEOUT))?;
        if answer.status != 200 {
            let (first, last) = body.lines;
            return Err(match answer.refusal("POST /batch") {
                CliError::Failed(m) => CliError::Failed(format!(
                    "{name}: lines {first}–{last} refused, none of them written \
                     ({before} keys imported before them): {m}"
                )),
                other => other,
            });
        }
        Ok(body.ops as u64)
    }

    fn members(&self) -> Result<(), CliError> {
        let answer = self.call("GET", "/members/", None, &[], Some(CALL_TIMEOUT))?;
        if answer.status != 200 {
            return Err(answer.refusal("members"));
        }
        #[derive(Deserialize)]
        struct Member {
            id: String,
            address: String,
            state: String,
            #[serde(default, rename = "self")]
            is_self: bool,
        }
        let members: Vec<Member> = serde_json::from_str(&answer.text()?)
            .map_err(|e| CliError::Failed(format!("the member list is not what kvs sends: {e}")))?;
        let width = members.iter().map(|m| m.id.len()).max().unwrap_or(2).max(2);
        let awidth = members
            .iter()
            .map(|m| m.address.len())
            .max()
            .unwrap_or(7)
            .max(7);
        let mut out = Output::stdout();
        out.line(format_args!(
            "{:width$}  {:awidth$}  STATE",
            "ID", "ADDRESS"
        ))?;
        for m in &members {
            let mark = if m.is_self { "  (this node)" } else { "" };
            out.line(format_args!(
                "{:width$}  {:awidth$}  {}{mark}",
                m.id, m.address, m.state
            ))?;
        }
        Ok(out.finish()?)
    }

    fn backup(&self, file: &str) -> Result<(), CliError> {
        let answer = self.call("GET", "/backup", None, &[], None)?;
        if answer.status != 200 {
            return Err(answer.refusal("backup"));
        }
        let mut reader = answer.body.into_reader();
        if file == "-" {
            let mut out = Output::stdout();
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0u64;
            loop {
                let got = reader
                    .read(&mut buf)
                    .map_err(|e| CliError::Connection(format!("backup: {e}")))?;
                if got == 0 {
                    break;
                }
                out.bytes(&buf[..got])?;
                n += got as u64;
            }
            out.finish()?;
            note!("backup: {n} bytes");
            return Ok(());
        }
        // Written beside the target, then renamed: FILE is whole or absent.
        let partial = format!("{file}.partial");
        let fail = |e: std::io::Error| {
            let _ = std::fs::remove_file(&partial);
            CliError::Failed(format!("backup to {file}: {e}"))
        };
        let mut out = std::fs::File::create(&partial).map_err(fail)?;
        let n = std::io::copy(&mut reader, &mut out).map_err(fail)?;
        out.sync_all().map_err(fail)?;
        std::fs::rename(&partial, file).map_err(fail)?;
        note!("backup: {n} bytes written to {file}");
        Ok(())
    }

    /// Follows the changes feed from now on: each change under `target`
    /// (a key, or a prefix) as one JSON line, until interrupted.
    fn watch(&self, target: &str, wait: Option<u64>) -> Result<(), CliError> {
        let wait = wait.unwrap_or(300);
        // Where "now" is: this node's commit index.
        let answer = self.call(
            "GET",
            &format!("{}?keys&limit=1", kv_path(target)),
            None,
            &[],
            Some(CALL_TIMEOUT),
        )?;
        if answer.status != 200 {
            return Err(answer.refusal(target));
        }
        let mut index = answer
            .header("X-Kvs-Index")
            .and_then(|i| i.parse::<u64>().ok())
            .ok_or_else(|| CliError::Failed("the node sent no X-Kvs-Index".into()))?;
        let mut out = Output::stdout();
        loop {
            let path = format!("{}?changes&index={index}&wait={wait}s", kv_path(target));
            let answer = self.call("GET", &path, None, &[], None)?;
            let next = answer
                .header("X-Kvs-Index")
                .and_then(|i| i.parse::<u64>().ok());
            match (answer.status, next) {
                (200, Some(next)) => {
                    let text = answer.text()?;
                    let feed: Feed = serde_json::from_str(&text).map_err(|e| {
                        CliError::Failed(format!(
                            "the changes are not {{\"index\", \"changes\": [...]}}: {e}"
                        ))
                    })?;
                    for c in &feed.changes {
                        out.line(format_args!("{}", c.get()))?;
                    }
                    out.flush()?;
                    index = feed.index.max(next);
                }
                (410, Some(next)) => {
                    // Older than the history the node keeps (it restarted,
                    // or this client fell far behind).
                    note!("kvs: some changes were missed; following again from index {next}");
                    index = next;
                }
                _ => return Err(answer.refusal(target)),
            }
        }
    }
}

/// A changes reply: where to ask from next, and what changed.
#[derive(Deserialize)]
struct Feed {
    index: u64,
    changes: Vec<Box<RawValue>>,
}

/// One line of an export file.
#[derive(Deserialize)]
struct ImportLine {
    key: String,
    value: Box<RawValue>,
}

/// An import batch being filled: the JSON body of `POST /batch`.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    ops: usize,
    bytes: usize,
    lines: (usize, usize),
}

impl Batch {
    fn add(&mut self, key: &str, value: &str, line: usize) {
        self.body.push(if self.ops == 0 { b'[' } else { b',' });
        self.body.extend_from_slice(b"{\"op\":\"put\",\"key\":");
        // serde_json cannot fail on a &str.
        let _ = serde_json::to_writer(&mut self.body, key);
        self.body.extend_from_slice(b",\"value\":");
        self.body.extend_from_slice(value.as_bytes());
        self.body.push(b'}');
        if self.ops == 0 {
            self.lines.0 = line;
        }
        self.lines.1 = line;
        self.ops += 1;
        self.bytes += value.len() + key.len();
    }

    fn take(&mut self) -> Batch {
        self.body.push(b']');
        std::mem::take(self)
    }
}

fn kv_path(key: &str) -> String {
    format!("/kv/{}", percent_encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn commands_and_their_arguments() {
        let inv = parse(&args("get users/john"), no_env).unwrap();
        assert_eq!(inv.addr, "127.0.0.1:8080");
        assert_eq!(inv.token, None);
        assert_eq!(
            inv.command,
            Command::Get {
                key: "users/john".into()
            }
        );
        let inv = parse(
            &args("put k {\"a\":1} --if-match \"x\" --ttl=30 --addr 10.0.0.1:9000"),
            no_env,
        )
        .unwrap();
        assert_eq!(inv.addr, "10.0.0.1:9000");
        assert_eq!(
            inv.command,
            Command::Put {
                key: "k".into(),
                value: Some("{\"a\":1}".into()),
                if_match: Some("\"x\"".into()),
                ttl: Some("30".into()),
            }
        );
        assert_eq!(
            parse(&args("put k"), no_env).unwrap().command,
            Command::Put {
                key: "k".into(),
                value: None,
                if_match: None,
                ttl: None
            }
        );
        assert_eq!(
            parse(&args("delete users/ --recurse"), no_env)
                .unwrap()
                .command,
            Command::Delete {
                key: "users/".into(),
                recurse: true
            }
        );
        assert_eq!(
            parse(&args("ls"), no_env).unwrap().command,
            Command::Ls { prefix: "".into() }
        );
        assert_eq!(
            parse(&args("import -"), no_env).unwrap().command,
            Command::Import { file: None }
        );
        assert_eq!(
            parse(&args("watch jobs/ --wait 5"), no_env)
                .unwrap()
                .command,
            Command::Watch {
                target: "jobs/".into(),
                wait: Some(5)
            }
        );
    }

    #[test]
    fn the_environment_gives_defaults_that_options_override() {
        let env = |name: &str| match name {
            "KVS_ADDR" => Some("node2:8082".to_string()),
            "KVS_TOKEN" => Some("s3cret".to_string()),
            _ => None,
        };
        let inv = parse(&args("members"), env).unwrap();
        assert_eq!(inv.addr, "node2:8082");
        assert_eq!(inv.token.as_deref(), Some("s3cret"));
        let inv = parse(&args("members --token other --addr h:1"), env).unwrap();
        assert_eq!(inv.addr, "h:1");
        assert_eq!(inv.token.as_deref(), Some("other"));
    }

    #[test]
    fn usage_errors_exit_2() {
        for bad in [
            "get",
            "get a b",
            "put",
            "members extra",
            "backup",
            "delete k --ttl 3",
            "get k --recurse",
            "put k v --ttl soon",
            "put k v --ttl -1",
            "get k --addr",
            "get k --addr http://h:1/",
            "frobnicate",
        ] {
            let e = parse(&args(bad), no_env).unwrap_err();
            assert_eq!(e.code(), 2, "{bad}: {e:?}");
            assert!(matches!(e, CliError::Usage(_)), "{bad}");
        }
        assert_eq!(CliError::Failed("x".into()).code(), 1);
        assert_eq!(CliError::Connection("x".into()).code(), 2);
    }

    #[test]
    fn import_batches_are_json_lists_of_puts() {
        let mut b = Batch::default();
        b.add("a\"b", "{\"n\":1}", 3);
        b.add("c", "[1,2]", 4);
        let body = b.take();
        let v: serde_json::Value = serde_json::from_slice(&body.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"op":"put","key":"a\"b","value":{"n":1}},
                {"op":"put","key":"c","value":[1,2]}
            ])
        );
        assert_eq!((body.ops, body.lines), (2, (3, 4)));
        assert_eq!(b.ops, 0, "taken");
    }
}
