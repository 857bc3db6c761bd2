//! Prometheus metrics, by hand: a few counters, two histograms and a phase gauge, in the text
//! exposition format. No registry crate needed for this little.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use kube::runtime::reflector::Store;

use crate::crd::{Backfill, Phase};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter per label value (stable, low-cardinality values only: error categories).
#[derive(Default)]
pub struct LabeledCounter(Mutex<BTreeMap<&'static str, u64>>);

impl LabeledCounter {
    pub fn inc(&self, label: &'static str) {
        *self.0.lock().expect("not poisoned").entry(label).or_default() += 1;
    }
}

pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new((vec![0; bounds.len()], 0.0, 0)),
        }
    }
    /// Bucket, sum and count lines; `labels` is empty or ends with a comma.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let st = self.state.lock().expect("not poisoned");
        for (b, n) in self.bounds.iter().zip(&st.0) {
            let _ = writeln!(out, "{PREFIX}_{name}_bucket{{{labels}le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "{PREFIX}_{name}_bucket{{{labels}le=\"+Inf\"}} {}", st.2);
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() {
            String::new()
        } else {
            format!("{{{plain}}}")
        };
        let _ = writeln!(out, "{PREFIX}_{name}_sum{braces} {}", st.1);
        let _ = writeln!(out, "{PREFIX}_{name}_count{braces} {}", st.2);
    }

    pub fn observe(&self, v: f64) {
        let mut s = self.state.lock().expect("not poisoned");
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                s.0[i] += 1;
            }
        }
        s.1 += v;
        s.2 += 1;
    }
}

pub struct Metrics {
    pub reconciles: Counter,
    pub failures: LabeledCounter,
    pub jobs_created: Counter,
    /// Commit attempts by verdict (committed, rejected, unreachable, refused).
    pub commits: LabeledCounter,
    pub reconcile_seconds: Histogram,
    pub planning_seconds: Histogram,
    /// Worker Jobs from start to end: [succeeded, failed].
    pub job_seconds: [Histogram; 2],
    /// Controllers whose Job cache is filled (readiness).
    pub ready_scopes: Counter,
    /// 1 while this replica reconciles (the leader, or the only replica).
    pub leader: Gauge,
    /// The controllers' Backfill caches: the phase gauge counts what is there now.
    stores: Mutex<Vec<Store<Backfill>>>,
    /// Phases set directly (tests, or before a cache exists).
    phases: Mutex<HashMap<String, Phase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            failures: LabeledCounter::default(),
            jobs_created: Counter::default(),
            commits: LabeledCounter::default(),
            reconcile_seconds: Histogram::new(&[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            planning_seconds: Histogram::new(&[1.0, 5.0, 30.0, 120.0, 600.0, 1800.0]),
            job_seconds: [JOB_BOUNDS, JOB_BOUNDS].map(Histogram::new),
            ready_scopes: Counter::default(),
            leader: Gauge::default(),
            stores: Mutex::new(Vec::new()),
            phases: Mutex::new(HashMap::new()),
        }
    }
}

const PREFIX: &str = "milvus_backfill_operator";
const JOB_BOUNDS: &[f64] = &[10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0];

impl Metrics {
    /// Counts the Backfills of this cache in the phase gauge.
    pub fn watch(&self, store: Store<Backfill>) {
        self.stores.lock().expect("not poisoned").push(store);
    }

    pub fn observe_job(&self, succeeded: bool, seconds: f64) {
        self.job_seconds[usize::from(!succeeded)].observe(seconds);
    }

    pub fn set_phase(&self, uid: &str, phase: Phase) {
        self.phases.lock().expect("not poisoned").insert(uid.to_owned(), phase);
    }

    pub fn forget(&self, uid: &str) {
        self.phases.lock().expect("not poisoned").remove(uid);
    }

