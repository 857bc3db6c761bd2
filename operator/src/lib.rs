//! milvus-backfill-operator: runs `Backfill` resources as Kubernetes Jobs.
//!
//! Pure parts, each tested alone: [`validate`] (the spec), [`runs`] (the run's layout in the
//! bucket), [`jobs`] (Job objects), [`status`] (task states, counters, the result) and
//! [`state`] (the reconcile state machine). The IO edges: `controller` (Kubernetes),
//! `storage` (the bucket), `http` (probes and metrics), `leader` (the Lease).

pub mod cli;
pub mod controller;
pub mod crd;
pub mod http;
pub mod jobs;
pub mod leader;
pub mod metrics;
pub mod runs;
pub mod state;
pub mod status;
pub mod storage;
pub mod validate;

#[cfg(test)]
pub(crate) mod testutil;
