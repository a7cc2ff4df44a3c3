//! Request, response and event types of the Multitune HTTP API, shared by the server and
//! the browser dashboard. Plain serde types with no engine dependencies, so they compile
//! to WebAssembly.
#![warn(missing_docs)]

pub mod report;

use serde::{Deserialize, Serialize};

/// Every error response: `{ "error": { "code", "message", "details" } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

/// What went wrong, for people (`message`, `details`) and programs (`code`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// Machine-readable kind: `bad_request`, `not_found`, `invalid_dataset`, …
    pub code: String,
    /// One sentence.
    pub message: String,
    /// Itemised problems (e.g. one per bad line of a dataset).
    #[serde(default)]
    pub details: Vec<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for d in &self.details {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// `GET /api/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Experiments waiting or running.
    pub queue: usize,
}

/// `GET /api/power?examples=N,N,…`: what held-out sets of these sizes (one per task) can
/// tell apart, before anything is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Power {
    /// Held-out examples per task.
    pub examples_per_task: Vec<usize>,
    /// The smallest macro-average difference (a fraction) detected with 80% power by a
    /// two-sided 5% test.
    pub detectable: f64,
    /// The statement, with a warning above 10 points.
    pub text: String,
}

/// `GET /api/version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// `multitune`.
    pub name: String,
    /// Crate version.
    pub version: String,
    /// Database schema version.
    pub schema: u32,
    /// Training device (`cpu`, `cuda:0`).
    pub device: String,
    /// That device for people: its name, memory and (CPU) threads.
    #[serde(default)]
    pub device_info: Option<DeviceInfo>,
    /// Whether requests need a bearer token.
    pub auth: bool,
    /// What computes the CPU matrix products, and the measurement behind the choice
    /// (`None` until the server has chosen, a second or two after it starts).
    #[serde(default)]
    pub matmul: Option<Matmul>,
}

/// The device that runs the jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `cpu` or `cuda:N`.
    pub id: String,
    /// The processor's or card's name (`NVIDIA H200`).
    pub name: String,
    /// Its memory (RAM for the CPU), MiB.
    pub memory_mib: Option<u64>,
    /// Threads of the CPU engine; `None` on a GPU.
    pub threads: Option<usize>,
    /// One line: `GPU cuda:0: NVIDIA H200, 140.4 GiB`, `CPU: AMD EPYC, 2 threads, 23.5 GiB`.
    pub summary: String,
}

/// The engines that compute the CPU matrix products (the built-in `gemm` or a BLAS),
/// chosen by measuring each on the model's own shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matmul {
    /// Engine for products of many rows (training, scoring).
    pub many_rows: String,
    /// Engine for products of few rows (decoding).
    pub few_rows: String,
    /// Why: `measured now`, `measured earlier (…)`, `MULTITUNE_BLAS=…`, `no BLAS library found`.
    pub how: String,
    /// Each engine's measured rate.
    pub figures: Vec<MatmulFigure>,
}

/// One engine's calibration rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatmulFigure {
    /// The engine.
    pub engine: String,
    /// GFLOP/s on many-row products.
    pub many_rows_gflops: f64,
    /// GFLOP/s on few-row products.
    pub few_rows_gflops: f64,
}

/// An uploaded, validated task dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// Id (used in every URL).
    pub id: String,
    /// Task name (from the file name unless given).
    pub name: String,
    /// The uploaded file's name.
    pub filename: String,
    /// Detected format (`prompt_completion`, `alpaca`, `chat`, `share_gpt`, `classification`).
    pub format: String,
    /// `classification` or `generation`.
    pub kind: String,
    /// Examples.
    pub rows: usize,
    /// File size.
    pub bytes: u64,
    /// Label set (classification).
    pub labels: Vec<String>,
    /// Warnings that did not block the upload.
    pub warnings: Vec<String>,
    /// Upload time, RFC 3339.
    pub created_at: String,
}

/// `GET /api/datasets/{id}`: the dataset with a preview and its statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetDetail {
    /// Summary.
    pub dataset: Dataset,
    /// The first rows.
    pub preview: Vec<PreviewRow>,
    /// Examples per label (classification).
    pub label_counts: Vec<(String, usize)>,
    /// Mean / max prompt length in characters.
    pub prompt_chars: (f64, usize),
    /// Mean / max completion length in characters.
    pub completion_chars: (f64, usize),
}

