//! `timeprest compare`: every policy × seed on the same model, data order and seeds, then
//! `report.md` and the plots.
//!
//! The training flags are `train`'s own ([`TrainArgs`], flattened), so a comparison accepts
//! exactly what a single run accepts; the flags `compare` sets per run itself (`--policy`,
//! `--seed`, `--trace`, ...) are hidden and rejected when given, instead of being silently
//! overridden. Runs are sequential (each already uses one thread per stage, and timings of
//! concurrent runs would not be comparable), seed-major so that an interrupted comparison has
//! every policy for its first seeds. A diverged run is recorded and the comparison goes on; the
//! manifest is rewritten after every run. All reporting lives in `timeprest-report`, which
//! `timeprest plot` calls too.
//!
//! Ctrl-C or SIGTERM stops the run in progress as it stops `train` (at the next safe point, its
//! last checkpoint kept) and leaves the manifest saying which runs finished. `compare --resume
//! DIR` then continues: it reads the manifest (variants, seeds, configurations, checkpoint
//! frequency, initial weights), skips the runs that completed or diverged, continues a run that
//! did not finish from its checkpoint (or, without one, removes what it left and runs it
//! again), runs the missing ones, and rewrites the report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use indicatif::ProgressBar;
use serde_json::Value;
use timeprest_policy::PolicyKind;
use timeprest_report::record::{RUNS_DIR, TRACE_FILE};
use timeprest_report::{Manifest, Outcome, RunEntry, Variant, predict, run_dir_name};
use timeprest_train::checkpoint;
use timeprest_train::{
    DirUse, EpochMetrics, Progress, RunPaths, TrainConfig, TrainError, claim_run_dir, command_line,
    run_until_stopped, shell_quoted,
};

use crate::display::{StepUnits, bar_style};
use crate::interrupt::StopRequest;
use crate::train::TrainArgs;
use crate::usage_error;

/// The seed systems and their main baseline, in the order the papers present them.
const DEFAULT_POLICIES: &str = "pipedream,timeprest,v-timeprest,i-timeprest,nwpt,gpipe";

/// A policy to compare, with optional per-policy overrides (`pipedream:lr=0.01:momentum=0`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct VariantSpec {
    /// The text as given; names the variant in the report and its run directories.
    label: String,
    policy: PolicyKind,
    /// (configuration key, value as given) pairs, applied to the training flags' configuration.
    overrides: Vec<(String, String)>,
}

