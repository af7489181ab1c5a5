//! `timeprest train`: flags → a validated [`TrainConfig`] → a run with progress bars.
//!
//! Every flag has a default, so `timeprest` with no arguments trains the embedded default
//! (digits, a 3-block MLP on 3 stages, I-TiMePReSt) in well under a minute. Progress bars go
//! to stderr and only when it is a terminal; the per-epoch summary goes to stdout. Ctrl-C or
//! SIGTERM stops the run at its next safe point: the bars are cleared and one line says which
//! epoch was cut short, where the last checkpoint is and how to continue ([`crate::interrupt`]).

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::display::{StepUnits, bar_style, epoch_line, perplexity, stage_line};
use crate::interrupt::StopRequest;
use crate::policy_options::PolicyOptionArgs;
use crate::usage_error;
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar};
use timeprest_data::{DATASET_NAMES, DEFAULT_SEQ_LEN, TEXT_PREFIX};
use timeprest_nn::{ComputeDevice, GptConfig, MODEL_NAMES, ModelSize, PartitionMethod};
use timeprest_policy::PolicyKind;
use timeprest_schedule::ScheduleKind;
use timeprest_train::{
    DataSettings, EpochMetrics, GradMode, LrScheduleChoice, ModelSettings, OptimisationSettings,
    OptimizerChoice, PipelineSettings, Progress, Recipe, RunPaths, RunSettings, TrainConfig,
    TrainError, ValidConfig, command_line, run_until_stopped, shell_quoted,
};

/// The size flags of every model, shared by `train` (and `compare`) and `partition`.
#[derive(Args, Debug)]
pub struct ModelSizeArgs {
    /// Hidden layer widths of the MLP, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,64")]
    pub hidden: Vec<usize>,
    /// Channel multiplier of the convolutional models (1 = the reference size; 0.25 for quick
    /// CPU runs).
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
    /// Residual blocks per group of the ResNets, 4 comma-separated numbers [default: 2,2,2,2
    /// for resnet18, 3,4,6,3 for resnet50]; for `gpt` one number, its decoder layers
    /// [default: 2].
    #[arg(long, value_delimiter = ',')]
    pub depth: Vec<usize>,
    /// Embedding width d of `gpt`.
    #[arg(long, default_value_t = GptConfig::DEFAULT_EMBED_DIM)]
    pub embed_dim: usize,
    /// Attention heads of `gpt` (they must divide --embed-dim).
    #[arg(long, default_value_t = GptConfig::DEFAULT_HEADS)]
    pub heads: usize,
}

impl ModelSizeArgs {
    /// The sizes as the model zoo takes them.
    pub fn model_size(&self) -> ModelSize {
        ModelSize {
            hidden: self.hidden.clone(),
            width: self.width,
            depth: self.depth.clone(),
            embed_dim: self.embed_dim,
            heads: self.heads,
        }
    }
}