/// One example as shown in a preview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviewRow {
    /// Source line.
    pub line: usize,
    /// Prompt (earlier turns of a conversation are not shown).
    pub prompt: String,
    /// Expected completion.
    pub completion: String,
}

/// A base model the server can train on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Id to use in an experiment (`default`, `tiny`, or a generated id).
    pub id: String,
    /// Display name.
    pub name: String,
    /// `default`, `tiny`, `gguf` or `hf`.
    pub kind: String,
    /// Where it is on disk (none for the built-in tiny model).
    pub path: Option<String>,
    /// Whether it can be loaded now (the default model may still need fetching).
    pub available: bool,
    /// How it was found: `built-in`, `models folder`, `registered`.
    pub source: String,
}

/// `POST /api/models`: register a GGUF file or a Hugging Face folder on the server's disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterModel {
    /// Absolute path of a `.gguf` file or a folder with `config.json`.
    pub path: String,
    /// Display name (default: the file or folder name).
    #[serde(default)]
    pub name: Option<String>,
}

/// One task of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRef {
    /// Training dataset.
    pub dataset: String,
    /// Held-out dataset; without one, `eval_split` of the training set is held out.
    #[serde(default)]
    pub eval_dataset: Option<String>,
}

/// The one set of defaults of a comparison's settings: the API's serde defaults, the
/// CLI's flags, the dashboard's form and the engine's configurations all read them here.
pub mod defaults {
    /// Base model id.
    pub const MODEL: &str = "default";
    /// Training tokens every strategy gets.
    pub const BUDGET_TOKENS: usize = 16_000;
    /// Peak learning rate. Measured on the demo tasks (default model, 8,000 tokens,
    /// `--tune-lr` over 3e-4, 1e-3, 3e-3 on a validation split, 2026-12-01): the combined,
    /// sequential and separate strategies each chose 1e-3 (see README, *Fair learning rates*).
    pub const LEARNING_RATE: f64 = 1e-3;
    /// LoRA rank (alpha is twice the rank).
    pub const RANK: usize = 8;
    /// Examples per micro-batch.
    pub const BATCH_SIZE: usize = 8;
    /// Longest example, tokens.
    pub const MAX_TOKENS: usize = 256;
    /// Training (and bootstrap) seed.
    pub const SEED: u64 = 42;
    /// Held-out share of a task without a held-out dataset.
    pub const EVAL_SPLIT: f64 = 0.2;
    /// Bootstrap resamples for the intervals.
    pub const BOOTSTRAP: usize = 1000;
    /// Steps between checkpoints (resume points).
    pub const CHECKPOINT_EVERY: usize = 10;
    /// The learning rates `tune_lr` searches.
    pub const LR_GRID: [f64; 3] = [3e-4, 1e-3, 3e-3];
}

/// How an adapter is parameterised and initialised, by PEFT's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdapterMethod {
    /// LoRA: `W + (α/r)·B·A`, A Kaiming-uniform, B zero.
    #[default]
    Lora,
    /// rsLoRA: the update scaled by `α/√r` instead of `α/r` (PEFT's `use_rslora`).
    Rslora,
    /// DoRA: a learned magnitude per output row times the direction `W + (α/r)·B·A`
    /// normalised per row (PEFT's `use_dora`).
    Dora,
    /// PiSSA: A and B start from the top r singular vectors of W, which keeps the rest
    /// (PEFT's `init_lora_weights: "pissa"`); exported as a plain LoRA on the original
    /// base, as PEFT converts it.
    Pissa,
}

impl AdapterMethod {
    /// Every method, in the order the command line lists them.
    pub const ALL: [AdapterMethod; 4] =
        [AdapterMethod::Lora, AdapterMethod::Rslora, AdapterMethod::Dora, AdapterMethod::Pissa];

    /// Its name on the wire and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AdapterMethod::Lora => "lora",
            AdapterMethod::Rslora => "rslora",
            AdapterMethod::Dora => "dora",
            AdapterMethod::Pissa => "pissa",
        }
    }

    /// The method called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name.trim())
    }

    /// Appended to a run's name in a comparison of methods (` [dora]`).
    pub fn tag(self) -> String {
        format!(" [{}]", self.name())
    }
}

