//! Bytes on the wire: stage messages, frames and the little binary codec of control messages.
//!
//! Between processes a stage message must become bytes. [`WireMessage`] is that conversion; it is
//! defined here rather than in the runtime because the orphan rule lets this crate implement its
//! own trait for the burn [`StageMessage`] without touching `timeprest-nn`. Values travel as
//! little-endian `f32`, exactly, which is what keeps MPI runs bit-identical to threaded ones.
//!
//! A *frame* is one data message between neighbouring ranks: an 8-byte header naming the
//! micro-batch, then the message bytes. [`WireTransport`] turns a byte transport into a message
//! transport by framing on send and decoding on receive, on the worker thread, so the
//! communication thread only moves bytes and reads headers.

use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;

use timeprest_nn::{StageMessage, tensor2};
use timeprest_runtime::{Neighbour, Transport, TransportError};
use timeprest_schedule::MicrobatchId;

/// Bytes that did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes ended early.
    #[error("message truncated: needed {needed} more bytes, {left} left")]
    Truncated {
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// The bytes are not a valid message.
    #[error("{0}")]
    Invalid(String),
}

/// A message type that can cross a process boundary.
pub trait WireMessage: Sized {
    /// Appends the message's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads a message [`encode`](WireMessage::encode) wrote; `bytes` is exactly its bytes.
    fn decode(bytes: &[u8]) -> Result<Self, WireError>;
}

/// `[rows, cols]` as two `u64`, then the row-major values as little-endian `f32`.
impl WireMessage for StageMessage {
    fn encode(&self, out: &mut Vec<u8>) {
        let [rows, cols] = self.dims();
        let values = self.to_vec();
        out.reserve(16 + 4 * values.len());
        out.extend_from_slice(&(rows as u64).to_le_bytes());
        out.extend_from_slice(&(cols as u64).to_le_bytes());
        put_f32s(out, &values);
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut reader = Reader::new(bytes);
        let rows = reader.length()?;
        let cols = reader.length()?;
        let count = rows
            .checked_mul(cols)
            .ok_or_else(|| WireError::Invalid(format!("tensor of {rows} × {cols} values")))?;
        let values = reader.f32s(count)?;
        reader.finish()?;
        Ok(StageMessage::new(tensor2(values, rows, cols)))
    }
}

/// Bytes of a frame's header.
pub const FRAME_HEADER: usize = 8;

/// The micro-batch a frame belongs to.
pub fn frame_microbatch(frame: &[u8]) -> Result<MicrobatchId, WireError> {
    let mut reader = Reader::new(frame);
    Ok(MicrobatchId::new(reader.u32()?, reader.u32()?))
}

/// A [`Transport`] of `M` over a transport of frames (byte vectors).
pub struct WireTransport<T, M> {
    inner: T,
    message: PhantomData<fn() -> M>,
}

impl<T, M> WireTransport<T, M> {
    /// Frames messages sent through `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            message: PhantomData,
        }
    }
}

impl<T: Transport<Vec<u8>>, M: WireMessage> Transport<M> for WireTransport<T, M> {
    fn send(
        &mut self,
        to: Neighbour,
        microbatch: MicrobatchId,
        message: M,
    ) -> Result<(), TransportError> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&microbatch.minibatch.to_le_bytes());
        frame.extend_from_slice(&microbatch.microbatch.to_le_bytes());
        message.encode(&mut frame);
        self.inner.send(to, microbatch, frame)
    }

    fn take(
        &mut self,
        from: Neighbour,
        microbatch: MicrobatchId,
        abort: &AtomicBool,
    ) -> Result<M, TransportError> {
        let frame = self.inner.take(from, microbatch, abort)?;
        let decoded = frame_microbatch(&frame)
            .and_then(|found| match found == microbatch {
                true => M::decode(&frame[FRAME_HEADER..]),
                false => Err(WireError::Invalid(format!("frame of {found:?} delivered"))),
            })
            .map_err(|e| TransportError::Failed(format!("{microbatch:?} from {from:?}: {e}")))?;
        Ok(decoded)
    }
}

/// Appends `values` as little-endian `f32`.
pub fn put_f32s(out: &mut Vec<u8>, values: &[f32]) {
    let start = out.len();
    out.resize(start + 4 * values.len(), 0);
    for (bytes, value) in out[start..].chunks_exact_mut(4).zip(values) {
        bytes.copy_from_slice(&value.to_le_bytes());
    }
}

/// Appends a length (as `u64`).
pub fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_le_bytes());
}

