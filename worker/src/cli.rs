//! The `milvus-backfill` command line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use milvus_backfill_api::invocation::{env, flags};
use milvus_backfill_api::layout::{RunLayout, TaskSplit};
use milvus_backfill_api::outcome::BackfillResult;
use milvus_backfill_api::place::{S3Endpoint, S3Uri};

use crate::commit;
use crate::config::{BackfillDoc, MilvusToken, S3Credentials};
use crate::error::{BackfillError, ErrorKind, Result};
use crate::plan::{Mode, Plan, Task};
use crate::planner;
use crate::progress::Progress;
use crate::runner;
use crate::store::{Store, StoreError};
use crate::stores::RunStores;

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
    #[arg(long, global = true, env = env::LOG_FORMAT, default_value = "plain")]
    pub log_format: LogFormat,
    /// Level of milvus-backfill's own logs (also LOG_LEVEL); default info, debug with -v.
    /// `RUST_LOG` directives refine it (the crates that see credentials stay at warn).
    #[arg(long, global = true, env = env::LOG_LEVEL)]
    pub log_level: Option<crate::logging::LogLevel>,
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
    Yaml,
}

impl Output {
    /// A document (the plan, the result) as this format prints it; `None` for text.
    fn document(self, v: &impl serde::Serialize) -> Option<String> {
        match self {
            Output::Text => None,
            Output::Json => Some(serde_json::to_string_pretty(v).expect("serializes") + "\n"),
            Output::Yaml => Some(serde_yaml::to_string(v).expect("serializes")),
        }
    }

    /// A line for people: on stdout in text, on stderr when stdout holds a document.
    fn say(self, line: impl std::fmt::Display) {
        match self {
            Output::Text => println!("{line}"),
            _ => eprintln!("{line}"),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The precheck and dry run: connect, check the schema, mapping, types, keys and vectors,
    /// read a sample of rows as they will be written, and print the report (`passed`) and the
    /// plan. Exit 0 only when the precheck passed. Writes nothing to storage.
    Plan {
        /// The Backfill YAML (the resource or its spec).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long, short = 'o', default_value = "text")]
        output: Output,
        /// Segments per task in the JSON output's `tasks`.
        #[arg(long, default_value_t = 1)]
        segments_per_task: u32,
    },
    /// Plan, then backfill every segment in this process.
    Run {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// `text`: the summary; `json`/`yaml`: the result document on stdout (the summary and
        /// the commit lines go to stderr).
        #[arg(long, short = 'o', default_value = "text")]
        output: Output,
        /// Also write the result JSON here (it is always stored beside the outputs).
        #[arg(long)]
        result: Option<PathBuf>,
        /// No progress bar on a terminal: a log line per segment instead (as without a terminal).
        #[arg(long)]
        no_progress: bool,
    },
    /// Add the source's new-field columns to the collection as nullable fields
    /// (AddCollectionField, Milvus 2.6+), before a snapshot and a backfill Milvus commits.
    AddFields {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// `max_length` of VarChar fields it adds (default: `spec.lifecycle.addFields.maxLength`,
        /// else 65535). Vector fields take their type and `dim` from
        /// `spec.lifecycle.addFields.types`.
        #[arg(long)]
        max_length: Option<u32>,
    },
    /// Run one planned task (no Milvus connection; storage only). What a Job executes.
    Segment {
        /// Task JSON, as emitted in `plan --output json` under `tasks`: a local file, or
        /// `s3://bucket/key` read with the storage credentials from the environment.
        #[arg(long = flags::TASK)]
        task: String,
        #[command(flatten)]
        bucket: BucketEndpoint,
        /// Overrides the task's attempt, to re-run a stored task by hand (the operator stores
        /// one task object per attempt, so its Jobs never pass this).
        #[arg(long, env = env::MB_TASK_ATTEMPT)]
        attempt: Option<u32>,
        /// Also write the task outcome JSON here.
        #[arg(long)]
        result: Option<PathBuf>,
    },
    /// Answer one planning request of the operator (no terminal output to read; the answer
    /// goes to the bucket). What a planning Job executes.
    PlanJob {
        /// `s3://bucket/key` of the request, read with the storage credentials from the
        /// environment; the answer goes beside it.
        #[arg(long = flags::REQUEST)]
        request: String,
        #[command(flatten)]
        bucket: BucketEndpoint,
    },
    /// Print a completion script for `shell` (bash, zsh, fish, elvish, powershell) on stdout,
    /// e.g. `milvus-backfill completions bash > /etc/bash_completion.d/milvus-backfill`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Answer one finishing request of the operator: the lifecycle's steps after the commit
    /// (`createIndex`, `verify`); the answer goes to the bucket. What a finishing Job executes.
    FinishJob {
        /// `s3://bucket/key` of the request, read with the storage credentials from the
        /// environment; the answer goes beside it.
        #[arg(long = flags::REQUEST)]
        request: String,
        #[command(flatten)]
        bucket: BucketEndpoint,
    },
}

/// Where the bucket of an `s3://` task or request is served.
#[derive(clap::Args, Debug, Clone)]
pub struct BucketEndpoint {
    /// `host:port` of the S3 API holding the `s3://` object (the spec's storage endpoint).
    #[arg(long = flags::ENDPOINT, env = env::MB_TASK_ENDPOINT)]
    endpoint: Option<String>,
    #[arg(long = flags::REGION, default_value = milvus_backfill_api::spec::DEFAULT_REGION)]
    region: String,
    #[arg(long = flags::USE_SSL)]
    use_ssl: bool,
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::logging::init(cli.log_format, cli.log_level, cli.verbose, &["milvus_backfill"]);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("UnexpectedError: cannot start the runtime: {e}");
            return 1;
        }
    };
    let log_format = cli.log_format;
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            report(log_format, &e);
            e.kind.exit_code()
        }
    }
}