    /// Segments [pending, running, succeeded, failed] and rows written, summed over the
    /// Backfills in the caches (their status).
    fn totals(&self) -> ([u64; 4], u64) {
        let stores = self.stores.lock().expect("not poisoned");
        let mut seg = [0u64; 4];
        let mut rows = 0;
        for bf in stores.iter().flat_map(|s| s.state()) {
            let Some(st) = bf.status.as_ref() else { continue };
            if let Some(c) = &st.segments {
                for (acc, v) in seg.iter_mut().zip([c.pending, c.running, c.succeeded, c.failed]) {
                    *acc += v;
                }
            }
            rows += st.rows.as_ref().map_or(0, |r| r.written);
        }
        (seg, rows)
    }

    fn phase_counts(&self) -> Vec<Phase> {
        let stores = self.stores.lock().expect("not poisoned");
        if stores.is_empty() {
            return self.phases.lock().expect("not poisoned").values().copied().collect();
        }
        stores
            .iter()
            .flat_map(|s| s.state())
            .map(|bf| bf.status.as_ref().and_then(|s| s.phase).unwrap_or_default())
            .collect()
    }

    /// The gauges of the Backfills this operator sees: segments, rows, phases.
    fn render_backfills(&self, s: &mut String) {
        let (segments, rows_written) = self.totals();
        let _ = writeln!(
            *s,
            "# HELP {PREFIX}_segments Segments of the Backfills seen by this operator, by state.\n# TYPE {PREFIX}_segments gauge"
        );
        for (state, n) in ["pending", "running", "succeeded", "failed"].iter().zip(segments) {
            let _ = writeln!(*s, "{PREFIX}_segments{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            *s,
            "# HELP {PREFIX}_rows_written Rows written by the Backfills seen by this operator.\n# TYPE {PREFIX}_rows_written gauge\n{PREFIX}_rows_written {rows_written}"
        );
        let mut by_phase: BTreeMap<&str, u64> = [
            Phase::Pending,
            Phase::Planning,
            Phase::Running,
            Phase::Suspended,
            Phase::Succeeded,
            Phase::Failed,
        ]
        .iter()
        .map(|p| (p.as_str(), 0))
        .collect();
        for p in self.phase_counts() {
            *by_phase.entry(p.as_str()).or_default() += 1;
        }
        let _ = writeln!(
            *s,
            "# HELP {PREFIX}_backfills Backfills seen by this operator, by phase.\n# TYPE {PREFIX}_backfills gauge"
        );
        for (p, n) in by_phase {
            let _ = writeln!(*s, "{PREFIX}_backfills{{phase=\"{p}\"}} {n}");
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                s,
                "# HELP {PREFIX}_{name} {help}\n# TYPE {PREFIX}_{name} counter\n{PREFIX}_{name} {v}"
            );
        };
        counter("reconciles_total", "Reconcile passes.", self.reconciles.get());
        counter("jobs_created_total", "Worker Jobs applied.", self.jobs_created.get());
        let _ = writeln!(
            s,
            "# HELP {PREFIX}_leader 1 while this replica reconciles (holds the Lease, or runs alone).\n# TYPE {PREFIX}_leader gauge\n{PREFIX}_leader {}",
            self.leader.get()
        );
        let _ = writeln!(
            s,
            "# HELP {PREFIX}_reconcile_errors_total Failed reconcile passes by error category.\n# TYPE {PREFIX}_reconcile_errors_total counter"
        );
        for (k, v) in self.failures.0.lock().expect("not poisoned").iter() {
            let _ = writeln!(s, "{PREFIX}_reconcile_errors_total{{category=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP {PREFIX}_commit_attempts_total Calls of Milvus' backfill commit, by result.\n# TYPE {PREFIX}_commit_attempts_total counter"
        );
        for (k, v) in self.commits.0.lock().expect("not poisoned").iter() {
            let _ = writeln!(s, "{PREFIX}_commit_attempts_total{{result=\"{k}\"}} {v}");
        }
        for (name, help, h) in [
            (
                "reconcile_duration_seconds",
                "Duration of reconcile passes.",
                &self.reconcile_seconds,
            ),
            (
                "planning_duration_seconds",
                "Duration of in-process planning.",
                &self.planning_seconds,
            ),
        ] {
            let _ = writeln!(s, "# HELP {PREFIX}_{name} {help}\n# TYPE {PREFIX}_{name} histogram");
            h.render(&mut s, name, "");
        }
        let name = "job_duration_seconds";
        let _ = writeln!(
            s,
            "# HELP {PREFIX}_{name} Worker Jobs from start to end, by result.\n# TYPE {PREFIX}_{name} histogram"
        );
        self.job_seconds[0].render(&mut s, name, "result=\"succeeded\",");
        self.job_seconds[1].render(&mut s, name, "result=\"failed\",");
        self.render_backfills(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.leader.set(1);
        m.failures.inc("StorageError");
        m.commits.inc("committed");
        m.reconcile_seconds.observe(0.2);
        m.set_phase("a", Phase::Running);
        m.set_phase("b", Phase::Running);
        m.set_phase("c", Phase::Failed);
        let t = m.render();
        assert!(t.contains("milvus_backfill_operator_reconciles_total 1\n"));
        assert!(t.contains("milvus_backfill_operator_leader 1\n"));
        assert!(t.contains("milvus_backfill_operator_reconcile_errors_total{category=\"StorageError\"} 1\n"));
        assert!(t.contains("milvus_backfill_operator_commit_attempts_total{result=\"committed\"} 1\n"));
        assert!(t.contains("milvus_backfill_operator_reconcile_duration_seconds_bucket{le=\"0.1\"} 0\n"));
        assert!(t.contains("milvus_backfill_operator_reconcile_duration_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(t.contains("milvus_backfill_operator_reconcile_duration_seconds_count 1\n"));
        assert!(t.contains("milvus_backfill_operator_backfills{phase=\"Running\"} 2\n"));
        assert!(t.contains("milvus_backfill_operator_backfills{phase=\"Pending\"} 0\n"));
        m.observe_job(true, 42.0);
        m.observe_job(false, 5.0);
        let t = m.render();
        assert!(t.contains("milvus_backfill_operator_job_duration_seconds_bucket{result=\"succeeded\",le=\"30\"} 0\n"));
        assert!(t.contains("milvus_backfill_operator_job_duration_seconds_bucket{result=\"succeeded\",le=\"60\"} 1\n"));
        assert!(t.contains("milvus_backfill_operator_job_duration_seconds_sum{result=\"succeeded\"} 42\n"));
        assert!(t.contains("milvus_backfill_operator_job_duration_seconds_count{result=\"failed\"} 1\n"));
        m.forget("c");
        assert!(m
            .render()
            .contains("milvus_backfill_operator_backfills{phase=\"Failed\"} 0\n"));
        // Segments and rows come from the Backfills' status in the caches.
        let (store, mut writer) = kube::runtime::reflector::store::<Backfill>();
        for (name, seg, written) in [("a", [1, 2, 3, 0], 300), ("b", [0, 0, 5, 1], 500)] {
            let mut bf = crate::testutil::backfill(name);
            bf.status = Some(crate::crd::BackfillStatus {
                segments: Some(crate::crd::SegmentCounts {
                    total: seg.iter().sum(),
                    pending: seg[0],
                    running: seg[1],
                    succeeded: seg[2],
                    failed: seg[3],
                }),
                rows: Some(crate::crd::RowCounts {
                    total: written,
                    written,
                    matched: 0,
                }),
                ..Default::default()
            });
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(bf));
        }
        m.watch(store);
        let t = m.render();
        assert!(
            t.contains("milvus_backfill_operator_segments{state=\"running\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("milvus_backfill_operator_segments{state=\"succeeded\"} 8\n"));
        assert!(t.contains("milvus_backfill_operator_segments{state=\"failed\"} 1\n"));
        assert!(t.contains("milvus_backfill_operator_rows_written 800\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
