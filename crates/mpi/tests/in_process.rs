//! Whole distributed trainings with the ranks as threads of this process (no MPI needed).
//!
//! The rank driver is the same code that runs under `mpirun`; only the fabric differs
//! ([`LocalFabric`] instead of MPI). So these tests pin the driver's logic (bit-identity with
//! the threaded trainer for every kind of policy, rank 0's books, failure and mismatch
//! handling) in every build, and the `mpirun` tests of the CLI check the MPI fabric on top.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use timeprest_mpi::{Fabric, Fault, FaultKind, LocalFabric, MpiError, RankRun, train_rank};
use timeprest_policy::PolicyKind;
use timeprest_schedule::ScheduleKind;
use timeprest_train::{
    EpochMetrics, LastCheckpoint, Progress, RunPaths, TrainConfig, TrainError, ValidConfig, run,
};

/// `config`, validated (every test configuration is valid).
fn valid(config: &TrainConfig) -> ValidConfig {
    config.clone().validate().unwrap()
}

type RankOutcome = Result<Option<Vec<EpochMetrics>>, MpiError>;

fn small(policy: PolicyKind) -> TrainConfig {
    let mut config = TrainConfig::default();
    config.model.hidden = vec![24, 16];
    config.data.limit_train = Some(160);
    config.data.limit_test = Some(90);
    config.pipeline.num_stages = 3;
    config.pipeline.num_microbatches = 2;
    config.optimisation.batch_size = 16;
    config.optimisation.epochs = 2;
    config.pipeline.policy = policy;
    config
}

/// How long a group of ranks may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(120);

/// Runs one rank per entry of `configs` (rank 0 first) as threads; fails on a hang.
fn run_ranks(configs: &[TrainConfig], paths: &RunPaths, fault: Option<Fault>) -> Vec<RankOutcome> {
    run_ranks_with(configs, paths, fault, None)
}

/// A stop request that reaches one rank only, as a signal sent to one process would: rank 0
/// raises the stop flag of rank `rank` when it starts epoch `at_epoch`.
#[derive(Clone, Copy)]
struct Interrupt {
    rank: usize,
    at_epoch: u32,
}

/// Rank 0's progress callbacks that raise `flag` when epoch `epoch` starts.
struct RaiseAt {
    epoch: u32,
    flag: Arc<AtomicBool>,
}

