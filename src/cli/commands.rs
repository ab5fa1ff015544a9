//! What each client command does, through `Client`.

use std::io::{BufRead, Read};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::client::{Client, CALL_TIMEOUT};
use super::{CliError, Command};
use crate::escape::percent_encode;
use crate::output::{self, note, Output};

/// Ops per `POST /batch` on import (the node takes up to 1 000).
const IMPORT_BATCH_OPS: usize = 1000;
/// Bytes of values per import batch, well under the node's batch limit
/// (four values at `max_value_bytes`); a larger single value goes alone.
const IMPORT_BATCH_BYTES: usize = 1024 * 1024;
/// Keys per listing page for `ls` and `export`.
const PAGE: usize = 1000;
/// How often `import` reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl Client {
    pub(super) fn run(&self, command: Command) -> Result<(), CliError> {
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
            Command::Txn { file } => self.txn(file.as_deref()),
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
        self.add_w(&mut path);
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
        self.add_w(&mut path);
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
        let mut path = "/batch".to_string();
        self.add_w(&mut path);
        let answer = self.call("POST", &path, Some(&body.body), &[], Some(CALL_TIMEOUT))?;
        if answer.status == 504 {
            let (first, last) = body.lines;
            return Err(match answer.refusal("POST /batch") {
                CliError::Failed(m) => CliError::Failed(format!(
                    "{name}: lines {first}–{last} were written on this node but not on as many \
                     nodes as --w asked in time ({before} keys imported before them): {m}"
                )),
                other => other,
            });
        }
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

    /// `kvs txn FILE|-`: the array goes as it is; the node checks it.
    fn txn(&self, file: Option<&str>) -> Result<(), CliError> {
        let body = match file {
            Some(f) => std::fs::read(f).map_err(|e| CliError::Failed(format!("{f}: {e}")))?,
            None => {
                let mut b = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut b)
                    .map_err(|e| CliError::Failed(format!("reading stdin: {e}")))?;
                b
            }
        };
        let mut path = "/batch".to_string();
        self.add_w(&mut path);
        let answer = self.call("POST", &path, Some(&body), &[], Some(CALL_TIMEOUT))?;
        match answer.status {
            200 => Ok(output::print(format_args!("{}", answer.text()?))?),
            _ => Err(answer.refusal("txn")),
        }
    }

    /// Appends `w=...` to a write's path when `--w` was given.
    fn add_w(&self, path: &mut String) {
        if let Some(w) = &self.w {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str(&format!("w={w}"));
        }
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
