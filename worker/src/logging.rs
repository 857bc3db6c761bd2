//! Logging for both binaries: plain or JSON on stderr. The named crates log at INFO (DEBUG with
//! `-v`, or `--log-level`); every library at WARN. `RUST_LOG` directives (`debug`,
//! `milvus_backfill=trace,tonic=info`) refine that, except that the crates that sign and send
//! requests never log below WARN: their debug output names credentials and tokens.

use clap::ValueEnum;
use tracing_subscriber::filter::{LevelFilter, Targets};

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// The level of the binary's own crates.
#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

/// Crates whose debug output carries request headers or signing material.
const GUARDED: [&str; 10] = [
    "aws_sigv4",
    "aws_runtime",
    "aws_config",
    "aws_sdk_s3",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "hyper",
    "hyper_util",
    "h2",
    "tonic",
];

/// The filter of `level` (else `-v`: DEBUG, else INFO) for `crates`, refined by `rust_log`.
pub fn filter(
    level: Option<LogLevel>,
    verbose: bool,
    rust_log: Option<&str>,
    crates: &[&'static str],
) -> Result<Targets, String> {
    let ours = match (level, verbose) {
        (Some(l), _) => l.filter(),
        (None, true) => LevelFilter::DEBUG,
        (None, false) => LevelFilter::INFO,
    };
    let user: Targets = match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => s
            .parse()
            .map_err(|e| format!("RUST_LOG {s:?} is not a list of `target=level` or `level` directives: {e}"))?,
        None => Targets::new(),
    };
    let explicit = |target: &str| user.iter().find(|(t, _)| *t == target).map(|(_, l)| l);
    let default = user.default_level().unwrap_or(LevelFilter::WARN);
    let mut t = Targets::new().with_default(default);
    for c in crates {
        // A bare RUST_LOG level covers our crates too; `--log-level` wins over both.
        let l = match (level, explicit(c), user.default_level()) {
            (Some(_), _, _) => ours,
            (None, Some(l), _) => l,
            (None, None, Some(d)) if !verbose => d,
            _ => ours,
        };
        t = t.with_target(*c, l);
    }
    for (target, l) in user.iter() {
        if !crates.contains(&target) {
            t = t.with_target(target, l);
        }
    }
    for g in GUARDED {
        let l = explicit(g).unwrap_or(default).min(LevelFilter::WARN);
        t = t.with_target(g, l);
    }
    Ok(t)
}

/// Installs the subscriber. A bad `RUST_LOG` is said once and ignored.
pub fn init(format: LogFormat, level: Option<LogLevel>, verbose: bool, crates: &[&'static str]) {
    use std::io::IsTerminal;
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let rust_log = std::env::var("RUST_LOG").ok();
    let (targets, bad) = match filter(level, verbose, rust_log.as_deref(), crates) {
        Ok(t) => (t, None),
        Err(e) => (filter(level, verbose, None, crates).expect("no directives"), Some(e)),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(crate::progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Json => registry.with(layer.json().with_filter(targets)).init(),
        LogFormat::Plain => registry.with(layer.with_filter(targets)).init(),
    }
    if let Some(e) = bad {
        tracing::warn!("{e}; ignored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    const OURS: &[&str] = &["milvus_backfill"];

    fn on(t: &Targets, target: &str, level: Level) -> bool {
        t.would_enable(target, &level)
    }

    #[test]
    fn our_crates_at_info_libraries_at_warn_by_default() {
        let t = filter(None, false, None, OURS).unwrap();
        assert!(on(&t, "milvus_backfill", Level::INFO) && !on(&t, "milvus_backfill", Level::DEBUG));
        assert!(on(&t, "kube_client", Level::WARN) && !on(&t, "kube_client", Level::INFO));
        let t = filter(None, true, None, OURS).unwrap();
        assert!(on(&t, "milvus_backfill::planner", Level::DEBUG));
        let t = filter(Some(LogLevel::Warn), true, None, OURS).unwrap();
        assert!(!on(&t, "milvus_backfill", Level::INFO), "--log-level wins over -v");
    }

    #[test]
    fn rust_log_refines_but_never_opens_the_crates_that_see_credentials() {
        let t = filter(None, false, Some("debug"), OURS).unwrap();
        assert!(on(&t, "milvus_backfill", Level::DEBUG));
        assert!(on(&t, "kube_client", Level::DEBUG));
        for g in ["aws_sigv4", "aws_smithy_runtime::client", "hyper", "tonic::transport"] {
            assert!(!on(&t, g, Level::INFO), "{g} must stay at WARN");
            assert!(on(&t, g, Level::WARN), "{g}");
        }
        let t = filter(
            None,
            false,
            Some("milvus_backfill=trace,aws_sigv4=trace,kube=info"),
            OURS,
        )
        .unwrap();
        assert!(on(&t, "milvus_backfill", Level::TRACE));
        assert!(on(&t, "kube", Level::INFO) && !on(&t, "kube", Level::DEBUG));
        assert!(!on(&t, "aws_sigv4", Level::DEBUG));
        let t = filter(None, false, Some("aws_sdk_s3=error"), OURS).unwrap();
        assert!(!on(&t, "aws_sdk_s3", Level::WARN), "a quieter level is kept");
        let t = filter(Some(LogLevel::Error), false, Some("milvus_backfill=trace"), OURS).unwrap();
        assert!(
            !on(&t, "milvus_backfill", Level::WARN),
            "--log-level wins over RUST_LOG"
        );
    }

    #[test]
    fn a_bad_rust_log_says_what_it_expects() {
        let e = filter(None, false, Some("milvus_backfill=loud"), OURS).unwrap_err();
        assert!(
            e.contains("RUST_LOG \"milvus_backfill=loud\"") && e.contains("target=level"),
            "{e}"
        );
    }
}