/// Parses `NAME[:KEY=VALUE]...`; KEY is a configuration key (a `config.toml` key, `-` or `_`),
/// VALUE JSON or a bare word, read as the key's own type when the comparison starts.
fn parse_variant(text: &str) -> Result<VariantSpec, String> {
    let mut parts = text.split(':');
    let policy = parts
        .next()
        .unwrap_or_default()
        .parse::<PolicyKind>()
        .map_err(|e| e.to_string())?;
    let overrides = parts
        .map(|part| {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not KEY=VALUE (e.g. lr=0.01)"))?;
            let key = key.trim().replace('-', "_");
            if key == "policy" || key == "seed" {
                return Err(format!(
                    "`{key}` is set by --policies/--seeds, not per policy"
                ));
            }
            if !TrainConfig::KEYS.contains(&key.as_str()) {
                let known: Vec<&str> = (TrainConfig::KEYS.iter().copied())
                    .filter(|k| !matches!(*k, "policy" | "seed"))
                    .collect();
                return Err(format!("unknown key `{key}`; keys: {}", known.join(", ")));
            }
            Ok((key, value.trim().to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok(VariantSpec {
        label: text.to_string(),
        policy,
        overrides,
    })
}

/// Parses a target accuracy: a fraction in [0, 1] or a percentage (`90%`).
fn parse_accuracy(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.strip_suffix('%') {
        Some(number) => (number, 0.01),
        None => (text, 1.0),
    };
    match number.trim().parse::<f64>().map(|v| v * scale) {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!(
            "expected a fraction in [0, 1] or a percentage like 90%, got `{text}`"
        )),
    }
}

/// The flags of `timeprest compare`, as clap derives them.
#[derive(Args, Debug)]
pub(crate) struct CompareFlags {
    /// Policies to compare, comma-separated. `NAME:KEY=VALUE...` changes configuration keys
    /// (config.toml keys) for that policy only, e.g. `pipedream:lr=0.01:momentum=0`. Changing
    /// `schedule` keeps N unless `microbatches` is changed too.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_POLICIES, value_parser = parse_variant)]
    policies: Vec<VariantSpec>,
    /// Seeds, comma-separated; each policy runs once per seed, and a seed fixes the initial
    /// weights and the data order (the same for every policy).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// Test accuracy whose epochs and time to reach the report compares: a fraction (0.9) or a
    /// percentage (90%) [default: 90% of the best mean final accuracy].
    #[arg(long, value_name = "A", value_parser = parse_accuracy)]
    target_accuracy: Option<f64>,
    /// The training flags, shared by every run.
    #[command(flatten)]
    train: TrainArgs,
}

/// `train` flags that `compare` sets per run itself: giving one is a usage error.
const PER_RUN_FLAGS: [(&str, &str); 6] = [
    (
        "policy",
        "--policy: compare runs every policy of --policies",
    ),
    ("seed", "--seed: compare runs every seed of --seeds"),
    (
        "trace",
        "--trace: compare writes runs/<policy>-seed<k>/trace.json for the first seed",
    ),
    (
        "save_weights",
        "--save-weights: compare does not save weights; train the policy you want to keep",
    ),
    (
        "config_file",
        "--config: compare does not read config files yet; give the flags",
    ),
    (
        "transport",
        "--transport: compare runs every stage in this process (threads)",
    ),
];

/// The arguments of `timeprest compare`: [`CompareFlags`] with the per-run `train` flags hidden
/// and rejected, and `--out` required unless `--resume` is given.
#[derive(Debug)]
pub(crate) struct CompareArgs(CompareFlags);

/// The flags `compare --resume DIR` accepts besides `--resume`: everything else comes from
/// `DIR/comparison.json`.
const RESUME_FLAGS: [&str; 2] = ["resume", "quiet"];

impl FromArgMatches for CompareArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = |id: &str| {
            matches.ids().any(|known| known.as_str() == id)
                && matches.value_source(id) == Some(ValueSource::CommandLine)
        };
        for (id, message) in PER_RUN_FLAGS {
            if given(id) {
                return Err(clap::Error::raw(
                    ErrorKind::ArgumentConflict,
                    format!("{message}\n"),
                ));
            }
        }
        if given("resume") {
            let command = CompareFlags::augment_args(clap::Command::new("compare"));
            let extra = command.get_arguments().find(|arg| {
                let id = arg.get_id().as_str();
                !RESUME_FLAGS.contains(&id) && given(id)
            });
            if let Some(arg) = extra {
                return Err(clap::Error::raw(
                    ErrorKind::ArgumentConflict,
                    format!(
                        "--resume: a comparison continues with the settings in its \
                         comparison.json; give no other flag than --quiet (--{} was given)\n",
                        arg.get_long().unwrap_or(arg.get_id().as_str())
                    ),
                ));
            }
        }
        CompareFlags::from_arg_matches(matches).map(Self)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
}

impl Args for CompareArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        adjust(CompareFlags::augment_args(command))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        adjust(CompareFlags::augment_args_for_update(command))
    }
}

