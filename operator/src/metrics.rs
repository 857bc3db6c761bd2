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
    pub reconcile_seconds: Histogram,
    pub planning_seconds: Histogram,
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
            reconcile_seconds: Histogram::new(&[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            planning_seconds: Histogram::new(&[1.0, 5.0, 30.0, 120.0, 600.0, 1800.0]),
            ready_scopes: Counter::default(),
            leader: Gauge::default(),
            stores: Mutex::new(Vec::new()),
            phases: Mutex::new(HashMap::new()),
        }
    }
}

const PREFIX: &str = "milvus_backfill_operator";

impl Metrics {
    /// Counts the Backfills of this cache in the phase gauge.
    pub fn watch(&self, store: Store<Backfill>) {
        self.stores.lock().expect("not poisoned").push(store);
    }

    pub fn set_phase(&self, uid: &str, phase: Phase) {
        self.phases.lock().expect("not poisoned").insert(uid.to_owned(), phase);
    }

    pub fn forget(&self, uid: &str) {
        self.phases.lock().expect("not poisoned").remove(uid);
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
            let st = h.state.lock().expect("not poisoned");
            let _ = writeln!(s, "# HELP {PREFIX}_{name} {help}\n# TYPE {PREFIX}_{name} histogram");
            for (b, n) in h.bounds.iter().zip(&st.0) {
                let _ = writeln!(s, "{PREFIX}_{name}_bucket{{le=\"{b}\"}} {n}");
            }
            let _ = writeln!(s, "{PREFIX}_{name}_bucket{{le=\"+Inf\"}} {}", st.2);
            let _ = writeln!(s, "{PREFIX}_{name}_sum {}", st.1);
            let _ = writeln!(s, "{PREFIX}_{name}_count {}", st.2);
        }
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
            s,
            "# HELP {PREFIX}_backfills Backfills seen by this operator, by phase.\n# TYPE {PREFIX}_backfills gauge"
        );
        for (p, n) in by_phase {
            let _ = writeln!(s, "{PREFIX}_backfills{{phase=\"{p}\"}} {n}");
        }
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
        m.reconcile_seconds.observe(0.2);
        m.set_phase("a", Phase::Running);
        m.set_phase("b", Phase::Running);
        m.set_phase("c", Phase::Failed);
        let t = m.render();
        assert!(t.contains("milvus_backfill_operator_reconciles_total 1\n"));
        assert!(t.contains("milvus_backfill_operator_leader 1\n"));
        assert!(t.contains("milvus_backfill_operator_reconcile_errors_total{category=\"StorageError\"} 1\n"));
        assert!(t.contains("milvus_backfill_operator_reconcile_duration_seconds_bucket{le=\"0.1\"} 0\n"));
        assert!(t.contains("milvus_backfill_operator_reconcile_duration_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(t.contains("milvus_backfill_operator_reconcile_duration_seconds_count 1\n"));
        assert!(t.contains("milvus_backfill_operator_backfills{phase=\"Running\"} 2\n"));
        assert!(t.contains("milvus_backfill_operator_backfills{phase=\"Pending\"} 0\n"));
        m.forget("c");
        assert!(m
            .render()
            .contains("milvus_backfill_operator_backfills{phase=\"Failed\"} 0\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