impl std::str::FromStr for AdapterMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("unknown adapter method `{}`", s.trim()))
    }
}

/// Task sampling of mixture-trained strategies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MixingChoice {
    /// Tasks in proportion to their size.
    #[default]
    Proportional,
    /// Every task equally.
    Uniform,
    /// T5-style temperature sampling.
    Temperature {
        /// Temperature (1 = proportional, large = uniform).
        t: f64,
    },
    /// Picked among [`MixingChoice::SEARCHED`] by successive halving on a validation
    /// split of the training data (as the learning-rate search is), before the run trains;
    /// the search's training counts in the run's cost.
    Search,
}

impl MixingChoice {
    /// What a `Search` picks among: proportional, temperature 2, uniform (ties go to the
    /// earlier).
    pub const SEARCHED: [MixingChoice; 3] =
        [MixingChoice::Proportional, MixingChoice::Temperature { t: 2.0 }, MixingChoice::Uniform];

    /// Parses the command line's `proportional`, `uniform`, `temperature:T` (T > 0) or
    /// `search`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "proportional" => Some(MixingChoice::Proportional),
            "uniform" => Some(MixingChoice::Uniform),
            "search" => Some(MixingChoice::Search),
            _ => s
                .strip_prefix("temperature:")
                .and_then(|t| t.parse().ok())
                .filter(|t: &f64| *t > 0.0)
                .map(|t| MixingChoice::Temperature { t }),
        }
    }

    /// Its command-line name (`temperature:2`), as [`MixingChoice::parse`] reads it.
    pub fn name(&self) -> String {
        match self {
            MixingChoice::Proportional => "proportional".into(),
            MixingChoice::Uniform => "uniform".into(),
            MixingChoice::Temperature { t } => format!("temperature:{t}"),
            MixingChoice::Search => "search".into(),
        }
    }
}

/// How a sequential run carries what it learned from one task to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SequentialVariant {
    /// One adapter keeps training.
    #[default]
    Continue,
    /// After each task the adapter is merged into the base and a fresh one starts.
    MergeThenNew,
}

/// A way to merge the separate strategy's per-task adapters into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeChoice {
    /// The mean of the adapters' deltas.
    Linear,
    /// Task arithmetic: the scaled sum of the deltas.
    TaskArithmetic,
    /// TIES: trim, elect signs, disjoint mean.
    Ties,
    /// DARE: drop at random and rescale.
    Dare,
    /// Concatenation: the exact sum, at the summed rank.
    Concat,
}

impl MergeChoice {
    /// Every method, in the order reports list them (the default set).
    pub const ALL: [MergeChoice; 5] =
        [MergeChoice::Linear, MergeChoice::TaskArithmetic, MergeChoice::Ties, MergeChoice::Dare, MergeChoice::Concat];

    /// Its name on the wire and on the command line (`task_arithmetic`).
    pub fn name(self) -> &'static str {
        match self {
            MergeChoice::Linear => "linear",
            MergeChoice::TaskArithmetic => "task_arithmetic",
            MergeChoice::Ties => "ties",
            MergeChoice::Dare => "dare",
            MergeChoice::Concat => "concat",
        }
    }

    /// The method called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// A strategy and its options, as a client asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum StrategyChoice {
    /// One adapter on a mixture of all tasks.
    Combined {
        /// Task sampling.
        #[serde(default)]
        mixing: MixingChoice,
        /// Prefix prompts with `[task]`.
        #[serde(default)]
        task_tag: bool,
    },
    /// Task after task.
    Sequential {
        /// How one task's adapter carries on into the next.
        #[serde(default)]
        variant: SequentialVariant,
        /// Task order by position (empty: as listed).
        #[serde(default)]
        order: Vec<usize>,
        /// Share of earlier tasks replayed in each stage.
        #[serde(default)]
        replay: f64,
    },
    /// One adapter per task, scored routed and merged.
    Separate {
        /// Merge methods (default: all).
        #[serde(default = "all_merges")]
        merges: Vec<MergeChoice>,
    },
    /// A shared adapter and a head per task.
    MultiHead {
        /// Task sampling of the shared adapter's mixture.
        #[serde(default)]
        mixing: MixingChoice,
        /// Rank of generation tasks' LM-head deltas (default: the LoRA rank).
        #[serde(default)]
        head_rank: Option<usize>,
    },
}

