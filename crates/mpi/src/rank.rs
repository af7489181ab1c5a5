//! One rank's side of a distributed run: the message pump, waits, gathering and aborting.
//!
//! A [`Rank`] owns the [`Fabric`] and is used from one thread only (MPI communicators are not
//! `Send`). While a stage runs, [`Rank::run_worker`] runs the stage on a second thread and *pumps*
//! on this one: frames the worker sends go out through the fabric, frames that arrive go to the
//! worker's inboxes. The worker sees a channel transport ([`Frames`]), so the runtime's one
//! worker loop runs unchanged.
//!
//! Polling is tuned by what the worker does: while it waits for a frame, or while sends are in
//! flight (MPI moves large messages only when polled), the pump polls without sleeping, so a
//! frame reaches a waiting worker within microseconds; while the worker computes, the pump
//! sleeps longer and longer between polls (up to a millisecond), leaving the cores to the
//! computation (several ranks may share a core).
//!
//! Nothing here blocks without a way out. Every wait polls, so an `Abort` message from any rank
//! ends it: the pump raises the worker's abort flag (the worker stops within milliseconds),
//! acknowledges, and returns [`MpiError::Remote`] naming the failing rank. A rank that fails itself
//! calls [`Rank::abort_all`], which tells everyone and waits (briefly) until they have seen it, so
//! that every rank prints the cause before the MPI launcher tears the job down. A rank stopped on
//! request (Ctrl-C, SIGTERM) aborts the same way with the cause [`INTERRUPTED`], which the
//! others report as [`MpiError::Interrupted`] rather than as a failure. Messages that
//! arrive before they are wanted (a summary during an epoch, the next epoch's frames during the
//! wait for the go-ahead) are kept in a backlog, never dropped.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, unbounded};
use timeprest_runtime::{
    ChannelTransport, Envelope, INTERRUPTED, Neighbour, Transport, TransportError,
};
use timeprest_schedule::MicrobatchId;

use crate::error::MpiError;
use crate::fabric::{Fabric, Received, Tag};
use crate::wire::frame_microbatch;

/// How long an aborting rank waits for the others to see its abort.
const ABORT_WAIT: Duration = Duration::from_secs(3);
/// How long an aborting rank lingers after everyone saw the abort, so that they print their
/// error before the launcher kills them for this rank's non-zero exit.
const ABORT_GRACE: Duration = Duration::from_millis(300);
/// How long pending sends may take to complete at the end of a run.
pub const FLUSH_WAIT: Duration = Duration::from_secs(30);
/// How long a stopping rank waits for its last small messages (an acknowledgement of another's
/// abort, its start-up identity) to leave, so that it can leave MPI in order.
pub const ACK_WAIT: Duration = Duration::from_secs(1);

/// Idle rounds spent only yielding before a rank starts sleeping between polls.
const SPIN_ROUNDS: u32 = 64;
/// The first sleep between idle polls; it doubles up to [`MAX_SLEEP`].
const MIN_SLEEP: Duration = Duration::from_micros(10);
/// The longest sleep between polls: the worst latency this adds to a message that arrives
/// while the rank is idle.
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// How long to pause between polls: a busy rank never sleeps, an idle one sleeps longer and
/// longer (2 cores may hold several ranks, so spinning would steal their compute).
#[derive(Default)]
struct Backoff {
    idle_rounds: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.idle_rounds = 0;
    }

    /// The pause after one more idle round; zero means "just yield".
    fn next(&mut self) -> Duration {
        self.idle_rounds = self.idle_rounds.saturating_add(1);
        match self.idle_rounds.checked_sub(SPIN_ROUNDS) {
            None | Some(0) => Duration::ZERO,
            Some(n) => MIN_SLEEP
                .saturating_mul(1 << (n - 1).min(10))
                .min(MAX_SLEEP),
        }
    }

    fn pause(&mut self) {
        match self.next() {
            Duration::ZERO => thread::yield_now(),
            pause => thread::sleep(pause),
        }
    }
}

/// The worker's transport while [`Rank::run_worker`] pumps: frames to and from the pipeline
/// neighbours through the pump, and a flag telling the pump when the worker is blocked waiting.
pub struct Frames<'a> {
    channels: ChannelTransport<Vec<u8>>,
    waiting: &'a AtomicBool,
}