impl Progress for RaiseAt {
    fn epoch_started(&self, epoch: u32, _num_minibatches: u64) {
        if epoch == self.epoch {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
}

/// [`run_ranks`] with a stop request for one rank.
fn run_ranks_with(
    configs: &[TrainConfig],
    paths: &RunPaths,
    fault: Option<Fault>,
    interrupt: Option<Interrupt>,
) -> Vec<RankOutcome> {
    let (done, outcomes) = mpsc::channel();
    let flag = Arc::new(AtomicBool::new(false));
    for (fabric, config) in LocalFabric::group(configs.len()).into_iter().zip(configs) {
        let (config, paths, done) = (config.clone(), paths.clone(), done.clone());
        let flag = Arc::clone(&flag);
        // Detached, so that a hung rank fails the test instead of hanging it.
        thread::spawn(move || {
            let rank = fabric.rank();
            let raise = interrupt.map(|interrupt| RaiseAt {
                epoch: interrupt.at_epoch,
                flag: Arc::clone(&flag),
            });
            let progress: &dyn Progress = match &raise {
                Some(raise) => raise,
                None => &(),
            };
            let rank_run = RankRun {
                config: &valid(&config),
                paths: &paths,
                progress,
                fault,
                stop: interrupt
                    .filter(|interrupt| interrupt.rank == rank)
                    .map(|_| &*flag),
            };
            let _ = done.send((rank, train_rank(fabric, &rank_run)));
        });
    }
    let mut by_rank: Vec<(usize, RankOutcome)> = (0..configs.len())
        .map(|_| outcomes.recv_timeout(HANG).expect("a rank hung"))
        .collect();
    by_rank.sort_by_key(|(rank, _)| *rank);
    by_rank.into_iter().map(|(_, outcome)| outcome).collect()
}

fn weights_path(dir: &Path, name: &str) -> RunPaths {
    RunPaths {
        save_weights: Some(dir.join(name)),
        out_dir: Some(dir.join(format!("{name}-run"))),
        ..RunPaths::default()
    }
}

/// The metrics without the wall-clock measurements.
fn measured_facts(metrics: &[EpochMetrics]) -> Vec<String> {
    metrics
        .iter()
        .map(|m| {
            let stages: Vec<_> = m
                .stages
                .iter()
                .map(|s| {
                    (
                        &s.staleness,
                        s.peak_weight_sets,
                        s.peak_weight_bytes,
                        s.bytes_sent,
                    )
                })
                .collect();
            format!(
                "{} {} {} {} {} {} {:?}",
                m.epoch,
                m.train_loss.to_bits(),
                m.train_accuracy.to_bits(),
                m.test_loss.to_bits(),
                m.test_accuracy.to_bits(),
                m.num_minibatches,
                stages
            )
        })
        .collect()
}

#[test]
fn distributed_training_is_bit_identical_to_threaded_training_for_every_kind_of_policy() {
    let dir = tempfile::tempdir().unwrap();
    let streamed = {
        let mut config = small(PolicyKind::Timeprest);
        config.pipeline.schedule = Some(ScheduleKind::Nf1bStreamed);
        config
    };
    let configs = [
        PolicyKind::Timeprest,
        PolicyKind::ITimeprest,
        PolicyKind::Pipedream,
        PolicyKind::Pipedream2bw,
        PolicyKind::Gpipe,
        PolicyKind::Nwpt,
    ]
    .map(small)
    .into_iter()
    .chain([streamed]);
    for config in configs {
        let policy = match config.pipeline.schedule {
            Some(schedule) => format!("{}-{schedule}", config.pipeline.policy),
            None => config.pipeline.policy.to_string(),
        };
        let threaded_paths = weights_path(dir.path(), &format!("{policy}-threaded"));
        let threaded = run(&valid(&config), &threaded_paths, &()).unwrap();
        let ranks_paths = weights_path(dir.path(), &format!("{policy}-ranks"));
        let outcomes = run_ranks(&vec![config.clone(); 3], &ranks_paths, None);
        let mut outcomes = outcomes.into_iter().map(Result::unwrap);
        let distributed = outcomes
            .next()
            .unwrap()
            .expect("rank 0 returns the metrics");
        assert!(outcomes.all(|o| o.is_none()), "only rank 0 keeps the books");

        let read = |paths: &RunPaths| std::fs::read(paths.save_weights.as_ref().unwrap()).unwrap();
        assert!(
            read(&threaded_paths) == read(&ranks_paths),
            "{policy}: the weights differ"
        );
        assert_eq!(
            measured_facts(&distributed),
            measured_facts(&threaded),
            "{policy}: the metrics differ"
        );
        let lines = std::fs::read_to_string(ranks_paths.out_dir.unwrap().join("metrics.jsonl"));
        assert_eq!(
            lines.unwrap().lines().count(),
            config.optimisation.epochs as usize
        );
    }
    // Training moved the weights at all (so equal files are not two untouched initialisations).
    let config = small(PolicyKind::Gpipe);
    let untrained = RunPaths {
        save_weights: Some(dir.path().join("untrained")),
        ..RunPaths::default()
    };
    run(
        &valid(&{
            let mut config = config;
            config.optimisation.lr = 0.0;
            config
        }),
        &untrained,
        &(),
    )
    .unwrap();
    let trained = std::fs::read(dir.path().join("gpipe-ranks")).unwrap();
    assert_ne!(
        std::fs::read(dir.path().join("untrained")).unwrap(),
        trained
    );
}

fn assert_all_fail_naming_stage_1(outcomes: &[RankOutcome], started: Instant) {
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopping took too long"
    );
    for (rank, outcome) in outcomes.iter().enumerate() {
        let message = outcome.as_ref().unwrap_err().to_string();
        let expected = match rank {
            1 => "stage 1 failed during ",
            _ => "rank 1 failed: stage 1 failed during ",
        };
        assert!(message.starts_with(expected), "rank {rank} says: {message}");
        assert!(message.contains("injected"), "rank {rank} says: {message}");
    }
}

#[test]
fn a_failing_stage_stops_every_rank_with_an_error_naming_it() {
    for kind in [FaultKind::Error, FaultKind::Panic] {
        let config = {
            let mut config = small(PolicyKind::ITimeprest);
            config.optimisation.epochs = 50;
            config
        };
        let started = Instant::now();
        let fault = Some(Fault {
            stage: 1,
            kind,
            epoch: 1,
        });
        let outcomes = run_ranks(&vec![config; 3], &RunPaths::default(), fault);
        assert_all_fail_naming_stage_1(&outcomes, started);
    }
}

#[test]
fn ranks_with_different_configurations_refuse_to_start() {
    let config = small(PolicyKind::Timeprest);
    let other = {
        let mut config = config.clone();
        config.pipeline.policy = PolicyKind::Gpipe;
        config.model.hidden = vec![24, 15];
        config
    };
    let outcomes = run_ranks(
        &[config.clone(), config.clone(), other],
        &RunPaths::default(),
        None,
    );
    for outcome in outcomes {
        let error = outcome.unwrap_err();
        assert!(
            matches!(&error, MpiError::ConfigMismatch { rank: 2, differences }
                if differences.len() == 2),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains("hidden ([24,15] vs [24,16])"), "{message}");
        assert!(
            message.contains("policy (\"gpipe\" vs \"timeprest\")"),
            "{message}"
        );
    }
    let outcomes = run_ranks(&[config.clone(), config], &RunPaths::default(), None);
    for outcome in outcomes {
        let error = outcome.unwrap_err();
        assert!(
            matches!(
                error,
                MpiError::WorldSize {
                    world: 2,
                    stages: 3
                }
            ),
            "{error}"
        );
    }
}

/// Paths of a run in `run_dir` that checkpoints every epoch, resumes if `resume`, and saves its
/// final weights as `run_dir/<weights>`.
fn checkpointed(run_dir: &Path, resume: bool, weights: &str) -> RunPaths {
    RunPaths {
        out_dir: Some(run_dir.to_owned()),
        checkpoint_every: 1,
        resume,
        save_weights: Some(run_dir.join(weights)),
        ..RunPaths::default()
    }
}

#[test]
fn checkpoints_move_between_ranks_and_threads_and_resume_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let config = |epochs| {
        let mut config = small(PolicyKind::Nwpt);
        config.optimisation.epochs = epochs;
        config
    };
    let uninterrupted = checkpointed(&dir.path().join("whole"), false, "weights");
    run(&valid(&config(4)), &uninterrupted, &()).unwrap();
    let expected = std::fs::read(uninterrupted.save_weights.unwrap()).unwrap();

