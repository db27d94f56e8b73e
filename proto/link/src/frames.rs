//! `vagus_proto::wire` frames over QUIC streams.

use crate::LinkError;
use vagus_proto::wire::{self, FrameDecoder, Message};

/// Reads messages from a receive stream.
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    /// Bytes read from the stream so far.
    pub bytes: u64,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream, max_frame: usize) -> FrameReader {
        FrameReader {
            recv,
            decoder: FrameDecoder::new(max_frame),
            bytes: 0,
        }
    }

    /// The next message; `None` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Message>, LinkError> {
        loop {
            if let Some(m) = self
                .decoder
                .next_message()
                .map_err(|e| LinkError::Protocol(e.to_string()))?
            {
                return Ok(Some(m));
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => {
                    self.bytes += chunk.bytes.len() as u64;
                    self.decoder.push(&chunk.bytes)
                }
                Ok(None) => {
                    self.decoder
                        .finish()
                        .map_err(|e| LinkError::Protocol(e.to_string()))?;
                    return Ok(None);
                }
                Err(e) => return Err(LinkError::Connection(e.to_string())),
            }
        }
    }
}

/// Writes frames already encoded.
pub async fn send_encoded(stream: &mut quinn::SendStream, frames: &[u8]) -> Result<(), LinkError> {
    stream
        .write_all(frames)
        .await
        .map_err(|e| LinkError::Connection(e.to_string()))
}

/// Writes one message as a frame.
pub async fn send(
    stream: &mut quinn::SendStream,
    msg: &Message,
    version: u16,
) -> Result<(), LinkError> {
    let mut buf = Vec::new();
    wire::encode(msg, version, wire::DEFAULT_MAX_FRAME, &mut buf)
        .map_err(|e| LinkError::Protocol(e.to_string()))?;
    stream
        .write_all(&buf)
        .await
        .map_err(|e| LinkError::Connection(e.to_string()))
}
