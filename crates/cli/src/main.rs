//! The `timeprest` command line: `train`, `simulate` and `analyze`.
//!
//! This file only parses the command line and turns failures into exit codes; each subcommand
//! lives in its own module. Error contract: a mistake on the command line prints exactly one
//! line `error: …` on stderr (naming the flag or value and what would be accepted) and exits
//! with code 2 ([`is_usage_error`]); any other failure prints `error: …` and exits with code 1.
//! Nothing panics on user input, and a panic (a bug) prints one `error: internal error …` line,
//! never a backtrace. A `train` or `compare` stopped by Ctrl-C or SIGTERM is not an error: it
//! prints what was saved and how to continue, and exits with 130 or 143 ([`interrupt`]).
//!
//! Running `timeprest` with no subcommand runs `train` with its default arguments. The defaults
//! are obtained by letting clap parse an empty `train` command line ([`default_train_args`]),
//! so they always come from the `#[arg(default_value…)]` attributes of [`train::TrainArgs`],
//! however many fields it grows, and never from a second, hand-written copy (a `Default` impl
//! could drift from the attributes).

mod analyze;
mod compare;
mod display;
mod interrupt;
mod partition;
mod plot;
mod policy_options;
mod simulate;
mod table;
mod train;

use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// What `timeprest --help` says before the list of subcommands.
const LONG_ABOUT: &str = "\
Pipeline-parallel DNN training where the weight version each pass reads is first-class.

A pipeline splits a model into W stages and keeps several mini-batches (each cut into N \
micro-batches) in flight, so the forward and the backward of one mini-batch may read different \
versions of a stage's weights. timeprest separates the two choices that decide this: the \
*schedule* (naive, gpipe, 1f1b, 1f1b-flush, nf1b, nf1b-streamed, 1f1b-2bw: the order of \
forwards, backwards and updates on each stage) and the *weight policy* (timeprest, v-timeprest, i-timeprest, pipedream, \
pipedream-2bw, nwpt, gpipe, ...: which stored version, blend or prediction each pass reads). \
Every combination is traced, not assumed: the versions read, the staleness d of every backward \
and the versions each stage must store are measured, both in simulation and in real training.

Without a subcommand, `timeprest` runs `train` with default arguments.";

/// Example commands shown at the end of `timeprest --help`.
const EXAMPLES: &str = "\
Examples:
  timeprest simulate --schedule nf1b --stages 4 --microbatches 2 --minibatches 8 --slots 16
  timeprest simulate --schedule nf1b --policy timeprest --stages 4 --microbatches 3 \\
      --minibatches 20 --format svg --output nf1b.svg
  timeprest analyze version-difference --stages 2..8 --microbatches 2..7
  timeprest analyze versions --policy timeprest --stages 4 --microbatches 2 --format json";

/// Pipeline-parallel DNN training with measured weight versions.
#[derive(Parser, Debug)]
#[command(name = "timeprest", version, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub(crate) struct Cli {
    /// The subcommand; `train` with default arguments when absent.
    #[command(subcommand)]
    command: Option<Command>,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model with a pipeline schedule and a weight policy (the default subcommand).
    Train(train::TrainArgs),
    /// Generate a schedule and print it as a grid, an SVG or Chrome-trace timeline, or JSON.
    Simulate(simulate::SimulateArgs),
    /// Analyse weight versions: the version difference v, stored versions, staleness.
    Analyze(analyze::AnalyzeArgs),
    /// Run every policy × seed on the same model, data order and seeds; write report.md and plots.
    Compare(compare::CompareArgs),
    /// Redraw the plots (and report.md) of a comparison or run directory.
    Plot(plot::PlotArgs),
    /// Show how a model splits into stages: per-stage blocks, parameters, activations and
    /// measured time, and the predicted pipeline throughput of each partition method.
    Partition(partition::PartitionArgs),
}

