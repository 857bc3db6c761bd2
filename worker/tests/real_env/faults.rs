//! Faults injected between the engine and the real servers by `mb-fault-proxy`
//! (`e2e/fault-proxy`): S3 errors, resets, cut bodies and lost answers on reads and writes;
//! Milvus refusing or dropping connections during planning; a write that keeps failing. Each
//! scenario ends with every output row checked (or, where the run must fail, with nothing a
//! reader would take as done), and records its counts in `faults-*.json` beside the dataset
//! for `docs/reliability.md`.

use std::net::SocketAddr;

use mb_fault_proxy::{Mode, Proxy, Rule, Stats};

use super::*;

fn socket(endpoint: &str) -> SocketAddr {
    let hostport = endpoint.trim_start_matches("http://").trim_start_matches("https://");
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .unwrap_or_else(|_| panic!("{endpoint} is not host:port"))
}

async fn proxy(upstream: &str, mode: Mode, rules: &[&str], seed: u64) -> Proxy {
    let rules = rules.iter().map(|r| Rule::parse(r).unwrap()).collect();
    Proxy::start("127.0.0.1:0", socket(upstream), mode, rules, seed)
        .await
        .unwrap()
}

/// Every rule fired at least once (the scenario tested what it says), and the counts are kept.
fn record(e: &Env, scenario: &str, stats: &Stats) {
    eprintln!(
        "[faults] {scenario}: {} requests, {} faults injected",
        stats.requests, stats.faults
    );
    for r in &stats.rules {
        assert!(r.fired > 0, "{scenario}: rule {:?} never fired: {stats:?}", r.rule);
    }
    let file = e.data.join(format!("faults-{scenario}.json"));
    std::fs::write(file, serde_json::to_vec_pretty(stats).unwrap()).unwrap();
}

/// Deletes what earlier executions left under `f/{name}/` in the bucket.
async fn clear_out(name: &str) {
    use milvus_backfill::config::{S3Credentials, S3Endpoint};
    let ep = S3Endpoint {
        endpoint: var("S3_ENDPOINT"),
        region: "us-east-1".into(),
        use_ssl: false,
    };
    let creds = S3Credentials::storage_from_env().unwrap();
    let store = milvus_backfill::store::Store::s3(&ep, &var("S3_BUCKET"), creds.as_ref()).await;
    for o in store.list(&format!("f/{name}/")).await.unwrap() {
        store.delete(&o.key).await.unwrap();
    }
}

fn out_path(name: &str) -> String {
    // Short: s3s-fs keeps per-object files named by the base64 of the key, which must stay
    // below 255 bytes.
    format!("  output: {{path: \"s3://{}/f/{name}\"}}\n", var("S3_BUCKET"))
}

/// Plans and runs `c` from its `source` file of the dataset, with S3 behind a proxy of
/// `rules`; returns the proxy's counts of the run and the proxy itself (the run's stores go
/// through it), its rules cleared so that the checks after read cleanly.
async fn run_with_s3_faults(
    e: &Env,
    c: &str,
    source: &str,
    out: &str,
    rules: &[&str],
    seed: u64,
) -> (
    milvus_backfill::plan::Plan,
    RunStores,
    milvus_backfill_api::outcome::BackfillResult,
    Stats,
    Proxy,
) {
    let p = proxy(&var("S3_ENDPOINT"), Mode::Http, rules, seed).await;
    let src = e.expected[c]["newField"][source].as_str().unwrap();
    let text = yaml_at(c, src, &out_path(out), &p.addr().to_string());
    let (plan, stores, r) = plan_and_run(&text).await;
    let stats = p.stats();
    p.set_rules(vec![]);
    (plan, stores, r, stats, p)
}

/// Reads of binlogs, of the source and of listings meet 503 SlowDown, resets before the answer
/// and bodies cut halfway: the SDK retries the first two, the store fetches a cut body again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_read_faults_are_retried_and_every_row_is_right() {
    let Some(e) = env() else { return };
    let c = "e2e_many";
    let rules = [
        "cut method=GET key=/insert_log/ fraction=0.06",
        "cut method=GET key=.parquet fraction=0.2",
        "slowdown method=GET fraction=0.05",
        "reset method=GET fraction=0.04",
    ];
    let (plan, stores, r, stats, _proxy) = run_with_s3_faults(&e, c, "multi", "read", &rules, 11).await;
    assert!(r.success, "{}", r.summary());
    let checked = verify_outputs(&e, c, &plan, &stores, &r).await;
    assert_eq!(checked, r.total_rows_written);
    record(&e, "s3-reads", &stats);
}

