//! Spec validation: pure, no Kubernetes or storage access. The engine's checks (the same as
//! `milvus-backfill plan`) plus what only a cluster needs. Every problem names its field, and
//! all of them are reported at once.

use k8s_openapi::api::core::v1::EnvVar;
use milvus_backfill_api::place::Place;

use crate::crd::{BackfillSpec, EngineSpec, WorkerSpec};

/// Environment variables the operator sets on workers; `worker.env` may not set them
/// (credentials never come from the spec).
pub use milvus_backfill_api::invocation::env::RESERVED as RESERVED_ENV;

/// A spec that passed [`validate`], with what validation settled. The decider plans and
/// creates Jobs only for one of these.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValidSpec<'a> {
    pub spec: &'a BackfillSpec,
    /// The worker image: `spec.worker.image`, else the operator's `--worker-image`.
    pub image: &'a str,
}

/// Checks `spec`; `default_image` is the operator's `--worker-image`. Every problem is
/// reported at once.
pub fn validate<'a>(spec: &'a BackfillSpec, default_image: Option<&'a str>) -> Result<ValidSpec<'a>, Vec<String>> {
    let mut problems: Vec<String> = Vec::new();
    if let Err(engine) = milvus_backfill_api::spec::validate(&spec.engine) {
        problems.extend(engine);
    }
    cluster_places(&mut problems, &spec.engine);
    secret_refs(&mut problems, &spec.engine);
    cluster_knobs(&mut problems, spec);
    let image = worker_image(&mut problems, spec, default_image);
    if let Some(w) = &spec.worker {
        worker_pod(&mut problems, w);
    }
    match image {
        Some(image) if problems.is_empty() => Ok(ValidSpec { spec, image }),
        _ => Err(problems),
    }
}

/// Jobs see no local files: everything goes through S3.
fn cluster_places(problems: &mut Vec<String>, e: &EngineSpec) {
    if e.storage.endpoint.starts_with("file://") {
        problems.push(
            "spec.storage.endpoint: file:// is for local runs; a cluster needs an S3 endpoint (host:port)".into(),
        );
    }
    if e.storage.endpoint.contains("://") && !e.storage.endpoint.starts_with("file://") {
        problems.push("spec.storage.endpoint is host:port without a scheme (spec.storage.useSSL picks https)".into());
    }
    if !e.source.path.trim().is_empty() && !e.source.path.starts_with("s3://") && !e.source.path.starts_with("s3a://") {
        problems.push(
            "spec.source.path must be s3://bucket/key or s3://bucket/prefix/ in a cluster (Jobs see no local files)"
                .into(),
        );
    }
    if e.output_path().is_some_and(Place::is_local_output) {
        problems.push(
            "spec.output.path: a local directory does not work in a cluster; use s3://bucket/prefix or a key prefix"
                .into(),
        );
    }
    if let Some(ep) = &e.source.endpoint {
        if ep.trim().is_empty() || ep.starts_with("file://") {
            problems.push("spec.source.endpoint must be an S3 host:port".into());
        }
    }
}

fn secret_refs(problems: &mut Vec<String>, e: &EngineSpec) {
    if let Some(r) = &e.milvus.token_secret_ref {
        check_name(problems, "spec.milvus.tokenSecretRef.name", &r.name);
        check_secret_key(problems, "spec.milvus.tokenSecretRef.key", &r.key);
    }
    if let Some(r) = &e.storage.credentials_secret_ref {
        check_name(problems, "spec.storage.credentialsSecretRef.name", &r.name);
    }
    if let Some(r) = &e.source.credentials_secret_ref {
        check_name(problems, "spec.source.credentialsSecretRef.name", &r.name);
    }
}

fn cluster_knobs(problems: &mut Vec<String>, spec: &BackfillSpec) {
    if spec.segments_per_job == Some(0) {
        problems.push("spec.segmentsPerJob must be >= 1".into());
    }
    if spec.retry.as_ref().is_some_and(|r| r.max_attempts == Some(0)) {
        problems.push("spec.retry.maxAttempts must be >= 1 (the first attempt counts)".into());
    }
    if spec.active_deadline_seconds.is_some_and(|s| s < 1) {
        problems.push("spec.activeDeadlineSeconds must be >= 1".into());
    }
    if spec.ttl_seconds_after_finished.is_some_and(|s| s < 0) {
        problems.push("spec.ttlSecondsAfterFinished must be >= 0".into());
    }
}