/// An error, printed once: a JSON log line when the logs are JSON (a plain line would land
/// inside that stream), else `Kind: message` on stderr.
fn report(log_format: LogFormat, e: &crate::error::BackfillError) {
    match log_format {
        LogFormat::Json => tracing::error!(kind = %e.kind, "{}", e.message),
        LogFormat::Plain => eprintln!("{}: {}", e.kind, e.message),
    }
}

async fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Plan {
            file,
            output,
            segments_per_task,
        } => plan_command(&file, output, segments_per_task).await,
        Command::Run {
            file,
            output,
            result,
            no_progress,
        } => {
            let how = RunHow {
                verbose: cli.verbose,
                log_format: cli.log_format,
                no_progress,
            };
            run_command(&file, output, result.as_deref(), how).await
        }
        Command::AddFields { file, max_length } => add_fields_command(&file, max_length).await,
        Command::Segment {
            task,
            result,
            bucket,
            attempt,
        } => segment_command(&TaskAt { task, bucket }, attempt, result.as_deref()).await,
        Command::PlanJob { request, bucket } => plan_job_command(&TaskAt { task: request, bucket }).await,
        Command::FinishJob { request, bucket } => finish_job_command(&TaskAt { task: request, bucket }).await,
        Command::Completions { shell } => {
            print!("{}", completions(shell));
            Ok(0)
        }
    }
}

/// The completion script of `shell` for this command line.
fn completions(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), flags::BINARY, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

async fn finish_job_command(at: &TaskAt) -> Result<i32> {
    let (store, key) = task_store(at).await?;
    let creds = crate::stores::StoreCredentials::from_env()?;
    let answer = crate::finish_job::answer(&store, &key, &MilvusToken::from_env(), &creds).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).expect("an answer serializes")
    );
    // The Job succeeds once the answer is stored; a failed step is in it, for the operator.
    Ok(0)
}

async fn plan_job_command(at: &TaskAt) -> Result<i32> {
    let (store, key) = task_store(at).await?;
    let creds = crate::stores::StoreCredentials::from_env()?;
    let answer = crate::plan_job::answer(&store, &key, &MilvusToken::from_env(), &creds).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).expect("an answer serializes")
    );
    Ok(0)
}

/// The Backfill of `file`, its notes (skipped documents, operator-only fields) logged.
fn load_doc(file: &Path) -> Result<BackfillDoc> {
    let (doc, notes) = BackfillDoc::load_noting(file)?;
    for n in notes {
        tracing::info!("{}: {n}", file.display());
    }
    Ok(doc)
}

async fn add_fields_command(file: &Path, max_length: Option<u32>) -> Result<i32> {
    let doc = load_doc(file)?;
    // `spec.lifecycle.addFields` says how (types of vectors, VarChar lengths); the flag wins.
    let mut how = doc.spec.add_fields().cloned().unwrap_or_default();
    how.max_length = max_length.or(how.max_length);
    for a in crate::add_fields::add_fields_of(&doc, &MilvusToken::from_env(), &how).await? {
        match a {
            crate::add_fields::Added::New(f) => {
                println!(
                    "added field {} ({}, nullable)",
                    f.name,
                    crate::types::describe(f.data_type)
                )
            }
            crate::add_fields::Added::Existing(n) => println!("field {n} exists already"),
        }
    }
    Ok(0)
}