/// Writes of parts, manifests and the result meet 503s, resets of multipart calls, 500s on the
/// first manifest and result writes, and answers lost after the server applied the write (the
/// retry overwrites the same bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_write_faults_are_retried_and_every_row_is_right() {
    let Some(e) = env() else { return };
    let c = "e2e_many";
    let rules = [
        "status:500 method=PUT key=manifest first=3",
        "status:503 method=PUT key=result first=1",
        "lost-answer method=PUT fraction=0.1",
        "slowdown method=PUT fraction=0.1",
    ];
    let (plan, stores, r, stats, _proxy) = run_with_s3_faults(&e, c, "single", "write", &rules, 12).await;
    assert!(r.success, "{}", r.summary());
    verify_outputs(&e, c, &plan, &stores, &r).await;
    let stored = stored_result(&stores, &plan).await;
    assert_eq!(stored["totalRowsWritten"], r.total_rows_written);
    record(&e, "s3-writes", &stats);
}

/// A manifest write that fails every time fails its segment with a write error naming the
/// key, after the SDK's attempts; no manifest of that segment is visible, so no reader takes
/// its parts as a column. The other segments are done, and a run without the fault completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_write_that_keeps_failing_leaves_no_manifest_and_a_rerun_completes() {
    let Some(e) = env() else { return };
    let c = "e2e_varchar";
    let src = e.expected[c]["newField"]["single"].as_str().unwrap();
    let p = proxy(&var("S3_ENDPOINT"), Mode::Http, &[], 13).await;
    let text = yaml_at(c, src, &out_path("mani"), &p.addr().to_string());
    let doc = BackfillDoc::parse(&text).unwrap();
    let planned = planner::plan(&doc, &MilvusToken::from_env()).await.unwrap();
    let victim = &planned.plan.segments[0];
    let key = victim.manifest_key();
    // What an earlier execution of this test left there would be taken for this run's.
    let out = &planned.stores.output;
    for o in out.list(&format!("{}/", victim.output_dir)).await.unwrap() {
        out.delete(&o.key).await.unwrap();
    }
    p.set_rules(vec![Rule::parse(&format!("slowdown method=PUT key={key}")).unwrap()]);
    let progress = Progress::new(planned.plan.segments.len(), true);
    let r = runner::run_plan(&planned.plan, &planned.stores, &progress).await;
    let stats = p.stats();
    p.set_rules(vec![]);
    assert!(!r.success);
    assert_eq!(r.failed_segments.len(), 1, "{}", r.summary());
    let err = &r.failed_segments[0];
    assert_eq!(err.segment_id, victim.segment_id);
    assert_eq!(err.kind, ErrorKind::WriteError, "{}", err.reason);
    assert!(
        err.reason.contains("manifest.json") && err.reason.contains("SlowDown"),
        "{}",
        err.reason
    );
    assert_eq!(
        stats.rules[0].fired,
        u64::from(milvus_backfill::store::S3_ATTEMPTS),
        "{stats:?}"
    );
    let none = read_manifest(&planned.stores.output, &key).await.unwrap();
    assert!(none.is_none(), "no manifest for the failed segment");
    for seg in planned.plan.segments.iter().skip(1) {
        assert!(
            r.segments.contains_key(&seg.segment_id.to_string()),
            "segment {} done",
            seg.segment_id
        );
    }
    let (plan, stores, again) = plan_and_run(&text).await;
    assert!(again.success, "{}", again.summary());
    verify_outputs(&e, c, &plan, &stores, &again).await;
    record(&e, "manifest-write", &stats);
}

/// A permanent S3 error (403 AccessDenied) is not retried: one request, and the segment's
/// error says to check the credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_fails_at_once_and_says_to_check_the_credentials() {
    let Some(e) = env() else { return };
    let c = "e2e_varchar";
    let src = e.expected[c]["newField"]["single"].as_str().unwrap();
    let p = proxy(&var("S3_ENDPOINT"), Mode::Http, &[], 14).await;
    let text = yaml_at(c, src, &out_path("deny"), &p.addr().to_string());
    let doc = BackfillDoc::parse(&text).unwrap();
    let planned = planner::plan(&doc, &MilvusToken::from_env()).await.unwrap();
    let seg = &planned.plan.segments[0];
    let binlog = seg.pk_binlogs[0].key.clone();
    p.set_rules(vec![
        Rule::parse(&format!("status:403 method=GET key={binlog}")).unwrap()
    ]);
    let progress = Progress::new(planned.plan.segments.len(), true);
    let r = runner::run_plan(&planned.plan, &planned.stores, &progress).await;
    let stats = p.stats();
    let err = r
        .failed_segments
        .iter()
        .find(|f| f.segment_id == seg.segment_id)
        .unwrap_or_else(|| panic!("segment {} failed: {}", seg.segment_id, r.summary()));
    assert!(
        err.reason.contains("AccessDenied") && err.reason.contains("check the S3 access key"),
        "{}",
        err.reason
    );
    assert_eq!(stats.rules[0].matched, 1, "not retried: {stats:?}");
    record(&e, "access-denied", &stats);
}