impl Transport<Vec<u8>> for Frames<'_> {
    fn send(
        &mut self,
        to: Neighbour,
        microbatch: MicrobatchId,
        frame: Vec<u8>,
    ) -> Result<(), TransportError> {
        self.channels.send(to, microbatch, frame)
    }

    fn take(
        &mut self,
        from: Neighbour,
        microbatch: MicrobatchId,
        abort: &AtomicBool,
    ) -> Result<Vec<u8>, TransportError> {
        self.waiting.store(true, Ordering::Relaxed);
        let frame = self.channels.take(from, microbatch, abort);
        self.waiting.store(false, Ordering::Relaxed);
        frame
    }
}

/// The pump side: the channels between the worker's transport and the fabric.
struct Pipes {
    /// Frames from the worker, per destination rank.
    outgoing: Vec<(usize, Receiver<Envelope<Vec<u8>>>)>,
    /// Frames for the worker, per source rank.
    incoming: Vec<(usize, Sender<Envelope<Vec<u8>>>)>,
}

impl Pipes {
    /// Channels for the neighbours `rank` has in a pipeline of `size` ranks, and the worker's
    /// transport over them.
    fn new(rank: usize, size: usize) -> (Self, ChannelTransport<Vec<u8>>) {
        let mut transport = ChannelTransport::default();
        let mut pipes = Pipes {
            outgoing: Vec::new(),
            incoming: Vec::new(),
        };
        let neighbours = [
            (Neighbour::Previous, rank.checked_sub(1)),
            (Neighbour::Next, Some(rank + 1).filter(|next| *next < size)),
        ];
        for (neighbour, peer) in neighbours {
            if let Some(peer) = peer {
                let (to_peer, from_worker) = unbounded();
                let (to_worker, from_peer) = unbounded();
                transport = transport
                    .sending(neighbour, to_peer)
                    .receiving(neighbour, from_peer);
                pipes.outgoing.push((peer, from_worker));
                pipes.incoming.push((peer, to_worker));
            }
        }
        (pipes, transport)
    }

    fn drained(&self) -> bool {
        self.outgoing.iter().all(|(_, rx)| rx.is_empty())
    }

    /// Waits up to `pause` for the worker to send something.
    fn wait_for_worker(&self, pause: Duration) {
        if pause.is_zero() {
            thread::yield_now();
            return;
        }
        let mut select = Select::new();
        for (_, rx) in &self.outgoing {
            select.recv(rx);
        }
        let _ = select.ready_timeout(pause);
    }
}

/// What the pump watches besides the fabric and the channels.
#[derive(Clone, Copy)]
struct Flags<'a> {
    /// Raised when the run must stop.
    abort: &'a AtomicBool,
    /// Raised while the worker waits for a frame.
    waiting: &'a AtomicBool,
    /// Raised on Ctrl-C or SIGTERM; the pump then raises `abort`, so that a worker waiting for
    /// a frame stops too.
    stop: Option<&'a AtomicBool>,
}

/// This process's rank, with its fabric.
pub struct Rank<F: Fabric> {
    fabric: F,
    backlog: VecDeque<Received>,
}

impl<F: Fabric> Rank<F> {
    /// The rank of `fabric`.
    pub fn new(fabric: F) -> Self {
        Self {
            fabric,
            backlog: VecDeque::new(),
        }
    }

    /// This rank's index.
    pub fn index(&self) -> usize {
        self.fabric.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.fabric.size()
    }

    fn others(&self) -> impl Iterator<Item = usize> + use<F> {
        let me = self.index();
        (0..self.size()).filter(move |r| *r != me)
    }

    /// Starts sending `bytes` to rank `to`.
    pub fn send(&mut self, to: usize, tag: Tag, bytes: Vec<u8>) -> Result<(), MpiError> {
        self.fabric.send(to, tag, bytes)
    }

    /// Sends `bytes` to every other rank.
    pub fn broadcast(&mut self, tag: Tag, bytes: &[u8]) -> Result<(), MpiError> {
        for to in self.others() {
            self.fabric.send(to, tag, bytes.to_vec())?;
        }
        Ok(())
    }

    /// The next message: kept ones first, then new arrivals.
    fn next_message(&mut self) -> Result<Option<Received>, MpiError> {
        match self.backlog.pop_front() {
            Some(message) => Ok(Some(message)),
            None => self.fabric.poll(),
        }
    }

    /// Acknowledges `abort` and turns it into the error this rank reports: the other rank's
    /// failure, or [`MpiError::Interrupted`] when it stopped on request.
    fn remote_abort(&mut self, abort: Received) -> MpiError {
        let _ = self.fabric.send(abort.from, Tag::AbortSeen, Vec::new());
        if abort.bytes == INTERRUPTED.as_bytes() {
            return MpiError::Interrupted { rank: abort.from };
        }
        MpiError::Remote {
            rank: abort.from,
            cause: String::from_utf8_lossy(&abort.bytes).into_owned(),
        }
    }

