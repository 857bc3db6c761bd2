//! The committed CRD (`crds/backfills.milvusbackfill.io.yaml`) is what the code generates.
//! Regenerate it with:
//!
//!     cargo run --release -p milvus-backfill-operator -- crd > crds/backfills.milvusbackfill.io.yaml

use milvus_backfill_operator::crd::crd_yaml;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/backfills.milvusbackfill.io.yaml");

#[test]
fn committed_crd_is_current() {
    let generated = crd_yaml();
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    if committed != generated {
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::write(COMMITTED, &generated).expect("write the CRD");
            return;
        }
        panic!(
            "crds/backfills.milvusbackfill.io.yaml is stale; regenerate it:\n  \
             cargo run --release -p milvus-backfill-operator -- crd > crds/backfills.milvusbackfill.io.yaml\n\
             (or run this test with UPDATE_CRDS=1)"
        );
    }
}

fn schema() -> serde_json::Value {
    let crd: serde_json::Value = serde_yaml::from_str(&crd_yaml()).unwrap();
    assert_eq!(crd["metadata"]["name"], "backfills.milvusbackfill.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "bf");
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert!(v["subresources"]["status"].is_object(), "status subresource");
    let cols: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        ["Phase", "Ready", "Segments", "Failed", "Rows", "Age", "Message", "Stage", "Commit"]
    );
    let cols = v["additionalPrinterColumns"].as_array().unwrap();
    // kstatus' Ready beside the phase; its message only with `-o wide`.
    assert_eq!(cols[1]["jsonPath"], ".status.conditions[?(@.type==\"Ready\")].status");
    assert_eq!(cols[6]["priority"], 1);
    // A staged run's stage, then the commit's state (spec.commit.endpoint), with `-o wide`.
    assert_eq!(cols[7]["jsonPath"], ".status.stage");
    assert_eq!(cols[8]["jsonPath"], ".status.commit.state");
    assert_eq!(
        (cols[7]["priority"].clone(), cols[8]["priority"].clone()),
        (1.into(), 1.into())
    );
    v["schema"]["openAPIV3Schema"].clone()
}

fn walk<'a>(v: &'a serde_json::Value, path: &mut Vec<String>, f: &mut dyn FnMut(&[String], &'a serde_json::Value)) {
    f(path, v);
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                path.push(k.clone());
                walk(x, path, f);
                path.pop();
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                walk(x, path, f);
            }
        }
        _ => {}
    }
}

#[test]
fn the_spec_schema_has_no_defaults() {
    // A schema default that a manifest omits makes GitOps tools report drift forever.
    let s = schema();
    let mut found = vec![];
    walk(&s["properties"]["spec"], &mut vec![], &mut |p, v| {
        if v.get("default").is_some() && p.last().map(String::as_str) != Some("properties") {
            found.push(p.join("."));
        }
    });
    assert!(found.is_empty(), "defaults at {found:?}");
}

#[test]
fn the_spec_keeps_the_engine_field_names() {
    let s = schema();
    let props = s["properties"]["spec"]["properties"].as_object().unwrap();
    for k in [
        "milvus",
        "primaryKeyFieldId",
        "storage",
        "source",
        "output",
        "batchSize",
        "parallelism",
        "flush",
        "worker",
        "segmentsPerJob",
        "retry",
        "activeDeadlineSeconds",
        "suspend",
        "ttlSecondsAfterFinished",
    ] {
        assert!(props.contains_key(k), "spec.{k} missing");
    }
    let required: Vec<&str> = s["properties"]["spec"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["milvus", "source", "storage"]);
    for k in [
        "image",
        "imagePullPolicy",
        "imagePullSecrets",
        "resources",
        "nodeSelector",
        "tolerations",
        "affinity",
        "serviceAccountName",
        "podSecurityContext",
        "env",
    ] {
        assert!(
            props["worker"]["properties"].get(k).is_some(),
            "spec.worker.{k} missing"
        );
    }
    assert_eq!(
        props["storage"]["properties"]["credentialsSecretRef"]["required"][0],
        "name"
    );
}

