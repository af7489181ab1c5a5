//! How a stage worker exchanges activations and gradients with its neighbours.
//!
//! The worker loop ([`crate::worker::run_stage`]) only ever does two things with messages: send
//! one (tagged with its micro-batch) to the previous or next stage, and wait for the message of
//! a given micro-batch from one of them. [`Transport`] is exactly that, so one worker loop
//! serves every way of connecting stages: [`ChannelTransport`] links threads of one process
//! (what [`crate::run_threaded`] uses), and the MPI crate links processes by putting a
//! serialising adapter over a `ChannelTransport` whose other ends a communication thread owns.
//!
//! Waiting is the delicate part: a stage may receive messages in another order than it needs
//! them (nF1B sends several micro-batches before the one a backward wants), so early messages are
//! kept; and a wait must never outlive a failed run, so it polls an abort flag every few
//! milliseconds instead of blocking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use timeprest_schedule::MicrobatchId;

/// How often a waiting worker checks whether the run was aborted.
pub const ABORT_POLL: Duration = Duration::from_millis(5);

/// One of a stage's two neighbours in the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Neighbour {
    /// Stage s − 1: sends activations, receives gradients.
    Previous,
    /// Stage s + 1: receives activations, sends gradients.
    Next,
}

impl Neighbour {
    fn index(self) -> usize {
        match self {
            Neighbour::Previous => 0,
            Neighbour::Next => 1,
        }
    }
}

/// Why a transport could not send or receive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The run was aborted, or the neighbour hung up (which it only does when a stage failed).
    #[error("aborted because another stage failed")]
    Aborted,
    /// The stage has no such neighbour (stage 0 has no previous one, the last stage no next).
    #[error("this stage has no {0:?} neighbour")]
    NoNeighbour(Neighbour),
    /// The transport itself failed, e.g. a message could not be decoded.
    #[error("transport failure: {0}")]
    Failed(String),
}

/// A message between neighbouring stages: the micro-batch it belongs to and its payload.
#[derive(Debug)]
pub struct Envelope<M> {
    /// The micro-batch.
    pub microbatch: MicrobatchId,
    /// Activations (towards the next stage) or gradients (towards the previous one).
    pub payload: M,
}

/// A stage's connection to its neighbours.
pub trait Transport<M> {
    /// Sends `message`, which belongs to `microbatch`, to neighbour `to`. Does not wait for it
    /// to be received.
    fn send(
        &mut self,
        to: Neighbour,
        microbatch: MicrobatchId,
        message: M,
    ) -> Result<(), TransportError>;

    /// Waits for the message of `microbatch` from neighbour `from`, keeping messages of other
    /// micro-batches that arrive meanwhile. Returns [`TransportError::Aborted`] within a few
    /// milliseconds of `abort` being raised.
    fn take(
        &mut self,
        from: Neighbour,
        microbatch: MicrobatchId,
        abort: &AtomicBool,
    ) -> Result<M, TransportError>;
}

/// One direction of a stage's inbox, with the messages that arrived before they were needed.
struct Inbox<M> {
    receiver: Receiver<Envelope<M>>,
    early: HashMap<MicrobatchId, M>,
}

impl<M> Inbox<M> {
    fn take(&mut self, microbatch: MicrobatchId, abort: &AtomicBool) -> Result<M, TransportError> {
        if let Some(payload) = self.early.remove(&microbatch) {
            return Ok(payload);
        }
        loop {
            if abort.load(Ordering::Relaxed) {
                return Err(TransportError::Aborted);
            }
            match self.receiver.recv_timeout(ABORT_POLL) {
                Ok(envelope) if envelope.microbatch == microbatch => return Ok(envelope.payload),
                Ok(envelope) => {
                    self.early.insert(envelope.microbatch, envelope.payload);
                }
                Err(RecvTimeoutError::Timeout) => {}
                // A neighbour only hangs up early when it failed; its own error is the cause.
                Err(RecvTimeoutError::Disconnected) => return Err(TransportError::Aborted),
            }
        }
    }
}

/// A [`Transport`] over in-process channels (unbounded, so a send never blocks).
pub struct ChannelTransport<M> {
    senders: [Option<Sender<Envelope<M>>>; 2],
    inboxes: [Option<Inbox<M>>; 2],
}

impl<M> Default for ChannelTransport<M> {
    fn default() -> Self {
        Self {
            senders: [None, None],
            inboxes: [None, None],
        }
    }
}

impl<M> ChannelTransport<M> {
    /// Sends to neighbour `to` through `sender`.
    pub fn sending(mut self, to: Neighbour, sender: Sender<Envelope<M>>) -> Self {
        self.senders[to.index()] = Some(sender);
        self
    }