fn all_merges() -> Vec<MergeChoice> {
    MergeChoice::ALL.to_vec()
}

/// The strategy names of the command line, in the order `all` lists them.
pub const STRATEGY_NAMES: [&str; 5] = ["combined", "sequential", "sequential-merge", "separate", "multi-head"];

impl StrategyChoice {
    /// The strategy a [`STRATEGY_NAMES`] name stands for, with its default options.
    pub fn named(name: &str) -> Option<StrategyChoice> {
        let sequential = |variant| StrategyChoice::Sequential { variant, order: vec![], replay: 0.0 };
        Some(match name {
            "combined" => StrategyChoice::Combined { mixing: MixingChoice::default(), task_tag: false },
            "sequential" => sequential(SequentialVariant::Continue),
            "sequential-merge" => sequential(SequentialVariant::MergeThenNew),
            "separate" => StrategyChoice::Separate { merges: all_merges() },
            "multi-head" => StrategyChoice::MultiHead { mixing: MixingChoice::default(), head_rank: None },
            _ => return None,
        })
    }

    /// Every strategy with its defaults (what `all` means on the command line, and what
    /// an experiment without `strategies` runs).
    pub fn all() -> Vec<StrategyChoice> {
        STRATEGY_NAMES.iter().map(|n| Self::named(n).expect("every listed name is a strategy")).collect()
    }

    /// One line on what the strategy answers.
    pub fn explanation(&self) -> &'static str {
        match self {
            StrategyChoice::Combined { .. } => "One adapter trained on a mixture of every task: does sharing help?",
            StrategyChoice::Sequential { .. } => {
                "Tasks one after another: how much does each new task make the model forget?"
            }
            StrategyChoice::Separate { .. } => {
                "One adapter per task, used alone (the specialist bound) and merged into one: can we merge instead?"
            }
            StrategyChoice::MultiHead { .. } => {
                "A shared adapter plus a small head per task: a classifier for labels, an LM-head delta for text"
            }
        }
    }
}

/// Training and evaluation settings of an experiment (defaults: [`defaults`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hyper {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// LoRA rank (alpha is twice the rank).
    pub rank: usize,
    /// The adapter method every run trains with.
    pub method: AdapterMethod,
    /// LoRA+: B's learning rate is this many times A's (`None`: the same rate).
    pub lora_plus: Option<f64>,
    /// Compare adapter methods: every strategy trains once with each (at least two, each
    /// once; `method` is then unused), under the same budget, and the report compares
    /// them per strategy. Empty: every run trains with `method`.
    pub methods: Vec<AdapterMethod>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Longest example, tokens.
    pub max_tokens: usize,
    /// Training seed.
    pub seed: u64,
    /// Repeat over these seeds (empty: just `seed`).
    pub seeds: Vec<u64>,
    /// Held-out share of tasks without an eval dataset.
    pub eval_split: f64,
    /// Use at most this many held-out examples per task.
    pub eval_limit: Option<usize>,
    /// Bootstrap resamples for the intervals.
    pub bootstrap: usize,
    /// Steps between checkpoints (resume points).
    pub checkpoint_every: usize,
    /// Pick each strategy's peak learning rate from `lr_grid` by successive halving on a
    /// validation split of the training data (`learning_rate` is then unused).
    pub tune_lr: bool,
    /// The rates searched (empty: [`defaults::LR_GRID`]).
    pub lr_grid: Vec<f64>,
    /// Tune every merge of the separate strategy on a validation split of the training
    /// data (linear and task arithmetic: the per-task weights; TIES: density and scale;
    /// DARE: drop rate and scale); each tuned merge is reported beside its defaults.
    pub tune_merges: bool,
    /// Measure what every run keeps of the base model on the retention probe (KL from
    /// the base model along its answers, the share of unchanged answers): an extra scoring
    /// pass per run and per sequential stage.
    pub retention: bool,
    /// Data-size curves: also train every strategy on these shares of each task's
    /// training set, each in (0, 1] (1, the full data, is always run: it is the
    /// comparison itself). Empty: the full data only.
    pub data_fractions: Vec<f64>,
}

