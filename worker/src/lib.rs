//! milvus-backfill: adds new fields to the sealed segments of a Milvus collection.
//!
//! IO sits at the edges (`milvus`, `store`/`stores`, `planner`, `runner`); the middle is a
//! streaming pipeline of small parts that are tested alone: `binlog` (reader),
//! `keys` (key index), `source` (matched rows), `join` (alignment), `output` (writer).

pub mod add_fields;
pub mod after_commit;
pub mod avro_value;
pub mod binlog;
pub mod cli;
pub mod columns;
pub mod commit;
pub mod config;
pub mod engine;
pub mod error;
pub mod exchange;
pub mod facade;
pub mod finish_job;
pub mod gc;
pub mod groups;
pub mod join;
pub mod keys;
pub mod logging;
pub mod manifest;
pub mod milvus;
pub mod milvus_post;
pub mod output;
pub mod plan;
pub mod plan_job;
pub mod planner;
pub mod precheck;
pub mod progress;
pub mod retry;
pub mod runner;
pub mod snapshot;
pub mod snapshot_manifest;
pub mod snapshot_planner;
pub mod source;
pub mod steps_report;
pub mod store;
pub mod stores;
pub mod targets;
#[cfg(test)]
mod testdata;
pub mod types;
pub mod v2_output;
pub mod v2_planner;
pub mod v3_commit;
pub mod v3_keys;
pub mod v3_output;
pub mod vector_check;
pub mod vectors;
pub mod verify;
