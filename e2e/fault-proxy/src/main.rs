//! `mb-fault-proxy --upstream 127.0.0.1:9000 --rule 'slowdown method=GET fraction=0.05'`:
//! prints `listening on ADDR` and forwards until SIGTERM or SIGINT; with `--stats FILE` it
//! keeps the counts there as JSON (requests, faults, per rule).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mb_fault_proxy::{Mode, Proxy, Rule};

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Http,
    Tcp,
}

#[derive(Parser)]
#[command(name = "mb-fault-proxy", about = "Forwards to a server and injects faults by rule")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The real server, host:port.
    #[arg(long)]
    upstream: SocketAddr,
    #[arg(long, value_enum, default_value = "http")]
    mode: ModeArg,
    /// A rule: the fault, then filters (see the crate's README); repeat for several.
    #[arg(long = "rule")]
    rules: Vec<String>,
    /// Seed of the `fraction=` draws: the same seed gives the same faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the counts in this file as JSON.
    #[arg(long)]
    stats: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let rules = match args.rules.iter().map(|r| Rule::parse(r)).collect::<Result<Vec<_>, _>>() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mb-fault-proxy: {e}");
            std::process::exit(2);
        }
    };
    let mode = match args.mode {
        ModeArg::Http => Mode::Http,
        ModeArg::Tcp => Mode::Tcp,
    };
    let proxy = match Proxy::start(&args.listen, args.upstream, mode, rules, args.seed).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mb-fault-proxy: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    println!("listening on {}", proxy.addr());
    let write_stats = |proxy: &Proxy| {
        if let Some(path) = &args.stats {
            let tmp = path.with_extension("tmp");
            let body = serde_json::to_vec_pretty(&proxy.stats()).expect("stats serialize");
            if std::fs::write(&tmp, body)
                .and_then(|()| std::fs::rename(&tmp, path))
                .is_err()
            {
                eprintln!("mb-fault-proxy: cannot write {}", path.display());
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => write_stats(&proxy),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    write_stats(&proxy);
}
