//! A staged run (`spec.routing: Staged`) through the pure state machine: route Jobs first,
//! join Jobs only once every route task succeeded (built from their outputs), write Jobs
//! after the joins; the stage in status; a route task failing for good fails every segment
//! without running the later stages.

use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::crd::Routing;
use crate::testutil::{ok_outcome, plan_with, spec};
use crate::validate::ValidSpec;
use milvus_backfill_api::error::ErrorKind;
use milvus_backfill_api::plan::SourceFile;
use milvus_backfill_api::stage::{JoinedFile, StageOutput};

const SPJ: u32 = 2;

fn t0() -> Timestamp {
    "2026-11-27T03:00:00Z".parse().unwrap()
}

fn staged_spec() -> BackfillSpec {
    let mut s = spec();
    s.routing = Some(Routing::Staged);
    s.segments_per_job = Some(SPJ);
    s
}

fn staged_plan() -> Plan {
    let mut p = plan_with(6, 0);
    p.source_files = vec![SourceFile {
        key: "new.parquet".into(),
        size: 1 << 20,
        rows: 1_000_000,
        first_row: 0,
    }];
    p
}

fn decide_with(spec: &BackfillSpec, status: &BackfillStatus, plan: &Plan, outcomes: &Outcomes) -> Decision {
    decide(&Observed {
        generation: 1,
        spec: Ok(ValidSpec { spec, image: "img" }),
        status,
        run: Some(RunInput {
            plan,
            outcomes,
            jobs: &[],
        }),
        now: t0(),
    })
}

fn file(key: String) -> SourceFile {
    SourceFile {
        key,
        size: 10,
        rows: 5,
        first_row: 0,
    }
}

fn stage_ok(plan: &Plan, task: u32, output: StageOutput) -> TaskOutcome {
    let mut o = ok_outcome(plan, SPJ, u32::MAX, 0, 0);
    o.task_id = RunLayout::of_plan(plan).task_id(task);
    o.stage_output = Some(output);
    o
}

/// Every join task succeeded, each partition holding a row group of every segment.
fn join_all(plan: &Plan, first: u32, parts: u32, outcomes: &mut Outcomes) {
    for p in 0..parts {
        let joined = StageOutput::Joined {
            file: Some(JoinedFile {
                file: file(format!("j{p}")),
                row_groups: (0..6).map(|s| (s, s)).collect(),
            }),
        };
        outcomes.insert((first + p, 0), stage_ok(plan, first + p, joined));
    }
}

fn created(d: &Decision) -> Vec<&JobRequest> {
    d.jobs_to_create().collect()
}

