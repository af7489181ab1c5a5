//! Actions: the atoms of a pipeline schedule.
//!
//! An [`Action`] says *what* one stage does: a forward of one micro-batch, a backward of a whole
//! mini-batch (nF1B, 1F1B) or of one micro-batch (GPipe, 1F1B-flush), or an optimizer update.
//! Actions are plain data with a compact text form that round-trips through
//! [`Display`](std::fmt::Display) and [`FromStr`]:
//!
//! | text     | meaning                                                   |
//! |----------|-----------------------------------------------------------|
//! | `2F5.1`  | stage 2, forward of mini-batch 5, micro-batch 1           |
//! | `2B5`    | stage 2, backward of the whole mini-batch 5               |
//! | `2B5.1`  | stage 2, backward of micro-batch 1 of mini-batch 5        |
//! | `2U5`    | stage 2, optimizer update after mini-batch 5              |
//!
//! All indices in code and in this text form are 0-based. The paper-style grid (`1A`, `B1`) is
//! 1-based with micro-batch letters and is produced by the grid renderer only.
//!
//! Symbols of the papers map to code names once, here: W = `num_stages`, N = `num_microbatches`,
//! the mini-batch index i = `minibatch`, the micro-batch j = `microbatch`, stage s = `stage`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A micro-batch: micro-batch `microbatch` of mini-batch `minibatch` (both 0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MicrobatchId {
    /// Mini-batch index i (0-based).
    pub minibatch: u32,
    /// Micro-batch index j within the mini-batch (0-based; `A` = 0 in the paper's grids).
    pub microbatch: u32,
}

impl MicrobatchId {
    /// Micro-batch `microbatch` of mini-batch `minibatch`.
    pub fn new(minibatch: u32, microbatch: u32) -> Self {
        Self {
            minibatch,
            microbatch,
        }
    }
}

/// What an action does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ActionKind {
    /// Forward pass of one micro-batch.
    Forward(MicrobatchId),
    /// Backward pass of a whole mini-batch: consumes the activations of all its micro-batches.
    BackwardMinibatch(u32),
    /// Backward pass of a single micro-batch (GPipe, 1F1B-flush).
    BackwardMicrobatch(MicrobatchId),
    /// Optimizer update after the given mini-batch; takes no time slot and advances the stage's
    /// weight version by one.
    Update(u32),
}

impl ActionKind {
    /// The mini-batch this action belongs to.
    pub fn minibatch(&self) -> u32 {
        match *self {
            ActionKind::Forward(mb) | ActionKind::BackwardMicrobatch(mb) => mb.minibatch,
            ActionKind::BackwardMinibatch(i) | ActionKind::Update(i) => i,
        }
    }

    /// True for both kinds of backward.
    pub fn is_backward(&self) -> bool {
        matches!(
            self,
            ActionKind::BackwardMinibatch(_) | ActionKind::BackwardMicrobatch(_)
        )
    }

    /// True for a forward.
    pub fn is_forward(&self) -> bool {
        matches!(self, ActionKind::Forward(_))
    }

    /// True for an optimizer update (a zero-width action in the slot grid).
    pub fn is_update(&self) -> bool {
        matches!(self, ActionKind::Update(_))
    }
}

/// One action of one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Action {
    /// Stage s (0-based; stage 0 holds the input layers).
    pub stage: u32,
    /// What the stage does.
    pub kind: ActionKind,
}

impl Action {
    /// Forward of micro-batch `microbatch` of mini-batch `minibatch` at `stage`.
    pub fn forward(stage: u32, minibatch: u32, microbatch: u32) -> Self {
        Self {
            stage,
            kind: ActionKind::Forward(MicrobatchId::new(minibatch, microbatch)),
        }
    }

    /// Backward of the whole mini-batch at `stage`.
    pub fn backward(stage: u32, minibatch: u32) -> Self {
        Self {
            stage,
            kind: ActionKind::BackwardMinibatch(minibatch),
        }
    }

    /// Backward of one micro-batch at `stage`.
    pub fn backward_microbatch(stage: u32, minibatch: u32, microbatch: u32) -> Self {
        Self {
            stage,
            kind: ActionKind::BackwardMicrobatch(MicrobatchId::new(minibatch, microbatch)),
        }
    }

    /// Optimizer update after `minibatch` at `stage`.
    pub fn update(stage: u32, minibatch: u32) -> Self {
        Self {
            stage,
            kind: ActionKind::Update(minibatch),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = self.stage;
        match self.kind {
            ActionKind::Forward(mb) => write!(f, "{stage}F{}.{}", mb.minibatch, mb.microbatch),
            ActionKind::BackwardMinibatch(i) => write!(f, "{stage}B{i}"),
            ActionKind::BackwardMicrobatch(mb) => {
                write!(f, "{stage}B{}.{}", mb.minibatch, mb.microbatch)
            }
            ActionKind::Update(i) => write!(f, "{stage}U{i}"),
        }
    }
}

/// Why an action's text form could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid action `{text}`: {reason} (expected forms: `2F5.1`, `2B5`, `2B5.1`, `2U5`)")]
pub struct ParseActionError {
    /// The text that failed to parse.
    pub text: String,
    /// What was wrong with it.
    pub reason: &'static str,
}

impl FromStr for Action {
    type Err = ParseActionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ParseActionError {
            text: text.to_string(),
            reason,
        };
        let letter_at = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| fail("no kind letter"))?;
        let stage: u32 = text[..letter_at]
            .parse()
            .map_err(|_| fail("missing or bad stage number"))?;
        let letter = text[letter_at..]
            .chars()
            .next()
            .ok_or_else(|| fail("no kind letter"))?;
        let rest = &text[letter_at + 1..];
        let number = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| fail("bad mini-batch or micro-batch number"))
        };
        let split = |s: &str| -> Result<(u32, Option<u32>), ParseActionError> {
            match s.split_once('.') {
                Some((i, j)) => Ok((number(i)?, Some(number(j)?))),
                None => Ok((number(s)?, None)),
            }
        };
        let kind = match (letter, split(rest)?) {
            ('F', (i, Some(j))) => ActionKind::Forward(MicrobatchId::new(i, j)),
            ('F', (_, None)) => return Err(fail("a forward needs `mini-batch.micro-batch`")),
            ('B', (i, None)) => ActionKind::BackwardMinibatch(i),
            ('B', (i, Some(j))) => ActionKind::BackwardMicrobatch(MicrobatchId::new(i, j)),
            ('U', (i, None)) => ActionKind::Update(i),
            ('U', (_, Some(_))) => return Err(fail("an update belongs to a whole mini-batch")),
            _ => return Err(fail("unknown kind letter (use F, B or U)")),
        };
        Ok(Action { stage, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_text() {
        for action in [
            Action::forward(2, 5, 1),
            Action::backward(0, 17),
            Action::backward_microbatch(3, 4, 2),
            Action::update(1, 0),
        ] {
            let text = action.to_string();
            assert_eq!(text.parse::<Action>().unwrap(), action, "{text}");
        }
        assert_eq!(Action::forward(2, 5, 1).to_string(), "2F5.1");
        assert_eq!(Action::backward(2, 5).to_string(), "2B5");
    }

    #[test]
    fn malformed_text_is_rejected_with_the_text_named() {
        for bad in ["", "F1.0", "2X1", "2F1", "2U1.0", "2Fa.b", "2B"] {
            let err = bad.parse::<Action>().unwrap_err();
            assert_eq!(err.text, bad);
        }
    }
}
