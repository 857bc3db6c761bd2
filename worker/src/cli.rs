//! The `milvus-backfill` command line.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{BackfillDoc, MilvusToken, Stores};
use crate::error::{BackfillError, ErrorKind, Result};
use crate::plan::{Plan, Task};
use crate::planner;
use crate::progress::Progress;
use crate::runner;

/// Exit code when the backfill succeeded but its result JSON could not be written.
pub const EXIT_RESULT_NOT_WRITTEN: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "milvus-backfill",
    version,
    about = "Add new fields to existing Milvus collections, segment by segment"
)]
pub struct Cli {
    /// Log format on stderr (also LOG_FORMAT).
    #[arg(long, global = true, env = "LOG_FORMAT", default_value = "plain")]
    pub log_format: LogFormat,
    /// More detail: per-segment summary and debug logs.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::logging::LogFormat;

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Dry run: connect, validate everything and print the plan. Writes nothing.
    Plan {
        /// The Backfill YAML (the resource or its spec).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long, short = 'o', default_value = "text")]
        output: Output,
        /// Segments per task in the JSON output's `tasks`.
        #[arg(long, default_value_t = 1)]
        segments_per_task: usize,
    },
    /// Plan, then backfill every segment in this process.
    Run {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Also write the result JSON here (it is always stored beside the outputs).
        #[arg(long)]
        result: Option<PathBuf>,
    },
    /// Run one planned task (no Milvus connection; storage only). What a Job executes.
    Segment {
        /// Task JSON, as emitted in `plan --output json` under `tasks`: a local file, or
        /// `s3://bucket/key` read with the storage credentials from the environment.
        #[arg(long)]
        task: String,
        /// `host:port` of the S3 API holding an `s3://` task (the plan's storage endpoint).
        #[arg(long, env = "MB_TASK_ENDPOINT")]
        endpoint: Option<String>,
        #[arg(long, default_value = milvus_backfill_api::DEFAULT_REGION)]
        region: String,
        #[arg(long)]
        use_ssl: bool,
        /// Retry attempt, overriding the task's (a controller reuses one task object per task).
        #[arg(long, env = "MB_TASK_ATTEMPT")]
        attempt: Option<u32>,
        /// Also write the task outcome JSON here.
        #[arg(long)]
        result: Option<PathBuf>,
    },
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::logging::init(cli.log_format, cli.verbose, &["milvus_backfill"]);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("UnexpectedError: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(kind = %e.kind, "{}", e.message);
            eprintln!("{}: {}", e.kind, e.message);
            e.kind.exit_code()
        }
    }
}

async fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Plan {
            file,
            output,
            segments_per_task,
        } => {
            let doc = BackfillDoc::load(&file)?;
            let planned = planner::plan(&doc, &MilvusToken::from_env()).await?;
            let p = &planned.plan;
            match output {
                Output::Json => {
                    let tasks = p.tasks(segments_per_task);
                    let v = serde_json::json!({ "plan": p, "tasks": tasks });
                    println!("{}", serde_json::to_string_pretty(&v).expect("plan serializes"));
                }
                Output::Text => print!("{}", plan_text(p)),
            }
            for w in &p.warnings {
                tracing::warn!("{w}");
            }
            Ok(0)
        }
        Command::Run { file, result } => {
            let doc = BackfillDoc::load(&file)?;
            let planned = planner::plan(&doc, &MilvusToken::from_env()).await?;
            let p = &planned.plan;
            for w in &p.warnings {
                tracing::warn!("{w}");
            }
            tracing::info!(
                run_id = %p.run_id,
                collection = p.collection_id,
                segments = p.segments.len(),
                parallelism = p.parallelism,
                "plan ready, running"
            );
            let progress = Progress::new(p.segments.len(), false);
            let r = runner::run_plan(p, &planned.stores, &progress).await;
            print!("{}", r.summary());
            if cli.verbose {
                print!("{}", r.segment_summary());
            }
            let mut code = if r.success { 0 } else { 1 };
            match runner::store_result(p, &planned.stores, &r).await {
                Ok(at) => println!("  result:               {at}"),
                Err(e) => {
                    eprintln!("{}: {}", e.kind, e.message);
                    if code == 0 {
                        code = EXIT_RESULT_NOT_WRITTEN;
                    }
                }
            }
            if let Some(path) = result {
                let body = serde_json::to_vec_pretty(&r).expect("result serializes");
                if let Err(e) = std::fs::write(&path, body) {
                    eprintln!("WriteError: cannot write {}: {e}", path.display());
                    if code == 0 {
                        code = EXIT_RESULT_NOT_WRITTEN;
                    }
                }
            }
            Ok(code)
        }
        Command::Segment {
            task,
            result,
            endpoint,
            region,
            use_ssl,
            attempt,
        } => {
            let text = read_task(&task, endpoint, region, use_ssl).await?;
            let mut task: Task = serde_json::from_slice(&text)
                .map_err(|e| BackfillError::config(format!("{task} is not a task JSON: {e}")))?;
            if let Some(a) = attempt {
                task.attempt = a;
            }
            let stores = Stores::from_env(&task.plan.storage, &task.plan.storage_bucket, &task.plan.source).await?;
            let outcome = runner::run_task(&task, &stores).await;
            let body = serde_json::to_vec_pretty(&outcome).expect("outcome serializes");
            println!("{}", String::from_utf8_lossy(&body));
            let mut code = if outcome.success { 0 } else { 1 };
            if let Err(e) = stores.storage.put(&task.outcome_key(), body.clone().into()).await {
                eprintln!(
                    "WriteError: cannot store the task outcome at {}: {e}",
                    stores.storage.display(&task.outcome_key())
                );
                if code == 0 {
                    code = EXIT_RESULT_NOT_WRITTEN;
                }
            }
            if let Some(path) = result {
                std::fs::write(&path, &body).map_err(|e| BackfillError::write(None, path.display().to_string(), e))?;
            }
            if !outcome.success {
                let kinds: Vec<&str> = outcome.failed_segments.iter().map(|f| f.kind.as_str()).collect();
                // A schema problem will not go away on retry; tell the caller.
                if kinds
                    .iter()
                    .all(|k| *k == ErrorKind::SchemaValidationError.as_str() || *k == ErrorKind::ConfigError.as_str())
                {
                    code = ErrorKind::SchemaValidationError.exit_code();
                }
            }
            Ok(code)
        }
    }
}

