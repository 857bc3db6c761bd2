//! milvus-backfill-operator: runs `Backfill` resources as Kubernetes Jobs.
//!
//! A reconcile pass is observe → validate → decide → build → execute (see ARCHITECTURE.md).
//! Pure parts, each tested alone: [`validate`] (the spec), [`status`] (task states, counters,
//! the result), [`state`] (decide: the state machine), [`conditions`] (conditions from the
//! phase), [`jobs`] (build: Job objects), [`planning`] (the next step of planning by a Job),
//! [`finishing`] (the steps after the commit). The IO edges: [`controller`] (observe, watches),
//! [`executor`] (carries out decisions), `plan_jobs` (planning Jobs and their answers),
//! `finish_jobs` (the steps after the commit, by a Job or in-process), `http` (probes and
//! metrics), `leader` (the Lease).
//! The run's bucket keys and all contract types come from `milvus_backfill_api`.

pub mod cli;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod executor;
mod finish_jobs;
pub mod finishing;
pub mod http;
pub mod jobs;
pub mod leader;
pub mod metrics;
mod plan_jobs;
pub mod planning;
pub mod state;
pub mod status;
pub mod validate;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
pub(crate) mod testutil;