#[test]
fn the_stages_run_in_order_each_from_the_outputs_of_the_one_before() {
    let (spec, plan) = (staged_spec(), staged_plan());
    let st = super::tests::planned_for(&spec, &plan);
    let parts = st.exchange_partitions.expect("a staged run records its partitions");
    assert!(parts >= spec.parallelism(), "{parts}");
    let b = 3u32; // 6 segments, 2 per Job
    assert_eq!(st.tasks, Some(2 * b + parts));
    assert_eq!(st.stage.as_deref(), Some("Route"));

    // Route: every route Job at once (within parallelism), nothing else.
    let mut outcomes = Outcomes::new();
    let d = decide_with(&spec, &st, &plan, &outcomes);
    let jobs = created(&d);
    assert_eq!(jobs.iter().map(|j| j.task).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(jobs.iter().all(|j| matches!(j.stage, Some(Stage::Route(_)))));

    // Two of three routed: still no join.
    let routed = |t: u32| StageOutput::Routed {
        keys: (0..parts).map(|p| vec![file(format!("k{t}-{p}"))]).collect(),
        source: (0..parts).map(|p| vec![file(format!("s{t}-{p}"))]).collect(),
        unreadable: vec![],
    };
    for t in 0..2 {
        outcomes.insert((t, 0), stage_ok(&plan, t, routed(t)));
    }
    let d = decide_with(&spec, &st, &plan, &outcomes);
    assert!(
        created(&d).iter().all(|j| j.task == 2),
        "only the last route task may run"
    );
    outcomes.insert((2, 0), stage_ok(&plan, 2, routed(2)));

    // Join: one Job per partition, each with every route task's parts of it.
    let d = decide_with(&spec, &st, &plan, &outcomes);
    let st = d.new_status().unwrap().clone();
    assert_eq!(st.stage.as_deref(), Some("Join"));
    let jobs = created(&d);
    assert_eq!(jobs.len() as u32, parts.min(spec.parallelism()));
    let Some(Stage::Join(w)) = &jobs[0].stage else {
        panic!("{:?}", jobs[0])
    };
    assert_eq!(
        w.keys.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
        vec!["k0-0", "k1-0", "k2-0"]
    );

    // Write: after every join, with just the batch's row groups.
    join_all(&plan, b, parts, &mut outcomes);
    let d = decide_with(&spec, &st, &plan, &outcomes);
    let st = d.new_status().unwrap().clone();
    assert_eq!(st.stage.as_deref(), Some("Write"));
    let jobs = created(&d);
    let Some(Stage::Write(w)) = &jobs[1].stage else {
        panic!("{:?}", jobs[1])
    };
    assert_eq!(jobs[1].task, b + parts + 1);
    assert_eq!(
        (w.first_segment, w.joined[0].row_groups.clone()),
        (2, vec![(2, 2), (3, 3)])
    );

    // Every write done: the run succeeds, the source read once.
    for wb in 0..b {
        let mut o = ok_outcome(&plan, SPJ, wb, 0, 7);
        o.task_id = RunLayout::of_plan(&plan).task_id(b + parts + wb);
        outcomes.insert((b + parts + wb, 0), o);
    }
    let d = decide_with(&spec, &st, &plan, &outcomes);
    assert_eq!(d.phase, Phase::Succeeded);
    let result = d.actions.iter().find_map(|a| match a {
        Action::WriteResult(r) => Some(r.clone()),
        _ => None,
    });
    let result = result.expect("the result is written");
    assert_eq!(result.source_reads.source_passes, 1);
    assert_eq!(result.segments.len(), 6);
    assert_eq!(d.new_status().unwrap().stage, None);
}

#[test]
fn a_route_task_failing_for_good_fails_every_segment_without_the_later_stages() {
    let (spec, plan) = (staged_spec(), staged_plan());
    let st = super::tests::planned_for(&spec, &plan);
    let parts = st.exchange_partitions.unwrap();
    let mut outcomes = Outcomes::new();
    let mut bad = stage_ok(
        &plan,
        1,
        StageOutput::Failed {
            error: ErrorKind::SchemaValidationError,
            reason: "new.parquet has 2 null `pk` value(s)".into(),
        },
    );
    bad.success = false;
    outcomes.insert((1, 0), bad);
    for t in [0, 2] {
        let routed = StageOutput::Routed {
            keys: vec![vec![]; parts as usize],
            source: vec![vec![]; parts as usize],
            unreadable: vec![],
        };
        outcomes.insert((t, 0), stage_ok(&plan, t, routed));
    }
    let d = decide_with(&spec, &st, &plan, &outcomes);
    assert_eq!(created(&d).len(), 0, "no join or write Job after a failed route");
    assert_eq!(d.phase, Phase::Failed);
    let recorded: Vec<(u32, &TaskOutcome)> = d
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::RecordOutcome { task, outcome, .. } => Some((*task, outcome.as_ref())),
            _ => None,
        })
        .collect();
    assert_eq!(
        recorded.len() as u32,
        parts + 3,
        "every join and write task is recorded as not run"
    );
    let st = d.new_status().unwrap();
    assert_eq!(st.segments.as_ref().unwrap().failed, 6);
    let reason = &st.failed_segments[0].reason;
    assert!(
        reason.contains("not run: route task 1 failed") && reason.contains("null `pk`"),
        "{reason}"
    );
}

#[test]
fn auto_stages_only_when_many_jobs_would_each_read_a_large_source() {
    let mut spec = spec();
    let mut plan = staged_plan();
    assert!(!spec.staged(&plan, 3), "a 1 MiB source is read per Job");
    plan.source_files[0].size = 10 << 30;
    assert!(spec.staged(&plan, 3));
    assert!(!spec.staged(&plan, 2), "two Jobs read it twice: not worth the exchange");
    spec.routing = Some(Routing::PerJob);
    assert!(!spec.staged(&plan, 100));
}