/// Milvus refusing the first connections, and dropping one mid-call, during planning: the
/// client connects and calls again, and the plan is the same as without faults. When Milvus
/// stays unreachable, planning fails with a connection error naming the address, after a
/// bounded number of attempts, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milvus_unreachable_during_planning_is_retried_then_named() {
    let Some(e) = env() else { return };
    let c = "e2e_int64";
    let src = e.expected[c]["newField"]["single"].as_str().unwrap();
    let clean = planner::plan(
        &BackfillDoc::parse(&yaml(c, src, "")).unwrap(),
        &MilvusToken::from_env(),
    )
    .await
    .unwrap()
    .plan;
    let p = proxy(
        &var("MILVUS_URI"),
        Mode::Tcp,
        &["refuse first=2", "cut-after:200 first=1"],
        15,
    )
    .await;
    let uri = format!("http://{}", p.addr());
    let text = yaml(c, src, "").replace(&var("MILVUS_URI"), &uri);
    let planned = planner::plan(&BackfillDoc::parse(&text).unwrap(), &MilvusToken::from_env())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ids = |p: &milvus_backfill::plan::Plan| {
        p.segments
            .iter()
            .map(|s| s.segment_id)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(ids(&planned.plan), ids(&clean));
    let stats = p.stats();
    record(&e, "milvus-planning", &stats);

    // Reset as soon as accepted: the client sees its connection die under each call.
    p.set_rules(vec![Rule::parse("refuse").unwrap()]);
    p.sever();
    let out = e.data.join("out-milvus-down");
    let text = yaml(c, src, &format!("  output: {{path: \"{}\"}}\n", out.display())).replace(&var("MILVUS_URI"), &uri);
    let doc = BackfillDoc::parse(&text).unwrap();
    let err = planner::plan(&doc, &MilvusToken::from_env())
        .await
        .err()
        .expect("Milvus is down");
    assert_eq!(err.kind, ErrorKind::ConnectionError, "{}", err.message);
    assert!(
        err.message.contains(&uri) && err.message.contains("check spec.milvus.uri"),
        "{}",
        err.message
    );
    let tries = p.stats().rules[0].fired;
    let attempts = u64::from(milvus_backfill::retry::MILVUS.attempts);
    assert!(
        (2..=2 * attempts).contains(&tries),
        "retried, and bounded: {tries} connections"
    );
    // Nothing listening (connection refused): the connect itself is retried, then named.
    p.down();
    let err = planner::plan(&doc, &MilvusToken::from_env())
        .await
        .err()
        .expect("Milvus is down");
    assert_eq!(err.kind, ErrorKind::ConnectionError, "{}", err.message);
    assert!(
        err.message
            .contains(&format!("cannot connect to Milvus at {uri} ({attempts} attempts)"))
            && err.message.contains("check spec.milvus.uri"),
        "{}",
        err.message
    );
    assert!(!out.exists(), "nothing written");
}

/// Every manifest under the plan's output is complete: its parts hold the rows it names, as
/// many as the segment has. Returns how many segments have one, and of how many runs they are
/// (more than one: a run was killed while it replaced the manifests of an earlier one).
async fn visible_manifests_are_complete(e: &Env, c: &str, text: &str) -> (usize, usize) {
    let doc = BackfillDoc::parse(text).unwrap();
    let planned = planner::plan(&doc, &MilvusToken::from_env()).await.unwrap();
    let mut done = 0;
    let mut runs = std::collections::BTreeSet::new();
    for seg in &planned.plan.segments {
        let Some(m) = read_manifest(&planned.stores.output, &seg.manifest_key())
            .await
            .unwrap()
        else {
            continue;
        };
        let truth = e.expected[c]["segments"][seg.segment_id.to_string()]["numRows"]
            .as_u64()
            .unwrap();
        let rows: usize = read_back(&planned.stores.output, &m)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "segment {}: a visible manifest names a part that is not whole: {err}",
                    seg.segment_id
                )
            })
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!((rows as u64, m.row_count), (truth, truth), "segment {}", seg.segment_id);
        runs.insert(m.run_id.clone());
        done += 1;
    }
    (done, runs.len())
}