impl Default for Hyper {
    fn default() -> Self {
        Self {
            learning_rate: defaults::LEARNING_RATE,
            rank: defaults::RANK,
            method: AdapterMethod::Lora,
            lora_plus: None,
            methods: vec![],
            batch_size: defaults::BATCH_SIZE,
            max_tokens: defaults::MAX_TOKENS,
            seed: defaults::SEED,
            seeds: vec![],
            eval_split: defaults::EVAL_SPLIT,
            eval_limit: None,
            bootstrap: defaults::BOOTSTRAP,
            checkpoint_every: defaults::CHECKPOINT_EVERY,
            tune_lr: false,
            lr_grid: vec![],
            tune_merges: false,
            retention: false,
            data_fractions: vec![],
        }
    }
}

/// `POST /api/experiments`. Only `name` and `tasks` are required; the rest defaults as
/// the CLI and the dashboard's form do ([`defaults`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentCreate {
    /// Display name.
    pub name: String,
    /// Model id (see `GET /api/models`).
    #[serde(default = "default_model")]
    pub model: String,
    /// Tasks, one dataset each.
    pub tasks: Vec<TaskRef>,
    /// Strategies to compare (default: every one, [`StrategyChoice::all`]).
    #[serde(default = "StrategyChoice::all")]
    pub strategies: Vec<StrategyChoice>,
    /// Training tokens every strategy gets.
    #[serde(default = "default_budget")]
    pub budget_tokens: usize,
    /// Hyper-parameters.
    #[serde(default)]
    pub hyper: Hyper,
    /// Keep sets: dataset ids that must not get worse. Each is scored on all its rows
    /// (at most `hyper.eval_limit`) with the base model and every run's final model, and
    /// never trained on; none may be a task's dataset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
}

/// Most keep sets a comparison scores.
pub const MAX_KEEP_SETS: usize = 8;

/// What is wrong with keep sets given as `(source, name)` — a dataset id or a file, and
/// the name it would be reported under — beside the tasks' (`tasks`: every source a task
/// reads, its held-out files included): a keep set that is also a task, named like one,
/// listed twice, or too many. Each problem with the index of the keep set it is about
/// (`None`: the list), for the caller to name its field.
pub fn keep_problems<S: AsRef<str>, K: AsRef<str>>(tasks: &[(S, S)], keep: &[(K, K)]) -> Vec<(Option<usize>, String)> {
    let tasks: Vec<(&str, &str)> = tasks.iter().map(|(a, b)| (a.as_ref(), b.as_ref())).collect();
    let keep: Vec<(&str, &str)> = keep.iter().map(|(a, b)| (a.as_ref(), b.as_ref())).collect();
    let mut out = Vec::new();
    if keep.len() > MAX_KEEP_SETS {
        out.push((None, format!("at most {MAX_KEEP_SETS} keep sets, not {}", keep.len())));
    }
    for (i, &(source, name)) in keep.iter().enumerate() {
        let problem = if tasks.iter().any(|t| t.0 == source) {
            format!("`{name}` is also a task; a keep set is scored, never trained on: take it out of one of the two")
        } else if tasks.iter().any(|t| t.1 == name) {
            format!("`{name}` is named like a task; upload it under another name")
        } else if keep[..i].iter().any(|k| k.0 == source || k.1 == name) {
            format!("`{name}` is listed twice")
        } else {
            continue;
        };
        out.push((Some(i), problem));
    }
    out
}

fn default_model() -> String {
    defaults::MODEL.into()
}

fn default_budget() -> usize {
    defaults::BUDGET_TOKENS
}

/// Where an experiment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the worker.
    Queued,
    /// Training or evaluating.
    Running,
    /// Finished with a report.
    Done,
    /// Stopped by a user.
    Cancelled,
    /// Stopped by an error.
    Failed,
    /// The server stopped while it ran; it can be resumed.
    Interrupted,
}

impl Status {
    /// The snake_case name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Cancelled => "cancelled",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Status::Queued, Status::Running, Status::Done, Status::Cancelled, Status::Failed, Status::Interrupted]
            .into_iter()
            .find(|x| x.as_str() == s)
    }

    /// Whether nothing more will happen without a user's action.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