/// Train a model with a pipeline-parallel weight policy.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The flags given on the command line (filled by `main` from clap's matches).
    #[arg(skip)]
    pub given: GivenFlags,
    /// Model architecture (`lenet5` … `resnet50` are the 32×32/CIFAR variants; they adapt to
    /// the data's channels and size where they can; `gpt` is a small decoder-only transformer
    /// for `text:PATH` data, sized by --embed-dim, --heads and --depth).
    #[arg(long, default_value = "mlp", value_parser = MODEL_NAMES)]
    pub model: String,
    /// The model's sizes.
    #[command(flatten)]
    pub size: ModelSizeArgs,
    /// How to split the model into stages: equal block counts, balanced parameters, balanced
    /// arithmetic counted from the blocks' shapes (the default: deterministic, and close to
    /// time), or balanced forward+backward time measured on this machine (closest, but two runs
    /// may split differently).
    #[arg(long, value_enum, default_value = "ops")]
    pub partition: PartitionMethod,
    /// Split by hand: the first block of each stage after the first, e.g. `3,7,12` for 4
    /// stages (see `timeprest partition` for the blocks).
    #[arg(long, value_delimiter = ',', value_name = "BLOCKS")]
    pub split: Vec<usize>,
    /// Random crops (padding 4) and horizontal flips of the training images.
    #[arg(long)]
    pub augment: bool,
    /// Data set: `digits` (embedded), `fashion-mnist` or `mnist` (IDX files), `mnist-csv`,
    /// `cifar10`, `cifar100` (fine labels), `cifar100-coarse` (binary files), `synthetic`
    /// (seeded 3×32×32 images), or `text:PATH` (character-level language modelling on the
    /// UTF-8 file PATH, for `--model gpt`: first 90% train, last 10% test).
    #[arg(long, default_value = "digits", value_parser = parse_dataset)]
    pub dataset: String,
    /// Characters per sample of a `text:PATH` data set (non-overlapping windows; each
    /// position's target is the next character): the context length of `gpt`.
    #[arg(long, value_name = "T", default_value_t = DEFAULT_SEQ_LEN)]
    pub seq_len: usize,
    /// Directory with the IDX files (default: `/usr/share/datasets/<dataset>`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use only the first K training samples.
    #[arg(long, value_name = "K")]
    pub limit_train: Option<usize>,
    /// Use only the first K test samples.
    #[arg(long, value_name = "K")]
    pub limit_test: Option<usize>,
    /// W: pipeline stages (one worker thread each) [default: 1 for `--policy single`, 3
    /// otherwise].
    #[arg(long)]
    pub stages: Option<u32>,
    /// N: micro-batches per mini-batch [default: 1 on the 1f1b schedule (PipeDream's
    /// whole-mini-batch 1F1B) and for `single`, 3 otherwise (TiMePReSt's main setting)].
    #[arg(long)]
    pub microbatches: Option<u32>,
    /// M: samples per mini-batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: u32,
    /// Learning rate (the peak of the schedule) [default: the model's recipe, printed at the
    /// start: with SGD 0.02 for mlp and 0.01 for the others, with Adam 0.001].
    #[arg(long)]
    pub lr: Option<f64>,
    /// How the learning rate changes, stepped at every update of every stage: constant, step
    /// (× --lr-gamma every --lr-step-epochs), multistep (× --lr-gamma after each epoch of
    /// --lr-milestones), warmup (linear over --warmup-epochs, then
    /// constant), cosine (that warm-up, then cosine decay to 0 at the last update) [default:
    /// the model's recipe: cosine].
    #[arg(long, value_enum)]
    pub lr_schedule: Option<LrScheduleChoice>,
    /// Epochs of linear learning-rate warm-up (fractions allowed) [default: the model's
    /// recipe: one epoch, at most a fifth of the run].
    #[arg(long, value_name = "EPOCHS")]
    pub warmup_epochs: Option<f64>,
    /// Epochs between two decays of `--lr-schedule step`.
    #[arg(long, value_name = "EPOCHS", default_value_t = 30)]
    pub lr_step_epochs: u32,
    /// Decay factor of `--lr-schedule step` and `multistep`.
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f64,
    /// The epochs after which `--lr-schedule multistep` decays, e.g. `30,60,80`.
    #[arg(long, value_name = "EPOCHS", value_delimiter = ',')]
    pub lr_milestones: Vec<u32>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    pub nesterov: bool,
    /// L2 weight decay [default: the model's recipe: 5e-4].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "sgd")]
    pub optimizer: OptimizerChoice,
    /// Weight policy: single, naive, gpipe, pipedream, pipedream-flush, pipedream-2bw,
    /// timeprest, v-timeprest, i-timeprest, nwpt, variant1, variant2.
    #[arg(long, default_value = "i-timeprest")]
    pub policy: PolicyKind,
    /// Schedule (default: the policy's own): naive, gpipe, 1f1b, 1f1b-flush, nf1b,
    /// nf1b-streamed, 1f1b-2bw. `nf1b-streamed` runs nF1B's passes on the same weights but
    /// sends each micro-batch's input gradient as soon as it is computed, so the stage before
    /// starts its backward while this one finishes the mini-batch's: faster on 2+ stages,
    /// sums in another order.
    #[arg(long)]
    pub schedule: Option<ScheduleKind>,
    /// Order the schedule as if a backward took K slots per micro-batch (a forward: 1) instead
    /// of the papers' unit grid. With K = 2 (a backward costs about two forwards) nF1B's first
    /// stage runs its next forwards while the last stage's long backward runs, instead of
    /// waiting: faster pipelines, but forwards then read older weights (more staleness).
    /// `timeprest simulate --backward-slots K` shows the order.
    #[arg(long, value_name = "K")]
    pub backward_slots: Option<u32>,
    /// Gradient mode when forward and backward read different weights.
    #[arg(long, value_enum, default_value = "graph")]
    pub grad_mode: GradMode,
    /// Keep only each micro-batch's stage input and re-run its forward, with the weights the
    /// forward read, just before its backward: activation memory of one micro-batch (plus the
    /// inputs) instead of every micro-batch in flight, for one more forward per micro-batch.
    /// The results are the same bit for bit; a policy whose backward reads other weights than
    /// its forward keeps the forward's version until the backward (more weight memory).
    #[arg(long)]
    pub recompute_activations: bool,
    /// The policy's open choices.
    #[command(flatten)]
    pub policy_options: PolicyOptionArgs,
    /// Seed of the initial weights and the data order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the data order fixed instead of shuffling every epoch.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Intra-op threads per stage.
    #[arg(long, default_value_t = 1)]
    pub threads_per_stage: usize,
    /// Where to compute: `cpu` (burn's Flex backend), `gpu` or `gpu:N` (a GPU through Vulkan;
    /// needs a build with `--features gpu`). All stages of a threaded run share the device.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: ComputeDevice,
    /// Run directory for config.json, metrics.jsonl and checkpoints. It must be empty or new
    /// (see --overwrite) and is locked while the run lasts.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace the previous run in a non-empty --out directory (it is removed before training
    /// starts); refused while another process uses it.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Save the final weights (safetensors, names `layers.<i>.<param>`).
    #[arg(long, value_name = "FILE")]
    pub save_weights: Option<PathBuf>,
    /// Start from these weights (safetensors) instead of the seeded initialisation.
    #[arg(long, value_name = "FILE")]
    pub init_weights: Option<PathBuf>,
    /// Write the measured events of the first epoch as Chrome-trace JSON (open in Perfetto).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Read the configuration from a TOML file (keys = the flag names with `_`, as in a run's
    /// `config.toml`); flags given on the command line override the file.
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// With --out: write a checkpoint every K epochs and after the last (0: never).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub checkpoint_every: u32,
    /// Continue the run in DIR from its last checkpoint (its config.toml is the configuration;
    /// flags override it, e.g. a larger --epochs).
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// How the stages talk: `threads` runs every stage in this process; `mpi` runs one stage
    /// per process under `mpirun -np W` (rank s runs stage s and writes its stage's checkpoint
    /// file, rank 0 prints and writes the other outputs; needs a build with `--features mpi`).
    #[arg(long, value_enum, default_value = "threads")]
    pub transport: TransportArg,
}

