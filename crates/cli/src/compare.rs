//! `timeprest compare`: every policy × seed on the same model, data order and seeds, then
//! `report.md` and the plots.
//!
//! The training flags are `train`'s own ([`TrainArgs`], flattened), so a comparison accepts
//! exactly what a single run accepts; the flags `compare` sets per run itself (`--policy`,
//! `--seed`, `--trace`, ...) are hidden and rejected when given, instead of being silently
//! overridden. This file parses the flags into a [`ComparisonPlan`] and shows progress; running
//! the runs, recording them in the manifest and continuing an interrupted comparison
//! (`compare --resume DIR`) is [`timeprest_report::comparison`]'s, and all reporting lives in
//! `timeprest-report`, which `timeprest plot` calls too. Ctrl-C or SIGTERM stops the run in
//! progress as it stops `train` (at the next safe point, its last checkpoint kept).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use indicatif::ProgressBar;
use serde_json::Value;
use timeprest_policy::PolicyKind;
use timeprest_report::{Comparison, ComparisonObserver, ComparisonPlan, ReportError};
use timeprest_train::{EpochMetrics, Progress, TrainConfig, command_line};

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

/// `key` (`-` or `_`) as the configuration key a policy or grid axis may change: any but
/// `policy` and `seed`, which `--policies` and `--seeds` set.
fn per_policy_key(key: &str) -> Result<String, String> {
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
    Ok(key)
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
            Ok((per_policy_key(key)?, value.trim().to_string()))
        })
        .collect::<Result<_, String>>()?;
    Ok(VariantSpec {
        label: text.to_string(),
        policy,
        overrides,
    })
}

/// One setting of `--grid KEY=V1,V2,...`: a configuration key and the values every policy runs
/// with.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GridAxis {
    key: String,
    values: Vec<String>,
}

/// Parses `KEY=V1,V2,...` (at least one value; KEY a configuration key, `-` or `_`).
fn parse_grid(text: &str) -> Result<GridAxis, String> {
    let (key, values) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=V1,V2,... (e.g. lr=0.01,0.02,0.05)"))?;
    let key = per_policy_key(key)?;
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_owned()).collect();
    if values.iter().any(String::is_empty) {
        return Err(format!("`{text}`: an empty value"));
    }
    Ok(GridAxis { key, values })
}