/// A mistake on the command line, found after clap accepted it (e.g. a policy that does not run
/// on the chosen schedule). `main` prints it as one line and exits with code 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// An [`anyhow::Error`] that `main` reports as a usage error (exit code 2).
pub(crate) fn usage_error(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// True when `error` is the user's mistake (a flag value, a file or directory they named, a
/// model or data set that does not fit, a run directory that cannot be resumed): exit code 2.
/// Divergence, runtime failures and bugs are not (exit code 1).
pub(crate) fn is_usage_error(error: &anyhow::Error) -> bool {
    use timeprest_train::{OutputError, TrainError};
    error.downcast_ref::<UsageError>().is_some()
        || error.downcast_ref::<OutputError>().is_some()
        || error.downcast_ref::<timeprest_nn::NnError>().is_some()
        || error.downcast_ref::<timeprest_data::DataError>().is_some()
        || matches!(
            error.downcast_ref::<TrainError>(),
            Some(
                TrainError::Config { .. }
                    | TrainError::Schedule(_)
                    | TrainError::Data(_)
                    | TrainError::Model(_)
                    | TrainError::Checkpoint { .. }
                    | TrainError::Output { .. }
                    | TrainError::OutputPath(_)
            )
        )
}

/// The arguments of `timeprest train` with every flag at its clap default.
fn default_train_args() -> Result<train::TrainArgs, clap::Error> {
    let command = train::TrainArgs::augment_args(clap::Command::new("train"));
    let matches = command.try_get_matches_from(["train"])?;
    train::TrainArgs::from_arg_matches(&matches)
}

/// Clap's error as one line: its `error:` paragraph with the continuation lines joined, then
/// each of clap's tips in parentheses (`(tip: a similar argument exists: '--stages')`),
/// without the usage block and the "For more information" hint.
fn one_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let mut lines = rendered.lines().map(str::trim);
    let mut line: Vec<&str> = lines.by_ref().take_while(|line| !line.is_empty()).collect();
    let tips: Vec<String> = lines
        .filter(|line| line.starts_with("tip:"))
        .map(|tip| format!("({tip})"))
        .collect();
    line.extend(tips.iter().map(String::as_str));
    line.join(" ")
}

/// The tip clap does not give for `--lr -1`: clap reads `-1` as an unknown flag, while the
/// user meant it as the value of the option before it, which is written `--lr=-1`. `None`
/// unless the unexpected argument is a number right after an option that takes a value.
fn negative_value_tip(error: &clap::Error, args: &[String]) -> Option<String> {
    use clap::CommandFactory as _;
    use clap::error::{ContextKind, ContextValue};
    if error.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    // Clap names only the start of `-1.5e3` (it reads it as the short flags `-1`, `-.`, …).
    let position = args
        .iter()
        .position(|arg| arg.starts_with(value.as_str()) && arg.parse::<f64>().is_ok())?;
    let value = &args[position];
    let option = args[..position].last()?.strip_prefix("--")?;
    let command = Cli::command();
    let takes_value = command
        .get_subcommands()
        .flat_map(clap::Command::get_arguments)
        .any(|arg| arg.get_long() == Some(option) && arg.get_action().takes_values());
    takes_value.then(|| {
        format!("(tip: to give --{option} the negative value {value}, write '--{option}={value}')")
    })
}

/// Runs the parsed command line.
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => {
            let args = default_train_args().map_err(|e| {
                let message = one_line(&e);
                usage_error(message.trim_start_matches("error: "))
            })?;
            train::run(args)
        }
        Some(Command::Train(args)) => train::run(args),
        Some(Command::Simulate(args)) => simulate::run(&args),
        Some(Command::Analyze(args)) => analyze::run(&args),
        Some(Command::Compare(args)) => compare::run(args),
        Some(Command::Plot(args)) => plot::run(&args),
        Some(Command::Partition(args)) => partition::run(&args),
    }
}

/// Replaces the default panic output (message plus, with `RUST_BACKTRACE`, a backtrace) by one
/// `error: internal error …` line. A panic is a bug, never a user error; the training runtime
/// also catches panics of its worker threads and reports them as ordinary errors. Set
/// `TIMEPREST_BACKTRACE=1` to get the default output back when debugging.
fn install_panic_hook() {
    if std::env::var_os("TIMEPREST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown cause");
        let location = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        print_stderr_line(&format!(
            "error: internal error{location}: {message} (a bug; please report it)"
        ));
    }));
}