/// Checks a `--dataset` value: a built-in name or `text:PATH` with a non-empty path.
pub fn parse_dataset(name: &str) -> Result<String, String> {
    let is_text = name
        .strip_prefix(TEXT_PREFIX)
        .is_some_and(|path| !path.is_empty());
    if is_text || DATASET_NAMES.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "unknown data set; valid: {}, {TEXT_PREFIX}PATH",
            DATASET_NAMES.join(", ")
        ))
    }
}

/// Transports (`--transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// One process, one thread per stage.
    Threads,
    /// One MPI process per stage.
    Mpi,
}

/// What this process trains: every stage, or one stage as an MPI rank.
enum Process {
    AllStages,
    #[cfg(feature = "mpi")]
    Rank(timeprest_mpi::MpiFabric),
}

impl Process {
    /// Starts the transport (for MPI: initialises MPI and learns this process's rank).
    fn start(transport: TransportArg) -> anyhow::Result<Self> {
        match transport {
            TransportArg::Threads => Ok(Process::AllStages),
            #[cfg(feature = "mpi")]
            TransportArg::Mpi => Ok(Process::Rank(timeprest_mpi::MpiFabric::init()?)),
            #[cfg(not(feature = "mpi"))]
            TransportArg::Mpi => Err(usage_error(
                "--transport mpi: this timeprest was built without MPI support (build it with \
                 `cargo build --release --features mpi`)",
            )),
        }
    }

