//! Building worker Jobs: pure. One Job per (task, attempt), named deterministically so that a
//! repeated apply is a no-op and a restarted operator finds its Jobs again.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile,
    SecretKeySelector, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use milvus_backfill_api::invocation::{RequestJob, RequestJobInvocation, SegmentInvocation};
use milvus_backfill_api::place::S3Uri;
use milvus_backfill_api::spec::{ACCESS_KEY_KEY, SECRET_KEY_KEY};

use crate::crd::{Backfill, WorkerSpec};

pub const MANAGER: &str = "milvus-backfill-operator";
pub const CONTAINER: &str = "worker";
pub const WORKER_BINARY: &str = milvus_backfill_api::invocation::flags::BINARY;

pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const BACKFILL: &str = "milvusbackfill.io/backfill";
    pub const RUN: &str = "milvusbackfill.io/run";
    pub const TASK: &str = "milvusbackfill.io/task";
    pub const ATTEMPT: &str = "milvusbackfill.io/attempt";
    /// On planning Jobs: the generation they plan.
    pub const PLANNING: &str = "milvusbackfill.io/planning";
    /// On a finishing Job (the steps after the commit): the generation it finishes.
    pub const FINISHING: &str = "milvusbackfill.io/finishing";
    /// The selector of the operator's Job watch.
    pub const SELECTOR: &str = "app.kubernetes.io/managed-by=milvus-backfill-operator";
}

pub mod annotations {
    pub const TASK_URI: &str = "milvusbackfill.io/task-uri";
    pub const TASK_ID: &str = "milvusbackfill.io/task-id";
    pub const REQUEST_URI: &str = "milvusbackfill.io/request-uri";
}

pub use milvus_backfill_api::invocation::env as env_names;

/// Kubernetes names and label values are at most 63 characters.
pub const MAX_NAME: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("the Backfill has no uid yet (not stored by the API server)")]
    NoUid,
    #[error("no worker image: set spec.worker.image or the operator's --worker-image")]
    NoImage,
}

/// What one Job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInput<'a> {
    pub run_id: &'a str,
    pub task_index: u32,
    pub attempt: u32,
    /// Key of the task JSON in the storage bucket.
    pub task_key: &'a str,
    /// `taskId` (for the annotation).
    pub task_id: &'a str,
}

/// FNV-1a, 64 bit: a hash that is the same on every platform and Rust version.
pub fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn short_hash(s: &str, len: usize) -> String {
    let h = format!("{:016x}", fnv1a(s));
    h[..len.min(16)].to_owned()
}

/// Lowercase letters, digits and single `-`, no leading or trailing `-`.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

/// `{backfill}-{run hash}-{task}-{attempt}`, a DNS-1123 label of at most 63 characters.
/// A long Backfill name is cut and gets a hash of the full name, so that two long names
/// sharing a prefix still give different Jobs.
pub fn job_name(backfill: &str, run_id: &str, task_index: u32, attempt: u32) -> String {
    named_with(backfill, &format!("-{}-{task_index}-{attempt}", short_hash(run_id, 6)))
}

/// `{backfill}-plan-{generation}-{attempt}`, cut as [`job_name`] cuts.
pub fn planning_job_name(backfill: &str, generation: i64, attempt: u32) -> String {
    request_job_name(RequestJob::Plan, backfill, generation, attempt)
}

/// The name of a planning (`-plan-`) or finishing (`-finish-`) Job.
pub fn request_job_name(job: RequestJob, backfill: &str, generation: i64, attempt: u32) -> String {
    let what = match job {
        RequestJob::Plan => "plan",
        RequestJob::Finish => "finish",
    };
    named_with(backfill, &format!("-{what}-{generation}-{attempt}"))
}

/// `{backfill}{suffix}` within [`MAX_NAME`] characters.
fn named_with(backfill: &str, suffix: &str) -> String {
    let room = MAX_NAME - suffix.len();
    let clean = sanitize(backfill);
    let base = if clean.is_empty() {
        format!("bf-{}", short_hash(backfill, 6))
    } else if clean.len() <= room && clean == backfill {
        clean
    } else {
        // Cut (or sanitized): add a hash of the original name to keep names apart.
        let keep = room.saturating_sub(7).min(clean.len());
        let cut = clean[..keep].trim_end_matches('-');
        if cut.is_empty() {
            format!("bf-{}", short_hash(backfill, 6))
        } else {
            format!("{cut}-{}", short_hash(backfill, 6))
        }
    };
    format!("{base}{suffix}")
}