/// Every policy of `policies` once per combination of the `grid` axes' values, labelled
/// `POLICY:KEY=VALUE...` (the policies themselves without a grid).
fn expand_grid(policies: &[VariantSpec], grid: &[GridAxis]) -> Vec<VariantSpec> {
    grid.iter().fold(policies.to_vec(), |specs, axis| {
        specs
            .iter()
            .flat_map(|spec| {
                axis.values.iter().map(move |value| {
                    let mut overrides = spec.overrides.clone();
                    overrides.retain(|(key, _)| *key != axis.key);
                    overrides.push((axis.key.clone(), value.clone()));
                    VariantSpec {
                        label: format!("{}:{}={value}", spec.label, axis.key),
                        policy: spec.policy,
                        overrides,
                    }
                })
            })
            .collect()
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
    /// A grid axis, `KEY=V1,V2,...` (repeatable; axes multiply): every policy runs once per
    /// value, labelled `POLICY:KEY=VALUE`, so the report's table gives each policy × setting
    /// with its spread over seeds, e.g. `--grid lr=0.01,0.02,0.05 --grid grad-mode=graph,recompute`.
    #[arg(long, value_name = "KEY=V1,V2", value_parser = parse_grid)]
    grid: Vec<GridAxis>,
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

impl CompareArgs {
    /// Records the training flags `matches` (of the `compare` arguments) took from the command
    /// line, as `main` does for `train`: they win over the model's recipe.
    pub(crate) fn record_given(&mut self, matches: &ArgMatches) {
        self.0.train.given = crate::train::GivenFlags::of(matches);
    }
}

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
    let overridden: Vec<&str> = spec.overrides.iter().map(|(key, _)| key.as_str()).collect();
    train.fill_recipe(&mut config, &overridden);
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

/// The progress bar and the lines of a running comparison.
struct Terminal {
    bar: ProgressBar,
    visible: bool,
}

impl ComparisonObserver for Terminal {
    fn started(&self, total_epochs: u64) {
        self.bar.set_length(total_epochs);
        if self.visible {
            self.bar.set_style(bar_style(
                "{pos}/{len} epochs [{bar:30}] {elapsed_precise} eta {time_left} {msg}",
                StepUnits {
                    per_step: 1.0,
                    rate_unit: "epochs/s",
                },
            ));
        }
    }

    fn run_progress<'a>(
        &'a self,
        run: &str,
        epochs: u32,
        epochs_before: u64,
    ) -> Box<dyn Progress + 'a> {
        Box::new(RunProgress {
            bar: &self.bar,
            run: run.to_owned(),
            epochs,
            base: epochs_before,
            minibatches: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
        })
    }

    fn reached(&self, epochs_done: u64) {
        self.bar.set_position(epochs_done);
    }

    fn line(&self, text: &str) {
        self.bar.suspend(|| println!("{text}"));
    }
}

/// A comparison error as `main` reports it: a value the user can fix is a usage error (exit
/// code 2), a stop request ends with the signal's code, and a run's own error keeps its type.
fn cli_error(error: ReportError, stop: Option<&StopRequest>) -> anyhow::Error {
    match error {
        ReportError::Invalid { .. } | ReportError::Prediction { .. } => {
            usage_error(error.to_string())
        }
        ReportError::Output(error) => error.into(),
        ReportError::Interrupted { .. } => match stop {
            Some(stop) => stop.interrupted(error.to_string()),
            None => error.into(),
        },
        ReportError::RunFailed { run, source } => {
            anyhow::Error::from(*source).context(format!("{run} failed"))
        }
        other => other.into(),
    }
}

/// Runs `timeprest compare`.
pub(crate) fn run(args: CompareArgs) -> anyhow::Result<()> {
    let CompareArgs(mut args) = args;
    let mut comparison = match args.train.resume.clone() {
        Some(dir) => {
            let comparison = Comparison::resume(&dir).map_err(|e| cli_error(e, None))?;
            let planned = comparison.manifest().variants.len() * comparison.manifest().seeds.len();
            eprintln!(
                "continuing the comparison in {}: {} of {planned} runs to run",
                dir.display(),
                comparison.runs_left()
            );
            comparison
        }
        None => {
            let out: PathBuf = args.train.out.clone().expect("clap requires --out");
            // Every configuration is checked before anything is predicted, trained or written.
            let variants = (expand_grid(&args.policies, &args.grid).iter())
                .map(|spec| Ok((spec.label.clone(), variant_config(&mut args.train, spec)?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let plan = ComparisonPlan {
                command: command_line(),
                variants,
                seeds: args.seeds.clone(),
                target_accuracy: args.target_accuracy,
                checkpoint_every: args.train.checkpoint_every,
                init_weights: args.train.init_weights.clone(),
            };
            let comparison = Comparison::start(&out, plan, args.train.overwrite)
                .map_err(|e| cli_error(e, None))?;
            let manifest = comparison.manifest();
            eprintln!(
                "comparing {} policies × {} seeds ({} runs) into {}",
                manifest.variants.len(),
                manifest.seeds.len(),
                manifest.variants.len() * manifest.seeds.len(),
                out.display()
            );
            comparison
        }
    };
    let stop = StopRequest::install()?;
    let visible = !args.train.quiet && std::io::stderr().is_terminal();
    let terminal = Terminal {
        bar: if visible {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        },
        visible,
    };
    let result = comparison.run(&terminal, stop.flag());
    terminal.bar.finish_and_clear();
    let written = result.map_err(|e| cli_error(e, Some(&stop)))?;
    let out = args
        .train
        .out
        .or(args.train.resume)
        .expect("clap requires one");
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
    fn a_grid_runs_every_policy_once_per_combination_of_values() {
        let policies = [
            parse_variant("gpipe").unwrap(),
            parse_variant("pipedream:momentum=0").unwrap(),
        ];
        let grid = [
            parse_grid("lr=0.01,0.05").unwrap(),
            parse_grid("grad-mode=graph,recompute").unwrap(),
        ];
        let specs = expand_grid(&policies, &grid);
        let labels: Vec<&str> = specs.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "gpipe:lr=0.01:grad_mode=graph",
                "gpipe:lr=0.01:grad_mode=recompute",
                "gpipe:lr=0.05:grad_mode=graph",
                "gpipe:lr=0.05:grad_mode=recompute",
                "pipedream:momentum=0:lr=0.01:grad_mode=graph",
                "pipedream:momentum=0:lr=0.01:grad_mode=recompute",
                "pipedream:momentum=0:lr=0.05:grad_mode=graph",
                "pipedream:momentum=0:lr=0.05:grad_mode=recompute",
            ]
        );
        assert_eq!(
            specs[7].overrides,
            [
                ("momentum".to_string(), "0".to_string()),
                ("lr".to_string(), "0.05".to_string()),
                ("grad_mode".to_string(), "recompute".to_string())
            ]
        );
        assert!(parse_grid("speed=1,2").unwrap_err().contains("unknown key"));
        assert!(parse_grid("lr").unwrap_err().contains("KEY=V1,V2"));
        assert!(parse_grid("lr=0.1,,0.2").unwrap_err().contains("empty"));
        assert!(parse_grid("seed=1,2").unwrap_err().contains("--seeds"));
    }

    #[test]
    fn target_accuracies_are_fractions_or_percentages() {
        assert_eq!(parse_accuracy("0.9"), Ok(0.9));
        assert!((parse_accuracy("85%").unwrap() - 0.85).abs() < 1e-12);
        assert!(parse_accuracy("90").is_err());
        assert!(parse_accuracy("x").is_err());
    }
}
