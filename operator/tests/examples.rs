//! Every Backfill in `examples/` is one a user can apply and run: it parses as the CRD's type,
//! passes the spec checks and the CEL rules (kube-cel, as the API server evaluates them), and
//! the CLI reads the same file (`run -f` on a cluster manifest, other documents skipped). The
//! real API server's server-side dry run of the same files is in
//! `operator/e2e/control-plane-check.sh`.

use milvus_backfill::config::BackfillDoc;
use milvus_backfill_operator::crd::Backfill;
use serde::Deserialize;

fn examples() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| (p.display().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn every_example_backfill_is_valid_for_the_api_server_and_the_cli() {
    let mut backfills = 0;
    for (path, text) in examples() {
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            assert!(
                v.get("apiVersion").is_some() && v.get("kind").is_some(),
                "{path}: a document without apiVersion/kind"
            );
            if v.get("kind").and_then(|k| k.as_str()) != Some("Backfill") {
                continue;
            }
            let bf: Backfill = serde_yaml::from_value(v).unwrap_or_else(|e| panic!("{path}: {e}"));
            milvus_backfill_api::spec::validate(&bf.spec.engine).unwrap_or_else(|p| panic!("{path}: {p:?}"));
            kube::core::cel::validate_cel(&bf).unwrap_or_else(|e| panic!("{path}: CEL {e:?}"));
            backfills += 1;
        }
        if text.contains("kind: Backfill") {
            let (doc, _notes) = BackfillDoc::parse_noting(&text).unwrap_or_else(|e| panic!("{path}: the CLI: {e}"));
            assert!(!doc.spec.source.path.is_empty(), "{path}");
        }
    }
    assert!(backfills >= 2, "{backfills} example Backfills");
}

#[test]
fn the_secrets_example_has_the_keys_the_operator_reads() {
    let (_, text) = examples()
        .into_iter()
        .find(|(p, _)| p.ends_with("secrets.yaml"))
        .unwrap();
    for key in [
        milvus_backfill_api::spec::ACCESS_KEY_KEY,
        milvus_backfill_api::spec::SECRET_KEY_KEY,
    ] {
        assert!(text.contains(&format!("{key}:")), "no {key}");
    }
}
