//! Progress on stderr: a bar (indicatif) on a terminal, with segments, rows, rows/s, elapsed
//! time and ETA; plain log lines otherwise (logs, CI, Jobs) or with `--no-progress`. Log lines
//! printed while a bar is drawn go above it ([`LogWriter`]), so the bar is never torn.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, RwLock};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::BackfillError;

/// The bar being drawn, for [`LogWriter`].
static ACTIVE: RwLock<Option<ProgressBar>> = RwLock::new(None);

pub struct Progress {
    total: usize,
    bar: Option<ProgressBar>,
    state: Mutex<(usize, usize, u64)>, // done, failed, rows
}

impl Progress {
    /// A bar when stderr is a terminal and not `quiet`, else log lines.
    pub fn new(total: usize, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| bar(total, ProgressDrawTarget::stderr()));
        Self::with(total, bar)
    }

    fn with(total: usize, bar: Option<ProgressBar>) -> Self {
        if let Some(b) = &bar {
            *ACTIVE.write().expect("progress lock") = Some(b.clone());
        }
        Self {
            total,
            bar,
            state: Mutex::new((0, 0, 0)),
        }
    }

    pub fn started(&self, segment: i64) {
        if self.bar.is_none() {
            tracing::info!(segment, "segment started");
        }
    }

    pub fn finished(&self, segment: i64, rows: u64, error: Option<&BackfillError>) {
        let mut s = self.state.lock().expect("progress");
        s.0 += 1;
        s.2 += rows;
        if error.is_some() {
            s.1 += 1;
        }
        let Some(bar) = &self.bar else {
            match error {
                None => tracing::info!(segment, rows, done = s.0, total = self.total, "segment finished"),
                Some(e) => {
                    tracing::error!(segment, kind = %e.kind, error = %e.message, done = s.0, total = self.total, "segment failed")
                }
            }
            return;
        };
        if let Some(e) = error {
            bar.println(format!("segment {segment} failed: {}: {}", e.kind, e.message));
        }
        let secs = bar.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { s.2 as f64 / secs } else { 0.0 };
        bar.set_message(format!("{} failed, {} rows ({:.0} rows/s)", s.1, s.2, rate));
        bar.set_position(s.0 as u64);
    }

    pub fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
            // The finished bar stays on its line; what follows (the summary) starts below it.
            eprintln!();
            ACTIVE.write().expect("progress lock").take();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.bar.is_some() {
            ACTIVE.write().expect("progress lock").take();
        }
    }
}

fn bar(total: usize, target: ProgressDrawTarget) -> ProgressBar {
    let style = ProgressStyle::with_template("[{bar:30}] {pos}/{len} segments, {msg} [{elapsed_precise}, ETA {eta}]")
        .expect("a valid template")
        .progress_chars("#>.");
    let b = ProgressBar::with_draw_target(Some(total as u64), target).with_style(style);
    b.set_message("0 failed, 0 rows");
    b
}

/// stderr for the log layer: while a bar is drawn, each log line is printed above it.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let active = ACTIVE.read().map(|a| a.clone()).unwrap_or(None);
        match active {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_counts_segments_rows_and_failures_and_lets_logs_through() {
        let p = Progress::with(3, Some(bar(3, ProgressDrawTarget::hidden())));
        assert!(ACTIVE.read().unwrap().is_some(), "log lines go above the bar");
        p.started(1);
        p.finished(1, 1000, None);
        let e = BackfillError::new(crate::error::ErrorKind::DataReadError, "truncated binlog");
        p.finished(2, 0, Some(&e));
        let bar = p.bar.clone().unwrap();
        assert_eq!((bar.position(), bar.length()), (2, Some(3)));
        let msg = bar.message();
        assert!(
            msg.starts_with("1 failed, 1000 rows (") && msg.ends_with(" rows/s)"),
            "{msg}"
        );
        LogWriter.write_all(b"").unwrap();
        p.done();
        assert!(bar.is_finished());
        assert!(ACTIVE.read().unwrap().is_none());
    }

    #[test]
    fn quiet_or_without_a_terminal_there_is_no_bar() {
        let p = Progress::new(2, true);
        assert!(p.bar.is_none());
        p.finished(1, 5, None);
        assert_eq!(*p.state.lock().unwrap(), (1, 0, 5));
    }
}