fn worker_image<'a>(
    problems: &mut Vec<String>,
    spec: &'a BackfillSpec,
    default_image: Option<&'a str>,
) -> Option<&'a str> {
    match spec.worker.as_ref().and_then(|w| w.image.as_deref()).or(default_image) {
        None => {
            problems.push("spec.worker.image is required (the operator has no default --worker-image)".into());
            None
        }
        Some(img) if img.trim().is_empty() || img.chars().any(char::is_whitespace) => {
            problems.push(format!("spec.worker.image {img:?} is not an image reference"));
            None
        }
        Some(img) => Some(img),
    }
}

fn worker_pod(problems: &mut Vec<String>, w: &WorkerSpec) {
    if let Some(sa) = &w.service_account_name {
        check_name(problems, "spec.worker.serviceAccountName", sa);
    }
    for (i, s) in w.image_pull_secrets.iter().enumerate() {
        check_name(problems, &format!("spec.worker.imagePullSecrets[{i}].name"), &s.name);
    }
    worker_env(problems, &w.env);
    if w.node_selector.keys().any(|k| k.trim().is_empty()) {
        problems.push("spec.worker.nodeSelector has an empty key".into());
    }
}

fn worker_env(problems: &mut Vec<String>, env: &[EnvVar]) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, v) in env.iter().enumerate() {
        let field = format!("spec.worker.env[{i}]");
        if !is_env_name(&v.name) {
            problems.push(format!("{field}.name {:?} is not a valid variable name", v.name));
        }
        if RESERVED_ENV.contains(&v.name.as_str()) {
            problems.push(format!(
                "{field}.name {} is reserved: credentials come from spec.milvus.tokenSecretRef, spec.storage.credentialsSecretRef and spec.source.credentialsSecretRef",
                v.name
            ));
        }
        if !seen.insert(v.name.as_str()) {
            problems.push(format!("{field}.name {} is set twice", v.name));
        }
        if v.value.is_some() && v.value_from.is_some() {
            problems.push(format!("{field}: set value or valueFrom, not both"));
        }
    }
}

/// A DNS-1123 subdomain (names of Secrets, ServiceAccounts).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn check_name(problems: &mut Vec<String>, field: &str, name: &str) {
    if !is_dns_subdomain(name) {
        problems.push(format!(
            "{field} {name:?} is not a valid object name (lowercase letters, digits, '-' and '.')"
        ));
    }
}