#[test]
fn cel_rules_guard_the_plan_defining_fields() {
    let s = schema();
    let rules: Vec<String> = s["properties"]["spec"]["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap().to_owned())
        .collect();
    for f in [
        "milvus",
        "storage",
        "source",
        "output",
        "primaryKeyFieldId",
        "segmentsPerJob",
        "batchSize",
        "columnMapping",
        "mode",
        "runId",
    ] {
        assert!(
            rules.iter().any(|r| r.contains(&format!("oldSelf.{f}"))),
            "{f} is not immutable"
        );
    }
    for f in ["parallelism", "batchSize"] {
        assert!(
            rules.iter().any(|r| r.contains(&format!("self.{f} >= 1"))),
            "{f} >= 1 missing"
        );
    }
    // Mutable knobs have no transition rule.
    for f in ["suspend", "parallelism", "worker", "retry"] {
        assert!(
            !rules.iter().any(|r| r.contains(&format!("oldSelf.{f}"))),
            "{f} must stay mutable"
        );
    }
}

#[test]
fn status_is_bounded_and_conditions_are_a_map() {
    let s = schema();
    let st = &s["properties"]["status"]["properties"];
    assert_eq!(st["conditions"]["x-kubernetes-list-type"], "map");
    assert_eq!(st["conditions"]["x-kubernetes-list-map-keys"][0], "type");
    assert_eq!(st["failedSegments"]["maxItems"], 50);
    let commit = &st["commit"]["properties"];
    assert_eq!(commit["failedSegments"]["maxItems"], 50);
    assert_eq!(commit["resultPaths"]["maxItems"], 8);
    let states: Vec<&str> = commit["state"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(states, ["Pending", "Committed", "Failed", "NotCommittable"]);
    for k in [
        "phase",
        "observedGeneration",
        "collectionId",
        "newFieldNames",
        "segments",
        "rows",
        "startTime",
        "completionTime",
        "executionTimeMs",
        "resultPath",
        "failedSegments",
        "runId",
        "progress",
    ] {
        assert!(st.get(k).is_some(), "status.{k} missing");
    }
    let phases: Vec<&str> = st["phase"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        phases,
        ["Pending", "Planning", "Running", "Suspended", "Succeeded", "Failed"]
    );
}

#[test]
fn the_crd_is_small_enough_for_client_side_apply() {
    // kubectl apply without --server-side stores the object in an annotation (256 KiB limit).
    let json = serde_json::to_vec(&serde_yaml::from_str::<serde_json::Value>(&crd_yaml()).unwrap()).unwrap();
    assert!(json.len() < 200_000, "{} bytes", json.len());
}

mod cel {
    //! The CEL rules evaluated client-side (kube-cel), as the API server would on update.
    use milvus_backfill_operator::crd::Backfill;

    fn bf(extra: &str) -> Backfill {
        serde_yaml::from_str(&format!(
            "apiVersion: milvusbackfill.io/v1alpha1\nkind: Backfill\nmetadata: {{name: x, namespace: d}}\nspec:\n  \
             milvus: {{uri: 'http://m:1', collection: c}}\n  storage: {{endpoint: 'e:1', bucket: b}}\n  \
             source: {{path: 's3://d/x'}}\n{extra}"
        ))
        .unwrap()
    }

    fn update(old: &str, new: &str) -> Result<(), String> {
        kube::core::cel::validate_cel_update(&bf(new), &bf(old)).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn creation_rules() {
        assert!(kube::core::cel::validate_cel(&bf("")).is_ok());
        assert!(kube::core::cel::validate_cel(&bf("  parallelism: 0\n")).is_err());
        assert!(kube::core::cel::validate_cel(&bf("  batchSize: 0\n")).is_err());
        assert!(kube::core::cel::validate_cel(&bf("  parallelism: 1\n  batchSize: 1\n")).is_ok());
    }

    #[test]
    fn plan_defining_fields_are_immutable() {
        for (old, new) in [
            ("", "  output: {path: 's3://b/o'}\n"),
            ("  output: {path: 's3://b/o'}\n", ""),
            ("  output: {path: 's3://b/o'}\n", "  output: {path: 's3://b/p'}\n"),
            ("", "  primaryKeyFieldId: 101\n"),
            ("  primaryKeyFieldId: 100\n", "  primaryKeyFieldId: 101\n"),
            ("  segmentsPerJob: 2\n", "  segmentsPerJob: 3\n"),
            ("  batchSize: 64\n", "  batchSize: 128\n"),
            ("", "  batchSize: 128\n"),
            ("", "  columnMapping: {k: id, s: score}\n"),
            (
                "  columnMapping: {k: id, s: score}\n",
                "  columnMapping: {k: id, t: score}\n",
            ),
            ("", "  mode: overwrite\n"),
            ("  mode: replace\n", "  mode: coalesce\n"),
            ("  mode: replace\n", ""),
            ("", "  runId: nightly-1\n"),
            ("  runId: nightly-1\n", "  runId: nightly-2\n"),
        ] {
            assert!(update(old, new).is_err(), "{old:?} -> {new:?} accepted");
        }
        let changed = |f: &dyn Fn(&mut Backfill)| {
            let old = bf("");
            let mut new = old.clone();
            f(&mut new);
            kube::core::cel::validate_cel_update(&new, &old).is_err()
        };
        assert!(changed(&|b| b.spec.engine.milvus.collection = "other".into()));
        assert!(changed(&|b| b.spec.engine.storage.bucket = "other".into()));
        assert!(changed(&|b| b.spec.engine.source.path = "s3://other/x".into()));
    }

    #[test]
    fn operational_knobs_stay_mutable() {
        for (old, new) in [
            ("", "  suspend: true\n"),
            ("  suspend: true\n", "  suspend: false\n"),
            ("  parallelism: 2\n", "  parallelism: 9\n"),
            ("", "  retry: {maxAttempts: 5}\n"),
            ("", "  worker: {resources: {limits: {memory: 8Gi}}}\n"),
            (
                "  output: {path: 's3://b/o'}\n",
                "  output: {path: 's3://b/o'}\n  suspend: true\n",
            ),
        ] {
            assert!(
                update(old, new).is_ok(),
                "{old:?} -> {new:?} rejected: {:?}",
                update(old, new)
            );
        }
    }
}

#[test]
fn only_formats_kubernetes_knows() {
    let s = schema();
    let mut bad = vec![];
    walk(&s, &mut vec![], &mut |p, v| {
        if let Some(f) = v.get("format").and_then(|f| f.as_str()) {
            if ![
                "int32",
                "int64",
                "float",
                "double",
                "byte",
                "date",
                "date-time",
                "password",
                "",
            ]
            .contains(&f)
            {
                bad.push(format!("{}: {f}", p.join(".")));
            }
        }
    });
    assert!(bad.is_empty(), "{bad:?}");
}

/// The property paths of `schema` (`spec.worker.tolerations[].key`), each with its schema:
/// through `properties`, `items` and `additionalProperties`.
fn properties<'a>(schema: &'a serde_json::Value, path: &str, out: &mut Vec<(String, &'a serde_json::Value)>) {
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            out.push((p.clone(), v));
            properties(v, &p, out);
        }
    }
    if let Some(items) = schema.get("items") {
        properties(items, &format!("{path}[]"), out);
    }
    if let Some(values) = schema.get("additionalProperties") {
        properties(values, &format!("{path}{{}}"), out);
    }
}

/// The description of a k8s-openapi type, as its schema gives it.
fn type_doc<T: schemars::JsonSchema>() -> String {
    let s = schemars::schema_for!(T);
    s.get("description")
        .and_then(|d| d.as_str())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn every_property_has_its_own_description() {
    // `kubectl explain backfill.spec...` shows these: every field says what it does for a
    // Backfill, in our words, not in the Go of the Kubernetes types it holds.
    use k8s_openapi::api::core::v1::{
        Affinity, EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements, Toleration,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let s = schema();
    let mut props = vec![];
    properties(&s, "", &mut props);
    assert!(props.len() > 80, "only {} properties", props.len());
    fn description(v: &serde_json::Value) -> Option<&str> {
        v.get("description").and_then(|d| d.as_str()).map(str::trim)
    }
    let missing: Vec<&str> = props
        .iter()
        .filter(|(_, v)| description(v).is_none_or(str::is_empty))
        .map(|(p, _)| p.as_str())
        .collect();

    // A field that holds a Kubernetes type has its own description, not the type's.
    let type_docs = [
        type_doc::<Time>(),
        type_doc::<ResourceRequirements>(),
        type_doc::<Affinity>(),
        type_doc::<PodSecurityContext>(),
        type_doc::<Toleration>(),
        type_doc::<EnvVar>(),
        type_doc::<LocalObjectReference>(),
    ];
    let borrowed: Vec<&str> = props
        .iter()
        .filter(|(_, v)| description(v).is_some_and(|d| type_docs.iter().any(|t| t.trim() == d)))
        .map(|(p, _)| p.as_str())
        .collect();

    // No Go (nor rustdoc) leaks anywhere, Kubernetes' own sub-properties included.
    let mut leaked = vec![];
    walk(&s, &mut vec![], &mut |p, v| {
        if p.last().map(String::as_str) != Some("description") {
            return;
        }
        let Some(d) = v.as_str() else { return };
        for word in [
            "time.Time",
            "wrapper around",
            "marshaling",
            "marshalling",
            "unmarshal",
            "[`",
        ] {
            if d.contains(word) {
                let at: Vec<&str> = p[..p.len() - 1]
                    .iter()
                    .map(String::as_str)
                    .filter(|k| *k != "properties")
                    .collect();
                leaked.push(format!("{}: {word:?}", at.join(".")));
            }
        }
    });
    assert!(
        missing.is_empty() && borrowed.is_empty() && leaked.is_empty(),
        "no description at {missing:#?}\nthe Kubernetes type's description instead of the field's at \
         {borrowed:#?}\nGo or rustdoc text in descriptions at {leaked:#?}\n(doc comments on the fields \
         of api/src/cluster.rs and api/src/spec.rs make them)"
    );
}
