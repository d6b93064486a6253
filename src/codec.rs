//! The protobuf codec of the `livepush.v1` API: prost, with small per-call
//! buffers.
//!
//! tonic gives every call an 8 KiB encode buffer (the poller's side of a
//! `Subscribe`) and an 8 KiB decode buffer (the edge's side), held for the
//! whole life of the stream. An edge holds one `Subscribe` per watched event
//! and keeps it a few seconds after the last browser leaves, so a churn of
//! thousands of one-browser events meant thousands of these buffers at
//! once, most of the edge's peak memory, for updates of a few hundred bytes.
//! The buffers start at [`BUFFER_SIZE`] instead and grow to fit a larger
//! message when one comes (tonic reserves the full length of each message
//! before decoding it), so nothing is refused that was accepted before.
//! This is the pattern of tonic's own `codec_buffers` example.

use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial capacity of each call's encode and decode buffer: an update's
/// JSON document is typically a few hundred bytes.
pub const BUFFER_SIZE: usize = 1024;

/// How much a server stream encodes before it yields to other tasks:
/// tonic's default (32 KiB), spelled out because `BufferSettings` takes both.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers; the generated client and
/// server of `livepush.v1` use it (see `build.rs`).
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
