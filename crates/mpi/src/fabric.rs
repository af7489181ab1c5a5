//! The process group as one rank sees it: tagged byte messages to and from other ranks.
//!
//! Everything above this layer (the handshake, the per-epoch message pump, gathering results,
//! aborting) is written against [`Fabric`], which has exactly what MPI's non-blocking
//! point-to-point operations offer: start a send that never blocks, and poll for whatever has
//! arrived. Never blocking is the point: a rank always keeps receiving while its own sends are
//! in flight (two neighbours sending large messages to each other cannot deadlock), and every
//! wait can check for an abort. [`LocalFabric`] implements it with channels between threads of
//! one process, so the whole rank driver is tested without MPI; the MPI crate's
//! `MpiFabric` implements it on rsmpi.

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::error::MpiError;

/// What a message is; MPI carries it as the message tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Tag {
    /// Start-up: the rank's identity (version, world size, configuration).
    Hello = 1,
    /// A frame between neighbouring stages (activations or gradients).
    Data = 2,
    /// End of an epoch: a rank's events, losses and weights, for rank 0.
    Summary = 3,
    /// Rank 0 to all: the epoch is accounted for, go on.
    Continue = 4,
    /// The run failed; the payload is the cause, in words.
    Abort = 5,
    /// Reply to [`Tag::Abort`]: the abort was seen.
    AbortSeen = 6,
    /// Rank 0 to all at start-up: which blocks each stage owns, checkpoints, resume.
    Start = 7,
    /// A rank to rank 0: its stage's checkpoint file is written and synced; the payload is the
    /// stage's scalars for `state.json`.
    Saved = 8,
}

impl Tag {
    /// The tag of an MPI tag value, if it is one of ours.
    pub fn from_i32(value: i32) -> Option<Tag> {
        Tag::ALL.into_iter().find(|tag| *tag as i32 == value)
    }

    /// Every tag.
    pub const ALL: [Tag; 8] = [
        Tag::Hello,
        Tag::Data,
        Tag::Summary,
        Tag::Continue,
        Tag::Abort,
        Tag::AbortSeen,
        Tag::Start,
        Tag::Saved,
    ];
}

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The sending rank.
    pub from: usize,
    /// What it is.
    pub tag: Tag,
    /// The payload.
    pub bytes: Vec<u8>,
}

/// Point-to-point messaging between the ranks of one run. Messages between a pair of ranks
/// arrive in the order they were sent.
pub trait Fabric {
    /// This process's rank.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn size(&self) -> usize;

    /// Starts sending `bytes` to rank `to`; never blocks.
    fn send(&mut self, to: usize, tag: Tag, bytes: Vec<u8>) -> Result<(), MpiError>;

    /// Advances the pending sends and returns a message that has arrived, if any; never blocks.
    fn poll(&mut self) -> Result<Option<Received>, MpiError>;

    /// Number of sends that have not completed yet.
    fn pending_sends(&self) -> usize;

    /// The run failed on this rank: release the fabric on drop without waiting for the other
    /// ranks (they may be gone).
    fn abandon(&mut self) {}
}

/// A borrowed fabric is a fabric, so that its owner can keep it (for MPI: keep MPI initialised)
/// after a run.
impl<F: Fabric + ?Sized> Fabric for &mut F {
    fn rank(&self) -> usize {
        (**self).rank()
    }

    fn size(&self) -> usize {
        (**self).size()
    }

    fn send(&mut self, to: usize, tag: Tag, bytes: Vec<u8>) -> Result<(), MpiError> {
        (**self).send(to, tag, bytes)
    }

    fn poll(&mut self) -> Result<Option<Received>, MpiError> {
        (**self).poll()
    }

    fn pending_sends(&self) -> usize {
        (**self).pending_sends()
    }
}

/// A [`Fabric`] between threads of one process (for tests and for trying the rank driver
/// without MPI).
pub struct LocalFabric {
    rank: usize,
    peers: Vec<Sender<Received>>,
    inbox: Receiver<Received>,
}

impl LocalFabric {
    /// The fabrics of a group of `size` ranks, rank 0 first.
    pub fn group(size: usize) -> Vec<LocalFabric> {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..size).map(|_| unbounded()).unzip();
        receivers
            .into_iter()
            .enumerate()
            .map(|(rank, inbox)| LocalFabric {
                rank,
                peers: senders.clone(),
                inbox,
            })
            .collect()
    }
}

impl Fabric for LocalFabric {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.peers.len()
    }

    fn send(&mut self, to: usize, tag: Tag, bytes: Vec<u8>) -> Result<(), MpiError> {
        let message = Received {
            from: self.rank,
            tag,
            bytes,
        };
        // A rank that has left the group no longer reads; like MPI, the send still succeeds.
        let _ = self.peers[to].send(message);
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<Received>, MpiError> {
        Ok(self.inbox.try_recv().ok())
    }

    fn pending_sends(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_through_their_numbers() {
        for tag in Tag::ALL {
            assert_eq!(Tag::from_i32(tag as i32), Some(tag));
        }
        let found = (-5..100).filter_map(Tag::from_i32).count();
        assert_eq!(found, Tag::ALL.len(), "tag numbers must be distinct");
        assert_eq!(Tag::from_i32(0), None);
    }

    #[test]
    fn a_local_group_delivers_in_order_with_the_sender() {
        let mut group = LocalFabric::group(3);
        assert_eq!((group[2].rank(), group[2].size()), (2, 3));
        group[0].send(2, Tag::Data, vec![1]).unwrap();
        group[0].send(2, Tag::Abort, vec![2]).unwrap();
        group[1].send(2, Tag::Hello, vec![3]).unwrap();
        let received: Vec<_> = std::iter::from_fn(|| group[2].poll().unwrap()).collect();
        assert_eq!(
            received,
            vec![
                Received {
                    from: 0,
                    tag: Tag::Data,
                    bytes: vec![1]
                },
                Received {
                    from: 0,
                    tag: Tag::Abort,
                    bytes: vec![2]
                },
                Received {
                    from: 1,
                    tag: Tag::Hello,
                    bytes: vec![3]
                },
            ]
        );
        assert_eq!(group[1].poll().unwrap(), None);
    }
}
