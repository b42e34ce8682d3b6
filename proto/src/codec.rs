//! The codec every generated service and client uses (`codec_path` in `build.rs`): tonic-prost's,
//! except that a message that does not decode is INVALID_ARGUMENT naming the message type.
//!
//! tonic-prost answers an undecodable request with INTERNAL, which tells the caller the server
//! broke and invites a retry of the same bytes; the request is what is wrong. (Clients share the
//! codec, so an undecodable *answer* also reads as INVALID_ARGUMENT there, naming the type.)

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

/// tonic-prost's encoding, decode errors as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct InvalidArgumentCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for InvalidArgumentCodec<T, U> {
    fn default() -> Self {
        InvalidArgumentCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for InvalidArgumentCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = InvalidArgumentDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        InvalidArgumentDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`, or says which message type the bytes were not.
#[derive(Debug, Clone)]
pub struct InvalidArgumentDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for InvalidArgumentDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("undecodable {}: {e}", type_name::<U>())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The message's name without its Rust module path (`ResolveBooleanRequest`).
fn type_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_name_is_its_last_path_segment() {
        assert_eq!(
            type_name::<crate::flagd::evaluation::v1::ResolveBooleanRequest>(),
            "ResolveBooleanRequest"
        );
    }
}