fn adjust(command: clap::Command) -> clap::Command {
    let command = PER_RUN_FLAGS.iter().fold(command, |command, (id, _)| {
        if command.get_arguments().any(|arg| arg.get_id() == id) {
            command.mut_arg(*id, |arg| arg.hide(true))
        } else {
            command
        }
    });
    command
        .mut_arg("out", |arg| {
            arg.required_unless_present("resume").help(
                "Comparison directory: runs/, plots/, comparison.json and report.md. It must be \
                 empty or new (see --overwrite) and is locked while the comparison lasts",
            )
        })
        .mut_arg("resume", |arg| {
            arg.help(
                "Continue the comparison in DIR (after Ctrl-C, SIGTERM or a crash): run the runs \
                 that are missing or did not finish, each from its last checkpoint when it has \
                 one, then rewrite the report",
            )
        })
}

/// The configuration of `spec`: the training flags with its policy (and N defaulting to that
/// policy's schedule, as in `train`), then its overrides, each read as its key's type.
fn variant_config(train: &mut TrainArgs, spec: &VariantSpec) -> anyhow::Result<TrainConfig> {
    train.policy = spec.policy;
    let mut config = train.config();
    let bad = |e: &dyn std::fmt::Display| usage_error(format!("--policies {}: {e}", spec.label));
    for (key, text) in &spec.overrides {
        // The text as JSON (numbers, booleans, lists), else as a bare word.
        let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()));
        config.set(key, value).map_err(|e| bad(&e))?;
    }
    config.clone().validate().map_err(|e| bad(&e))?;
    Ok(config)
}

/// One progress bar over every epoch of the comparison; its message names the current run.
struct RunProgress<'a> {
    bar: &'a ProgressBar,
    run: String,
    epochs: u32,
    /// Epochs of the comparison's runs before this one.
    base: u64,
    minibatches: AtomicU64,
    epoch: AtomicU64,
}

impl RunProgress<'_> {
    fn show(&self, done: u64) {
        self.bar.set_message(format!(
            "{}: epoch {}/{} batch {done}/{}",
            self.run,
            self.epoch.load(Ordering::Relaxed),
            self.epochs,
            self.minibatches.load(Ordering::Relaxed)
        ));
    }
}

impl Progress for RunProgress<'_> {
    fn epoch_started(&self, epoch: u32, num_minibatches: u64) {
        // A run continued from a checkpoint starts after its first epochs.
        self.bar.set_position(self.base + u64::from(epoch) - 1);
        self.epoch.store(u64::from(epoch), Ordering::Relaxed);
        self.minibatches.store(num_minibatches, Ordering::Relaxed);
        self.show(0);
    }

    fn advanced(&self, done: u64) {
        self.show(done);
    }

    fn epoch_finished(&self, _metrics: &EpochMetrics) {
        self.bar.inc(1);
    }
}

fn progress_bar(total_epochs: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total_epochs);
    let epoch = StepUnits {
        per_step: 1.0,
        rate_unit: "epochs/s",
    };
    bar.set_style(bar_style(
        "{pos}/{len} epochs [{bar:30}] {elapsed_precise} eta {time_left} {msg}",
        epoch,
    ));
    bar
}

/// Checks that no label or seed appears twice (their run directories would collide).
fn check_unique(args: &CompareFlags) -> anyhow::Result<()> {
    for (index, spec) in args.policies.iter().enumerate() {
        if args.policies[..index].iter().any(|s| s.label == spec.label) {
            return Err(usage_error(format!(
                "--policies: `{}` is listed twice",
                spec.label
            )));
        }
    }
    for (index, seed) in args.seeds.iter().enumerate() {
        if args.seeds[..index].contains(seed) {
            return Err(usage_error(format!("--seeds: {seed} is listed twice")));
        }
    }
    Ok(())
}