    // Ranks write the checkpoint of epoch 2; ranks and threads each resume it to epoch 4.
    let ranks = dir.path().join("ranks");
    let outcomes = run_ranks(
        &vec![config(2); 3],
        &checkpointed(&ranks, false, "w2"),
        None,
    );
    assert!(outcomes.into_iter().all(|o| o.is_ok()));
    for stage in 0..3 {
        let file = ranks.join(format!("checkpoint/stage-{stage}.safetensors"));
        assert!(file.is_file(), "{file:?} missing");
    }
    let copy = dir.path().join("ranks-copy");
    std::fs::create_dir_all(copy.join("checkpoint")).unwrap();
    for entry in std::fs::read_dir(ranks.join("checkpoint")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            copy.join("checkpoint").join(entry.file_name()),
        )
        .unwrap();
    }
    run(
        &valid(&config(4)),
        &checkpointed(&copy, true, "weights"),
        &(),
    )
    .unwrap();
    assert!(std::fs::read(copy.join("weights")).unwrap() == expected);

    let outcomes = run_ranks(
        &vec![config(4); 3],
        &checkpointed(&ranks, true, "weights"),
        None,
    );
    let history = outcomes.into_iter().next().unwrap().unwrap().unwrap();
    assert_eq!(
        history.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(std::fs::read(ranks.join("weights")).unwrap() == expected);
    let lines = std::fs::read_to_string(ranks.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);

    // Threads write the checkpoint of epoch 2; ranks resume it.
    let threads = dir.path().join("threads");
    run(
        &valid(&config(2)),
        &checkpointed(&threads, false, "w2"),
        &(),
    )
    .unwrap();
    let outcomes = run_ranks(
        &vec![config(4); 3],
        &checkpointed(&threads, true, "weights"),
        None,
    );
    assert!(outcomes.into_iter().all(|o| o.is_ok()));
    assert!(std::fs::read(threads.join("weights")).unwrap() == expected);
}