async fn plan_command(file: &Path, output: Output, segments_per_task: u32) -> Result<i32> {
    let doc = load_doc(file)?;
    let creds = crate::stores::StoreCredentials::from_env()?;
    let (report, planned) = planner::precheck(&doc, &MilvusToken::from_env(), &creds).await;
    let planned = match planned {
        Ok(planned) => planned,
        // The report holds the error, in its check: printed once, there.
        Err(e) => {
            match output.document(&serde_json::json!({ "precheck": report })) {
                Some(doc) => print!("{doc}"),
                None => print!("{}", crate::precheck::report_text(&report)),
            }
            return Ok(e.kind.exit_code());
        }
    };
    let p = &planned.plan;
    match output {
        Output::Text => print!(
            "{}{}{}",
            plan_text(p),
            crate::steps_report::lines(
                &doc.spec,
                &p.lifecycle,
                &format!("{} segment(s) planned", p.segments.len())
            ),
            crate::precheck::report_text(&report)
        ),
        _ => {
            let tasks = TaskSplit::new(segments_per_task).tasks(p);
            let steps = milvus_backfill_api::lifecycle::steps(&doc.spec);
            let v = serde_json::json!({ "precheck": report, "plan": p, "tasks": tasks, "steps": steps });
            print!("{}", output.document(&v).expect("not text"));
        }
    }
    for w in &p.warnings {
        tracing::warn!("{w}");
    }
    Ok(0)
}

/// How `run` reports: the global flags and `--no-progress`.
#[derive(Clone, Copy, Debug)]
struct RunHow {
    verbose: bool,
    log_format: LogFormat,
    no_progress: bool,
}

async fn run_command(file: &Path, output: Output, result: Option<&Path>, how: RunHow) -> Result<i32> {
    let RunHow {
        verbose,
        log_format,
        no_progress,
    } = how;
    let doc = load_doc(file)?;
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
    let progress = Progress::new(p.segments.len(), no_progress);
    let r = runner::run_plan(p, &planned.stores, &progress).await;
    output.say(r.summary().trim_end());
    if verbose {
        output.say(r.segment_summary().trim_end());
    }
    let mut code = if r.success { 0 } else { 1 };
    match runner::store_result(p, &planned.stores.storage, &r).await {
        Ok(keys) => {
            for k in &keys {
                output.say(format_args!(
                    "  result:               {}",
                    planned.stores.storage.display(k)
                ));
            }
            let committed =
                commit_step(&doc, &RunLayout::of_plan(p), &keys, &planned.stores.storage, &r, output).await?;
            if committed == Committed::Failed {
                code = code.max(1);
            }
            if !lifecycle_step(&doc, p, &planned.stores, &r, committed, output).await {
                code = code.max(1);
            }
        }
        Err(e) => {
            report(log_format, &e);
            code = not_written(code);
        }
    }
    if let Some(path) = result {
        let body = serde_json::to_vec_pretty(&r).expect("result serializes");
        if let Err(e) = std::fs::write(path, body) {
            let e = crate::error::BackfillError::new(
                crate::error::ErrorKind::WriteError,
                format!("cannot write {}: {e}", path.display()),
            );
            report(log_format, &e);
            code = not_written(code);
        }
    }
    if let Some(doc) = output.document(&r) {
        print!("{doc}");
    }
    Ok(code)
}

/// What the commit step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Committed {
    /// No commit was declared, or nothing is committable (StorageV1 export).
    Nothing,
    Done,
    /// Attempted (or refused) and segments were left uncommitted.
    Failed,
}