    /// Receives from neighbour `from` through `receiver`.
    pub fn receiving(mut self, from: Neighbour, receiver: Receiver<Envelope<M>>) -> Self {
        self.inboxes[from.index()] = Some(Inbox {
            receiver,
            early: HashMap::new(),
        });
        self
    }

    /// The transports of a whole pipeline of `num_stages` stages, linked neighbour to neighbour.
    pub fn pipeline(num_stages: usize) -> Vec<Self> {
        let mut transports: Vec<Self> = (0..num_stages).map(|_| Self::default()).collect();
        for stage in 1..num_stages {
            let (forward_tx, forward_rx) = unbounded();
            let (backward_tx, backward_rx) = unbounded();
            let previous = std::mem::take(&mut transports[stage - 1]);
            transports[stage - 1] = previous
                .sending(Neighbour::Next, forward_tx)
                .receiving(Neighbour::Next, backward_rx);
            let current = std::mem::take(&mut transports[stage]);
            transports[stage] = current
                .sending(Neighbour::Previous, backward_tx)
                .receiving(Neighbour::Previous, forward_rx);
        }
        transports
    }
}

impl<M> Transport<M> for ChannelTransport<M> {
    fn send(
        &mut self,
        to: Neighbour,
        microbatch: MicrobatchId,
        payload: M,
    ) -> Result<(), TransportError> {
        let sender = self.senders[to.index()]
            .as_ref()
            .ok_or(TransportError::NoNeighbour(to))?;
        sender
            .send(Envelope {
                microbatch,
                payload,
            })
            .map_err(|_| TransportError::Aborted)
    }

    fn take(
        &mut self,
        from: Neighbour,
        microbatch: MicrobatchId,
        abort: &AtomicBool,
    ) -> Result<M, TransportError> {
        self.inboxes[from.index()]
            .as_mut()
            .ok_or(TransportError::NoNeighbour(from))?
            .take(microbatch, abort)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(minibatch: u32, microbatch: u32) -> MicrobatchId {
        MicrobatchId::new(minibatch, microbatch)
    }

    #[test]
    fn a_pipeline_links_neighbours_in_both_directions() {
        let mut links = ChannelTransport::<u32>::pipeline(3);
        let never = AtomicBool::new(false);
        links[0].send(Neighbour::Next, id(0, 0), 10).unwrap();
        links[1].send(Neighbour::Next, id(0, 0), 11).unwrap();
        links[2].send(Neighbour::Previous, id(0, 0), 21).unwrap();
        links[1].send(Neighbour::Previous, id(0, 0), 20).unwrap();
        assert_eq!(links[1].take(Neighbour::Previous, id(0, 0), &never), Ok(10));
        assert_eq!(links[2].take(Neighbour::Previous, id(0, 0), &never), Ok(11));
        assert_eq!(links[1].take(Neighbour::Next, id(0, 0), &never), Ok(21));
        assert_eq!(links[0].take(Neighbour::Next, id(0, 0), &never), Ok(20));
    }

    #[test]
    fn the_ends_of_a_pipeline_have_no_outer_neighbour() {
        let mut links = ChannelTransport::<u32>::pipeline(2);
        let never = AtomicBool::new(false);
        assert_eq!(
            links[0].send(Neighbour::Previous, id(0, 0), 1),
            Err(TransportError::NoNeighbour(Neighbour::Previous))
        );
        assert_eq!(
            links[1].take(Neighbour::Next, id(0, 0), &never),
            Err(TransportError::NoNeighbour(Neighbour::Next))
        );
    }

    #[test]
    fn early_messages_wait_for_their_turn() {
        let mut links = ChannelTransport::<u32>::pipeline(2);
        let never = AtomicBool::new(false);
        for j in 0..3 {
            links[0].send(Neighbour::Next, id(1, j), j).unwrap();
        }
        assert_eq!(links[1].take(Neighbour::Previous, id(1, 2), &never), Ok(2));
        assert_eq!(links[1].take(Neighbour::Previous, id(1, 0), &never), Ok(0));
        assert_eq!(links[1].take(Neighbour::Previous, id(1, 1), &never), Ok(1));
    }

    #[test]
    fn a_wait_ends_on_abort_and_on_a_hung_up_neighbour() {
        let mut links = ChannelTransport::<u32>::pipeline(2);
        let aborted = AtomicBool::new(true);
        assert_eq!(
            links[1].take(Neighbour::Previous, id(0, 0), &aborted),
            Err(TransportError::Aborted)
        );
        let mut last = links.pop().unwrap();
        drop(links);
        let never = AtomicBool::new(false);
        assert_eq!(
            last.take(Neighbour::Previous, id(0, 0), &never),
            Err(TransportError::Aborted)
        );
        assert_eq!(
            last.send(Neighbour::Previous, id(0, 0), 1),
            Err(TransportError::Aborted)
        );
    }
}