/// An experiment and its runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Status.
    pub status: Status,
    /// Error of a failed experiment.
    pub error: Option<String>,
    /// What was asked for.
    pub spec: ExperimentCreate,
    /// Created, RFC 3339.
    pub created_at: String,
    /// Started, RFC 3339.
    pub started_at: Option<String>,
    /// Finished, RFC 3339.
    pub finished_at: Option<String>,
    /// Position in the queue (0: next), when queued.
    pub queue_position: Option<usize>,
    /// Runs started so far (one per strategy, variant and seed; merges are runs too).
    pub runs: Vec<Run>,
    /// Whether `report.json` exists.
    pub has_report: bool,
}

/// `Run::index` of runs that only the final report lists (merges of separate adapters,
/// seed averages): they never trained on their own, so they have no progress to show.
pub const REPORT_ONLY_RUN_INDEX: usize = 1000;

/// One run of an experiment, with its latest progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Id.
    pub id: i64,
    /// Its experiment.
    pub experiment_id: String,
    /// Name as in the report.
    pub name: String,
    /// Order of start.
    pub index: usize,
    /// `running`, `done`, `cancelled`, `failed`, `interrupted`.
    pub status: Status,
    /// Stage being trained (a task name, or `all`).
    pub stage: Option<String>,
    /// Steps done in the current stage.
    pub step: usize,
    /// Steps of the current stage.
    pub total_steps: usize,
    /// Latest loss.
    pub loss: Option<f64>,
    /// Latest training throughput.
    pub tokens_per_s: Option<f64>,
    /// Seconds since the stage started.
    pub elapsed_s: f64,
    /// Estimated seconds left in the current stage.
    pub eta_s: Option<f64>,
    /// Whether an adapter can be downloaded.
    pub has_adapter: bool,
    /// Whether it has task heads (multi-head).
    pub has_heads: bool,
    /// The worker that runs (or ran) it and that worker's attempt, in the distributed
    /// mode (`None` where the server trains itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerRef>,
}

impl Run {
    /// A run as its start event announces it (no row id yet): running, no progress.
    pub fn started(experiment_id: &str, name: &str, index: usize) -> Self {
        Run {
            id: 0,
            experiment_id: experiment_id.into(),
            name: name.into(),
            index,
            status: Status::Running,
            stage: None,
            step: 0,
            total_steps: 0,
            loss: None,
            tokens_per_s: None,
            elapsed_s: 0.0,
            eta_s: None,
            has_adapter: false,
            has_heads: false,
            worker: None,
        }
    }
}

/// Which worker ran a run, and which attempt of its job that was (1 unless a worker
/// stopped and another took the job over).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRef {
    /// The worker's name.
    pub name: String,
    /// The attempt.
    pub attempt: u32,
}

/// One point of a run's training curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// Step counted over the whole run (stages follow each other).
    pub step: usize,
    /// Loss (mean over the bucket when downsampled).
    pub loss: f64,
    /// Learning rate.
    pub lr: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
}

/// `GET /api/runs/{id}/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsHistory {
    /// Run id.
    pub run: i64,
    /// Steps recorded in all.
    pub steps: usize,
    /// Points (at most the requested number).
    pub points: Vec<MetricPoint>,
}

/// What happened, as sent over SSE (`event:` is the kind, `id:` the sequence number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// The experiment changed status.
    Status {
        /// New status.
        status: Status,
        /// Why (errors).
        message: Option<String>,
    },
    /// A run started.
    RunStarted {
        /// Run name.
        run: String,
        /// Position.
        index: usize,
        /// Runs planned.
        of: usize,
    },
    /// Training of a stage started (or resumed at `start_step`).
    TrainStarted {
        /// Run name.
        run: String,
        /// Stage.
        stage: String,
        /// Steps of the stage.
        total_steps: usize,
        /// First step (0 unless resumed).
        start_step: usize,
    },
    /// A training step finished.
    Step {
        /// Run name.
        run: String,
        /// Stage.
        stage: String,
        /// Step within the stage (1-based).
        step: usize,
        /// Steps of the stage.
        total_steps: usize,
        /// Loss.
        loss: f64,
        /// Learning rate.
        lr: f64,
        /// Tokens this step.
        tokens: usize,
        /// Throughput of the stage so far (since it, or its resumption, started): its
        /// tokens over `elapsed_s`. Not the step's own, which a stage's short last step
        /// would make look slow.
        tokens_per_s: f64,
        /// Seconds since the stage started.
        elapsed_s: f64,
        /// Mixed runs (combined, multi-head): each task's mean loss in this step, from the
        /// same forward pass (tasks without an example in the step are left out).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        task_losses: Vec<(String, f64)>,
    },
    /// Something that changed how a run goes, not its result (out of GPU memory:
    /// continuing with smaller forward passes).
    Notice {
        /// Run name.
        run: String,
        /// Stage.
        stage: String,
        /// What happened and what was done.
        message: String,
    },
    /// A task was scored.
    Evaluated {
        /// Run name.
        run: String,
        /// After which stage.
        stage: String,
        /// Task.
        task: String,
        /// Headline metric.
        value: f64,
    },
    /// A run finished.
    RunFinished {
        /// Run name.
        run: String,
        /// Wall seconds.
        wall_s: f64,
    },
}