/// The lifecycle's steps after the commit, then every declared step's line. False when one
/// failed.
async fn lifecycle_step(
    doc: &BackfillDoc,
    p: &Plan,
    stores: &RunStores,
    r: &BackfillResult,
    committed: Committed,
    output: Output,
) -> bool {
    use crate::after_commit;
    use milvus_backfill_api::lifecycle::{Step, StepRecord, StepState};
    let spec = &doc.spec;
    let after = match committed {
        Committed::Done => after_commit::run_declared(spec, p, &stores.source, &MilvusToken::from_env()).await,
        Committed::Failed => after_commit::not_run(spec, "the commit did not succeed"),
        Committed::Nothing => after_commit::not_run(
            spec,
            "nothing was committed (no commit step, or StorageV1 export outputs)",
        ),
    };
    let mut records = p.lifecycle.clone();
    let (state, what) = if r.success {
        (StepState::Done, "every segment written")
    } else {
        (StepState::Failed, "segments failed")
    };
    records.push(StepRecord::new(Step::Backfill, state, what));
    if spec.commit_endpoint().is_some() {
        records.push(match committed {
            Committed::Done => StepRecord::new(Step::Commit, StepState::Done, "every segment committed"),
            Committed::Failed => StepRecord::new(Step::Commit, StepState::Failed, "segments were not committed"),
            Committed::Nothing => StepRecord::new(Step::Commit, StepState::NotRun, "nothing Milvus can commit"),
        });
    }
    let failed = crate::steps_report::any_failed(&after);
    records.extend(after);
    let text = crate::steps_report::lines(spec, &records, "");
    if !text.is_empty() {
        output.say(text.trim_end());
    }
    !failed
}

/// Commits a stored result through `spec.commit.endpoint`, or says how to.
async fn commit_step(
    doc: &BackfillDoc,
    layout: &RunLayout,
    keys: &[String],
    storage: &Store,
    r: &BackfillResult,
    output: Output,
) -> Result<Committed> {
    let committable = r
        .segments
        .values()
        .any(|s| !s.ops.is_empty() || !s.column_groups.is_empty() || s.version.is_some());
    if !committable {
        if !r.segments.is_empty() {
            output.say("  commit:               none (export layout of StorageV1 segments: no Milvus can commit it)");
        }
        return Ok(Committed::Nothing);
    }
    let Some(endpoint) = doc.spec.commit_endpoint() else {
        for k in keys {
            output.say(format_args!("  commit with:          {}", commit::commit_command(k)));
        }
        return Ok(Committed::Nothing);
    };
    if !r.success {
        output.say(format_args!(
            "  commit:               not attempted: {} segment(s) failed; Milvus refuses a result with success=false",
            r.failed_segments.len()
        ));
        return Ok(Committed::Failed);
    }
    let done = commit::commit_result(storage, endpoint, r, layout, 2).await?;
    for (seg, status) in &done.segments {
        output.say(format_args!("  commit segment {seg}: {status}"));
    }
    let all = done.success;
    output.say(format_args!(
        "  commit:               {}",
        if all {
            "all segments committed"
        } else {
            "some segments were NOT committed"
        }
    ));
    Ok(if all { Committed::Done } else { Committed::Failed })
}

/// A run whose record could not be stored: success becomes [`EXIT_RESULT_NOT_WRITTEN`].
fn not_written(code: i32) -> i32 {
    if code == 0 {
        EXIT_RESULT_NOT_WRITTEN
    } else {
        code
    }
}

/// Where `segment` finds its task: a local file, or `s3://bucket/key` on an endpoint.
struct TaskAt {
    task: String,
    bucket: BucketEndpoint,
}

async fn segment_command(at: &TaskAt, attempt: Option<u32>, result: Option<&Path>) -> Result<i32> {
    let text = read_task(at).await?;
    let mut task: Task = serde_json::from_slice(&text)
        .map_err(|e| BackfillError::config(format!("{} is not a task JSON: {e}", at.task)))?;
    if let Some(a) = attempt {
        task.attempt = a;
    }
    let stores = RunStores::for_task(&task.plan).await?;
    let outcome = runner::run_task(&task, &stores).await;
    let body = serde_json::to_vec_pretty(&outcome).expect("outcome serializes");
    println!("{}", String::from_utf8_lossy(&body));
    let mut code = if outcome.success { 0 } else { 1 };
    // The outcome is the attempt's record in the run ledger: a Job without it counts as lost.
    let key = task.outcome_key();
    if let Err(e) = stores.storage.put(&key, body.clone().into()).await {
        eprintln!(
            "WriteError: cannot store the task outcome at {}: {e}",
            stores.storage.display(&key)
        );
        code = not_written(code);
    }
    if let Some(path) = result {
        std::fs::write(path, &body).map_err(|e| BackfillError::write(None, path.display().to_string(), e))?;
    }
    if !outcome.success && !outcome.retryable() {
        // Input problems will not go away on retry; tell the caller.
        code = ErrorKind::SchemaValidationError.exit_code();
    }
    Ok(code)
}

