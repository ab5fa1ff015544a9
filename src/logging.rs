//! The log: one line per event, to stderr or to `log_file`, as text
//! (`2026-11-27T19:03:37.735Z [INFO] message`) or as JSON
//! (`{"time":"...","level":"info","message":"..."}`).
//!
//! The logger lets every level through and `log::set_max_level` decides,
//! so that SIGHUP can change the level of a running node; SIGHUP also
//! reopens the file (after logrotate moved it) and may switch the file or
//! the format.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where lines go, and how they look.
struct Sink {
    file: Option<(PathBuf, File)>,
    json: bool,
}

struct Logger {
    sink: Mutex<Sink>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn open(path: &Path) -> Result<File, String> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("log_file: cannot open {}: {e}", path.display()))
}

/// Installs the logger. Fails only when the log file cannot be opened.
pub fn init(level: log::LevelFilter, file: Option<&Path>, json: bool) -> Result<(), String> {
    let file = match file {
        Some(p) => Some((p.to_path_buf(), open(p)?)),
        None => None,
    };
    let logger = LOGGER.get_or_init(|| Logger {
        sink: Mutex::new(Sink { file: None, json }),
    });
    {
        let mut sink = logger.sink.lock().unwrap_or_else(|e| e.into_inner());
        sink.file = file;
        sink.json = json;
    }
    // A second init (tests) keeps the first logger: set_logger fails then.
    let _ = log::set_logger(logger);
    log::set_max_level(level);
    Ok(())
}

/// Opens the log file again (by name: logrotate may have moved the old
/// one), or a new file, or switches to stderr; sets the format. On error
/// the old destination stays.
pub fn reopen(file: Option<&Path>, json: bool) -> Result<(), String> {
    let Some(logger) = LOGGER.get() else {
        return Ok(());
    };
    let file = match file {
        Some(p) => Some((p.to_path_buf(), open(p)?)),
        None => None,
    };
    let mut sink = logger.sink.lock().unwrap_or_else(|e| e.into_inner());
    sink.file = file;
    sink.json = json;
    Ok(())
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let target = metadata.target();
        metadata.level() <= log::max_level()
            && !target.starts_with("ureq")
            && !target.starts_with("tiny_http")
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let line = format_line(
            SystemTime::now(),
            record.level(),
            &record.args().to_string(),
            sink.json,
        );
        // A log that cannot be written must not stop the node.
        let _ = match &mut sink.file {
            Some((_, f)) => f.write_all(line.as_bytes()),
            None => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }

    fn flush(&self) {}
}

/// One log line, newline included.
fn format_line(at: SystemTime, level: log::Level, message: &str, json: bool) -> String {
    let time = rfc3339(at);
    if json {
        let mut line = serde_json::json!({
            "time": time,
            "level": level.as_str().to_lowercase(),
            "message": message,
        })
        .to_string();
        line.push('\n');
        line
    } else {
        // One event, one line: line breaks inside a message are escaped.
        let message = message.replace('\n', "\\n");
        format!("{time} [{level}] {message}\n")
    }
}

/// `YYYY-MM-DDThh:mm:ss.mmmZ` in UTC.
fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The Gregorian date of a day count since 1970-01-01: years are counted
/// in 400-year eras from 0000-03-01, so that the leap day ends each year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_gregorian_utc() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59.000Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_806_217_731)),
            "2026-11-27T19:03:37.731Z"
        );
    }

    #[test]
    fn lines_as_text_and_as_json() {
        let at = UNIX_EPOCH + Duration::from_secs(86_400);
        assert_eq!(
            format_line(at, log::Level::Warn, "two\nlines", false),
            "1970-01-02T00:00:00.000Z [WARN] two\\nlines\n"
        );
        let line = format_line(at, log::Level::Info, "say \"hi\"", true);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["message"], "say \"hi\"");
        assert_eq!(v["time"], "1970-01-02T00:00:00.000Z");
    }
}