#[test]
fn an_augmented_run_resumed_by_ranks_ends_with_the_threaded_runs_weights() {
    let dir = tempfile::tempdir().unwrap();
    let config = |epochs| {
        let mut config = TrainConfig::default();
        config.model.name = "lenet5".into();
        config.data.dataset = "synthetic".into();
        config.data.augment = true;
        config.data.limit_train = Some(64);
        config.data.limit_test = Some(16);
        config.pipeline.num_stages = 2;
        config.pipeline.num_microbatches = 2;
        config.optimisation.batch_size = 16;
        config.optimisation.lr = 0.01;
        config.optimisation.epochs = epochs;
        config.pipeline.policy = PolicyKind::Timeprest;
        config
    };
    let uninterrupted = checkpointed(&dir.path().join("whole"), false, "weights");
    run(&valid(&config(2)), &uninterrupted, &()).unwrap();
    let expected = std::fs::read(uninterrupted.save_weights.unwrap()).unwrap();
    let ranks = dir.path().join("ranks");
    let first = run_ranks(
        &vec![config(1); 2],
        &checkpointed(&ranks, false, "w1"),
        None,
    );
    assert!(first.into_iter().all(|o| o.is_ok()));
    let rest = run_ranks(
        &vec![config(2); 2],
        &checkpointed(&ranks, true, "weights"),
        None,
    );
    assert!(rest.into_iter().all(|o| o.is_ok()));
    assert!(std::fs::read(ranks.join("weights")).unwrap() == expected);
}

#[test]
fn a_checkpoint_that_does_not_fit_stops_every_rank_with_rank_0s_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run(
        &valid(&small(PolicyKind::Gpipe)),
        &checkpointed(&run_dir, false, "w"),
        &(),
    )
    .unwrap();
    let two_stages = {
        let mut config = small(PolicyKind::Gpipe);
        config.pipeline.num_stages = 2;
        config.optimisation.epochs = 4;
        config
    };
    let started = Instant::now();
    let outcomes = run_ranks(
        &vec![two_stages; 2],
        &checkpointed(&run_dir, true, "w"),
        None,
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let expected = "it was written by a run of 3 stages, this run has 2";
    for (rank, outcome) in outcomes.into_iter().enumerate() {
        let message = outcome.unwrap_err().to_string();
        assert!(message.contains(expected), "rank {rank} says: {message}");
        assert_eq!(
            message.starts_with("rank 0 failed: "),
            rank != 0,
            "{message}"
        );
    }
}

#[test]
fn a_stop_on_one_rank_stops_every_rank_naming_the_last_checkpoint_and_the_run_continues() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let config = |epochs| {
        let mut config = small(PolicyKind::Timeprest);
        config.optimisation.epochs = epochs;
        config
    };
    // Rank 2 alone is stopped, while rank 0 starts epoch 3: every rank stops in epoch 3, after
    // the checkpoint of epoch 2 was committed.
    let interrupt = Interrupt {
        rank: 2,
        at_epoch: 3,
    };
    let outcomes = run_ranks_with(
        &vec![config(50); 3],
        &checkpointed(&run_dir, false, "w"),
        None,
        Some(interrupt),
    );
    for (rank, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Err(MpiError::Train(TrainError::Interrupted {
                epoch,
                last_checkpoint,
            })) => {
                assert_eq!(epoch, 3, "rank {rank}");
                assert_eq!(
                    last_checkpoint,
                    Some(LastCheckpoint {
                        run_dir: run_dir.clone(),
                        epoch: 2
                    }),
                    "rank {rank}"
                );
            }
            other => panic!("rank {rank} did not stop as interrupted: {other:?}"),
        }
    }
    let lines = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    assert!(
        !run_dir.join("w").exists(),
        "an interrupted run saves no final weights"
    );

    // The checkpoint is whole: the run continues from it.
    let history = run(&valid(&config(4)), &checkpointed(&run_dir, true, "w"), &()).unwrap();
    assert_eq!(
        history.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        vec![3, 4]
    );
}