/// The task JSON from a local file or from `s3://bucket/key`.
async fn read_task(at: &TaskAt) -> Result<Vec<u8>> {
    let task = &at.task;
    if !task.starts_with("s3://") {
        return std::fs::read(task).map_err(|e| BackfillError::config(format!("cannot read task {task}: {e}")));
    }
    let (store, key) = task_store(at).await?;
    let body = store.get(&key).await.map_err(|e| match e {
        StoreError::NotFound(w) => BackfillError::config(format!("task {w} does not exist")),
        e => BackfillError::connection(e.to_string()),
    })?;
    Ok(body.to_vec())
}

/// The bucket of an `s3://bucket/key` argument, opened with the storage credentials from the
/// environment, and the key.
async fn task_store(at: &TaskAt) -> Result<(Store, String)> {
    let task = &at.task;
    let uri = S3Uri::parse(task)
        .filter(|u| !u.key.is_empty())
        .ok_or_else(|| BackfillError::config(format!("{task}: expected s3://bucket/key")))?;
    let endpoint = at
        .bucket
        .endpoint
        .clone()
        .ok_or_else(|| BackfillError::config(format!("{task} needs --endpoint host:port")))?;
    let ep = S3Endpoint {
        endpoint,
        region: at.bucket.region.clone(),
        use_ssl: at.bucket.use_ssl,
    };
    let creds = S3Credentials::storage_from_env()?;
    let store = Store::s3(&ep, &uri.bucket, creds.as_ref()).await;
    Ok((store, uri.key))
}

/// What a segment's outputs are, and whether Milvus can commit them.
fn output_kind(p: &Plan, seg: &crate::plan::SegmentPlan) -> &'static str {
    match (seg.storage_version, p.v3_commit) {
        (3, crate::plan::V3CommitMode::Ops) => "StorageV3 data files + replace ops, committed by Milvus",
        (3, crate::plan::V3CommitMode::Manifest) => "StorageV3 data files + a new manifest version published here",
        (2, _) => "StorageV2 single-field column groups, committed by Milvus",
        _ => "export layout: no Milvus can commit it",
    }
}

/// The mode, and whether (and where) it reads the fields' existing values.
fn mode_text(p: &Plan) -> String {
    let rule = match p.mode {
        Mode::Replace => "matched rows take the source's value, unmatched rows become null",
        Mode::Coalesce => "an existing non-null value wins, else the source's",
        Mode::Overwrite => "matched rows take the source's value, unmatched rows keep theirs",
    };
    let what = if p.mode.reads_existing() {
        let reading = p.segments.iter().filter(|s| !s.existing.is_empty()).count();
        format!(
            "{rule}; reads existing values in {reading} of {} segment(s) (the others hold no data for the new fields yet)",
            p.segments.len()
        )
    } else {
        format!("{rule}; reads no existing values")
    };
    format!("{} ({what})", p.mode.name())
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
        "  primary key:  {} (field {}, {:?}), joined on source column `{}`",
        p.pk_field.name,
        p.pk_field.field_id,
        p.pk_field.pk_type,
        p.key_column()
    );
    let fields: Vec<String> = p
        .new_fields
        .iter()
        .map(|f| match &f.source_column {
            Some(c) => format!("{} ({}, from column `{c}`)", f.name, f.arrow_type),
            None => format!("{} ({})", f.name, f.arrow_type),
        })
        .collect();
    let _ = writeln!(s, "  new fields:   {}", fields.join(", "));
    let _ = writeln!(s, "  mode:         {}", mode_text(p));
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
        if let Some(v3) = &seg.v3 {
            let _ = writeln!(s, "      manifest version {} ({})", v3.manifest_version, v3.base_path);
            for f in &v3.pk_files {
                let _ = writeln!(s, "      pk file {} rows [{}, {})", f.key, f.start_index, f.end_index);
            }
        }
        for x in &seg.existing {
            let name = p
                .new_fields
                .iter()
                .find(|f| f.field_id == Some(x.field_id))
                .map_or("?", |f| &f.name);
            let _ = writeln!(s, "      existing values of {name} read from {} file(s)", x.files.len());
        }
        let _ = writeln!(s, "      output {} ({})", seg.output_dir, output_kind(p, seg));
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

#[cfg(test)]
mod tests {
    use super::*;
    use milvus_backfill_api::invocation::SegmentInvocation;