    /// True on the process that prints and writes the outputs.
    fn is_root(&self) -> bool {
        match self {
            Process::AllStages => true,
            #[cfg(feature = "mpi")]
            Process::Rank(fabric) => timeprest_mpi::Fabric::rank(fabric) == 0,
        }
    }

    /// Trains until done or stopped by `stop`; the metrics of every epoch on the root process,
    /// `None` on the others.
    fn train(
        self,
        config: &ValidConfig,
        paths: &RunPaths,
        bars: &Bars,
        stop: &StopRequest,
    ) -> anyhow::Result<Option<Vec<EpochMetrics>>> {
        match self {
            Process::AllStages => match run_until_stopped(config, paths, bars, stop.flag()) {
                Ok(history) => Ok(Some(history)),
                Err(error @ TrainError::Interrupted { .. }) => {
                    Err(stop.interrupted(interrupted_message(&error, paths, None)))
                }
                Err(error) => Err(error.into()),
            },
            #[cfg(feature = "mpi")]
            Process::Rank(fabric) => train_as_rank(fabric, config, paths, bars, stop),
        }
    }
}

/// [`Process::train`] as one MPI rank: every rank trains its stage; a rank that fails prints
/// why and exits here, with [`mpi_exit_code`]'s code (or the signal's, when stopped).
#[cfg(feature = "mpi")]
fn train_as_rank(
    mut fabric: timeprest_mpi::MpiFabric,
    config: &ValidConfig,
    paths: &RunPaths,
    bars: &Bars,
    stop: &StopRequest,
) -> anyhow::Result<Option<Vec<EpochMetrics>>> {
    let is_root = timeprest_mpi::Fabric::rank(&fabric) == 0;
    let run = timeprest_mpi::RankRun {
        config,
        paths,
        progress: bars,
        fault: timeprest_mpi::Fault::from_env()?,
        stop: Some(stop.flag()),
    };
    match timeprest_mpi::train_rank(&mut fabric, &run) {
        Ok(history) => Ok(history),
        Err(error) => {
            // Every rank prints its error *before* leaving MPI: finalising waits
            // for the other ranks, so none exits (and makes mpirun kill the rest)
            // before all have said why they stop. A stop is reported once, by
            // rank 0, as a threaded run reports it.
            let code = match error {
                timeprest_mpi::MpiError::Train(error @ TrainError::Interrupted { .. }) => {
                    if is_root {
                        bars.clear();
                        let mpi_stages = Some(config.pipeline.num_stages);
                        crate::print_stderr_line(&interrupted_message(&error, paths, mpi_stages));
                    }
                    stop.signal().exit_code().into()
                }
                error => {
                    crate::print_stderr_line(&format!("error: {error}"));
                    mpi_exit_code(error)
                }
            };
            drop(fabric);
            std::process::exit(code);
        }
    }
}