impl Event {
    /// Every SSE event name [`Event::kind`] gives, for clients that subscribe by name.
    pub const KINDS: [&'static str; 7] =
        ["status", "run_started", "train_started", "step", "notice", "evaluated", "run_finished"];

    /// The SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Status { .. } => "status",
            Event::RunStarted { .. } => "run_started",
            Event::TrainStarted { .. } => "train_started",
            Event::Step { .. } => "step",
            Event::Notice { .. } => "notice",
            Event::Evaluated { .. } => "evaluated",
            Event::RunFinished { .. } => "run_finished",
        }
    }

    /// The run it concerns.
    pub fn run(&self) -> Option<&str> {
        match self {
            Event::Status { .. } => None,
            Event::RunStarted { run, .. }
            | Event::TrainStarted { run, .. }
            | Event::Step { run, .. }
            | Event::Notice { run, .. }
            | Event::Evaluated { run, .. }
            | Event::RunFinished { run, .. } => Some(run),
        }
    }
}

/// An event with its sequence number (the SSE `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Monotonic id, usable as `Last-Event-ID`.
    pub id: i64,
    /// The experiment.
    pub experiment_id: String,
    /// The event.
    pub event: Event,
}

/// `POST /api/playground`: generate with a run's adapter (or the base model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaygroundRequest {
    /// Experiment whose model to use.
    pub experiment: String,
    /// Run whose adapter to apply; none for the base model.
    #[serde(default)]
    pub run: Option<i64>,
    /// Task (selects a multi-head run's head; otherwise informational).
    #[serde(default)]
    pub task: Option<String>,
    /// The user message.
    pub prompt: String,
    /// Most tokens to generate.
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    /// 0 for greedy.
    #[serde(default)]
    pub temperature: f64,
}

fn default_max_new() -> usize {
    64
}

