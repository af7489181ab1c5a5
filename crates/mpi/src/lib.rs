//! Multi-process and multi-node pipelines on MPI: one rank per stage, bit-identical to the
//! threaded runtime.
//!
//! `mpirun -np W timeprest train --transport mpi …` starts W processes; rank s builds and runs
//! only stage s ([`distributed`]), with the runtime's own worker loop
//! ([`timeprest_runtime::run_stage`]), so a distributed run computes exactly what a threaded run
//! computes. The layers, bottom up:
//!
//! - [`wire`]: stage messages as bytes ([`WireMessage`]), frames, [`WireTransport`].
//! - [`fabric`]: tagged, never-blocking point-to-point messages between ranks ([`Fabric`]);
//!   [`LocalFabric`] between threads, `MpiFabric` (feature `mpi`) on rsmpi.
//! - [`rank`]: one rank's message pump, waits, gathers and aborts ([`Rank`]).
//! - [`handshake`]: the start-up check that all ranks run the same configuration.
//! - [`setup`], [`summary`], [`distributed`]: rank-local training, rank 0's books.
//!
//! MPI communicators are not `Send`, so the thread that initialised MPI owns the fabric and
//! pumps messages, and the stage runs on a second thread behind channels. Without the `mpi`
//! feature the crate needs no system MPI; its tests then run whole distributed trainings with
//! ranks as threads over [`LocalFabric`].
#![warn(missing_docs)]

pub mod distributed;
pub mod error;
pub mod fabric;
pub mod fault;
pub mod handshake;
#[cfg(feature = "mpi")]
pub mod mpi_fabric;
pub mod rank;
pub mod setup;
pub mod summary;
pub mod wire;

pub use distributed::{RankRun, train_rank};
pub use error::MpiError;
pub use fabric::{Fabric, LocalFabric, Received, Tag};
pub use fault::{Fault, FaultKind};
#[cfg(feature = "mpi")]
pub use mpi_fabric::MpiFabric;
pub use rank::{Frames, Rank};
pub use wire::{WireMessage, WireTransport};
