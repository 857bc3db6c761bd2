//! The sample statuses in docs/argocd/testdata are what this operator writes: for every sample
//! that has the kstatus conditions, `conditions::kstatus` computes exactly those from the
//! sample's phase and Job-like conditions. (docs/argocd/test.sh then runs Argo CD's Lua check
//! and Flux's kstatus library on the same files.)

use k8s_openapi::jiff::Timestamp;
use milvus_backfill_operator::conditions::{get_condition, kstatus};
use milvus_backfill_operator::crd::{condition, Backfill};

const KSTATUS: [&str; 3] = [condition::READY, condition::RECONCILING, condition::STALLED];

#[test]
fn samples_carry_the_kstatus_conditions_the_operator_computes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/argocd/testdata");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // The others are statuses this operator never writes (legacy or hand-made).
        if !text.contains("type: Ready") {
            continue;
        }
        let bf: Backfill = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let Some(sample) = bf.status.clone() else { continue };
        if get_condition(&sample.conditions, condition::READY).is_none() {
            continue;
        }
        let mut computed = sample.clone();
        computed.conditions.retain(|c| !KSTATUS.contains(&c.type_.as_str()));
        kstatus(&mut computed, Timestamp::UNIX_EPOCH, 1);
        for t in KSTATUS {
            let want = get_condition(&sample.conditions, t).unwrap_or_else(|| panic!("{}: no {t}", path.display()));
            let got = get_condition(&computed.conditions, t).unwrap();
            assert_eq!(
                (&got.status, &got.reason, &got.message),
                (&want.status, &want.reason, &want.message),
                "{}: {t}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} samples carry kstatus conditions");
}