/// Runs `timeprest compare`.
pub(crate) fn run(args: CompareArgs) -> anyhow::Result<()> {
    let CompareArgs(mut args) = args;
    if let Some(dir) = args.train.resume.clone() {
        return resume(&dir, args.train.quiet);
    }
    check_unique(&args)?;
    let out: PathBuf = args.train.out.clone().expect("clap requires --out");
    // Every configuration is checked before anything is predicted, trained or written.
    let configs = args
        .policies
        .iter()
        .map(|spec| variant_config(&mut args.train, spec))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let variants = args
        .policies
        .iter()
        .zip(configs)
        .map(|(spec, config)| {
            let prediction =
                predict(&spec.label, &config).map_err(|e| usage_error(e.to_string()))?;
            Ok(Variant {
                label: spec.label.clone(),
                config,
                prediction: Some(prediction),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Checked and locked like a run directory: refused when not empty (unless --overwrite) or
    // in use; the runs inside are then made by this process.
    let _comparison_dir = claim_run_dir(
        &out,
        "--out",
        DirUse::New {
            overwrite: args.train.overwrite,
        },
    )?;
    let mut manifest = Manifest {
        command: command_line(),
        target_accuracy: args.target_accuracy,
        seeds: args.seeds.clone(),
        variants,
        runs: Vec::new(),
        checkpoint_every: args.train.checkpoint_every,
        // Absolute, so that `compare --resume` finds it from any directory.
        init_weights: (args.train.init_weights.clone())
            .map(|path| std::fs::canonicalize(&path).unwrap_or(path)),
    };
    manifest.save(&out)?;
    eprintln!(
        "comparing {} policies × {} seeds ({} runs) into {}",
        manifest.variants.len(),
        args.seeds.len(),
        manifest.variants.len() * args.seeds.len(),
        out.display()
    );
    run_unfinished(&out, &mut manifest, args.train.quiet)
}

/// `timeprest compare --resume DIR`: the comparison in `dir` as its manifest describes it
/// (variants, seeds, configurations, checkpoint frequency, initial weights), running only the
/// runs that are missing or did not finish.
fn resume(dir: &Path, quiet: bool) -> anyhow::Result<()> {
    let flag_error = |what: String| usage_error(format!("--resume {}: {what}", dir.display()));
    if !dir.join(timeprest_report::record::MANIFEST_FILE).is_file() {
        return Err(flag_error(format!(
            "not a comparison directory (it has no {}); start one with `timeprest compare --out \
             DIR`",
            timeprest_report::record::MANIFEST_FILE
        )));
    }
    // Locked like a resumed run: a comparison still running there is named and refused.
    let _comparison_dir = claim_run_dir(dir, "--resume", DirUse::Resume)?;
    let mut manifest = Manifest::load(dir).map_err(|e| flag_error(e.to_string()))?;
    let planned = manifest.variants.len() * manifest.seeds.len();
    let finished = (manifest.runs.iter())
        .filter(|entry| entry.outcome != Outcome::Incomplete)
        .count();
    eprintln!(
        "continuing the comparison in {}: {} of {planned} runs to run",
        dir.display(),
        planned - finished
    );
    run_unfinished(dir, &mut manifest, quiet)
}

/// How a run of the comparison starts.
enum Start {
    /// It has finished (completed or diverged): skip it.
    Finished,
    /// The manifest says it did not finish, but its checkpoint holds every epoch (it was
    /// finished with `timeprest train --resume`): record it as completed.
    CompleteOnDisk,
    /// From the beginning.
    Afresh,
    /// From the checkpoint in its run directory.
    FromCheckpoint,
}

/// How the run of `label` with `seed` and `epochs` epochs, whose directory is `run_dir`,
/// starts: a run the manifest does not list has not started; a run that did not finish
/// continues from its checkpoint, or starts afresh when it has none.
fn run_start(manifest: &Manifest, label: &str, seed: u64, epochs: u32, run_dir: &Path) -> Start {
    let entry = (manifest.runs.iter()).find(|entry| entry.label == label && entry.seed == seed);
    match entry.map(|entry| &entry.outcome) {
        None => Start::Afresh,
        Some(Outcome::Completed | Outcome::Diverged { .. }) => Start::Finished,
        Some(Outcome::Incomplete) => match checkpoint::find(run_dir) {
            Err(_) => Start::Afresh,
            Ok(dir) if checkpointed_epochs(&dir).is_some_and(|done| done >= epochs) => {
                Start::CompleteOnDisk
            }
            // An unreadable checkpoint is reported by the resume itself.
            Ok(_) => Start::FromCheckpoint,
        },
    }
}

/// The epochs the checkpoint directory `dir` holds, if its `state.json` is readable.
fn checkpointed_epochs(dir: &Path) -> Option<u32> {
    let text = std::fs::read(dir.join("state.json")).ok()?;
    let state: checkpoint::CheckpointState = serde_json::from_slice(&text).ok()?;
    Some(state.epoch)
}

/// Runs every run of `manifest` that is missing or did not finish, seed-major, saving the
/// manifest before and after each, then writes the report. Ctrl-C or SIGTERM stops the run in
/// progress as `train` stops (its checkpoint kept, the manifest left saying it did not finish)
/// and ends the command with the interrupted message.
fn run_unfinished(out: &Path, manifest: &mut Manifest, quiet: bool) -> anyhow::Result<()> {
    let stop = StopRequest::install()?;
    let seeds = manifest.seeds.clone();
    let epochs_per_seed: u64 = (manifest.variants.iter())
        .map(|v| u64::from(v.config.optimisation.epochs))
        .sum();
    let bar = progress_bar(
        epochs_per_seed * seeds.len() as u64,
        !quiet && std::io::stderr().is_terminal(),
    );
    let mut epochs_before = 0;
    for (seed_index, &seed) in seeds.iter().enumerate() {
        for index in 0..manifest.variants.len() {
            let variant = &manifest.variants[index];
            let config = {
                let mut config = variant.config.clone();
                config.run.seed = seed;
                config
            }
            .validate()?;
            let base = epochs_before;
            epochs_before += u64::from(config.optimisation.epochs);
            let label = variant.label.clone();
            let dir = Path::new(RUNS_DIR).join(run_dir_name(&label, seed));
            let run_dir = out.join(&dir);
            let listed = (manifest.runs.iter()).any(|e| e.label == label && e.seed == seed);
            let start = run_start(manifest, &label, seed, config.optimisation.epochs, &run_dir);
            match start {
                Start::Finished => {
                    bar.set_position(epochs_before);
                    continue;
                }
                Start::CompleteOnDisk => {
                    bar.set_position(epochs_before);
                    record_outcome(out, manifest, &label, seed, Outcome::Completed)?;
                    bar.suspend(|| println!("{label} seed {seed}: already complete on disk"));
                    continue;
                }
                Start::FromCheckpoint => {}
                Start::Afresh if listed && run_dir.exists() => {
                    // What an unfinished run without a checkpoint left cannot be continued.
                    bar.suspend(|| {
                        eprintln!(
                            "{label} seed {seed}: no checkpoint to continue from; starting it \
                             again"
                        );
                    });
                    std::fs::remove_dir_all(&run_dir)
                        .map_err(|e| TrainError::output(&run_dir, e))?;
                }
                Start::Afresh => {}
            }
            if !listed {
                manifest.runs.push(RunEntry {
                    label: label.clone(),
                    seed,
                    dir,
                    outcome: Outcome::Incomplete,
                });
                manifest.save(out)?;
            }
            let paths = RunPaths {
                out_dir: Some(run_dir.clone()),
                init_weights: manifest.init_weights.clone(),
                trace: (seed_index == 0).then(|| run_dir.join(TRACE_FILE)),
                checkpoint_every: manifest.checkpoint_every,
                resume: matches!(start, Start::FromCheckpoint),
                ..RunPaths::default()
            };
            let progress = RunProgress {
                bar: &bar,
                run: format!("{label} seed {seed}"),
                epochs: config.optimisation.epochs,
                base,
                minibatches: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
            };
            let result = run_until_stopped(&config, &paths, &progress, stop.flag());
            bar.set_position(epochs_before);
            let (outcome, line) = match result {
                Ok(history) => (Outcome::Completed, finished_line(&progress.run, &history)?),
                Err(error @ TrainError::Diverged { epoch, .. }) => {
                    let message = error.to_string();
                    let line = format!("{}: {message}", progress.run);
                    (Outcome::Diverged { epoch, message }, line)
                }
                Err(error @ TrainError::Interrupted { .. }) => {
                    bar.finish_and_clear();
                    return Err(stop.interrupted(format!(
                        "{}: {error}; continue with `timeprest compare --resume {}`",
                        progress.run,
                        shell_quoted(&out.display().to_string())
                    )));
                }
                Err(error) => return Err(error).context(format!("{} failed", progress.run)),
            };
            record_outcome(out, manifest, &label, seed, outcome)?;
            bar.suspend(|| println!("{line}"));
        }
    }
    bar.finish_and_clear();
    let written = timeprest_report::write_report(out)?;
    println!(
        "wrote {} and {} plots (SVG and PNG) in {}",
        written
            .report
            .as_deref()
            .unwrap_or(&out.join("report.md"))
            .display(),
        written.plots.len(),
        out.join(timeprest_report::PLOTS_DIR).display()
    );
    Ok(())
}

/// Records `outcome` for the run of `label` with `seed` in the manifest of comparison `out`.
fn record_outcome(
    out: &Path,
    manifest: &mut Manifest,
    label: &str,
    seed: u64,
    outcome: Outcome,
) -> anyhow::Result<()> {
    let entry = (manifest.runs.iter_mut())
        .find(|entry| entry.label == label && entry.seed == seed)
        .expect("a run is in the manifest once it started");
    entry.outcome = outcome;
    Ok(manifest.save(out)?)
}

/// The line printed when run `run` completed with `history` (the epochs it ran in this
/// process; a run continued from a checkpoint starts after epoch 1).
fn finished_line(run: &str, history: &[EpochMetrics]) -> anyhow::Result<String> {
    let (Some(first), Some(last)) = (history.first(), history.last()) else {
        anyhow::bail!("{run} completed without running an epoch");
    };
    let time = timeprest_report::seconds(history.iter().map(|m| m.epoch_seconds).sum());
    let since = match first.epoch {
        1 => String::new(),
        epoch => format!(" since epoch {epoch}"),
    };
    Ok(format!(
        "{run}: final test accuracy {:.2}% after {} epochs ({time} s of training{since})",
        100.0 * last.test_accuracy,
        last.epoch,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_with_overrides_keeps_its_label_and_fields() {
        let spec = parse_variant("pipedream:lr=0.01:momentum=0").unwrap();
        assert_eq!(spec.label, "pipedream:lr=0.01:momentum=0");
        assert_eq!(spec.policy, PolicyKind::Pipedream);
        assert_eq!(
            spec.overrides,
            [
                ("lr".to_string(), "0.01".to_string()),
                ("momentum".to_string(), "0".to_string())
            ]
        );
        assert_eq!(
            parse_variant("i-timeprest:grad-mode=recompute")
                .unwrap()
                .overrides[0]
                .0,
            "grad_mode"
        );
    }

    #[test]
    fn unknown_policies_fields_and_malformed_overrides_are_rejected() {
        assert!(
            parse_variant("bogus")
                .unwrap_err()
                .contains("valid policies")
        );
        assert!(
            parse_variant("gpipe:speed=2")
                .unwrap_err()
                .contains("unknown key `speed`")
        );
        assert!(parse_variant("gpipe:lr").unwrap_err().contains("KEY=VALUE"));
        assert!(
            parse_variant("gpipe:seed=3")
                .unwrap_err()
                .contains("--seeds")
        );
    }

    #[test]
    fn target_accuracies_are_fractions_or_percentages() {
        assert_eq!(parse_accuracy("0.9"), Ok(0.9));
        assert!((parse_accuracy("85%").unwrap() - 0.85).abs() < 1e-12);
        assert!(parse_accuracy("90").is_err());
        assert!(parse_accuracy("x").is_err());
    }
}