/// A label value for any string: kept when valid and short, else cut with a hash.
pub fn label_value(s: &str) -> String {
    let valid = s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if valid {
        return s.to_owned();
    }
    let clean = sanitize(s);
    let keep = clean.len().min(MAX_NAME - 7);
    let cut = clean[..keep].trim_end_matches('-');
    if cut.is_empty() {
        short_hash(s, 6)
    } else {
        format!("{cut}-{}", short_hash(s, 6))
    }
}

/// The labels of a Job and its pod.
pub fn job_labels(backfill: &str, run_id: &str, task_index: u32, attempt: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), "milvus-backfill".to_owned()),
        (labels::COMPONENT.to_owned(), "worker".to_owned()),
        (labels::MANAGED_BY.to_owned(), MANAGER.to_owned()),
        (labels::BACKFILL.to_owned(), label_value(backfill)),
        (labels::RUN.to_owned(), label_value(run_id)),
        (labels::TASK.to_owned(), task_index.to_string()),
        (labels::ATTEMPT.to_owned(), attempt.to_string()),
    ])
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: None,
            }),
            ..Default::default()
        }),
    }
}

/// The labels of a planning Job and its pod.
pub fn planning_labels(backfill: &str, generation: i64, attempt: u32) -> BTreeMap<String, String> {
    request_job_labels(RequestJob::Plan, backfill, generation, attempt)
}

/// The label that carries a request Job's generation.
pub fn generation_label(job: RequestJob) -> &'static str {
    match job {
        RequestJob::Plan => labels::PLANNING,
        RequestJob::Finish => labels::FINISHING,
    }
}

pub fn request_job_labels(job: RequestJob, backfill: &str, generation: i64, attempt: u32) -> BTreeMap<String, String> {
    let component = match job {
        RequestJob::Plan => "planner",
        RequestJob::Finish => "finisher",
    };
    BTreeMap::from([
        (labels::NAME.to_owned(), "milvus-backfill".to_owned()),
        (labels::COMPONENT.to_owned(), component.to_owned()),
        (labels::MANAGED_BY.to_owned(), MANAGER.to_owned()),
        (labels::BACKFILL.to_owned(), label_value(backfill)),
        (generation_label(job).to_owned(), generation.to_string()),
        (labels::ATTEMPT.to_owned(), attempt.to_string()),
    ])
}

/// The worker's environment: credentials from Secrets (never literal values), then the
/// user's variables. Workers get no Milvus token: `segment` never connects to Milvus.
pub fn worker_env(bf: &Backfill) -> Vec<EnvVar> {
    let e = &bf.spec.engine;
    let user = bf.spec.worker.as_ref().map(|w| w.env.as_slice()).unwrap_or_default();
    let mut env = Vec::new();
    if !user.iter().any(|v| v.name == env_names::LOG_FORMAT) {
        env.push(EnvVar {
            name: env_names::LOG_FORMAT.to_owned(),
            value: Some("json".to_owned()),
            value_from: None,
        });
    }
    if let Some(r) = &e.storage.credentials_secret_ref {
        env.push(secret_env(env_names::AWS_ACCESS_KEY_ID, &r.name, ACCESS_KEY_KEY));
        env.push(secret_env(env_names::AWS_SECRET_ACCESS_KEY, &r.name, SECRET_KEY_KEY));
    }
    if let Some(r) = &e.source.credentials_secret_ref {
        env.push(secret_env(env_names::SOURCE_AWS_ACCESS_KEY_ID, &r.name, ACCESS_KEY_KEY));
        env.push(secret_env(
            env_names::SOURCE_AWS_SECRET_ACCESS_KEY,
            &r.name,
            SECRET_KEY_KEY,
        ));
    }
    env.extend(user.iter().cloned());
    env
}

/// `milvus-backfill segment --task s3://bucket/key --endpoint host:port [--region R] [--use-ssl]`
/// (without the binary). The task is data in the bucket; the arguments only point at it.
pub fn worker_args(bf: &Backfill, task_key: &str) -> Vec<String> {
    let s = &bf.spec.engine.storage;
    SegmentInvocation {
        task: S3Uri {
            bucket: s.bucket.clone(),
            key: task_key.to_owned(),
        },
        endpoint: s.endpoint.clone(),
        region: s.region().to_owned(),
        use_ssl: s.use_ssl(),
    }
    .args()
}

