//! Fault injection for testing what a distributed run does when one rank fails.
//!
//! The failure tests start real `mpirun` jobs of the real binary, so the fault has to be
//! switched on from outside: `TIMEPREST_FAULT_STAGE=s` makes stage s fail at its second forward
//! (after messages have crossed the pipeline) of the first epoch, or of epoch e with
//! `TIMEPREST_FAULT_EPOCH=e` (to interrupt a run after checkpoints were written);
//! `TIMEPREST_FAULT_KIND` says how: `error` (a stage error, the default), `panic`, or `exit`
//! (the process dies on the spot, as if killed). Only the MPI rank driver reads these
//! variables; a normal run never sets them.

use timeprest_policy::{WeightKey, WeightRecipe};
use timeprest_runtime::{BackwardWork, ComputeError, ForwardOutput, StageCompute};
use timeprest_schedule::MicrobatchId;

use crate::error::MpiError;

/// The variable naming the stage that fails.
pub const FAULT_STAGE_VAR: &str = "TIMEPREST_FAULT_STAGE";
/// The variable naming how it fails.
pub const FAULT_KIND_VAR: &str = "TIMEPREST_FAULT_KIND";
/// The variable naming the epoch in which it fails.
pub const FAULT_EPOCH_VAR: &str = "TIMEPREST_FAULT_EPOCH";
/// The forward (1-based, counted per stage within the epoch) at which the fault fires.
const FAULT_AT_FORWARD: u32 = 2;
/// The exit code of a rank that dies by [`FaultKind::Exit`].
pub const FAULT_EXIT_CODE: i32 = 3;

/// How an injected fault shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The stage computation returns an error.
    Error,
    /// The stage computation panics.
    Panic,
    /// The process exits at once, without telling anyone.
    Exit,
}

/// A fault to inject into one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The stage that fails.
    pub stage: u32,
    /// How.
    pub kind: FaultKind,
    /// In which epoch (from 1).
    pub epoch: u32,
}

impl Fault {
    /// The fault the environment asks for, if any.
    pub fn from_env() -> Result<Option<Fault>, MpiError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let Some(stage) = var(FAULT_STAGE_VAR) else {
            return Ok(None);
        };
        let bad = |what: String| MpiError::Mpi(format!("fault injection: {what}"));
        let stage = stage
            .parse()
            .map_err(|_| bad(format!("{FAULT_STAGE_VAR}={stage} is not a stage index")))?;
        let kind = match var(FAULT_KIND_VAR).as_deref() {
            None | Some("error") => FaultKind::Error,
            Some("panic") => FaultKind::Panic,
            Some("exit") => FaultKind::Exit,
            Some(other) => {
                return Err(bad(format!(
                    "{FAULT_KIND_VAR}={other}; use error, panic or exit"
                )));
            }
        };
        let epoch = match var(FAULT_EPOCH_VAR) {
            None => 1,
            Some(e) => e.parse().ok().filter(|e| *e > 0).ok_or_else(|| {
                bad(format!(
                    "{FAULT_EPOCH_VAR}={e} is not an epoch number from 1"
                ))
            })?,
        };
        Ok(Some(Fault { stage, kind, epoch }))
    }
}

/// A stage compute that fails as `fault` says (if it is for this stage), and otherwise is
/// `inner`.
pub struct Faulty<'a, C> {
    inner: &'a mut C,
    fault: Option<FaultKind>,
    forwards: u32,
}

impl<'a, C> Faulty<'a, C> {
    /// `inner`, stage `stage` in epoch `epoch`, failing if `fault` is for them.
    pub fn new(inner: &'a mut C, stage: u32, epoch: u32, fault: Option<Fault>) -> Self {
        Self {
            inner,
            fault: fault
                .filter(|f| f.stage == stage && f.epoch == epoch)
                .map(|f| f.kind),
            forwards: 0,
        }
    }
}

impl<C: StageCompute> StageCompute for Faulty<'_, C> {
    type Message = C::Message;
    type Targets = C::Targets;

    fn forward(
        &mut self,
        microbatch: MicrobatchId,
        input: Self::Message,
        targets: Option<Self::Targets>,
        recipe: &WeightRecipe,
        backward_reads_forward_weights: bool,
    ) -> Result<ForwardOutput<Self::Message>, ComputeError> {
        self.forwards += 1;
        if self.forwards == FAULT_AT_FORWARD {
            match self.fault {
                None => {}
                Some(FaultKind::Error) => {
                    return Err(ComputeError(format!("injected fault ({FAULT_STAGE_VAR})")));
                }
                Some(FaultKind::Panic) => panic!("injected panic ({FAULT_STAGE_VAR})"),
                Some(FaultKind::Exit) => std::process::exit(FAULT_EXIT_CODE),
            }
        }
        self.inner.forward(
            microbatch,
            input,
            targets,
            recipe,
            backward_reads_forward_weights,
        )
    }

    fn backward(
        &mut self,
        work: Vec<BackwardWork<Self::Message>>,
    ) -> Result<Vec<Option<Self::Message>>, ComputeError> {
        self.inner.backward(work)
    }

    fn update(&mut self, base: &[WeightRecipe]) -> Result<(), ComputeError> {
        self.inner.update(base)
    }

    fn release(&mut self, key: WeightKey) {
        self.inner.release(key);
    }

    fn message_bytes(message: &Self::Message) -> u64 {
        C::message_bytes(message)
    }

    fn stored_weight_bytes(&self) -> u64 {
        self.inner.stored_weight_bytes()
    }

    fn stored_weight_sets(&self) -> u32 {
        self.inner.stored_weight_sets()
    }

    fn activation_bytes_peak(&mut self) -> u64 {
        self.inner.activation_bytes_peak()
    }
}
