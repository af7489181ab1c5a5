//! The training recipe a model gets when the user chooses none: learning rate, its schedule
//! and warm-up, and weight decay.
//!
//! Asynchronous pipelines are fragile at the operating point: at SGD's usual 0.05 with
//! momentum 0.9 and no warm-up, lenet5 on Fashion-MNIST collapses to chance under I-TiMePReSt,
//! and several stale policies lose 10–60 points on an MLP that every policy trains at 0.02. The
//! recipe follows the common practice for stale-weight training: a learning rate every policy
//! survives, a linear warm-up (the steps where staleness hurts most are the first, when weights
//! move fastest), cosine decay to 0 and a small weight decay. It only fills what the user left
//! unset (flag, `--config` key or resumed configuration): a user's choice always wins.

use crate::config::{LrScheduleChoice, OptimizerChoice, TrainConfig};

/// Learning rate, schedule, warm-up and weight decay of a model's default recipe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    /// Peak learning rate.
    pub lr: f64,
    /// How the rate changes over the run.
    pub lr_schedule: LrScheduleChoice,
    /// Epochs of linear warm-up.
    pub warmup_epochs: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
}

impl Recipe {
    /// The configuration keys a recipe fills.
    pub const KEYS: [&str; 4] = ["lr", "lr_schedule", "warmup_epochs", "weight_decay"];

    /// The recipe of model `model` trained by `optimizer` for `epochs` epochs: with SGD, rate
    /// 0.02 for the MLP and 0.01 for the convolutional and transformer models; with Adam, 0.001
    /// (its usual rate); one epoch of warm-up (at most a fifth of the run), cosine decay,
    /// weight decay 5e-4.
    pub fn for_model(model: &str, optimizer: OptimizerChoice, epochs: u32) -> Self {
        let lr = match optimizer {
            OptimizerChoice::Adam => 0.001,
            OptimizerChoice::Sgd if model == timeprest_nn::MlpConfig::NAME => 0.02,
            OptimizerChoice::Sgd => 0.01,
        };
        Self {
            lr,
            lr_schedule: LrScheduleChoice::Cosine,
            warmup_epochs: (f64::from(epochs) / 5.0).min(1.0),
            weight_decay: 5e-4,
        }
    }

    /// The recipe of `config`'s model, optimizer and epochs written into every key of
    /// [`Recipe::KEYS`] for which `chosen(key)` is false; returns those keys.
    pub fn fill(config: &mut TrainConfig, chosen: impl Fn(&str) -> bool) -> Vec<&'static str> {
        let recipe = Self::for_model(
            &config.model.name,
            config.optimisation.optimizer,
            config.optimisation.epochs,
        );
        let o = &mut config.optimisation;
        let filled: Vec<&'static str> = Self::KEYS.into_iter().filter(|key| !chosen(key)).collect();
        for key in &filled {
            match *key {
                "lr" => o.lr = recipe.lr,
                "lr_schedule" => o.lr_schedule = recipe.lr_schedule,
                "warmup_epochs" => o.warmup_epochs = recipe.warmup_epochs,
                "weight_decay" => o.weight_decay = recipe.weight_decay,
                _ => unreachable!("{key} is not a recipe key"),
            }
        }
        filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_fills_only_what_was_not_chosen() {
        let mut config = TrainConfig::default();
        config.model.name = "lenet5".into();
        config.optimisation.lr = 0.3;
        let filled = Recipe::fill(&mut config, |key| key == "lr");
        assert_eq!(filled, ["lr_schedule", "warmup_epochs", "weight_decay"]);
        assert_eq!(config.optimisation.lr, 0.3);
        assert_eq!(config.optimisation.lr_schedule, LrScheduleChoice::Cosine);
        assert_eq!(config.optimisation.weight_decay, 5e-4);
        assert_eq!(config.optimisation.warmup_epochs, 1.0);
        config.optimisation.epochs = 2;
        assert_eq!(Recipe::fill(&mut config, |_| false), Recipe::KEYS);
        assert_eq!(config.optimisation.lr, 0.01);
        assert!((config.optimisation.warmup_epochs - 0.4).abs() < 1e-12);
    }
}