fn check_secret_key(problems: &mut Vec<String>, field: &str, key: &str) {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        problems.push(format!("{field} {key:?} is not a valid Secret key"));
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RetrySpec, WorkerSpec};
    use crate::testutil::spec;
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, LocalObjectReference, SecretKeySelector};
    use milvus_backfill_api::spec::{SecretKeySelector as ApiKeyRef, SecretRef};

    fn problems(s: &BackfillSpec) -> Vec<String> {
        validate(s, None).err().unwrap_or_default()
    }

    fn has(ps: &[String], needle: &str) -> bool {
        ps.iter().any(|p| p.contains(needle))
    }

    #[test]
    fn a_good_spec_passes() {
        let s = spec();
        assert_eq!(validate(&s, None).map(|v| v.image), Ok("reg/milvus-backfill:1"));
    }

    #[test]
    fn the_image_can_come_from_the_operator() {
        let mut s = spec();
        s.worker = None;
        assert!(has(&problems(&s), "spec.worker.image is required"));
        assert_eq!(validate(&s, Some("reg/mb:1")).map(|v| v.image), Ok("reg/mb:1"));
        s.worker = Some(WorkerSpec {
            image: Some("bad image".into()),
            ..Default::default()
        });
        assert!(has(&validate(&s, Some("x")).unwrap_err(), "is not an image reference"));
    }

    #[test]
    fn engine_checks_are_included_and_all_reported() {
        let mut s = spec();
        s.engine.batch_size = Some(0);
        s.engine.parallelism = Some(0);
        s.engine.milvus.collection = String::new();
        let ps = problems(&s);
        for f in ["spec.batchSize", "spec.parallelism", "spec.milvus.collection"] {
            assert!(has(&ps, f), "{f} missing in {ps:?}");
        }
        assert_eq!(ps.len(), 3, "{ps:?}");
    }

    #[test]
    fn local_places_do_not_work_in_a_cluster() {
        let mut s = spec();
        s.engine.storage.endpoint = "file:///data".into();
        s.engine.source.path = "/data/x.parquet".into();
        s.engine.output = Some(milvus_backfill_api::spec::OutputSpec {
            path: Some("/out".into()),
            ..Default::default()
        });
        let ps = problems(&s);
        assert!(has(&ps, "spec.storage.endpoint: file://"));
        assert!(has(&ps, "spec.source.path must be s3://"));
        assert!(has(&ps, "spec.output.path"));
        let mut s = spec();
        s.engine.storage.endpoint = "http://minio:9000".into();
        assert!(has(&problems(&s), "without a scheme"));
        let mut s = spec();
        s.engine.output = Some(milvus_backfill_api::spec::OutputSpec {
            path: Some("s3://b/out".into()),
            ..Default::default()
        });
        assert!(validate(&s, None).is_ok());
    }

    #[test]
    fn secret_refs_must_be_names() {
        let mut s = spec();
        s.engine.milvus.token_secret_ref = Some(ApiKeyRef {
            name: "Bad_Name".into(),
            key: "to ken".into(),
        });
        s.engine.storage.credentials_secret_ref = Some(SecretRef { name: String::new() });
        s.engine.source.credentials_secret_ref = Some(SecretRef { name: "-x".into() });
        let ps = problems(&s);
        assert!(has(&ps, "spec.milvus.tokenSecretRef.name"));
        assert!(has(&ps, "spec.milvus.tokenSecretRef.key"));
        assert!(has(&ps, "spec.storage.credentialsSecretRef.name"));
        assert!(has(&ps, "spec.source.credentialsSecretRef.name"));
    }

    #[test]
    fn cluster_knobs_are_bounded() {
        let mut s = spec();
        s.segments_per_job = Some(0);
        s.retry = Some(RetrySpec {
            max_attempts: Some(0),
            backoff_seconds: None,
        });
        s.active_deadline_seconds = Some(0);
        s.ttl_seconds_after_finished = Some(-1);
        let ps = problems(&s);
        for f in [
            "spec.segmentsPerJob",
            "spec.retry.maxAttempts",
            "spec.activeDeadlineSeconds",
            "spec.ttlSecondsAfterFinished",
        ] {
            assert!(has(&ps, f), "{f} missing in {ps:?}");
        }
    }

    #[test]
    fn steps_after_the_commit_are_accepted_in_a_cluster() {
        let mut s = spec();
        s.engine.lifecycle = Some(milvus_backfill_api::lifecycle::LifecycleSpec {
            flush: Some(true),
            commit: Some(milvus_backfill_api::spec::CommitSpec {
                endpoint: "http://proxy:9091".into(),
            }),
            ..Default::default()
        });
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        let l = s.engine.lifecycle.as_mut().unwrap();
        l.verify = Some(Default::default());
        l.create_index = Some(vec![serde_json::from_str(r#"{"field": "title"}"#).unwrap()]);
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        // Without the commit they cannot run: the engine's own rule names the field.
        s.engine.lifecycle.as_mut().unwrap().commit = None;
        let ps = problems(&s);
        assert!(ps.iter().any(|p| p.contains("add spec.lifecycle.commit")), "{ps:?}");
    }

    #[test]
    fn worker_env_cannot_carry_credentials_or_duplicates() {
        let mut s = spec();
        let lit = |n: &str| EnvVar {
            name: n.into(),
            value: Some("v".into()),
            value_from: None,
        };
        let w = s.worker.as_mut().unwrap();
        w.env = vec![
            lit("AWS_SECRET_ACCESS_KEY"),
            lit("OK"),
            lit("OK"),
            lit("1BAD"),
            EnvVar {
                name: "BOTH".into(),
                value: Some("x".into()),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "s".into(),
                        key: "k".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
            },
        ];
        w.service_account_name = Some("Not Valid".into());
        w.image_pull_secrets = vec![LocalObjectReference { name: String::new() }];
        let ps = problems(&s);
        assert!(has(&ps, "env[0].name AWS_SECRET_ACCESS_KEY is reserved"));
        assert!(has(&ps, "env[2].name OK is set twice"));
        assert!(has(&ps, "env[3].name \"1BAD\""));
        assert!(has(&ps, "env[4]: set value or valueFrom"));
        assert!(has(&ps, "spec.worker.serviceAccountName"));
        assert!(has(&ps, "spec.worker.imagePullSecrets[0].name"));
        for r in RESERVED_ENV {
            let mut s = spec();
            s.worker.as_mut().unwrap().env = vec![lit(r)];
            assert!(has(&problems(&s), "is reserved"), "{r}");
        }
    }

    #[test]
    fn dns_subdomains() {
        for ok in ["a", "minio-creds", "a.b-c.d", &"x".repeat(63)] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", ".a", &"x".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
