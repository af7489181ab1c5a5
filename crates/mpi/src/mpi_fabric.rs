//! [`Fabric`] on MPI (rsmpi): non-blocking sends and probe-then-receive.
//!
//! Sends use `MPI_Isend` on buffers the fabric owns until MPI is done with them (a send that
//! blocked could deadlock two neighbours sending large messages to each other); receives use
//! `MPI_Improbe` on any source and tag, then a matched receive of exactly the probed size.
//! Everything happens on the thread that initialised MPI (`MPI_THREAD_FUNNELED`).
//!
//! Dropping the fabric finalises MPI, unless sends are still pending (a failed run whose
//! neighbour will never receive): then it leaves MPI as it is, since `MPI_Finalize` could wait
//! forever, and the launcher cleans up after the process exits.

use mpi::Threading;
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::error::MpiError;
use crate::fabric::{Fabric, Received, Tag};
use crate::wire::WireError;

/// This process's view of `MPI_COMM_WORLD`.
pub struct MpiFabric {
    world: SimpleCommunicator,
    /// Sends in flight; each owns its buffer (leaked from a `Box<[u8]>`, reclaimed on completion).
    sends: Vec<Request<'static, [u8]>>,
    /// Finalises MPI when dropped.
    universe: Option<Universe>,
}

impl MpiFabric {
    /// Initialises MPI on the calling thread, which must be the only one to use the fabric.
    pub fn init() -> Result<Self, MpiError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| MpiError::Mpi("MPI is already initialised in this process".into()))?;
        if threading < Threading::Funneled {
            return Err(MpiError::Mpi(format!(
                "the MPI library offers thread support {threading:?}; timeprest needs Funneled"
            )));
        }
        Ok(Self {
            world: universe.world(),
            sends: Vec::new(),
            universe: Some(universe),
        })
    }

    /// The communicator (`MPI_COMM_WORLD`), e.g. for measuring raw MPI beside the fabric.
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.world
    }

    fn complete_sends(&mut self) {
        let mut pending = Vec::with_capacity(self.sends.len());
        for request in self.sends.drain(..) {
            match request.test_with_data() {
                Ok((_, buffer)) => {
                    let buffer = buffer as *const [u8] as *mut [u8];
                    // SAFETY: `buffer` was leaked from a `Box<[u8]>` in `send`, and its request
                    // (the only other reference) has just completed, so MPI no longer reads it.
                    drop(unsafe { Box::from_raw(buffer) });
                }
                Err(request) => pending.push(request),
            }
        }
        self.sends = pending;
    }
}

impl Fabric for MpiFabric {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn send(&mut self, to: usize, tag: Tag, bytes: Vec<u8>) -> Result<(), MpiError> {
        let rank = i32::try_from(to).map_err(|_| MpiError::Mpi(format!("rank {to}")))?;
        let buffer: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let request = self.world.process_at_rank(rank).immediate_send_with_tag(
            StaticScope,
            buffer,
            tag as i32,
        );
        self.sends.push(request);
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<Received>, MpiError> {
        self.complete_sends();
        let Some(probed) = self.world.any_process().immediate_matched_probe() else {
            return Ok(None);
        };
        let (bytes, status) = probed.matched_receive_vec::<u8>();
        let from = status.source_rank() as usize;
        let tag = Tag::from_i32(status.tag()).ok_or_else(|| MpiError::Protocol {
            rank: from,
            cause: WireError::Invalid(format!("unknown message tag {}", status.tag())),
        })?;
        Ok(Some(Received { from, tag, bytes }))
    }

    fn pending_sends(&self) -> usize {
        self.sends.len()
    }
}

impl Drop for MpiFabric {
    fn drop(&mut self) {
        if self.sends.is_empty() {
            return;
        }
        // The buffers stay leaked and MPI is not finalised: see the module documentation.
        for request in self.sends.drain(..) {
            std::mem::forget(request);
        }
        std::mem::forget(self.universe.take());
    }
}
