//! Progress on stderr: a bar on a terminal, plain lines otherwise (logs, CI, Jobs).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use crate::error::BackfillError;

pub struct Progress {
    total: usize,
    tty: bool,
    state: Mutex<(usize, usize, u64)>, // done, failed, rows
}

impl Progress {
    pub fn new(total: usize, quiet: bool) -> Self {
        Self {
            total,
            tty: !quiet && std::io::stderr().is_terminal(),
            state: Mutex::new((0, 0, 0)),
        }
    }

    pub fn started(&self, segment: i64) {
        if !self.tty {
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
        if self.tty {
            let width = 30;
            let filled = (s.0 * width).checked_div(self.total).unwrap_or(width);
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r[{}{}] {}/{} segments, {} failed, {} rows",
                "#".repeat(filled),
                ".".repeat(width - filled),
                s.0,
                self.total,
                s.1,
                s.2
            );
            let _ = err.flush();
        } else {
            match error {
                None => tracing::info!(segment, rows, done = s.0, total = self.total, "segment finished"),
                Some(e) => {
                    tracing::error!(segment, kind = %e.kind, error = %e.message, done = s.0, total = self.total, "segment failed")
                }
            }
        }
    }

    pub fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
