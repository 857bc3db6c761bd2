//! Shared state of the runner process: the settings every step reads ([`Ctx`]) and the table
//! of Pods it currently runs ([`Runner`]). Data only, no IO.

use crate::Args;
use kube::Client;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use tokio::sync::watch;

/// Why a Pod's processes are being stopped; decides the grace period and what is reported.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StopKind {
    /// metadata.deletionTimestamp is set: kill with this grace, report, delete with grace 0.
    Deleted { grace: i64 },
    /// The Pod object is gone: kill, report nothing.
    Gone,
    /// The runner stops: kill, leave the Pod's status as it is.
    Shutdown,
    /// spec.activeDeadlineSeconds passed.
    Deadline { grace: i64 },
}

/// Where the API server is and how to trust it: copied into every Pod's kubeconfig.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterEndpoint {
    pub server: String,
    pub ca_data: Option<String>,
    pub ca_file: Option<String>,
    pub insecure: bool,
}

/// What the Node says about the host. The same numbers are the defaults of `resourceFieldRef`
/// limits, and `ip` is every Pod's IP, so that the environment matches the Node status.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    pub cpus: usize,
    pub mem_bytes: u64,
    pub ip: String,
}

pub struct Ctx {
    pub client: Client,
    pub args: Args,
    /// `--map FROM=TO`, in the order given (the first match wins).
    pub maps: Vec<(String, String)>,
    pub cluster: ClusterEndpoint,
    /// The runner's own PATH, handed to containers (images are ignored, so the host's tools run).
    pub host_path: String,
    pub node: NodeFacts,
}

pub struct Runner {
    pub ctx: Ctx,
    /// Pods with a running worker, by uid: the sender asks the worker to stop.
    pub pods: Mutex<HashMap<String, watch::Sender<Option<StopKind>>>>,
    pub tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Pods whose worker has ended (or that were terminal when first seen): never run again.
    pub done: Mutex<HashSet<String>>,
    /// Pods being deleted with grace 0, so that each gets one DELETE however many events arrive.
    pub force_deleting: Mutex<HashSet<String>>,
    /// Pods with a Binding in flight, for the same reason.
    pub binding: Mutex<HashSet<String>>,
}

impl Runner {
    pub fn new(ctx: Ctx) -> Self {
        Runner {
            ctx,
            pods: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            done: Mutex::new(HashSet::new()),
            force_deleting: Mutex::new(HashSet::new()),
            binding: Mutex::new(HashSet::new()),
        }
    }
}
