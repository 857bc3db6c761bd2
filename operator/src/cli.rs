//! The `milvus-backfill-operator` command line: `crd` prints the CRD, `run` runs the controller.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::controller::{self, Config};
use crate::http::{self, Health};
use crate::leader::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::planning::PlanningMode;

#[derive(Parser, Debug)]
#[command(
    name = "milvus-backfill-operator",
    version,
    about = "Kubernetes operator for milvusbackfill.io/v1alpha1 Backfill resources"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "LOG_FORMAT", default_value = "plain")]
    pub log_format: LogFormat,
    /// Level of the operator's own logs (also LOG_LEVEL); default info, debug with -v.
    /// `RUST_LOG` directives refine it (the crates that see credentials stay at warn).
    #[arg(long, global = true, env = "LOG_LEVEL")]
    pub log_level: Option<milvus_backfill::logging::LogLevel>,
    /// Debug logs of the operator (libraries stay at WARN).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

pub use milvus_backfill::logging::LogFormat;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CustomResourceDefinition (YAML); apply it with `kubectl apply --server-side -f -`.
    Crd,
    /// Run the controller (in a cluster, or against the current kubeconfig context).
    Run(Box<RunArgs>),
}

/// `run`'s flags.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Worker image for Backfills without spec.worker.image.
    #[arg(long, env = "WORKER_IMAGE")]
    worker_image: Option<String>,
    /// Namespaces to watch, comma-separated; empty: all (needs a ClusterRole).
    #[arg(long, env = "WATCH_NAMESPACES", default_value = "", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Backfills reconciled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// ServiceAccount of worker Pods for Backfills without spec.worker.serviceAccountName
    /// (empty: the namespace's `default`).
    #[arg(long, env = "WORKER_SERVICE_ACCOUNT")]
    worker_service_account: Option<String>,
    /// Hold a Lease before reconciling, so that several replicas are safe.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "milvus-backfill-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a Lease lasts without renewal before a standby takes it (client-go's
    /// LeaseDuration).
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds the leader keeps trying to renew before it gives up and exits (RenewDeadline);
    /// less than the lease duration.
    #[arg(long, env = "RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    renew_deadline_seconds: u64,
    /// Seconds between tries to take or renew the Lease (RetryPeriod); less than the renew
    /// deadline.
    #[arg(long, env = "RETRY_PERIOD_SECONDS", default_value_t = 2)]
    retry_period_seconds: u64,
    /// This replica's identity in the Lease [default: POD_NAME, else host name and PID].
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Where Backfills are planned. `in-process`: in the operator, with the Secrets the
    /// Backfill names (needs `get` on Secrets). `job`: in a planning Job that gets them
    /// through `secretKeyRef`; the operator reads no Secret and opens the storage buckets
    /// with its own credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a cloud
    /// identity).
    #[arg(long, env = "PLANNING", value_enum, default_value_t = PlanningMode::InProcess)]
    planning: PlanningMode,
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crate::crd::crd_yaml());
            0
        }
        Command::Run(args) => {
            let RunArgs {
                worker_image,
                watch_namespaces,
                http_addr,
                concurrency,
                worker_service_account,
                leader_election,
                lease_name,
                lease_namespace,
                lease_duration_seconds,
                renew_deadline_seconds,
                retry_period_seconds,
                identity,
                planning,
            } = *args;
            milvus_backfill::logging::init(
                cli.log_format,
                cli.log_level,
                cli.verbose,
                &["milvus_backfill_operator", "milvus_backfill"],
            );
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return 1;
                }
            };
            let namespaces: Vec<String> = watch_namespaces
                .into_iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect();
            let config = Config {
                worker: crate::jobs::WorkerDefaults {
                    image: worker_image.filter(|i| !i.trim().is_empty()),
                    service_account: worker_service_account.filter(|a| !a.trim().is_empty()),
                },
                namespaces,
                concurrency,
                commit_segment_retries: None,
                planning,
            };
            let lease = if leader_election {
                let Some(ns) = lease_namespace.filter(|n| !n.is_empty()) else {
                    tracing::error!(
                        "leader election needs the Lease's namespace: set POD_NAMESPACE or --lease-namespace"
                    );
                    return 3;
                };
                let identity = identity.filter(|i| !i.is_empty()).unwrap_or_else(default_identity);
                let timing = (lease_duration_seconds, renew_deadline_seconds, retry_period_seconds);
                match LeaseConfig::new(lease_name, ns, identity).with_timing(timing.0, timing.1, timing.2) {
                    Ok(lease) => Some(lease),
                    Err(e) => {
                        tracing::error!("{e}");
                        return 3;
                    }
                }
            } else {
                None
            };
            rt.block_on(run(config, http_addr, lease))
        }
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// SIGTERM (the kubelet) or SIGINT (a terminal).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run(config: Config, http_addr: SocketAddr, lease: Option<LeaseConfig>) -> i32 {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes client (in-cluster config or kubeconfig)");
            return 1;
        }
    };
    // Fail early with a hint when the CRD is not installed (or RBAC is missing).
    let api: kube::Api<crate::crd::Backfill> = match config.namespaces.first() {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    if let Err(e) = api.list(&kube::api::ListParams::default().limit(1)).await {
        tracing::error!(
            error = %e,
            "cannot list Backfills; is the CRD installed? \
             milvus-backfill-operator crd | kubectl apply --server-side -f -"
        );
        return 1;
    }
    let metrics = Arc::new(Metrics::default());
    let listener = match tokio::net::TcpListener::bind(http_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, addr = %http_addr, "cannot listen");
            return 1;
        }
    };
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        scopes: config.namespaces.len().max(1) as u64,
        leader_election: lease.is_some(),
    });
    tokio::spawn(http::serve(listener, health));
    tracing::info!(
        namespaces = ?config.namespaces,
        worker = ?config.worker,
        http = %http_addr,
        lease = ?lease.as_ref().map(|l| format!("{}/{} as {}", l.namespace, l.name, l.identity)),
        "milvus-backfill-operator starting"
    );
    let Some(lease) = lease else {
        metrics.leader.set(1);
        controller::run(client, config, metrics).await;
        tracing::info!("stopped");
        return 0;
    };
    let mut elector = Elector::new(client.clone(), lease);
    tokio::select! {
        _ = elector.acquire() => {}
        _ = shutdown_signal() => {
            tracing::info!("stopped while standing by");
            return 0;
        }
    }
    metrics.leader.set(1);
    let lost = tokio::select! {
        _ = controller::run(client, config, metrics.clone()) => None,
        why = elector.hold() => Some(why),
    };
    metrics.leader.set(0);
    match lost {
        // Reconciles may be mid-flight: leave now, and come back as a standby after the restart.
        Some(why) => {
            tracing::error!(reason = %why, "lost the leadership; exiting so that the restart stands by");
            1
        }
        None => {
            elector.release().await;
            tracing::info!("stopped");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_parses() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["x", "crd"]).unwrap();
        assert!(matches!(c.command, Command::Crd));
        let c = Cli::try_parse_from([
            "x",
            "--log-format",
            "json",
            "run",
            "--watch-namespaces",
            "a,b",
            "--worker-image",
            "reg/mb:1",
            "--leader-election",
            "true",
        ])
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        match c.command {
            Command::Run(args) => {
                let RunArgs {
                    watch_namespaces,
                    worker_image,
                    concurrency,
                    leader_election,
                    lease_name,
                    lease_duration_seconds,
                    ..
                } = *args;
                assert_eq!(lease_duration_seconds, 15);
                assert!(leader_election);
                assert_eq!(lease_name, "milvus-backfill-operator");
                assert_eq!(watch_namespaces, vec!["a", "b"]);
                assert_eq!(worker_image.as_deref(), Some("reg/mb:1"));
                assert_eq!(concurrency, 4);
            }
            _ => panic!(),
        }
    }
}
