//! The run contract of milvus-backfill: the types both binaries (the `milvus-backfill` CLI and
//! worker, and the operator) exchange, and nothing else. Serde and schemars types plus pure
//! functions; no IO. One owner per type:
//!
//! | module | owns |
//! |---|---|
//! | [`spec`] | `EngineSpec`: what `run -f` reads and the resource flattens; its validation |
//! | [`cluster`] | the `Backfill` resource: `BackfillSpec` (engine + cluster fields), status, conditions |
//! | [`lifecycle`] | `spec.lifecycle`: the steps around the backfill, their order and records |
//! | [`plan`] | `Plan`, `Task`, `SegmentPlan`, `BatchSize`, ... |
//! | [`outcome`] | `SegmentOutcome`, `TaskOutcome`, `FailedSegment`, `BackfillResult` |
//! | [`planning`] | `PlanRequest`, `PlanAnswer`, `FinishRequest`, `FinishAnswer`, `PlanningLayout`: planning (and the steps after the commit) as a Job |
//! | [`precheck`] | `PrecheckReport`, `Check`, `CheckRecord`: what planning checked, `passed: true|false` |
//! | [`layout`] | `RunLayout` (every bucket key of a run), `TaskSplit` (plan → tasks) |
//! | [`stage`] | a routed run's stages: `Stage`, `StageOutput`, and the work of each next task |
//! | [`invocation`] | the worker's `segment` command line and environment names |
//! | [`place`] | `S3Endpoint`, `S3Uri`, `Place` |
//! | [`error`] | `ErrorKind` (with `is_permanent`), `BackfillError` |

pub mod cluster;
pub mod error;
pub mod invocation;
pub mod layout;
pub mod lifecycle;
pub mod outcome;
pub mod place;
pub mod plan;
pub mod planning;
pub mod precheck;
pub mod spec;
pub mod stage;

pub const GROUP: &str = "milvusbackfill.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "milvusbackfill.io/v1alpha1";
pub const KIND: &str = "Backfill";
