//! Logging for both binaries: plain or JSON on stderr; the named crates at INFO (DEBUG with
//! `-v`), every library at WARN, because the AWS SDK's debug output names credentials.

use clap::ValueEnum;

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

pub fn init(format: LogFormat, verbose: bool, crates: &[&'static str]) {
    use std::io::IsTerminal;
    use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let ours = if verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let targets = crates
        .iter()
        .fold(Targets::new().with_default(tracing::Level::WARN), |t, c| {
            t.with_target(*c, ours)
        });
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Json => registry.with(layer.json().with_filter(targets)).init(),
        LogFormat::Plain => registry.with(layer.with_filter(targets)).init(),
    }
}
