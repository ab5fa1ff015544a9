//! The one way the command-line client and the offline tools write what
//! they print.
//!
//! `println!` panics when stdout is a pipe whose reader has gone
//! (`kvs export | head -n 1`), and a panic aborts the release build. Here a
//! closed stdout is [`OutputError::Closed`]: the command stops quietly and
//! exits 0, as `cat` and `grep` do. Any other write error
//! ([`OutputError::Failed`], a full disk under a redirect, say) is an error
//! the caller reports (exit 2). Messages for stderr go through [`note!`],
//! which never fails: with nobody to tell, there is nothing left to do.

use std::fmt;
use std::io::{self, BufWriter, StdoutLock, Write};

/// Why stdout could not be written.
#[derive(Debug)]
pub enum OutputError {
    /// The reader closed the pipe: stop, quietly.
    Closed,
    /// Any other write failure.
    Failed(io::Error),
}

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputError::Closed => write!(f, "stdout was closed"),
            OutputError::Failed(e) => write!(f, "writing to stdout: {e}"),
        }
    }
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            OutputError::Closed
        } else {
            OutputError::Failed(e)
        }
    }
}

/// Buffered stdout. Lines are flushed by [`Output::flush`] (and when the
/// buffer fills); a command that streams (watch) flushes after each batch.
pub struct Output {
    inner: BufWriter<StdoutLock<'static>>,
}

impl Output {
    pub fn stdout() -> Output {
        Output {
            inner: BufWriter::with_capacity(64 * 1024, io::stdout().lock()),
        }
    }

    /// Writes one line: `args` and a line break.
    pub fn line(&mut self, args: fmt::Arguments<'_>) -> Result<(), OutputError> {
        self.inner.write_fmt(args)?;
        self.inner.write_all(b"\n")?;
        Ok(())
    }

    /// Writes bytes as they are.
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        self.inner.write_all(bytes)?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), OutputError> {
        self.inner.flush()?;
        Ok(())
    }

    /// Flushes and gives the output up (what was written is out).
    pub fn finish(mut self) -> Result<(), OutputError> {
        self.flush()
    }
}

/// Writes one line to stdout and flushes it.
pub fn print(text: fmt::Arguments<'_>) -> Result<(), OutputError> {
    let mut out = Output::stdout();
    out.line(text)?;
    out.finish()
}

/// A message on stderr. Errors are ignored: a closed stderr leaves nobody
/// to tell.
pub fn note_args(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.write_all(b"\n");
}

/// `note!("...", args)`: a line on stderr, with `format!`'s syntax.
macro_rules! note {
    ($($arg:tt)*) => { $crate::output::note_args(format_args!($($arg)*)) };
}
pub(crate) use note;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_closed_and_other_errors_are_failures() {
        let closed = OutputError::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(matches!(closed, OutputError::Closed));
        let full = OutputError::from(io::Error::from_raw_os_error(28));
        assert!(matches!(full, OutputError::Failed(_)));
        assert!(full.to_string().contains("stdout"));
    }
}
