//! Ctrl-C and SIGTERM: the first asks the running training to stop at its next safe point, a
//! second one ends the process at once.
//!
//! A signal handler may do almost nothing safely, so it only raises a flag: the training polls
//! it (every pipeline stage before each action, the training loop between epochs) and stops
//! with a typed `Interrupted` error once the epoch's metrics and checkpoint, if one is being
//! written, are complete. The command then clears its progress bars, prints one line saying
//! what was saved and how to continue, and exits with the shell's code for the signal (130 for
//! SIGINT, 143 for SIGTERM), so scripts can tell an interrupted run from a failed one. The
//! second signal does not wait for any of that (a stuck run can always be ended), and exits
//! with the same codes.
//!
//! Only `train` and `compare` install the handlers ([`StopRequest::install`]): in any other
//! command nothing would poll the flag, and Ctrl-C must keep ending it at once.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

/// A signal that asks a run to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, a job scheduler, `mpirun` passing a stop on to its ranks).
    Terminate,
}

impl StopSignal {
    const ALL: [StopSignal; 2] = [StopSignal::Interrupt, StopSignal::Terminate];

    /// The signal's number.
    fn number(self) -> i32 {
        match self {
            StopSignal::Interrupt => SIGINT,
            StopSignal::Terminate => SIGTERM,
        }
    }

    /// The exit code of a process stopped by this signal, as shells report it: 128 + number.
    pub(crate) fn exit_code(self) -> u8 {
        u8::try_from(128 + self.number()).expect("signal numbers are small")
    }
}

/// The stop flag the training polls, raised by the first SIGINT or SIGTERM, and which of them
/// raised it.
pub(crate) struct StopRequest {
    flag: Arc<AtomicBool>,
    /// The number of the signal that raised the flag; 0 while none has.
    signal: Arc<AtomicUsize>,
}

impl StopRequest {
    /// Installs the handlers: the first SIGINT or SIGTERM raises the flag, the next one exits
    /// the process at once with its exit code.
    pub(crate) fn install() -> anyhow::Result<Self> {
        let request = Self {
            flag: Arc::new(AtomicBool::new(false)),
            signal: Arc::new(AtomicUsize::new(0)),
        };
        for signal in StopSignal::ALL {
            let number = signal.number();
            // Actions run in the order they were registered: the exit is armed only once the
            // flag was raised by an earlier signal.
            signal_hook::flag::register_conditional_shutdown(
                number,
                i32::from(signal.exit_code()),
                Arc::clone(&request.flag),
            )?;
            signal_hook::flag::register_usize(
                number,
                Arc::clone(&request.signal),
                number as usize,
            )?;
            signal_hook::flag::register(number, Arc::clone(&request.flag))?;
        }
        Ok(request)
    }

    /// The flag to hand to the training.
    pub(crate) fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// The signal that raised the flag. SIGTERM when none did here: an MPI rank stops when
    /// another rank was stopped, and `mpirun` stops ranks with SIGTERM.
    pub(crate) fn signal(&self) -> StopSignal {
        let number = self.signal.load(Ordering::Relaxed);
        StopSignal::ALL
            .into_iter()
            .find(|signal| signal.number() as usize == number)
            .unwrap_or(StopSignal::Terminate)
    }

    /// The error that ends a command stopped by this request; `message` says what was saved
    /// and how to continue.
    pub(crate) fn interrupted(&self, message: String) -> anyhow::Error {
        Interrupted {
            signal: self.signal(),
            message,
        }
        .into()
    }
}

/// A command that stopped on request: `main` prints the message (one line, not an error) and
/// exits with the signal's code.
#[derive(Debug)]
pub(crate) struct Interrupted {
    /// The signal that stopped it.
    pub(crate) signal: StopSignal,
    /// What was saved and how to continue.
    pub(crate) message: String,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_shells() {
        assert_eq!(StopSignal::Interrupt.exit_code(), 130);
        assert_eq!(StopSignal::Terminate.exit_code(), 143);
    }
}
