//! Resuming is bit-exact: for every kind of policy, with shuffling and with augmentation, a run
//! interrupted after a checkpoint and resumed ends with the weights of an uninterrupted run.
//!
//! Everything that decides an epoch's result must be in the checkpoint or be a pure function of
//! what is (seed, epoch): these tests fail if a piece of state lives only in a running process
//! (as the augmentation's epoch counter once did).

mod common;

use common::{small_mlp, trained as uninterrupted, valid, weight_values};
use timeprest_nn::ModelParams;
use timeprest_policy::PolicyKind;
use timeprest_train::{LrScheduleChoice, TrainConfig, Trainer};

/// The live weights after training `config` for `first` epochs, checkpointing, and continuing
/// in a new trainer (a new process, as far as the stages can tell) up to `epochs`.
fn resumed(config: &TrainConfig, first: u32, epochs: u32) -> ModelParams {
    let run_dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(valid(config), None).unwrap();
    for epoch in 1..=first {
        trainer.run_epoch(epoch, None).unwrap();
    }
    trainer.save_checkpoint(run_dir.path(), first).unwrap();
    drop(trainer);
    let mut trainer = Trainer::new(valid(config), None).unwrap();
    let state = trainer.restore_checkpoint(run_dir.path()).unwrap();
    assert_eq!(state.epoch, first);
    for epoch in first + 1..=epochs {
        trainer.run_epoch(epoch, None).unwrap();
    }
    trainer.params()
}

fn assert_same_weights(a: &ModelParams, b: &ModelParams, what: &str) {
    assert!(
        weight_values(a) == weight_values(b),
        "{what}: resumed weights differ"
    );
}

#[test]
fn every_kind_of_policy_resumes_bit_for_bit_with_shuffling() {
    for policy in PolicyKind::ALL {
        let config = {
            let single = policy == PolicyKind::Single;
            let mut config = small_mlp(
                policy,
                if single { 1 } else { 3 },
                if single { 1 } else { 2 },
            );
            config.optimisation.epochs = 3;
            config.data.shuffle = true;
            config
        };
        assert_same_weights(
            &uninterrupted(&config, 3),
            &resumed(&config, 2, 3),
            &policy.to_string(),
        );
    }
}

#[test]
fn an_augmented_run_resumes_bit_for_bit() {
    let config = {
        let mut config = TrainConfig::default();
        config.model.name = "lenet5".into();
        config.data.dataset = "synthetic".into();
        config.data.augment = true;
        config.pipeline.policy = PolicyKind::Pipedream;
        config.pipeline.num_stages = 2;
        config.pipeline.num_microbatches = 1;
        config.data.limit_train = Some(64);
        config.data.limit_test = Some(16);
        config.optimisation.batch_size = 16;
        config.optimisation.epochs = 2;
        config.optimisation.lr = 0.01;
        config
    };
    assert_same_weights(
        &uninterrupted(&config, 2),
        &resumed(&config, 1, 2),
        "lenet5 --augment",
    );
    // The check has teeth: without augmentation the weights differ.
    let plain = {
        let mut config = config.clone();
        config.data.augment = false;
        config
    };
    assert!(
        uninterrupted(&plain, 2)
            .iter()
            .flat_map(|b| b.to_file_layout())
            .ne(uninterrupted(&config, 2)
                .iter()
                .flat_map(|b| b.to_file_layout())),
        "augmentation changed nothing"
    );
}

#[test]
fn a_run_resumed_in_the_middle_of_its_warm_up_continues_its_schedule_exactly() {
    for policy in [
        PolicyKind::Timeprest,
        PolicyKind::Nwpt,
        PolicyKind::Pipedream,
    ] {
        let config = {
            let mut config = TrainConfig::default();
            config.pipeline.policy = policy;
            config.pipeline.num_stages = 3;
            config.pipeline.num_microbatches = if policy == PolicyKind::Pipedream {
                1
            } else {
                2
            };
            config.model.hidden = vec![24, 16];
            config.data.limit_train = Some(96);
            config.data.limit_test = Some(32);
            config.optimisation.batch_size = 16;
            config.optimisation.epochs = 3;
            config.optimisation.lr_schedule = LrScheduleChoice::Cosine;
            config.optimisation.warmup_epochs = 1.5;
            config
        };
        let scheduled = uninterrupted(&config, 3);
        assert_same_weights(&scheduled, &resumed(&config, 1, 3), &policy.to_string());
        // The check has teeth: a constant rate ends elsewhere.
        let constant = {
            let mut config = config.clone();
            config.optimisation.lr_schedule = LrScheduleChoice::Constant;
            config
        };
        assert!(weight_values(&uninterrupted(&constant, 3)) != weight_values(&scheduled));
    }
}

#[test]
fn each_epochs_metrics_report_the_rate_of_its_last_update() {
    let mut config = small_mlp(PolicyKind::ITimeprest, 3, 3);
    config.optimisation.epochs = 4;
    config.optimisation.lr = 0.1;
    config.optimisation.lr_schedule = LrScheduleChoice::Cosine;
    config.optimisation.warmup_epochs = 1.0;
    let mut trainer = Trainer::new(valid(&config), None).unwrap();
    // 96 samples in mini-batches of 16: 6 updates per epoch; warm-up = updates 0..6, then the
    // cosine over 18 updates.
    let expected = |epoch: u32| {
        let k = f64::from(epoch * 6 - 1);
        match epoch {
            1 => 0.1,
            _ => 0.05 * (1.0 + (std::f64::consts::PI * (k - 6.0) / 18.0).cos()),
        }
    };
    for epoch in 1..=4 {
        let lr = trainer.run_epoch(epoch, None).unwrap().metrics.lr;
        assert!((lr - expected(epoch)).abs() < 1e-12, "epoch {epoch}: {lr}");
    }
}
