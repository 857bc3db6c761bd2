//! Planning as a Job: what the operator asks a planning Job and what the Job answers. Both are
//! objects in the Backfill's storage bucket, so the operator never holds the Milvus token or the
//! source's keys (the Job gets them through `secretKeyRef`), and its memory does not grow with
//! the source.
//!
//! One attempt of one generation lives under
//! `{rootPath}/backfill/planning/{backfillUid}/{generation}-{attempt}/`:
//!
//! | key | written by | what |
//! |---|---|---|
//! | `request.json` | operator, before the Job | [`PlanRequest`] |
//! | `precheck.json` | the planning Job (or the operator planning in-process), before the answer | [`crate::precheck::PrecheckReport`] |
//! | `answer.json` | the planning Job, last | [`PlanAnswer`]; the plan itself goes to the run's `plan.json` first |
//!
//! A Job that ends without an answer (killed, out of memory, no image) counts as a transient
//! planning failure; the operator starts the next attempt.
//!
//! The lifecycle's steps after the commit (`createIndex`, `verify`) run the same way, in a
//! finishing Job, under `{rootPath}/backfill/finishing/{backfillUid}/{generation}-{attempt}/`:
//! [`FinishRequest`] in `request.json`, [`FinishAnswer`] in `answer.json`
//! ([`PlanningLayout::finishing`]).

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::lifecycle::StepRecord;
use crate::spec::EngineSpec;

/// What a planning Job plans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanRequest {
    /// The Backfill's name (messages, and the run id when `spec.runId` is not set).
    pub backfill: String,
    pub namespace: String,
    pub generation: i64,
    pub attempt: u32,
    pub spec: EngineSpec,
}

/// What a planning Job found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum PlanAnswer {
    /// The plan is stored at `planKey` (the run's `plan.json`, in the same bucket).
    #[serde(rename_all = "camelCase")]
    Planned { plan_key: String, run_id: String },
    /// Planning failed; `kind` tells whether another attempt can help
    /// ([`ErrorKind::is_permanent`]).
    #[serde(rename_all = "camelCase")]
    Failed { kind: ErrorKind, message: String },
}

/// What a finishing Job runs once Milvus has committed the run: the lifecycle's steps after
/// the commit that the spec declares (`createIndex`, then `verify`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinishRequest {
    pub backfill: String,
    pub namespace: String,
    pub generation: i64,
    pub attempt: u32,
    pub spec: EngineSpec,
    /// The run's `plan.json` in the same bucket (the collection, its key and the new fields).
    pub plan_key: String,
}

/// What the finishing Job did: one record per declared step, in order. Final: a failed step
/// is the user's to fix (a spec change runs the steps again), a Job that ended without an
/// answer is retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinishAnswer {
    pub steps: Vec<StepRecord>,
}

/// The keys of one planning (or finishing) attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanningLayout {
    prefix: String,
}

const PLANNING: &str = "planning";
const FINISHING: &str = "finishing";