/// Writes `line` and a newline to stderr in one `write`. The ranks of an MPI job share one
/// stderr pipe, and `eprintln!` writes each formatted piece separately, so two ranks' lines
/// could interleave mid-line; a pipe write of at most 4096 bytes is never split.
pub(crate) fn print_stderr_line(line: &str) {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    // Nothing is left to tell the user if stderr itself fails.
    let _ = std::io::stderr().write_all(&bytes);
}

fn main() -> ExitCode {
    install_panic_hook();
    match parse_command_line() {
        Ok(cli) => exit_code(run(cli)),
        Err(code) => code,
    }
}

/// The parsed command line, with the flags each command was given recorded; on a parse error,
/// prints it on one line and returns exit code 2 (clap prints `--help` and `--version` whole
/// and exits itself).
fn parse_command_line() -> Result<Cli, ExitCode> {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    match parsed {
        Ok((mut cli, matches)) => {
            match (&mut cli.command, matches.subcommand()) {
                (Some(Command::Train(args)), Some(("train", train))) => {
                    args.given = train::GivenFlags::of(train);
                }
                (Some(Command::Compare(args)), Some(("compare", compare))) => {
                    args.record_given(compare);
                }
                _ => {}
            }
            Ok(cli)
        }
        Err(error)
            if !error.use_stderr()
                || error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            // --help and --version (exit 0), or the help of a command given without its
            // subcommand (`timeprest analyze`, exit 2): clap prints them whole.
            error.exit()
        }
        Err(error) => {
            let args: Vec<String> = std::env::args().collect();
            match negative_value_tip(&error, &args) {
                Some(tip) => print_stderr_line(&format!("{} {tip}", one_line(&error))),
                None => print_stderr_line(&one_line(&error)),
            }
            Err(ExitCode::from(2))
        }
    }
}

/// How a command's result ends the process: 0; the signal's code after a stop request (with
/// its message); otherwise the error on one line and 2 for a usage error, 1 for any other.
fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<interrupt::Interrupted>() => {
            let interrupted = error
                .downcast::<interrupt::Interrupted>()
                .expect("checked by the guard");
            print_stderr_line(&interrupted.message);
            ExitCode::from(interrupted.signal.exit_code())
        }
        Err(error) => {
            print_stderr_line(&format!("error: {}", error_line(&error)));
            ExitCode::from(if is_usage_error(&error) { 2 } else { 1 })
        }
    }
}

/// The error and its causes on one line, `: `-separated, leaving out a cause whose text is
/// already in the line (many errors embed their source in their own message, and anyhow's
/// chain would print it twice).
fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn an_error_line_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let embedded = anyhow::Error::new(io).context("cannot read /x: no such file");
        assert_eq!(error_line(&embedded), "cannot read /x: no such file");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let separate = anyhow::Error::new(io).context("loading the data");
        assert_eq!(error_line(&separate), "loading the data: no such file");
    }

    /// Parses `args` (after the program name), expecting clap to refuse them.
    fn clap_error(args: &[&str]) -> (clap::Error, Vec<String>) {
        let args: Vec<String> = std::iter::once("timeprest")
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect();
        (Cli::try_parse_from(&args).unwrap_err(), args)
    }

    #[test]
    fn clap_errors_keep_their_tips_on_one_line() {
        let (error, _) = clap_error(&["train", "--stage", "2"]);
        assert_eq!(
            one_line(&error),
            "error: unexpected argument '--stage' found (tip: a similar argument exists: \
             '--stages')"
        );
        let (error, args) = clap_error(&["train", "--lr", "-1"]);
        assert_eq!(
            negative_value_tip(&error, &args).as_deref(),
            Some("(tip: to give --lr the negative value -1, write '--lr=-1')")
        );
        // A flag that takes no value gets no such tip.
        let (error, args) = clap_error(&["train", "--width", "-1.5e3"]);
        assert_eq!(
            negative_value_tip(&error, &args).as_deref(),
            Some("(tip: to give --width the negative value -1.5e3, write '--width=-1.5e3')")
        );
        let (error, args) = clap_error(&["train", "--quiet", "-1"]);
        assert_eq!(negative_value_tip(&error, &args), None);
        let (error, args) = clap_error(&["train", "--stage", "2"]);
        assert_eq!(negative_value_tip(&error, &args), None);
    }

    #[test]
    fn train_defaults_come_from_clap() {
        assert!(default_train_args().is_ok());
    }
}