/// The line a stopped `train` prints: the interruption (the epoch cut short, the last
/// checkpoint) and how to continue, or why there is nothing to continue from. `mpi_stages` is
/// the number of ranks of an MPI run, which must be continued under `mpirun` too.
fn interrupted_message(error: &TrainError, paths: &RunPaths, mpi_stages: Option<u32>) -> String {
    let last_checkpoint = match error {
        TrainError::Interrupted {
            last_checkpoint, ..
        } => last_checkpoint.as_ref(),
        _ => None,
    };
    let next = match (last_checkpoint, &paths.out_dir, paths.checkpoint_every) {
        (Some(checkpoint), _, _) => {
            let launcher = mpi_stages
                .map(|stages| format!("mpirun -np {stages} "))
                .unwrap_or_default();
            let transport = if mpi_stages.is_some() {
                " --transport mpi"
            } else {
                ""
            };
            format!(
                "; continue with `{launcher}timeprest train{transport} --resume {}`",
                shell_quoted(&checkpoint.run_dir.display().to_string())
            )
        }
        (None, None, _) => " (no --out)".to_string(),
        (None, Some(_), 0) => " (--checkpoint-every 0)".to_string(),
        (None, Some(_), _) => " (none was due yet)".to_string(),
    };
    format!("{error}{next}")
}

impl TrainArgs {
    /// Where the run reads and writes: its directory, checkpoints, weights and trace.
    fn run_paths(&self) -> RunPaths {
        RunPaths {
            out_dir: self.out.clone().or_else(|| self.resume.clone()),
            checkpoint_every: self.checkpoint_every,
            resume: self.resume.is_some(),
            overwrite: self.overwrite,
            init_weights: self.init_weights.clone(),
            save_weights: self.save_weights.clone(),
            trace: self.trace.clone(),
            command: Some(command_line()),
        }
    }

    /// Fills `config` with the recipe of its (final) model, optimizer and epochs, which a file
    /// or a `compare` override may have changed, for every recipe key that neither a flag nor
    /// `set_elsewhere` (the keys the file or the overrides set) chose; returns those keys.
    pub fn fill_recipe(
        &self,
        config: &mut TrainConfig,
        set_elsewhere: &[&str],
    ) -> Vec<&'static str> {
        Recipe::fill(config, |key| {
            self.given.contains(key) || set_elsewhere.contains(&key)
        })
    }

    /// The configuration these flags describe.
    pub fn config(&self) -> TrainConfig {
        let schedule = self
            .schedule
            .unwrap_or_else(|| self.policy.default_schedule());
        // One micro-batch for whole-mini-batch 1F1B and for the one-device reference (no
        // pipeline to fill); TiMePReSt's main setting, 3, elsewhere.
        let one_unit = schedule == ScheduleKind::OneFOneB || self.policy == PolicyKind::Single;
        let default_microbatches = if one_unit { 1 } else { 3 };
        let default_stages = if self.policy == PolicyKind::Single {
            1
        } else {
            3
        };
        let recipe = Recipe::for_model(&self.model, self.optimizer, self.epochs);
        let mut config = TrainConfig {
            model: ModelSettings {
                name: self.model.clone(),
                hidden: self.size.hidden.clone(),
                width: self.size.width,
                depth: self.size.depth.clone(),
                embed_dim: self.size.embed_dim,
                heads: self.size.heads,
            },
            data: DataSettings {
                dataset: self.dataset.clone(),
                data_dir: self.data_dir.clone(),
                limit_train: self.limit_train,
                limit_test: self.limit_test,
                seq_len: self.seq_len,
                shuffle: !self.no_shuffle,
                augment: self.augment,
            },
            pipeline: PipelineSettings {
                num_stages: self.stages.unwrap_or(default_stages),
                num_microbatches: self.microbatches.unwrap_or(default_microbatches),
                policy: self.policy,
                schedule: self.schedule,
                backward_slots: self.backward_slots,
                partition: self.partition,
                split: self.split.clone(),
                grad_mode: self.grad_mode,
                recompute_activations: self.recompute_activations,
                ..PipelineSettings::default()
            },
            optimisation: OptimisationSettings {
                batch_size: self.batch_size,
                epochs: self.epochs,
                optimizer: self.optimizer,
                lr: self.lr.unwrap_or(recipe.lr),
                momentum: self.momentum,
                nesterov: self.nesterov,
                weight_decay: self.weight_decay.unwrap_or(recipe.weight_decay),
                lr_schedule: self.lr_schedule.unwrap_or(recipe.lr_schedule),
                warmup_epochs: self.warmup_epochs.unwrap_or(recipe.warmup_epochs),
                lr_step_epochs: self.lr_step_epochs,
                lr_gamma: self.lr_gamma,
                lr_milestones: self.lr_milestones.clone(),
            },
            run: RunSettings {
                seed: self.seed,
                threads_per_stage: self.threads_per_stage,
                device: self.device,
                ..RunSettings::default()
            },
        };
        self.policy_options.apply(&mut config.pipeline);
        config
    }
}