/// A piece of playground output (SSE `token` events), then `done` with the whole text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaygroundChunk {
    /// New text.
    pub text: String,
    /// Whether this is the end.
    pub done: bool,
    /// Label probabilities of a multi-head classifier, highest first.
    #[serde(default)]
    pub labels: Vec<(String, f64)>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_keep_set_that_is_a_task_or_named_like_one_is_refused() {
        let tasks = [("d1", "qa"), ("d2", "sentiment"), ("d3", "sentiment")];
        assert!(keep_problems(&tasks, &[("d9", "support")]).is_empty());
        let p = keep_problems(
            &tasks,
            &[("d9", "support"), ("d1", "qa"), ("d3", "sentiment"), ("d8", "qa2"), ("d9", "support")],
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(p[0].0, Some(1));
        assert!(p[0].1.starts_with("`qa` is also a task"), "{p:?}");
        // A held-out dataset of a task is a task's too.
        assert!(p[1].1.starts_with("`sentiment` is also a task"), "{p:?}");
        assert_eq!(p[2], (Some(4), "`support` is listed twice".to_string()));
        let p = keep_problems(&tasks, &[("d7", "qa")]);
        assert_eq!(p, vec![(Some(0), "`qa` is named like a task; upload it under another name".to_string())]);
        let many: Vec<(String, String)> = (0..9).map(|i| (format!("k{i}"), format!("keep{i}"))).collect();
        assert_eq!(keep_problems(&tasks, &many), vec![(None, "at most 8 keep sets, not 9".to_string())]);
    }

    use super::*;

    #[test]
    fn experiment_request_fills_defaults() {
        let e: ExperimentCreate = serde_json::from_str(
            r#"{"name":"x","model":"tiny","tasks":[{"dataset":"ab"}],
                "strategies":[{"strategy":"separate"},{"strategy":"sequential","replay":0.1},
                              {"strategy":"sequential","variant":"merge_then_new"},{"strategy":"multi_head"}],
                "budget_tokens":1000}"#,
        )
        .unwrap();
        assert_eq!(e.hyper, Hyper::default());
        assert_eq!(e.strategies[0], StrategyChoice::Separate { merges: MergeChoice::ALL.to_vec() });
        assert_eq!(
            e.strategies[1],
            StrategyChoice::Sequential { variant: SequentialVariant::Continue, order: vec![], replay: 0.1 }
        );
        assert_eq!(
            e.strategies[2],
            StrategyChoice::Sequential { variant: SequentialVariant::MergeThenNew, order: vec![], replay: 0.0 }
        );
        assert_eq!(e.strategies[3], StrategyChoice::MultiHead { mixing: MixingChoice::Proportional, head_rank: None });
        // Only the name and the tasks are required.
        let e: ExperimentCreate = serde_json::from_str(r#"{"name":"x","tasks":[{"dataset":"ab"}]}"#).unwrap();
        assert_eq!((e.model.as_str(), e.budget_tokens), (defaults::MODEL, defaults::BUDGET_TOKENS));
        assert_eq!(e.strategies, StrategyChoice::all());
        // Options are closed sets: a name outside one is refused, naming what is allowed.
        let bad = serde_json::from_str::<ExperimentCreate>(
            r#"{"name":"x","tasks":[],"strategies":[{"strategy":"sequential","variant":"sideways"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("sideways") && bad.contains("merge_then_new"), "{bad}");
    }

    #[test]
    fn command_line_names_and_mixing_parse() {
        assert_eq!(StrategyChoice::all().len(), STRATEGY_NAMES.len());
        assert_eq!(StrategyChoice::named("sequential-merge"), Some(StrategyChoice::all()[2].clone()));
        assert_eq!(StrategyChoice::named("mixed"), None);
        assert_eq!(MixingChoice::parse("temperature:2"), Some(MixingChoice::Temperature { t: 2.0 }));
        assert_eq!(MixingChoice::parse("temperature:-1"), None);
        assert_eq!(MixingChoice::parse("uniform"), Some(MixingChoice::Uniform));
        assert_eq!(MixingChoice::parse("search"), Some(MixingChoice::Search));
        for m in MixingChoice::SEARCHED.into_iter().chain([MixingChoice::Search]) {
            assert_eq!(MixingChoice::parse(&m.name()), Some(m));
        }
        for m in MergeChoice::ALL {
            assert_eq!(MergeChoice::parse(m.name()), Some(m));
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
    }

    #[test]
    fn events_carry_their_kind() {
        let e = Event::RunFinished { run: "a".into(), wall_s: 1.0 };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["kind"], e.kind());
        assert_eq!(serde_json::from_value::<Event>(j).unwrap(), e);
        assert_eq!(Status::parse("interrupted"), Some(Status::Interrupted));
        assert!(Status::Done.is_final() && !Status::Queued.is_final());
    }

    /// A client subscribing to `Event::KINDS` hears every event: one of each variant.
    #[test]
    fn every_event_kind_is_listed() {
        let (run, stage) = (String::from("a"), String::from("s"));
        let all = [
            Event::Status { status: Status::Running, message: None },
            Event::RunStarted { run: run.clone(), index: 0, of: 1 },
            Event::TrainStarted { run: run.clone(), stage: stage.clone(), total_steps: 1, start_step: 0 },
            Event::Step {
                run: run.clone(),
                stage: stage.clone(),
                step: 1,
                total_steps: 1,
                loss: 1.0,
                lr: 1e-3,
                tokens: 1,
                tokens_per_s: 1.0,
                elapsed_s: 1.0,
                task_losses: vec![],
            },
            Event::Notice { run: run.clone(), stage: stage.clone(), message: "m".into() },
            Event::Evaluated { run: run.clone(), stage, task: "t".into(), value: 0.5 },
            Event::RunFinished { run, wall_s: 1.0 },
        ];
        let kinds: Vec<&str> = all.iter().map(Event::kind).collect();
        assert_eq!(kinds, Event::KINDS);
    }
}