/// What the operator's installation fills in where `spec.worker` says nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerDefaults {
    pub image: Option<String>,
    /// The chart's worker ServiceAccount (no API permissions).
    pub service_account: Option<String>,
}

/// The Pod security context when `spec.worker.podSecurityContext` is not set: what the
/// `restricted` Pod Security Standard asks for (the image runs as a non-root user).
pub fn default_pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// The Job of one attempt of one task.
pub fn build_job(bf: &Backfill, input: &JobInput<'_>, defaults: &WorkerDefaults) -> Result<Job, BuildError> {
    let w = bf.spec.worker.clone().unwrap_or_default();
    let image = worker_image(&w, defaults)?;
    let name = bf.name_any();
    let labels = job_labels(&name, input.run_id, input.task_index, input.attempt);
    let args = worker_args(bf, input.task_key);
    let annotations = BTreeMap::from([
        (annotations::TASK_URI.to_owned(), args[2].clone()),
        (annotations::TASK_ID.to_owned(), input.task_id.to_owned()),
    ]);
    let container = worker_container(&w, image, args, worker_env(bf));
    let pod = worker_pod(&w, defaults, container);
    let meta = JobMeta {
        name: job_name(&name, input.run_id, input.task_index, input.attempt),
        labels,
        annotations,
    };
    one_attempt_job(bf, meta, pod)
}

/// The Job of one planning attempt: `plan-job` on the request stored at `request_key`, with
/// the worker's settings and Secrets plus the Milvus token (planning calls Milvus; task
/// workers never do).
pub fn build_planning_job(
    bf: &Backfill,
    generation: i64,
    attempt: u32,
    request_key: &str,
    defaults: &WorkerDefaults,
) -> Result<Job, BuildError> {
    build_request_job(RequestJob::Plan, bf, (generation, attempt), request_key, defaults)
}

/// A Job answering one request of the operator (`plan-job` or `finish-job`): both talk to
/// Milvus, so both get the Milvus token from its Secret, as well as the storage keys.
pub fn build_request_job(
    job: RequestJob,
    bf: &Backfill,
    (generation, attempt): (i64, u32),
    request_key: &str,
    defaults: &WorkerDefaults,
) -> Result<Job, BuildError> {
    let w = bf.spec.worker.clone().unwrap_or_default();
    let image = worker_image(&w, defaults)?;
    let name = bf.name_any();
    let s = &bf.spec.engine.storage;
    let args = RequestJobInvocation {
        job,
        request: S3Uri {
            bucket: s.bucket.clone(),
            key: request_key.to_owned(),
        },
        endpoint: s.endpoint.clone(),
        region: s.region().to_owned(),
        use_ssl: s.use_ssl(),
    }
    .args();
    let mut env = worker_env(bf);
    if let Some(r) = &bf.spec.engine.milvus.token_secret_ref {
        env.insert(0, secret_env(env_names::MILVUS_TOKEN, &r.name, &r.key));
    }
    let annotations = BTreeMap::from([(annotations::REQUEST_URI.to_owned(), args[2].clone())]);
    let container = worker_container(&w, image, args, env);
    let pod = worker_pod(&w, defaults, container);
    let meta = JobMeta {
        name: request_job_name(job, &name, generation, attempt),
        labels: request_job_labels(job, &name, generation, attempt),
        annotations,
    };
    one_attempt_job(bf, meta, pod)
}

fn worker_image(w: &WorkerSpec, defaults: &WorkerDefaults) -> Result<String, BuildError> {
    w.image
        .clone()
        .or_else(|| defaults.image.clone())
        .filter(|i| !i.trim().is_empty())
        .ok_or(BuildError::NoImage)
}