    /// Waits for the `tag` message of rank `from`, keeping other messages for later. Ends with
    /// [`MpiError::Remote`] if any rank aborts, and with [`MpiError::Timeout`] after `timeout`.
    pub fn wait_for(
        &mut self,
        from: usize,
        tag: Tag,
        timeout: Option<(Duration, &'static str)>,
    ) -> Result<Vec<u8>, MpiError> {
        let wanted = |m: &Received| m.from == from && m.tag == tag;
        if let Some(position) = self.backlog.iter().position(wanted) {
            let message = self
                .backlog
                .remove(position)
                .expect("position is in the backlog");
            return Ok(message.bytes);
        }
        let started = Instant::now();
        let mut backoff = Backoff::default();
        loop {
            match self.fabric.poll()? {
                Some(message) if message.tag == Tag::Abort => {
                    return Err(self.remote_abort(message));
                }
                Some(message) if wanted(&message) => return Ok(message.bytes),
                Some(message) => {
                    self.backlog.push_back(message);
                    backoff.reset();
                }
                None => {
                    if let Some((limit, what)) = timeout
                        && started.elapsed() > limit
                    {
                        return Err(MpiError::Timeout {
                            rank: from,
                            what,
                            seconds: limit.as_secs(),
                        });
                    }
                    backoff.pause();
                }
            }
        }
    }

    /// Sends `identity` to every rank and returns every rank's identity, by rank.
    pub fn exchange(
        &mut self,
        tag: Tag,
        identity: Vec<u8>,
        timeout: Option<(Duration, &'static str)>,
    ) -> Result<Vec<Vec<u8>>, MpiError> {
        self.broadcast(tag, &identity)?;
        let me = self.index();
        let mut own = Some(identity);
        (0..self.size())
            .map(|rank| match rank == me {
                true => Ok(own.take().expect("own identity used once")),
                false => self.wait_for(rank, tag, timeout),
            })
            .collect()
    }

    /// Runs `work` on a new thread with a transport to this rank's pipeline neighbours, pumping
    /// frames between it and the fabric until it returns and its frames are sent. An abort from
    /// another rank raises `abort` (the worker must poll it) and ends with
    /// [`MpiError::Remote`] (or [`MpiError::Interrupted`]) once the worker has stopped. A raised
    /// `stop` raises `abort` too; the worker reports that itself.
    pub fn run_worker<R: Send>(
        &mut self,
        abort: &AtomicBool,
        stop: Option<&AtomicBool>,
        work: impl FnOnce(Frames<'_>) -> R + Send,
    ) -> Result<R, MpiError> {
        let (pipes, channels) = Pipes::new(self.index(), self.size());
        let waiting = AtomicBool::new(false);
        let frames = Frames {
            channels,
            waiting: &waiting,
        };
        let mut remote = None;
        let mut deferred = Vec::new();
        let (pumped, result) = thread::scope(|scope| {
            let worker = thread::Builder::new()
                .name(format!("rank-{}-stage", self.index()))
                .spawn_scoped(scope, move || work(frames))
                .expect("spawning the stage thread");
            let flags = Flags {
                abort,
                waiting: &waiting,
                stop,
            };
            let pumped = self.pump(&pipes, flags, &worker, &mut remote, &mut deferred);
            if pumped.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            (pumped, worker.join())
        });
        self.backlog.extend(deferred);
        pumped?;
        if let Some(error) = remote {
            self.flush(ACK_WAIT);
            return Err(error);
        }
        result.map_err(|_| MpiError::Mpi("the stage thread panicked outside its guard".into()))
    }

    fn pump(
        &mut self,
        pipes: &Pipes,
        Flags {
            abort,
            waiting,
            stop,
        }: Flags<'_>,
        worker: &thread::ScopedJoinHandle<'_, impl Sized>,
        remote: &mut Option<MpiError>,
        deferred: &mut Vec<Received>,
    ) -> Result<(), MpiError> {
        let mut backoff = Backoff::default();
        loop {
            if stop.is_some_and(|stop| stop.load(Ordering::Relaxed)) {
                abort.store(true, Ordering::Relaxed);
            }
            let mut busy = false;
            for (peer, from_worker) in &pipes.outgoing {
                while let Ok(envelope) = from_worker.try_recv() {
                    self.fabric.send(*peer, Tag::Data, envelope.payload)?;
                    busy = true;
                }
            }
            while let Some(message) = self.next_message()? {
                busy = true;
                match message.tag {
                    Tag::Data => deliver(pipes, message)?,
                    Tag::Abort => {
                        abort.store(true, Ordering::Relaxed);
                        *remote = Some(self.remote_abort(message));
                    }
                    _ => deferred.push(message),
                }
            }
            let finished = worker.is_finished();
            let flushed = pipes.drained() && self.fabric.pending_sends() == 0;
            if finished && (abort.load(Ordering::Relaxed) || flushed) {
                return Ok(());
            }
            if busy {
                backoff.reset();
            } else if waiting.load(Ordering::Relaxed) || self.fabric.pending_sends() > 0 {
                thread::yield_now();
            } else if finished {
                backoff.pause();
            } else {
                pipes.wait_for_worker(backoff.next());
            }
        }
    }

    /// Waits (at most `limit`) until this rank's pending sends completed, reading and keeping
    /// what arrives meanwhile.
    pub fn flush(&mut self, limit: Duration) {
        let started = Instant::now();
        let mut backoff = Backoff::default();
        while self.fabric.pending_sends() > 0 && started.elapsed() < limit {
            match self.fabric.poll() {
                Ok(Some(message)) => self.backlog.push_back(message),
                Ok(None) => backoff.pause(),
                Err(_) => return,
            }
        }
    }

    /// Tells every other rank that the run failed because of `cause`, then waits (at most a few
    /// seconds) until each has seen it or aborted itself, and a little longer, so that they
    /// print their error before this rank's exit makes the launcher end the job.
    pub fn abort_all(&mut self, cause: &str) {
        self.tell_all(cause);
        thread::sleep(ABORT_GRACE);
    }

    /// Tells every other rank that this one stopped on request (Ctrl-C, SIGTERM), then waits (at
    /// most a few seconds) until each has seen it or stopped itself. Without
    /// [`Rank::abort_all`]'s grace: the others print nothing, and `mpirun` kills the ranks about a
    /// second after passing the signal on, so the time is rank 0's to report the stop.
    pub fn interrupt_all(&mut self) {
        self.tell_all(INTERRUPTED);
    }

    /// Sends `cause` as an abort to every other rank and waits (at most [`ABORT_WAIT`]) until
    /// each has acknowledged it or aborted itself.
    fn tell_all(&mut self, cause: &str) {
        let _ = self.broadcast(Tag::Abort, cause.as_bytes());
        let mut waiting: BTreeSet<usize> = self.others().collect();
        let started = Instant::now();
        let mut backoff = Backoff::default();
        while !waiting.is_empty() && started.elapsed() < ABORT_WAIT {
            match self.next_message() {
                Ok(Some(message)) if matches!(message.tag, Tag::AbortSeen | Tag::Abort) => {
                    waiting.remove(&message.from);
                }
                Ok(Some(_)) => {}
                Ok(None) => backoff.pause(),
                Err(_) => break,
            }
        }
        self.flush(ACK_WAIT);
    }
}

/// Hands a data frame to the worker inbox of its sender.
fn deliver(pipes: &Pipes, message: Received) -> Result<(), MpiError> {
    let protocol = |cause| MpiError::Protocol {
        rank: message.from,
        cause,
    };
    let microbatch = frame_microbatch(&message.bytes).map_err(protocol)?;
    let (_, to_worker) = pipes
        .incoming
        .iter()
        .find(|(peer, _)| *peer == message.from)
        .ok_or_else(|| {
            protocol(crate::wire::WireError::Invalid(
                "a data frame from a rank that is not a pipeline neighbour".into(),
            ))
        })?;
    // A worker that already stopped (it failed) no longer reads; its failure is reported.
    let _ = to_worker.send(Envelope {
        microbatch,
        payload: message.bytes,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use timeprest_runtime::Transport;
    use timeprest_schedule::MicrobatchId;

    use super::*;
    use crate::fabric::LocalFabric;

    #[test]
    fn the_backoff_spins_first_then_sleeps_longer_up_to_a_cap() {
        let mut backoff = Backoff::default();
        let pauses: Vec<Duration> = (0..SPIN_ROUNDS + 20).map(|_| backoff.next()).collect();
        assert!(pauses[..SPIN_ROUNDS as usize].iter().all(Duration::is_zero));
        assert_eq!(pauses[SPIN_ROUNDS as usize], MIN_SLEEP);
        assert_eq!(pauses[SPIN_ROUNDS as usize + 1], MIN_SLEEP * 2);
        assert_eq!(*pauses.last().unwrap(), MAX_SLEEP);
        backoff.reset();
        assert!(backoff.next().is_zero());
    }

    #[test]
    fn waits_keep_other_messages_and_end_on_an_abort() {
        let mut group: Vec<Rank<LocalFabric>> =
            LocalFabric::group(3).into_iter().map(Rank::new).collect();
        group[1].send(0, Tag::Summary, vec![1]).unwrap();
        group[2].send(0, Tag::Summary, vec![2]).unwrap();
        assert_eq!(group[0].wait_for(2, Tag::Summary, None).unwrap(), vec![2]);
        assert_eq!(group[0].wait_for(1, Tag::Summary, None).unwrap(), vec![1]);
        let timeout = Some((Duration::from_millis(20), "answer"));
        assert!(matches!(
            group[0].wait_for(1, Tag::Hello, timeout),
            Err(MpiError::Timeout { rank: 1, .. })
        ));
        group[2].send(0, Tag::Abort, b"boom".to_vec()).unwrap();
        let error = group[0].wait_for(1, Tag::Continue, None).unwrap_err();
        assert_eq!(error.to_string(), "rank 2 failed: boom");
        assert_eq!(
            group[2].wait_for(0, Tag::AbortSeen, None).unwrap(),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn a_rank_stopped_on_request_is_reported_as_interrupted_not_failed() {
        let mut group: Vec<Rank<LocalFabric>> =
            LocalFabric::group(2).into_iter().map(Rank::new).collect();
        group[1]
            .send(0, Tag::Abort, INTERRUPTED.as_bytes().to_vec())
            .unwrap();
        let error = group[0].wait_for(1, Tag::Continue, None).unwrap_err();
        assert!(
            matches!(error, MpiError::Interrupted { rank: 1 }),
            "{error}"
        );
        assert!(error.is_interruption() && error.is_symmetric());
        assert_eq!(error.to_string(), "rank 1 was interrupted");
    }

    #[test]
    fn an_exchange_gives_every_rank_every_identity() {
        let ranks: Vec<Rank<LocalFabric>> =
            LocalFabric::group(3).into_iter().map(Rank::new).collect();
        let all: Vec<Vec<Vec<u8>>> = thread::scope(|scope| {
            let handles: Vec<_> = ranks
                .into_iter()
                .map(|mut rank| {
                    scope.spawn(move || {
                        let me = vec![rank.index() as u8];
                        rank.exchange(Tag::Hello, me, None).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for identities in all {
            assert_eq!(identities, vec![vec![0], vec![1], vec![2]]);
        }
    }

    #[test]
    fn workers_on_two_ranks_exchange_frames_through_the_pump() {
        let ranks: Vec<Rank<LocalFabric>> =
            LocalFabric::group(2).into_iter().map(Rank::new).collect();
        let id = MicrobatchId::new(3, 1);
        let frame = |value: u8| {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&3u32.to_le_bytes());
            bytes.extend_from_slice(&1u32.to_le_bytes());
            bytes.push(value);
            bytes
        };
        let results: Vec<Vec<u8>> = thread::scope(|scope| {
            let handles: Vec<_> = ranks
                .into_iter()
                .map(|mut rank| {
                    scope.spawn(move || {
                        let abort = AtomicBool::new(false);
                        let first = rank.index() == 0;
                        rank.run_worker(&abort, None, |mut transport| {
                            if first {
                                transport.send(Neighbour::Next, id, frame(7)).unwrap();
                                transport.take(Neighbour::Next, id, &abort).unwrap()
                            } else {
                                let got = transport.take(Neighbour::Previous, id, &abort).unwrap();
                                transport
                                    .send(Neighbour::Previous, id, frame(got[8] + 1))
                                    .unwrap();
                                got
                            }
                        })
                        .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results, vec![frame(8), frame(7)]);
    }

    #[test]
    fn an_abort_stops_a_waiting_worker_and_names_the_failing_rank() {
        let mut group: Vec<Rank<LocalFabric>> =
            LocalFabric::group(2).into_iter().map(Rank::new).collect();
        let mut failing = group.pop().unwrap();
        let mut waiting = group.pop().unwrap();
        let started = Instant::now();
        let (outcome, ()) = thread::scope(|scope| {
            let waiter = scope.spawn(move || {
                let abort = AtomicBool::new(false);
                waiting.run_worker(&abort, None, |mut transport| {
                    transport.take(Neighbour::Next, MicrobatchId::new(0, 0), &abort)
                })
            });
            failing.abort_all("stage 1 failed during 1F0.0: injected");
            (waiter.join().unwrap(), ())
        });
        assert_eq!(
            outcome.unwrap_err().to_string(),
            "rank 1 failed: stage 1 failed during 1F0.0: injected"
        );
        // The abort was acknowledged, so abort_all did not wait its full limit.
        assert!(started.elapsed() < ABORT_WAIT);
    }
}