/// `milvus-backfill run` killed with SIGKILL at seeded random moments, again and again, then
/// run to the end: after every kill each visible manifest is whole (the manifest is written
/// after the parts it names), and the last run's rows are a clean run's, row by row. Each run
/// gets a fresh run ID, as a user's rerun does; they share the output path, so each rewrites
/// the segments' manifests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_at_random_moments_then_rerun_matches_a_clean_run() {
    let Some(e) = env() else { return };
    let c = "e2e_many";
    let src = e.expected[c]["newField"]["multi"].as_str().unwrap();
    let (plan, stores, clean) = plan_and_run(&yaml(c, src, &out_path("kc"))).await;
    assert!(clean.success, "{}", clean.summary());
    verify_outputs(&e, c, &plan, &stores, &clean).await;

    clear_out("k").await;
    let text = yaml(c, src, &out_path("k"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bf.yaml");
    std::fs::write(&file, &text).unwrap();
    // The kill moments are drawn over the length of a whole CLI run, timed here.
    let started = std::time::Instant::now();
    let timed = bin().args(["run", "--no-progress", "-f"]).arg(&file).output().unwrap();
    assert!(timed.status.success(), "{}", String::from_utf8_lossy(&timed.stderr));
    let clean_ms = started.elapsed().as_millis() as u64;
    clear_out("k").await;
    let seed = 21u64;
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let runs = 12;
    let (mut killed, mut whole) = (0, Vec::new());
    for _ in 0..runs {
        // Planning takes the first part of a run; most kills land in the reads and writes.
        let at = clean_ms / 4 + next() % clean_ms.max(1);
        let mut child = bin()
            .args(["run", "--no-progress", "-f"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(at)).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        whole.push(visible_manifests_are_complete(&e, c, &text).await);
    }
    eprintln!(
        "[faults] kills: seed {seed}, clean run {clean_ms} ms, {killed} of {runs} runs killed, (whole manifests, runs they are of) after each: {whole:?}"
    );
    // How many kills land before the end depends on the machine's load; at least one must.
    assert!(killed >= 1, "no run was killed before it ended ({runs} runs)");
    let (plan, stores, r) = plan_and_run(&text).await;
    assert!(r.success, "{}", r.summary());
    verify_outputs(&e, c, &plan, &stores, &r).await;
    assert_eq!(
        (r.total_rows_written, r.total_matched_rows, r.segments.len()),
        (clean.total_rows_written, clean.total_matched_rows, clean.segments.len())
    );
    let report = serde_json::json!({
        "seed": seed, "runs": runs, "killed": killed, "cleanRunMs": clean_ms,
        "wholeManifestsAfterEachKill": whole, "segments": plan.segments.len(),
    });
    std::fs::write(
        e.data.join("faults-kills.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
}

/// S3 goes away mid-run (nothing listens on its port, as while the server restarts) and
/// comes back on the same address two seconds later: the SDK's attempts span the gap, and every
/// row is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_for_two_seconds_mid_run_is_ridden_out() {
    let Some(e) = env() else { return };
    let c = "e2e_many";
    let src = e.expected[c]["newField"]["multi"].as_str().unwrap();
    let p = proxy(&var("S3_ENDPOINT"), Mode::Http, &["delay:5"], 16).await;
    let text = yaml_at(c, src, &out_path("down"), &p.addr().to_string());
    let doc = BackfillDoc::parse(&text).unwrap();
    let planned = planner::plan(&doc, &MilvusToken::from_env()).await.unwrap();
    let before = p.stats().requests;
    let progress = Progress::new(planned.plan.segments.len(), true);
    let outage = async {
        while p.stats().requests < before + 20 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        p.down();
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        p.up().await.unwrap();
    };
    let (r, ()) = tokio::join!(runner::run_plan(&planned.plan, &planned.stores, &progress), outage);
    assert!(r.success, "{}", r.summary());
    verify_outputs(&e, c, &planned.plan, &planned.stores, &r).await;
    let stats = p.stats();
    assert!(
        stats.requests > before + 20,
        "the run went on after the outage: {stats:?}"
    );
    record(&e, "s3-down", &stats);
}
