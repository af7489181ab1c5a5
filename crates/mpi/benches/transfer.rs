//! Activation/gradient transfer throughput: the MPI transport against raw MPI ping-pong.
//!
//! Two ranks bounce a message back and forth. Three ways, same sizes:
//! 1. raw rsmpi blocking `send`/`receive_into` on one thread (the floor);
//! 2. the fabric and pump only: byte frames through the worker's transport, the
//!    communication thread and non-blocking MPI (what the transport adds besides encoding);
//! 3. the whole transport: `StageMessage` tensors through `WireTransport` (tensor → bytes →
//!    MPI → bytes → tensor), what a training run pays per activation or gradient.
//!
//! Run with `cargo bench -p timeprest-mpi --features mpi --bench transfer`; started outside
//! `mpirun`, it starts itself under `mpirun -np 2`. Throughput counts the bytes moved one way
//! per half round trip.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use mpi::point_to_point::{Destination, Source};
use mpi::topology::Communicator;
use timeprest_mpi::wire::WireError;
use timeprest_mpi::{Fabric, MpiFabric, Rank, WireMessage, WireTransport};
use timeprest_nn::{StageMessage, tensor2};
use timeprest_runtime::{Neighbour, Transport};
use timeprest_schedule::MicrobatchId;

/// Rows of the benchmark tensors (a micro-batch); the columns set the size.
const ROWS: usize = 256;
/// Message sizes in bytes.
const SIZES: [usize; 4] = [16 << 10, 256 << 10, 1 << 20, 16 << 20];

fn main() {
    // `cargo test --benches` runs this without `--bench`: only check that it starts.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("transfer: run with `cargo bench -p timeprest-mpi --features mpi`");
        return;
    }
    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_none() {
        let exe = std::env::current_exe().expect("the bench's own path");
        let status = std::process::Command::new("mpirun")
            .args(["--oversubscribe", "--allow-run-as-root", "-np", "2"])
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .status()
            .expect("running mpirun (is Open MPI installed?)");
        std::process::exit(status.code().unwrap_or(1));
    }
    let fabric = MpiFabric::init().expect("MPI");
    assert_eq!(
        fabric.size(),
        2,
        "the transfer bench runs on exactly 2 ranks"
    );
    let first = fabric.rank() == 0;
    let raw: Vec<(usize, f64)> = SIZES
        .iter()
        .map(|&s| (s, raw_round_trip(&fabric, s)))
        .collect();
    let mut rank = Rank::new(fabric);
    if first {
        println!("message      raw MPI           fabric (bytes)    transport (tensors)");
    }
    for (size, raw_seconds) in raw {
        let frames = pumped_round_trip(&mut rank, Bytes(Arc::new(vec![1; size])), size);
        let tensors = pumped_round_trip(&mut rank, message(size), size);
        if first {
            let show = |seconds: f64| {
                let gib_per_s = size as f64 / (seconds / 2.0) / (1u64 << 30) as f64;
                format!("{:8.1} µs {:5.2} GiB/s", seconds * 1e6, gib_per_s)
            };
            println!(
                "{:>6} KiB  {}  {}  {}",
                size >> 10,
                show(raw_seconds),
                show(frames),
                show(tensors)
            );
        }
    }
}

/// Round trips to time: about 256 MiB moved each way, at least 20.
fn iterations(size: usize) -> usize {
    ((256 << 20) / size).clamp(20, 2000)
}

/// Seconds per round trip of raw blocking MPI.
fn raw_round_trip(fabric: &MpiFabric, size: usize) -> f64 {
    let world = fabric.communicator();
    let other = world.process_at_rank(1 - world.rank());
    let mut buffer = vec![1u8; size];
    let first = world.rank() == 0;
    let bounce = |buffer: &mut Vec<u8>| {
        if first {
            other.send(&buffer[..]);
            other.receive_into(&mut buffer[..]);
        } else {
            other.receive_into(&mut buffer[..]);
            other.send(&buffer[..]);
        }
    };
    for _ in 0..3 {
        bounce(&mut buffer);
    }
    let n = iterations(size);
    let started = Instant::now();
    for _ in 0..n {
        bounce(&mut buffer);
    }
    started.elapsed().as_secs_f64() / n as f64
}

fn message(size: usize) -> StageMessage {
    let cols = size / 4 / ROWS;
    StageMessage::new(tensor2(vec![0.5; ROWS * cols], ROWS, cols))
}

/// Seconds per round trip of `payload` (`size` bytes) through [`WireTransport`] and the pump.
fn pumped_round_trip<M>(rank: &mut Rank<MpiFabric>, payload: M, size: usize) -> f64
where
    M: WireMessage + Clone + Send,
{
    let first = rank.index() == 0;
    let abort = AtomicBool::new(false);
    let n = iterations(size);
    let stop = &abort;
    rank.run_worker(stop, None, move |frames| {
        let mut transport = WireTransport::<_, M>::new(frames);
        let mut bounce = |i: usize| {
            let id = MicrobatchId::new(i as u32, 0);
            if first {
                transport
                    .send(Neighbour::Next, id, payload.clone())
                    .unwrap();
                transport.take(Neighbour::Next, id, stop).unwrap();
            } else {
                let back = transport.take(Neighbour::Previous, id, stop).unwrap();
                transport.send(Neighbour::Previous, id, back).unwrap();
            }
        };
        for i in 0..3 {
            bounce(i);
        }
        let started = Instant::now();
        for i in 3..n + 3 {
            bounce(i);
        }
        started.elapsed().as_secs_f64() / n as f64
    })
    .expect("pumping")
}

/// Plain bytes as a message: framing copies them once, decoding once, nothing else.
#[derive(Clone)]
struct Bytes(Arc<Vec<u8>>);

impl WireMessage for Bytes {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        Ok(Bytes(Arc::new(bytes.to_vec())))
    }
}
