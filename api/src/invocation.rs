//! How the operator starts a worker: the `segment`, `plan-job` and `finish-job` command lines and the
//! environment names.
//! The worker's argument parser uses these names; a worker test parses [`SegmentInvocation`]
//! with it, so the two cannot drift.

use crate::place::S3Uri;

/// Environment variables both binaries agree on. Credentials only ever travel this way
/// (never in arguments, files or the spec).
pub mod env {
    /// `user:password` or an API key (local runs and planning; workers never get it).
    pub const MILVUS_TOKEN: &str = "MILVUS_TOKEN";
    pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    pub const SOURCE_AWS_ACCESS_KEY_ID: &str = "SOURCE_AWS_ACCESS_KEY_ID";
    pub const SOURCE_AWS_SECRET_ACCESS_KEY: &str = "SOURCE_AWS_SECRET_ACCESS_KEY";
    /// `segment --endpoint`.
    pub const MB_TASK_ENDPOINT: &str = "MB_TASK_ENDPOINT";
    /// `segment --attempt`.
    pub const MB_TASK_ATTEMPT: &str = "MB_TASK_ATTEMPT";
    /// `text` or `json`.
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    /// `error` … `trace`: the level of the binary's own crates (`RUST_LOG` refines it).
    pub const LOG_LEVEL: &str = "LOG_LEVEL";

    /// What the operator sets from Secret references and its own settings; a user's
    /// `spec.worker.env` may not set these.
    pub const RESERVED: &[&str] = &[
        MILVUS_TOKEN,
        AWS_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY,
        SOURCE_AWS_ACCESS_KEY_ID,
        SOURCE_AWS_SECRET_ACCESS_KEY,
        MB_TASK_ENDPOINT,
        MB_TASK_ATTEMPT,
    ];
}

/// The worker binary's name and its `segment` subcommand and flags.
pub mod flags {
    pub const BINARY: &str = "milvus-backfill";
    pub const SEGMENT: &str = "segment";
    pub const PLAN_JOB: &str = "plan-job";
    pub const FINISH_JOB: &str = "finish-job";
    pub const REQUEST: &str = "request";
    pub const TASK: &str = "task";
    pub const ENDPOINT: &str = "endpoint";
    pub const REGION: &str = "region";
    pub const USE_SSL: &str = "use-ssl";
}

/// `milvus-backfill segment --task s3://bucket/key --endpoint host:port --region R [--use-ssl]`.
/// The task is data in the bucket; the arguments only point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInvocation {
    pub task: S3Uri,
    pub endpoint: String,
    pub region: String,
    pub use_ssl: bool,
}

impl SegmentInvocation {
    /// The arguments, without the binary.
    pub fn args(&self) -> Vec<String> {
        bucket_command(
            flags::SEGMENT,
            flags::TASK,
            &self.task,
            &self.endpoint,
            &self.region,
            self.use_ssl,
        )
    }
}

/// `{command} --{object_flag} s3://… --endpoint E --region R [--use-ssl]`: a command whose input
/// is an object in the bucket.
fn bucket_command(
    command: &str,
    object_flag: &str,
    object: &S3Uri,
    endpoint: &str,
    region: &str,
    use_ssl: bool,
) -> Vec<String> {
    let mut args = vec![
        command.to_owned(),
        format!("--{object_flag}"),
        object.to_string(),
        format!("--{}", flags::ENDPOINT),
        endpoint.to_owned(),
        format!("--{}", flags::REGION),
        region.to_owned(),
    ];
    if use_ssl {
        args.push(format!("--{}", flags::USE_SSL));
    }
    args
}

/// Which request a request Job answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestJob {
    /// `plan-job`: plan a spec ([`crate::planning::PlanRequest`]).
    Plan,
    /// `finish-job`: the lifecycle's steps after the commit ([`crate::planning::FinishRequest`]).
    Finish,
}

impl RequestJob {
    pub fn command(self) -> &'static str {
        match self {
            Self::Plan => flags::PLAN_JOB,
            Self::Finish => flags::FINISH_JOB,
        }
    }
}

/// `milvus-backfill plan-job|finish-job --request s3://bucket/key --endpoint host:port --region R
/// [--use-ssl]`: a planning or finishing Job. The request is data in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestJobInvocation {
    pub job: RequestJob,
    pub request: S3Uri,
    pub endpoint: String,
    pub region: String,
    pub use_ssl: bool,
}

impl RequestJobInvocation {
    /// The arguments, without the binary.
    pub fn args(&self) -> Vec<String> {
        bucket_command(
            self.job.command(),
            flags::REQUEST,
            &self.request,
            &self.endpoint,
            &self.region,
            self.use_ssl,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_points_at_the_task() {
        let inv = SegmentInvocation {
            task: S3Uri::parse("s3://b/files/backfill/1/r/tasks/r-0.json").unwrap(),
            endpoint: "minio:9000".into(),
            region: "us-east-1".into(),
            use_ssl: true,
        };
        assert_eq!(
            inv.args(),
            [
                "segment",
                "--task",
                "s3://b/files/backfill/1/r/tasks/r-0.json",
                "--endpoint",
                "minio:9000",
                "--region",
                "us-east-1",
                "--use-ssl"
            ]
        );
        assert!(env::RESERVED.contains(&env::AWS_SECRET_ACCESS_KEY));
        assert!(!env::RESERVED.contains(&env::LOG_FORMAT));
    }
}