/// The task JSON from a local file or from `s3://bucket/key`.
async fn read_task(task: &str, endpoint: Option<String>, region: String, use_ssl: bool) -> Result<Vec<u8>> {
    let Some(rest) = task.strip_prefix("s3://") else {
        return std::fs::read(task).map_err(|e| BackfillError::config(format!("cannot read task {task}: {e}")));
    };
    let (bucket, key) = rest
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| BackfillError::config(format!("--task {task}: expected s3://bucket/key")))?;
    let endpoint = endpoint.ok_or_else(|| BackfillError::config("--task s3://... needs --endpoint host:port"))?;
    let ep = crate::config::S3Endpoint {
        endpoint,
        region,
        use_ssl,
    };
    let creds = crate::config::S3Credentials::storage_from_env()?;
    let store = crate::store::Store::S3 {
        client: ep.client(creds.as_ref()).await,
        bucket: bucket.to_owned(),
        endpoint: ep.url(),
    };
    let body = store.get(key).await.map_err(|e| match e {
        crate::store::StoreError::NotFound(w) => BackfillError::config(format!("task {w} does not exist")),
        e => BackfillError::connection(e.to_string()),
    })?;
    Ok(body.to_vec())
}

pub fn plan_text(p: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Plan {} for collection {:?} (ID {}, database {:?})",
        p.run_id, p.collection_name, p.collection_id, p.database
    );
    let _ = writeln!(
        s,
        "  primary key:  {} (field {}, {:?})",
        p.pk_field.name, p.pk_field.field_id, p.pk_field.pk_type
    );
    let fields: Vec<String> = p
        .new_fields
        .iter()
        .map(|f| format!("{} ({})", f.name, f.arrow_type))
        .collect();
    let _ = writeln!(s, "  new fields:   {}", fields.join(", "));
    let _ = writeln!(
        s,
        "  source:       {} file(s), {} rows",
        p.source_files.len(),
        p.source_rows
    );
    let _ = writeln!(
        s,
        "  segments:     {} to backfill, {} skipped, {} failed planning",
        p.segments.len(),
        p.skipped.len(),
        p.failed.len()
    );
    for seg in &p.segments {
        let _ = writeln!(
            s,
            "  - segment {} partition {} ({}) rows {} storage V{}",
            seg.segment_id,
            seg.partition_id,
            seg.partition_name,
            seg.num_rows,
            if seg.storage_version == 0 {
                1
            } else {
                seg.storage_version
            }
        );
        for b in &seg.pk_binlogs {
            let _ = writeln!(s, "      binlog {} ({} rows)", b.key, b.rows);
        }
        let _ = writeln!(s, "      output {}", seg.output_dir);
    }
    for k in &p.skipped {
        let _ = writeln!(
            s,
            "  - segment {} partition {} skipped: {}",
            k.segment_id, k.partition_id, k.reason
        );
    }
    for k in &p.failed {
        let _ = writeln!(
            s,
            "  - segment {} partition {} FAILED planning: {}",
            k.segment_id, k.partition_id, k.reason
        );
    }
    for w in &p.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
    s
}
