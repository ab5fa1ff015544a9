//! kvs: a small clustered key-value database daemon.
//!
//! `main` reads the command line, sets up logging and hands over to
//! `daemon::run` (or to one of the offline tools in `tools`). Every failure
//! becomes one line on stderr and a non-zero exit code.

mod auth;
mod certs;
mod cli;
mod clock;
mod cluster;
mod config;
mod daemon;
mod escape;
mod http;
mod logging;
mod metrics;
mod node;
mod output;
mod store;
mod sys;
mod tls;
mod tools;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use config::{Config, RawConfig};
use output::note;

const USAGE: &str = "\
kvs: a clustered key-value store for JSON documents

Usage:
  kvs [CONFIG_PATH] [OPTIONS]      run a node (default config: ./config.yaml,
                                   written with every default if missing)
  kvs test-conflict DIR1 DIR2 [DIR3...] [--key KEY] [--tombstone-in DIR]
                                   write one key with the same timestamp and
                                   different data into each data directory
  kvs load DIR --count N [--prefix P] [--size BYTES] [--timestamp MS]
                                   bulk-load generated keys into a stopped
                                   node's data directory
  kvs verify DIR                   recompute the anti-entropy summary of a
                                   stopped node's data and compare
  kvs restore BACKUP_FILE DIR      make a new data directory from a file that
                                   GET /backup (or kvs backup) wrote
  kvs token new [--read PREFIX]... [--write PREFIX]... [--admin]
                                   print a fresh random token and the
                                   client_tokens entry holding its hash
  kvs tls ca [--dir D] [--days N]  write a new CA: D/ca.pem, D/ca-key.pem
  kvs tls cert NAME [--ip A]... [--dns H]... [--days N] [--dir D]
                                   write D/NAME.pem and D/NAME-key.pem signed
                                   by that CA (server and client use; names
                                   localhost and 127.0.0.1 if none given)
  kvs --help | --version

Options (each overrides the same key of the config file):
  --port N            --bind ADDR          --data-dir DIR      --node-id ID
  --seed HOST:PORT    (repeatable; replaces seed_nodes)        --read-only
  --advertise HOST:PORT                    --log-level LEVEL
  --KEY VALUE         any config key, with '-' or '_' (e.g. --sync-interval 0.5,
                      --gossip-interval-min 0.2, --max-value-bytes 4096)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("-h") | Some("--help") | Some("help") => {
            return exit(show(format_args!("{USAGE}\n{}", cli::USAGE.trim_end())));
        }
        Some("-V") | Some("--version") => {
            return exit(show(format_args!("kvs {}", env!("CARGO_PKG_VERSION"))));
        }
        Some("test-conflict") => return exit(tools::test_conflict(&args[1..])),
        Some("load") => return exit(tools::load(&args[1..])),
        Some("verify") => return exit(tools::verify(&args[1..])),
        Some("restore") => return exit(tools::restore(&args[1..])),
        Some("token") => return exit(tools::token(&args[1..])),
        Some("tls") => return exit(tools::tls(&args[1..])),
        Some(cmd) if cli::COMMANDS.contains(&cmd) => return cli::main(&args),
        _ => {}
    }
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            note!("kvs: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init(
        config.log_level,
        config.log_file.as_deref(),
        config.log_json,
    ) {
        note!("kvs: {e}");
        return ExitCode::from(2);
    }
    // SIGHUP reads the file and the options again, the same way.
    let reload = Box::new(move || load_config(&args));
    match daemon::run(config, reload) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            note!("kvs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the help or the version.
fn show(text: std::fmt::Arguments<'_>) -> Result<(), tools::ToolError> {
    Ok(output::print(text)?)
}

fn exit(result: Result<(), tools::ToolError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let status = e.exit_status();
            if status != 0 {
                note!("kvs: {e}");
            }
            ExitCode::from(status)
        }
    }
}

/// Builds the configuration from the file and the options.
fn load_config(args: &[String]) -> Result<Config, String> {
    let mut path: Option<PathBuf> = None;
    let mut overrides: Vec<(String, String)> = Vec::new();
    let mut seeds: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if let Some(opt) = arg.strip_prefix("--") {
            let (name, inline) = match opt.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (opt.to_string(), None),
            };
            let key = match name.as_str() {
                "bind" => "bind_address".to_string(),
                "advertise" => "advertise_address".to_string(),
                "seed" => "seed".to_string(),
                "config" => "config".to_string(),
                other => other.replace('-', "_"),
            };
            // --read-only takes no value.
            if key == "read_only" && inline.is_none() {
                overrides.push((key, "true".into()));
                i += 1;
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| format!("option --{name} needs a value"))?
                }
            };
            match key.as_str() {
                "seed" => seeds.push(value),
                "config" => path = Some(PathBuf::from(value)),
                _ => overrides.push((key, value)),
            }
        } else if path.is_none() {
            path = Some(PathBuf::from(arg));
        } else {
            return Err(format!("unexpected argument {arg:?} (see kvs --help)"));
        }
        i += 1;
    }

    let mut raw = match &path {
        Some(p) => {
            if !p.exists() {
                return Err(format!("config file {} does not exist", p.display()));
            }
            RawConfig::from_file(p).map_err(|e| e.0)?
        }
        None => {
            let default = PathBuf::from("config.yaml");
            if default.exists() {
                RawConfig::from_file(&default).map_err(|e| e.0)?
            } else {
                match std::fs::write(&default, config::default_file_text()) {
                    Ok(()) => note!("kvs: wrote a default configuration to ./config.yaml"),
                    Err(e) => note!("kvs: could not write ./config.yaml ({e}); using defaults"),
                }
                RawConfig::default()
            }
        }
    };
    for (key, value) in &overrides {
        raw.set(key, value).map_err(|e| e.0)?;
    }
    if !seeds.is_empty() {
        // --seed replaces the file's list rather than adding to it.
        raw.seed_nodes = Some(seeds);
    }
    Config::from_raw(raw).map_err(|e| e.0)
}