impl PlanningLayout {
    pub fn new(root_path: &str, backfill_uid: &str, generation: i64, attempt: u32) -> Self {
        Self::under(PLANNING, root_path, backfill_uid, generation, attempt)
    }
    /// An attempt of the finishing Job (the steps after the commit).
    pub fn finishing(root_path: &str, backfill_uid: &str, generation: i64, attempt: u32) -> Self {
        Self::under(FINISHING, root_path, backfill_uid, generation, attempt)
    }
    fn under(what: &str, root_path: &str, backfill_uid: &str, generation: i64, attempt: u32) -> Self {
        Self {
            prefix: format!("{root_path}/backfill/{what}/{backfill_uid}/{generation}-{attempt}"),
        }
    }
    /// Every planning attempt of one Backfill.
    pub fn backfill_prefix(root_path: &str, backfill_uid: &str) -> String {
        format!("{root_path}/backfill/{PLANNING}/{backfill_uid}/")
    }
    /// Every finishing attempt of one Backfill.
    pub fn finishing_prefix(root_path: &str, backfill_uid: &str) -> String {
        format!("{root_path}/backfill/{FINISHING}/{backfill_uid}/")
    }
    /// `(generation, attempt)` of a request or answer key under [`Self::backfill_prefix`].
    pub fn parse_key(prefix: &str, key: &str) -> Option<(i64, u32)> {
        let rest = key.strip_prefix(prefix)?;
        let (dir, file) = rest.split_once('/')?;
        if file != "request.json" && file != "answer.json" {
            return None;
        }
        let (generation, attempt) = dir.split_once('-')?;
        Some((generation.parse().ok()?, attempt.parse().ok()?))
    }
    pub fn request_key(&self) -> String {
        format!("{}/request.json", self.prefix)
    }
    pub fn answer_key(&self) -> String {
        format!("{}/answer.json", self.prefix)
    }
    pub fn precheck_key(&self) -> String {
        format!("{}/precheck.json", self.prefix)
    }
    /// The precheck report beside a request key.
    pub fn precheck_key_of(request_key: &str) -> String {
        match request_key.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/precheck.json"),
            None => "precheck.json".to_owned(),
        }
    }
    /// The answer beside a request key (what the Job is given).
    pub fn answer_key_of(request_key: &str) -> String {
        match request_key.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/answer.json"),
            None => "answer.json".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_has_its_own_request_and_answer() {
        let a = PlanningLayout::new("files", "u-1", 3, 0);
        let b = PlanningLayout::new("files", "u-1", 3, 1);
        assert_eq!(a.request_key(), "files/backfill/planning/u-1/3-0/request.json");
        assert_eq!(a.answer_key(), "files/backfill/planning/u-1/3-0/answer.json");
        assert_ne!(a.answer_key(), b.answer_key());
        assert_eq!(PlanningLayout::answer_key_of(&b.request_key()), b.answer_key());
        assert_eq!(PlanningLayout::precheck_key_of(&b.request_key()), b.precheck_key());
        assert_eq!(a.precheck_key(), "files/backfill/planning/u-1/3-0/precheck.json");
        let prefix = PlanningLayout::backfill_prefix("files", "u-1");
        assert_eq!(PlanningLayout::parse_key(&prefix, &b.answer_key()), Some((3, 1)));
        assert_eq!(PlanningLayout::parse_key(&prefix, &a.request_key()), Some((3, 0)));
        for other in [
            "files/backfill/planning/u-1/3-x/answer.json",
            "files/backfill/planning/u-1/3-0/log.txt",
            "files/backfill/planning/u-1/3-0/precheck.json",
            "files/backfill/planning/u-2/3-0/answer.json",
        ] {
            assert_eq!(PlanningLayout::parse_key(&prefix, other), None, "{other}");
        }
    }

    #[test]
    fn answers_read_back_with_their_outcome_tag() {
        let planned = PlanAnswer::Planned {
            plan_key: "files/backfill/7/r/plan.json".into(),
            run_id: "r".into(),
        };
        let text = serde_json::to_string(&planned).unwrap();
        assert!(
            text.contains(r#""outcome":"planned""#) && text.contains(r#""planKey""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<PlanAnswer>(&text).unwrap(), planned);
        let failed: PlanAnswer =
            serde_json::from_str(r#"{"outcome":"failed","kind":"SchemaValidationError","message":"no pk"}"#).unwrap();
        assert!(matches!(failed, PlanAnswer::Failed { kind, .. } if kind.is_permanent()));
    }

    #[test]
    fn finishing_attempts_live_apart_from_planning_ones() {
        let f = PlanningLayout::finishing("files", "u-1", 3, 1);
        assert_eq!(f.request_key(), "files/backfill/finishing/u-1/3-1/request.json");
        assert_ne!(f.answer_key(), PlanningLayout::new("files", "u-1", 3, 1).answer_key());
        let prefix = PlanningLayout::finishing_prefix("files", "u-1");
        assert_eq!(PlanningLayout::parse_key(&prefix, &f.answer_key()), Some((3, 1)));
        let planning = PlanningLayout::backfill_prefix("files", "u-1");
        assert_eq!(PlanningLayout::parse_key(&planning, &f.answer_key()), None);
        let answer = FinishAnswer {
            steps: vec![StepRecord::new(
                crate::lifecycle::Step::Verify,
                crate::lifecycle::StepState::Done,
                "100 of 100 keys match",
            )],
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert!(text.contains(r#""step":"verify""#), "{text}");
        assert_eq!(serde_json::from_str::<FinishAnswer>(&text).unwrap(), answer);
    }
}