/// Appends `bytes` with their length in front.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Reads the little-endian fields the `put_*` functions and `to_le_bytes` wrote, checking
/// lengths.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let head = self.slice(N)?;
        Ok(head.try_into().expect("slice has N bytes"))
    }

    fn slice(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < len {
            return Err(WireError::Truncated {
                needed: len,
                left: self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.take().map(u32::from_le_bytes)
    }

    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        self.take().map(u64::from_le_bytes)
    }

    /// An `f64`.
    pub fn f64(&mut self) -> Result<f64, WireError> {
        self.take().map(f64::from_le_bytes)
    }

    /// A length written by [`put_len`].
    pub fn length(&mut self) -> Result<usize, WireError> {
        let len = self.u64()?;
        usize::try_from(len).map_err(|_| WireError::Invalid(format!("length {len}")))
    }

    /// `count` `f32` values written by [`put_f32s`].
    pub fn f32s(&mut self, count: usize) -> Result<Vec<f32>, WireError> {
        let bytes = count
            .checked_mul(4)
            .ok_or_else(|| WireError::Invalid(format!("{count} values")))?;
        Ok(self
            .slice(bytes)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("chunks of 4")))
            .collect())
    }

    /// Bytes written by [`put_bytes`].
    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.length()?;
        self.slice(len)
    }

    /// Checks that everything was read.
    pub fn finish(self) -> Result<(), WireError> {
        match self.bytes.len() {
            0 => Ok(()),
            extra => Err(WireError::Invalid(format!(
                "{extra} unexpected trailing bytes"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use timeprest_runtime::ChannelTransport;

    use super::*;

    fn message(rows: usize, cols: usize) -> StageMessage {
        // Values that a decimal or lossy round trip would change.
        let values = (0..rows * cols)
            .map(|i| (i as f32 + 0.1).sqrt() * if i % 2 == 0 { -1e-7 } else { 3e5 })
            .chain([f32::MIN_POSITIVE / 2.0, f32::NAN, f32::INFINITY, -0.0])
            .take(rows * cols)
            .collect();
        StageMessage::new(tensor2(values, rows, cols))
    }

    fn bits(message: &StageMessage) -> Vec<u32> {
        message.to_vec().iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn a_stage_message_round_trips_bit_for_bit() {
        for (rows, cols) in [(1, 1), (3, 7), (17, 64), (0, 5)] {
            let original = message(rows, cols);
            let mut bytes = Vec::new();
            original.encode(&mut bytes);
            assert_eq!(bytes.len(), 16 + 4 * rows * cols);
            let decoded = StageMessage::decode(&bytes).unwrap();
            assert_eq!(decoded.dims(), [rows, cols]);
            assert_eq!(bits(&decoded), bits(&original));
        }
    }

    #[test]
    fn truncated_or_padded_messages_are_rejected() {
        let mut bytes = Vec::new();
        message(2, 3).encode(&mut bytes);
        assert_eq!(
            StageMessage::decode(&bytes[..bytes.len() - 1]).unwrap_err(),
            WireError::Truncated {
                needed: 24,
                left: 23
            }
        );
        bytes.push(0);
        assert!(matches!(
            StageMessage::decode(&bytes),
            Err(WireError::Invalid(_))
        ));
        let mut huge = Vec::new();
        put_len(&mut huge, usize::MAX);
        put_len(&mut huge, 2);
        assert!(matches!(
            StageMessage::decode(&huge),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn a_wire_transport_frames_and_unframes_messages() {
        let mut links = ChannelTransport::<Vec<u8>>::pipeline(2);
        let mut receiver = links.pop().unwrap();
        let mut sender = WireTransport::<_, StageMessage>::new(links.pop().unwrap());
        let never = AtomicBool::new(false);
        let id = MicrobatchId::new(7, 2);
        let original = message(4, 5);
        sender.send(Neighbour::Next, id, original.clone()).unwrap();
        let frame = receiver.take(Neighbour::Previous, id, &never).unwrap();
        assert_eq!(frame_microbatch(&frame), Ok(id));
        assert_eq!(frame.len(), FRAME_HEADER + 16 + 4 * 20);
        let mut back = WireTransport::<_, StageMessage>::new(receiver);
        back.inner
            .send(Neighbour::Previous, id, frame.clone())
            .unwrap();
        let decoded = sender.take(Neighbour::Next, id, &never).unwrap();
        assert_eq!(bits(&decoded), bits(&original));
        // A frame whose header names another micro-batch is a transport failure.
        let other = MicrobatchId::new(7, 1);
        back.inner.send(Neighbour::Previous, other, frame).unwrap();
        assert!(matches!(
            sender.take(Neighbour::Next, other, &never),
            Err(TransportError::Failed(_))
        ));
    }

    #[test]
    fn the_reader_reads_what_the_writers_wrote() {
        let mut out = Vec::new();
        out.extend_from_slice(&7u32.to_le_bytes());
        out.extend_from_slice(&(-2.5f64).to_le_bytes());
        put_bytes(&mut out, b"abc");
        put_f32s(&mut out, &[1.5, -0.0]);
        let mut reader = Reader::new(&out);
        assert_eq!(reader.u32(), Ok(7));
        assert_eq!(reader.f64(), Ok(-2.5));
        assert_eq!(reader.bytes(), Ok(&b"abc"[..]));
        let floats = reader.f32s(2).unwrap();
        assert_eq!(floats[1].to_bits(), (-0.0f32).to_bits());
        reader.finish().unwrap();
    }
}