/// Progress bars on stderr: one for epochs, one for the mini-batches of the current epoch.
struct Bars {
    epochs: ProgressBar,
    batches: ProgressBar,
    /// Whether the model is a language model, whose summaries add the test perplexity (and
    /// whose loss and accuracy are per token).
    language_model: bool,
}

impl Bars {
    /// The bars of a run of `config`, drawn when `visible`; the batch bar's rate counts what a
    /// mini-batch holds (its samples, or its tokens for a language model).
    fn new(config: &TrainConfig, visible: bool) -> Self {
        let num_epochs = config.optimisation.epochs;
        let language_model = config.model.is_language_model();
        let minibatch = StepUnits::minibatch(config);
        if !visible {
            return Self {
                epochs: ProgressBar::hidden(),
                batches: ProgressBar::hidden(),
                language_model,
            };
        }
        let multi = MultiProgress::new();
        let epochs = multi.add(ProgressBar::new(u64::from(num_epochs)));
        epochs.set_style(bar_style(
            "epoch {pos}/{len} [{bar:30}] {elapsed_precise} {msg}",
            minibatch,
        ));
        let batches = multi.add(ProgressBar::new(0));
        batches.set_style(bar_style(
            "batch {pos}/{len} [{bar:30}] {rate} eta {time_left}",
            minibatch,
        ));
        Self {
            epochs,
            batches,
            language_model,
        }
    }
}

impl Bars {
    /// Removes the bars from the screen.
    fn clear(&self) {
        self.epochs.finish_and_clear();
        self.batches.finish_and_clear();
    }
}

impl Progress for Bars {
    fn epoch_started(&self, _epoch: u32, num_minibatches: u64) {
        // A fresh start per epoch: the rate and time left average this epoch's steps only.
        self.batches.reset();
        self.batches.set_length(num_minibatches);
    }

    fn advanced(&self, done: u64) {
        self.batches.set_position(done);
    }

    fn epoch_finished(&self, m: &EpochMetrics) {
        self.epochs.inc(1);
        self.epochs
            .set_message(format!("test acc {:.2}%", 100.0 * m.test_accuracy));
        let line = epoch_line(m, self.language_model);
        // Suspend the bars so the summary line lands on stdout cleanly above them.
        self.epochs.suspend(|| println!("{line}"));
    }
}

/// The configuration of this run: flag defaults, overridden by the `--config` file (or the
/// `config.toml` of the `--resume` directory), overridden by the flags given on the command
/// line; then the model's recipe for the keys none of them set. Also returns those keys, which
/// the start-up line calls defaults. Every message names the file and, for a bad value, its key.
fn effective_config(args: &TrainArgs) -> anyhow::Result<(TrainConfig, Vec<&'static str>)> {
    let mut config = args.config();
    let in_file = merge_config_file(args, &mut config)?;
    let in_file: Vec<&str> = in_file.iter().map(String::as_str).collect();
    let from_recipe = args.fill_recipe(&mut config, &in_file);
    Ok((config, from_recipe))
}

