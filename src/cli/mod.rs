//! The command-line client, in the same binary as the node:
//! `kvs get|put|delete|ls|watch|members|backup|export|import`.
//!
//! It talks to one node over HTTP or HTTPS: `--addr [https://]HOST:PORT`
//! or `$KVS_ADDR` (default 127.0.0.1:8080), with the bearer token from
//! `--token` or `$KVS_TOKEN`, the CA from `--cacert` or `$KVS_CACERT` and
//! a client certificate from `--cert`/`--key` (or `$KVS_CERT`/`$KVS_KEY`). Exit status: 0 done; 1 not found, a failed condition or
//! any other refusal by the node; 2 a usage error or no connection.
//!
//! This file parses the command line; `client` is the HTTP client (one
//! call, its answer), `commands` what each command does through it.

use std::process::ExitCode;

use crate::output::{note, OutputError};

/// The commands this module runs.
pub const COMMANDS: [&str; 10] = [
    "get", "put", "delete", "ls", "watch", "members", "backup", "export", "import", "txn",
];

pub const USAGE: &str = "\
Client commands (talk to a running node):
  kvs get KEY                      print the value (exit 1 if absent)
  kvs put KEY [VALUE] [--if-match ETAG] [--ttl SECONDS]
                                   store VALUE (JSON; read from stdin when
                                   not given)
  kvs delete KEY [--recurse]       delete a key, or every key under a prefix
                                   (put, delete and import take --w N|quorum|all:
                                   wait until that many nodes hold the write)
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
  kvs txn FILE|-                   send a transaction (a JSON array of put,
                                   delete, check and get ops) as POST /batch,
                                   print the results; exit 1 if a check fails
Client options:
  --addr [https://]HOST:PORT
                     the node (default $KVS_ADDR, else 127.0.0.1:8080)
  --token TOKEN      a client token (default $KVS_TOKEN)
  --cacert FILE      the CA that the node's certificate is checked against
                     (default $KVS_CACERT, else the system's CA bundle)
  --cert FILE --key FILE
                     a client certificate for mutual TLS (default
                     $KVS_CERT and $KVS_KEY)
Exit status: 0 done, 1 not found / failed condition / refused, 2 usage or
connection error.
";

mod client;
mod commands;

use client::Client;

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
    /// `--addr https://...`: TLS, with these files.
    pub https: bool,
    pub cacert: Option<String>,
    pub cert: Option<(String, String)>,
    pub token: Option<String>,
    /// `--w N|quorum|all`: nodes a write waits for (put, delete, import).
    pub w: Option<String>,
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
    Txn {
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
    cacert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    w: Option<String>,
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
    let (https, host_port) = match addr.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        Some(_) => return Err(usage(format!("--addr {addr:?}: use http:// or https://"))),
        None => (false, addr.as_str()),
    };
    let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
    if host_port.contains('/') || host_port.is_empty() {
        return Err(usage(format!(
            "--addr {addr:?}: give HOST:PORT or https://HOST:PORT"
        )));
    }
    let token = o
        .token
        .take()
        .or_else(|| env("KVS_TOKEN").filter(|t| !t.is_empty()));
    let from_env =
        |given: Option<String>, name: &str| given.or_else(|| env(name).filter(|v| !v.is_empty()));
    let cacert = from_env(o.cacert.take(), "KVS_CACERT");
    let cert = match (
        from_env(o.cert.take(), "KVS_CERT"),
        from_env(o.key.take(), "KVS_KEY"),
    ) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err(usage("--cert and --key go together".into())),
    };
    let w = o.w.take();
    Ok(Invocation {
        w,
        addr: host_port.to_string(),
        https,
        cacert,
        cert,
        token,
        command: command(name, o)?,
    })
}

/// Reads the options a command takes (`--name value` or `--name=value`).
fn options(name: &str, args: &[String]) -> Result<Options, CliError> {
    let takes = |option: &str| -> bool {
        matches!(
            (name, option),
            (_, "addr" | "token" | "cacert" | "cert" | "key")
                | ("put", "if-match" | "ttl")
                | ("put" | "delete" | "import" | "txn", "w")
                | ("watch", "wait")
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
            "cacert" => o.cacert = Some(value),
            "w" => {
                crate::cluster::acks::Wanted::parse(&value)
                    .map_err(|e| usage(format!("--w: {e}")))?;
                o.w = Some(value)
            }
            "cert" => o.cert = Some(value),
            "key" => o.key = Some(value),
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
        "txn" => {
            arity(1, 1, "FILE|-")?;
            Command::Txn {
                file: next().filter(|f| f != "-"),
            }
        }
        other => return Err(usage(format!("unknown command {other:?}"))),
    })
}

/// Runs a client command; `args` starts with its name.
pub fn main(args: &[String]) -> ExitCode {
    let result = parse(args, |name| std::env::var(name).ok())
        .and_then(|inv| Client::new(&inv)?.run(inv.command));
    match result {
        Ok(()) | Err(CliError::Closed) => ExitCode::SUCCESS,
        Err(e) => {
            note!("kvs: {}", e.message());
            ExitCode::from(e.code())
        }
    }
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
        let tls_env = |name: &str| match name {
            "KVS_ADDR" => Some("https://node2:8443/".to_string()),
            "KVS_CACERT" => Some("/etc/kvs/ca.pem".to_string()),
            _ => None,
        };
        let inv = parse(&args("members --cert n.pem --key n-key.pem"), tls_env).unwrap();
        assert!(inv.https);
        assert_eq!(inv.addr, "node2:8443");
        assert_eq!(inv.cacert.as_deref(), Some("/etc/kvs/ca.pem"));
        assert_eq!(inv.cert, Some(("n.pem".into(), "n-key.pem".into())));
        let inv = parse(&args("members --addr http://h:2 --cacert x.pem"), tls_env).unwrap();
        assert!(!inv.https);
        assert_eq!(inv.cacert.as_deref(), Some("x.pem"));
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
            "get k --addr http://h:1/x",
            "get k --addr ftp://h:1",
            "put k 1 --w 0",
            "put k 1 --w most",
            "get k --w 2",
            "get k --addr https://h:1 --cert c.pem",
            "frobnicate",
        ] {
            let e = parse(&args(bad), no_env).unwrap_err();
            assert_eq!(e.code(), 2, "{bad}: {e:?}");
            assert!(matches!(e, CliError::Usage(_)), "{bad}");
        }
        assert_eq!(CliError::Failed("x".into()).code(), 1);
        assert_eq!(CliError::Connection("x".into()).code(), 2);
    }
}