struct JobMeta {
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// A Job that runs `pod` once, owned by the Backfill.
fn one_attempt_job(bf: &Backfill, meta: JobMeta, pod: PodSpec) -> Result<Job, BuildError> {
    let owner = bf.controller_owner_ref(&()).ok_or(BuildError::NoUid)?;
    let labels = meta.labels;
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(meta.name),
            namespace: bf.namespace(),
            labels: Some(labels.clone()),
            annotations: Some(meta.annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // Retries are the operator's: one attempt per Job, a new Job per retry.
            backoff_limit: Some(0),
            active_deadline_seconds: bf.spec.active_deadline_seconds,
            ttl_seconds_after_finished: bf.spec.ttl_seconds_after_finished,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The worker container: the `segment` command, credentials from Secrets, no privileges.
fn worker_container(w: &WorkerSpec, image: String, args: Vec<String>, env: Vec<EnvVar>) -> Container {
    Container {
        name: CONTAINER.to_owned(),
        image: Some(image),
        image_pull_policy: w.image_pull_policy.map(|p| p.as_str().to_owned()),
        command: Some(vec![WORKER_BINARY.to_owned()]),
        args: Some(args),
        env: Some(env),
        resources: w.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            // The worker streams from and to the bucket; it writes no local files.
            read_only_root_filesystem: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The worker Pod: one attempt, no API token, the `restricted` Pod Security defaults.
fn worker_pod(w: &WorkerSpec, defaults: &WorkerDefaults, container: Container) -> PodSpec {
    PodSpec {
        restart_policy: Some("Never".to_owned()),
        // Workers never call the Kubernetes API.
        automount_service_account_token: Some(false),
        service_account_name: w
            .service_account_name
            .clone()
            .or_else(|| defaults.service_account.clone()),
        security_context: Some(
            w.pod_security_context
                .clone()
                .unwrap_or_else(default_pod_security_context),
        ),
        image_pull_secrets: (!w.image_pull_secrets.is_empty()).then(|| w.image_pull_secrets.clone()),
        node_selector: (!w.node_selector.is_empty()).then(|| w.node_selector.clone()),
        tolerations: (!w.tolerations.is_empty()).then(|| w.tolerations.clone()),
        affinity: w.affinity.clone(),
        containers: vec![container],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PullPolicy;
    use crate::testutil::{backfill, Rng};

    fn image(i: &str) -> WorkerDefaults {
        WorkerDefaults {
            image: Some(i.to_owned()),
            service_account: None,
        }
    }
    use k8s_openapi::api::core::v1::{Affinity, PodSecurityContext, ResourceRequirements, Toleration};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use milvus_backfill_api::spec::SecretRef;

    fn input(task_key: &str) -> JobInput<'_> {
        JobInput {
            run_id: "20261127t032700-2ee0f5",
            task_index: 7,
            attempt: 1,
            task_key,
            task_id: "20261127t032700-2ee0f5-7",
        }
    }

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    fn is_label_value(s: &str) -> bool {
        s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
    }

    #[test]
    fn job_names_are_short_valid_deterministic_and_distinct() {
        let mut rng = Rng::new(42);
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-.";
        let mut seen = std::collections::HashMap::new();
        for _ in 0..5000 {
            let len = 1 + rng.below(253) as usize;
            let mut name: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize] as char)
                .collect();
            // Backfill names are DNS subdomains: alphanumeric at both ends.
            name.replace_range(0..1, "a");
            if name.ends_with(['-', '.']) {
                name.push('z');
            }
            let run = format!(
                "2026112{}t0327{:02}-{:06x}",
                rng.below(10),
                rng.below(60),
                rng.below(1 << 24)
            );
            let task = rng.below(200_000) as u32;
            let attempt = rng.below(10) as u32;
            let n = job_name(&name, &run, task, attempt);
            assert!(is_dns_label(&n), "{n:?} from {name:?}");
            assert_eq!(n, job_name(&name, &run, task, attempt));
            if let Some(prev) = seen.insert(n.clone(), (name.clone(), run.clone(), task, attempt)) {
                assert_eq!(prev, (name, run, task, attempt), "collision on {n}");
            }
        }
        // Extremes.
        let long = "a".repeat(253);
        for (t, a) in [(0, 0), (u32::MAX, u32::MAX)] {
            let n = job_name(&long, "r", t, a);
            assert!(is_dns_label(&n), "{n}");
            assert!(n.ends_with(&format!("-{t}-{a}")));
        }
        // Same long prefix, different names: different Jobs.
        let a = job_name(&format!("{long}x"), "r", 0, 0);
        let b = job_name(&format!("{long}y"), "r", 0, 0);
        assert_ne!(a, b);
        // Short names are readable.
        assert_eq!(
            job_name("add-title", "r", 3, 0),
            format!("add-title-{}-3-0", short_hash("r", 6))
        );
        // Every (task, attempt) of one run is a different Job.
        let names: std::collections::HashSet<String> = (0..50)
            .flat_map(|t| (0..4).map(move |a| job_name("x", "run", t, a)))
            .collect();
        assert_eq!(names.len(), 200);
    }

    #[test]
    fn label_values_are_valid() {
        let mut rng = Rng::new(7);
        for _ in 0..2000 {
            let len = rng.below(300) as usize;
            let s: String = (0..len).map(|_| (32 + rng.below(95) as u8) as char).collect();
            let v = label_value(&s);
            assert!(is_label_value(&v), "{v:?} from {s:?}");
        }
        assert_eq!(label_value("add-title"), "add-title");
        assert_eq!(label_value("a.b_c"), "a.b_c");
        assert_eq!(label_value(""), "");
    }

    #[test]
    fn the_job_runs_one_task_from_storage_with_secrets_only_in_env() {
        let mut bf = backfill("add-title");
        bf.spec.engine.storage.credentials_secret_ref = Some(SecretRef { name: "minio".into() });
        bf.spec.engine.source.credentials_secret_ref = Some(SecretRef { name: "data".into() });
        bf.spec.engine.storage.use_ssl = Some(true);
        bf.spec.engine.storage.region = Some("eu-west-1".into());
        let job = build_job(
            &bf,
            &input("files/backfill/1/r/tasks/r-7-1.json"),
            &WorkerDefaults::default(),
        )
        .unwrap();
        let name = job.metadata.name.clone().unwrap();
        assert_eq!(name, job_name("add-title", "20261127t032700-2ee0f5", 7, 1));
        assert_eq!(job.metadata.namespace.as_deref(), Some("ns"));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(c.command.as_deref(), Some(&["milvus-backfill".to_owned()][..]));
        assert_eq!(
            c.args.as_ref().unwrap(),
            &[
                "segment",
                "--task",
                "s3://milvus-bucket/files/backfill/1/r/tasks/r-7-1.json",
                "--endpoint",
                "minio:9000",
                "--region",
                "eu-west-1",
                "--use-ssl"
            ]
        );
        let env = c.env.as_ref().unwrap();
        let by_name = |n: &str| env.iter().find(|v| v.name == n).cloned();
        for (var, secret, key) in [
            ("AWS_ACCESS_KEY_ID", "minio", "accesskey"),
            ("AWS_SECRET_ACCESS_KEY", "minio", "secretkey"),
            ("SOURCE_AWS_ACCESS_KEY_ID", "data", "accesskey"),
            ("SOURCE_AWS_SECRET_ACCESS_KEY", "data", "secretkey"),
        ] {
            let v = by_name(var).unwrap_or_else(|| panic!("{var} missing"));
            assert!(v.value.is_none());
            let r = v.value_from.unwrap().secret_key_ref.unwrap();
            assert_eq!((r.name.as_str(), r.key.as_str()), (secret, key));
        }
        assert!(by_name("MILVUS_TOKEN").is_none(), "segment never talks to Milvus");
        assert_eq!(by_name("LOG_FORMAT").unwrap().value.as_deref(), Some("json"));
        // No secret material or secret names in the command line.
        let cmdline = c.args.as_ref().unwrap().join(" ");
        for s in ["minio\"", "data\"", "accesskey", "secretkey", "token"] {
            assert!(!cmdline.contains(s), "{s} in {cmdline}");
        }
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }

    #[test]
    fn the_planning_job_answers_one_request_with_the_milvus_token_from_its_secret() {
        let mut bf = backfill("add-title");
        bf.spec.engine.storage.credentials_secret_ref = Some(SecretRef { name: "minio".into() });
        bf.spec.engine.milvus.token_secret_ref = Some(milvus_backfill_api::spec::SecretKeySelector {
            name: "milvus-auth".into(),
            key: "token".into(),
        });
        let key = "files/backfill/planning/uid-1/4-2/request.json";
        let job = build_planning_job(&bf, 4, 2, key, &WorkerDefaults::default()).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("add-title-plan-4-2"));
        let l = job.metadata.labels.as_ref().unwrap();
        assert_eq!(l.get(labels::PLANNING).map(String::as_str), Some("4"));
        assert_eq!(l.get(labels::ATTEMPT).map(String::as_str), Some("2"));
        assert_eq!(l.get(labels::COMPONENT).map(String::as_str), Some("planner"));
        assert!(l.get(labels::RUN).is_none(), "a planning Job is no task Job of a run");
        assert!(job.metadata.owner_references.as_ref().unwrap()[0].controller == Some(true));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0), "retries are the operator's");
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            c.args.as_ref().unwrap(),
            &[
                "plan-job",
                "--request",
                &format!("s3://milvus-bucket/{key}"),
                "--endpoint",
                "minio:9000",
                "--region",
                "us-east-1"
            ]
        );
        let env = c.env.as_ref().unwrap();
        let from = |n: &str| {
            let v = env
                .iter()
                .find(|v| v.name == n)
                .unwrap_or_else(|| panic!("{n} missing"));
            assert!(v.value.is_none(), "{n} has a literal value");
            let r = v.value_from.clone().unwrap().secret_key_ref.unwrap();
            (r.name, r.key)
        };
        assert_eq!(from("MILVUS_TOKEN"), ("milvus-auth".to_owned(), "token".to_owned()));
        assert_eq!(
            from("AWS_SECRET_ACCESS_KEY"),
            ("minio".to_owned(), "secretkey".to_owned())
        );
        assert!(
            build_planning_job(&backfill("x"), 1, 0, key, &WorkerDefaults::default())
                .unwrap()
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .containers[0]
                .env
                .as_ref()
                .unwrap()
                .iter()
                .all(|v| v.name != "MILVUS_TOKEN")
        );
        let long = "b".repeat(80);
        let name = planning_job_name(&long, 123456, 9);
        assert!(name.len() <= MAX_NAME && name.ends_with("-plan-123456-9"), "{name}");
    }

    #[test]
    fn the_finishing_job_runs_finish_job_apart_from_planning_with_the_same_secrets() {
        let mut bf = backfill("add-title");
        bf.spec.engine.milvus.token_secret_ref = Some(milvus_backfill_api::spec::SecretKeySelector {
            name: "milvus-auth".into(),
            key: "token".into(),
        });
        let key = "files/backfill/finishing/uid-1/4-0/request.json";
        let job = build_request_job(RequestJob::Finish, &bf, (4, 0), key, &WorkerDefaults::default()).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("add-title-finish-4-0"));
        let l = job.metadata.labels.as_ref().unwrap();
        assert_eq!(l.get(labels::FINISHING).map(String::as_str), Some("4"));
        assert!(l.get(labels::PLANNING).is_none(), "no planning attempt");
        assert_eq!(l.get(labels::COMPONENT).map(String::as_str), Some("finisher"));
        let c = &job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
        let args = c.args.as_ref().unwrap();
        assert_eq!(
            args[..3],
            ["finish-job", "--request", &format!("s3://milvus-bucket/{key}")]
        );
        let token = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "MILVUS_TOKEN")
            .unwrap();
        assert!(
            token.value.is_none() && token.value_from.is_some(),
            "the token comes from its Secret"
        );
        assert_ne!(
            request_job_name(RequestJob::Finish, "add-title", 4, 0),
            planning_job_name("add-title", 4, 0)
        );
    }

    #[test]
    fn labels_owner_and_annotations() {
        let bf = backfill("add-title");
        let job = build_job(&bf, &input("k"), &WorkerDefaults::default()).unwrap();
        let l = job.metadata.labels.as_ref().unwrap();
        assert_eq!(l[labels::MANAGED_BY], "milvus-backfill-operator");
        assert_eq!(l[labels::BACKFILL], "add-title");
        assert_eq!(l[labels::TASK], "7");
        assert_eq!(l[labels::ATTEMPT], "1");
        assert_eq!(l[labels::RUN], "20261127t032700-2ee0f5");
        assert_eq!(
            labels::SELECTOR,
            format!("{}={}", labels::MANAGED_BY, l[labels::MANAGED_BY])
        );
        let pod_labels = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref();
        assert_eq!(pod_labels, Some(l));
        let o = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(o.kind, "Backfill");
        assert_eq!(o.api_version, "milvusbackfill.io/v1alpha1");
        assert_eq!(o.name, "add-title");
        assert_eq!(o.uid, "uid-1");
        assert_eq!(o.controller, Some(true));
        let a = job.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[annotations::TASK_URI], "s3://milvus-bucket/k");
        assert_eq!(a[annotations::TASK_ID], "20261127t032700-2ee0f5-7");
        // Deterministic: the same inputs give the same object.
        assert_eq!(job, build_job(&bf, &input("k"), &WorkerDefaults::default()).unwrap());
    }

    #[test]
    fn worker_settings_are_copied() {
        let mut bf = backfill("b");
        bf.spec.active_deadline_seconds = Some(600);
        bf.spec.ttl_seconds_after_finished = Some(3600);
        let resources = ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".to_owned(), Quantity("2".into()))])),
            limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("4Gi".into()))])),
            ..Default::default()
        };
        let tol = Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("backfill".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        let psc = PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(1000),
            ..Default::default()
        };
        bf.spec.worker = Some(WorkerSpec {
            image: Some("reg/mb:2".into()),
            image_pull_policy: Some(PullPolicy::Always),
            image_pull_secrets: vec![k8s_openapi::api::core::v1::LocalObjectReference { name: "regcred".into() }],
            resources: Some(resources.clone()),
            node_selector: BTreeMap::from([("pool".to_owned(), "batch".to_owned())]),
            tolerations: vec![tol.clone()],
            affinity: Some(Affinity::default()),
            service_account_name: Some("backfill-worker".into()),
            pod_security_context: Some(psc.clone()),
            env: vec![EnvVar {
                name: "LOG_FORMAT".into(),
                value: Some("plain".into()),
                value_from: None,
            }],
        });
        let job = build_job(&bf, &input("k"), &image("default/img:1")).unwrap();
        let spec = job.spec.unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("reg/mb:2"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(c.resources.as_ref(), Some(&resources));
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
        assert_eq!(pod.node_selector.unwrap()["pool"], "batch");
        assert_eq!(pod.tolerations.unwrap(), vec![tol]);
        assert_eq!(pod.affinity, Some(Affinity::default()));
        assert_eq!(pod.service_account_name.as_deref(), Some("backfill-worker"));
        // The user's security context replaces the restricted default as a whole.
        assert_eq!(pod.security_context, Some(psc));
        // The user's LOG_FORMAT replaces ours; no duplicate names (SSA keys env by name).
        let env = c.env.as_ref().unwrap();
        let lf: Vec<_> = env.iter().filter(|v| v.name == "LOG_FORMAT").collect();
        assert_eq!(lf.len(), 1);
        assert_eq!(lf[0].value.as_deref(), Some("plain"));
    }

    #[test]
    fn defaults_and_errors() {
        let mut bf = backfill("b");
        bf.spec.worker = None;
        assert_eq!(
            build_job(&bf, &input("k"), &WorkerDefaults::default()),
            Err(BuildError::NoImage)
        );
        let job = build_job(&bf, &input("k"), &image("reg/mb:1")).unwrap();
        let spec = job.spec.unwrap();
        let pod = spec.template.spec.as_ref().unwrap();
        // Without the chart's worker ServiceAccount: the namespace's default one.
        assert_eq!(pod.service_account_name, None);
        // Restricted by default: non-root, RuntimeDefault seccomp, no privileges, read-only root.
        assert_eq!(pod.security_context, Some(default_pod_security_context()));
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let chart = WorkerDefaults {
            image: Some("reg/mb:1".into()),
            service_account: Some("mbf-worker".into()),
        };
        let job = build_job(&bf, &input("k"), &chart).unwrap();
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("mbf-worker"));
        assert_eq!(spec.active_deadline_seconds, None);
        assert_eq!(spec.ttl_seconds_after_finished, None);
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some("reg/mb:1"));
        assert!(pod.node_selector.is_none() && pod.tolerations.is_none() && pod.image_pull_secrets.is_none());
        // No credentials configured: no credential variables (the default AWS chain applies).
        let env = pod.containers[0].env.as_ref().unwrap();
        assert_eq!(env.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["LOG_FORMAT"]);
        let args = pod.containers[0].args.as_ref().unwrap();
        assert!(!args.contains(&"--use-ssl".to_owned()));
        assert_eq!(args[6], "us-east-1");
        bf.metadata.uid = None;
        assert_eq!(build_job(&bf, &input("k"), &image("x")), Err(BuildError::NoUid));
    }
}