/// Sets every key of the `--config` file (or of the `config.toml` of the `--resume`
/// directory) in `config`, except those whose flag was given; returns the file's keys (none
/// without a file).
fn merge_config_file(args: &TrainArgs, config: &mut TrainConfig) -> anyhow::Result<Vec<String>> {
    if let Some(dir) = &args.resume {
        check_run_dir(dir)?;
    }
    let (path, origin) = match (&args.config_file, &args.resume) {
        (Some(file), _) => (file.clone(), format!("--config {}", file.display())),
        (None, Some(dir)) => (
            dir.join("config.toml"),
            format!("--resume {}: config.toml", dir.display()),
        ),
        (None, None) => return Ok(Vec::new()),
    };
    let file_error = |what: String| usage_error(format!("{origin}: {what}"));
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(e.to_string()))?;
    let file: toml::Table = toml::from_str(&text).map_err(|e| file_error(e.to_string()))?;
    let in_file: Vec<String> = file.keys().cloned().collect();
    for (key, value) in file {
        // Every key is its flag's clap id, but for `shuffle`, whose flag is `--no-shuffle`.
        let flag = if key == "shuffle" { "no_shuffle" } else { &key };
        if args.given.contains(flag) && TrainConfig::KEYS.contains(&key.as_str()) {
            continue;
        }
        // A float key's own type would take them, and validation would then name the flag.
        if let toml::Value::Float(number) = value
            && !number.is_finite()
        {
            return Err(file_error(format!(
                "key `{key}`: must be a finite number, got {number}"
            )));
        }
        config
            .set(&key, value)
            .map_err(|e| file_error(e.to_string()))?;
    }
    Ok(in_file)
}

/// The exit code of a rank that failed with `error`: 2 for the user's mistakes that this rank
/// found itself (a usage error of the run, ranks started with different flags or in another
/// number than the stages), 1 otherwise. A rank stopped by another rank's failure cannot tell
/// what kind it was (the abort carries its message only) and exits 1.
#[cfg(feature = "mpi")]
fn mpi_exit_code(error: timeprest_mpi::MpiError) -> i32 {
    use timeprest_mpi::MpiError;
    let usage = match error {
        MpiError::ConfigMismatch { .. } | MpiError::WorldSize { .. } => true,
        MpiError::Train(error) => crate::is_usage_error(&error.into()),
        _ => false,
    };
    if usage { 2 } else { 1 }
}

/// The start-up line that says how the run optimises: optimizer, learning rate and its
/// schedule, weight decay, and which of them (`from_recipe`, keys of [`Recipe::KEYS`]) are the
/// model's default recipe because no flag or file set them.
fn recipe_line(config: &TrainConfig, from_recipe: &[&str]) -> String {
    let o = &config.optimisation;
    let schedule = match o.lr_schedule {
        LrScheduleChoice::Constant => "constant".to_owned(),
        LrScheduleChoice::Step => format!("× {} every {} epochs", o.lr_gamma, o.lr_step_epochs),
        LrScheduleChoice::Multistep => {
            let epochs: Vec<String> = o.lr_milestones.iter().map(u32::to_string).collect();
            format!("× {} after epochs {}", o.lr_gamma, epochs.join(", "))
        }
        LrScheduleChoice::Warmup => format!("{} warm-up epochs, then constant", o.warmup_epochs),
        LrScheduleChoice::Cosine => format!("{} warm-up epochs, then cosine", o.warmup_epochs),
    };
    let momentum = match o.optimizer {
        OptimizerChoice::Sgd => format!(", momentum {}", o.momentum),
        OptimizerChoice::Adam => String::new(),
    };
    let origin = match from_recipe.len() {
        0 => String::new(),
        n if n == Recipe::KEYS.len() => format!(" ({}'s default recipe)", config.model.name),
        _ => format!(
            " ({}: {}'s default)",
            from_recipe.join(", "),
            config.model.name
        ),
    };
    format!(
        "optimizer {}, lr {} ({schedule}){momentum}, weight decay {}{origin}",
        o.optimizer
            .to_possible_value()
            .expect("every optimizer has a flag value")
            .get_name(),
        o.lr,
        o.weight_decay
    )
}