    #[test]
    fn the_operators_command_line_parses() {
        let inv = SegmentInvocation {
            task: S3Uri::parse("s3://b/files/backfill/1/r/tasks/r-0.json").unwrap(),
            endpoint: "minio:9000".into(),
            region: "eu-west-1".into(),
            use_ssl: true,
        };
        let cli = Cli::try_parse_from(std::iter::once(flags::BINARY.to_owned()).chain(inv.args())).unwrap();
        match cli.command {
            Command::Segment {
                task,
                bucket,
                attempt,
                result,
            } => {
                assert_eq!(task, inv.task.to_string());
                assert_eq!(bucket.endpoint.as_deref(), Some("minio:9000"));
                assert_eq!((bucket.region.as_str(), bucket.use_ssl), ("eu-west-1", true));
                assert_eq!((attempt, result), (None, None));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_operators_planning_and_finishing_command_lines_parse() {
        use milvus_backfill_api::invocation::{RequestJob, RequestJobInvocation};
        for job in [RequestJob::Plan, RequestJob::Finish] {
            let inv = RequestJobInvocation {
                job,
                request: S3Uri::parse("s3://b/files/backfill/planning/u/1-0/request.json").unwrap(),
                endpoint: "minio:9000".into(),
                region: "us-east-1".into(),
                use_ssl: false,
            };
            let cli = Cli::try_parse_from(std::iter::once(flags::BINARY.to_owned()).chain(inv.args())).unwrap();
            let (request, bucket) = match (job, cli.command) {
                (RequestJob::Plan, Command::PlanJob { request, bucket }) => (request, bucket),
                (RequestJob::Finish, Command::FinishJob { request, bucket }) => (request, bucket),
                (_, other) => panic!("{job:?} parsed as {other:?}"),
            };
            assert_eq!(request, inv.request.to_string());
            assert_eq!(bucket.endpoint.as_deref(), Some("minio:9000"));
            assert_eq!((bucket.region.as_str(), bucket.use_ssl), ("us-east-1", false));
        }
    }

    #[test]
    fn completion_scripts_name_the_commands_and_their_flags() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let script = completions(shell);
            for word in ["plan", "run", "add-fields", "log-level", "output", "yaml"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
        let cli = Cli::try_parse_from(["milvus-backfill", "completions", "zsh"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Completions {
                shell: clap_complete::Shell::Zsh
            }
        ));
        assert!(Cli::try_parse_from(["milvus-backfill", "completions", "tcsh"]).is_err());
        let run = Cli::try_parse_from(["milvus-backfill", "run", "-f", "b.yaml", "--no-progress"]).unwrap();
        assert!(matches!(run.command, Command::Run { no_progress: true, .. }));
    }

    #[test]
    fn the_plan_text_says_which_columns_are_read() {
        let mut p = crate::plan::sample_plan();
        assert!(plan_text(&p).contains("joined on source column `pk`"));
        p.source_key_column = Some("user".into());
        p.new_fields[0].source_column = Some("s".into());
        let text = plan_text(&p);
        assert!(text.contains("joined on source column `user`"), "{text}");
        assert!(text.contains("score (Float64, from column `s`)"), "{text}");
    }

    #[test]
    fn the_plan_text_says_which_mode_reads_existing_values() {
        let mut p = crate::plan::sample_plan();
        p.mode = Mode::Replace;
        assert!(plan_text(&p).contains("mode:         replace (matched rows take"));
        p.mode = Mode::Coalesce;
        p.new_fields[0].field_id = Some(103);
        p.segments.push(crate::plan::SegmentPlan {
            segment_id: 7,
            partition_id: 1,
            partition_name: "_default".into(),
            num_rows: 10,
            storage_version: 3,
            pk_binlogs: vec![],
            output_dir: "files/insert_log/10/1/7".into(),
            v3: None,
            existing: vec![crate::plan::ExistingColumn {
                field_id: 103,
                files: vec![],
            }],
        });
        let text = plan_text(&p);
        assert!(
            text.contains(
                "coalesce (an existing non-null value wins, else the source's; reads existing values in 1 of"
            ),
            "{text}"
        );
        assert!(text.contains("existing values of score read from 0 file(s)"), "{text}");
    }

    #[test]
    fn a_missing_record_turns_success_into_code_2() {
        assert_eq!(not_written(0), EXIT_RESULT_NOT_WRITTEN);
        assert_eq!(not_written(1), 1);
    }
}