/// The flags (by clap id, e.g. `checkpoint_every`) given on the command line rather than left
/// at their defaults: they win over a `--config` file.
#[derive(Clone, Debug, Default)]
pub struct GivenFlags(std::collections::BTreeSet<String>);

impl GivenFlags {
    /// The flags `matches` (of the `train` arguments) took from the command line.
    pub fn of(matches: &clap::ArgMatches) -> Self {
        Self(
            matches
                .ids()
                .filter(|id| {
                    matches.value_source(id.as_str())
                        == Some(clap::parser::ValueSource::CommandLine)
                })
                .map(|id| id.as_str().to_owned())
                .collect(),
        )
    }

    /// Whether the flag with clap id `id` was given.
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains(id)
    }
}

/// Refuses `--checkpoint-every K` (K > 0) without a run directory. An error rather than a
/// warning: the user asked for checkpoints to resume from and would find none after a long
/// run, while refusing costs nothing before training starts.
fn check_checkpoint_flags(args: &TrainArgs) -> anyhow::Result<()> {
    if args.out.is_none()
        && args.resume.is_none()
        && args.checkpoint_every > 0
        && args.given.contains("checkpoint_every")
    {
        return Err(usage_error(
            "--checkpoint-every: checkpoints are written into the run directory, and there is \
             none; add --out DIR, or leave out --checkpoint-every",
        ));
    }
    Ok(())
}

/// Checks that `dir` (of `--resume`) is a run directory: one holding the `config.toml` that
/// `timeprest train --out DIR` writes before its first epoch.
fn check_run_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let problem = if !dir.exists() {
        "no such directory"
    } else if !dir.is_dir() {
        "not a directory"
    } else if !dir.join("config.toml").is_file() {
        "not a run directory: it has no config.toml (a run directory is what `timeprest train \
         --out DIR` writes)"
    } else {
        return Ok(());
    };
    Err(usage_error(format!(
        "--resume {}: {problem}",
        dir.display()
    )))
}

/// Runs `timeprest train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    check_checkpoint_flags(&args)?;
    let (config, from_recipe) = effective_config(&args)?;
    let config = config.validate()?;
    let process = Process::start(args.transport)?;
    let visible = !args.quiet && std::io::stderr().is_terminal() && process.is_root();
    let bars = Bars::new(&config, visible);
    let paths = args.run_paths();
    if process.is_root() {
        eprintln!("{}", config.headline());
        eprintln!("{}", recipe_line(&config, &from_recipe));
        for warning in config.warnings() {
            eprintln!("warning: {warning}");
        }
    }
    let stop = StopRequest::install()?;
    let outcome = process.train(&config, &paths, &bars, &stop);
    bars.clear();
    // Ranks other than MPI rank 0 have no history to report.
    let history = outcome?.unwrap_or_default();
    if let Some(last) = history.last() {
        let seconds = history.iter().map(|m| m.epoch_seconds).sum();
        println!("{}", final_line(&config, last, seconds));
        println!("{}", stage_line(&last.stages));
    }
    Ok(())
}

/// The line after the last epoch: the final test accuracy (and perplexity of a language
/// model), after how many epochs and how many seconds of pipelined training in this process.
fn final_line(config: &TrainConfig, last: &EpochMetrics, history_seconds: f64) -> String {
    let per_token = if config.model.is_language_model() {
        format!(" per token ({})", perplexity(last.test_loss))
    } else {
        String::new()
    };
    format!(
        "final: test accuracy {:.2}%{per_token} after {} epochs ({history_seconds:.1}s of \
         pipelined training)",
        100.0 * last.test_accuracy,
        last.epoch,
    )
}
