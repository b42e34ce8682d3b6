//! The membership actor's message type, and how it crosses the network.
//!
//! With ractor's `cluster` feature a message type decides whether it can be sent to a remote
//! actor. This one can, but only its two byte-carrying variants, and ractor never decodes them:
//! `serialize`/`deserialize` move the bytes untouched, and the actor decodes them itself with
//! size caps (`wire`), so a malformed payload is logged and dropped instead of panicking inside
//! ractor's `BytesConvertable`. Local-only variants refuse to serialize.

use ractor::RpcReplyPort;
use ractor::message::{BoxedDowncastErr, SerializedMessage};

/// ractor's variant tags for our two remote shapes; informational (the shape decides).
const FRAME: &str = "bunting.frame";
const REQUEST: &str = "bunting.request";

pub(crate) enum MemberMsg {
    /// A frame a peer cast (heartbeat, map, notice), still encoded.
    Frame(Vec<u8>),
    /// A request a peer called with (forward, drain, leave), still encoded; the answer is an
    /// encoded `wire::Response`.
    Request(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// Periodic work: heartbeats, liveness, placement. Local only.
    Tick,
    /// Mark this node draining (`Cluster::drain` of the local node). Local only.
    DrainSelf(RpcReplyPort<()>),
    /// Stop draining (`Cluster::undrain` of the local node); answers whether it was draining.
    /// Local only.
    UndrainSelf(RpcReplyPort<bool>),
}

impl std::fmt::Debug for MemberMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberMsg::Frame(b) => write!(f, "Frame({} bytes)", b.len()),
            MemberMsg::Request(b, _) => write!(f, "Request({} bytes)", b.len()),
            MemberMsg::Tick => f.write_str("Tick"),
            MemberMsg::DrainSelf(_) => f.write_str("DrainSelf"),
            MemberMsg::UndrainSelf(_) => f.write_str("UndrainSelf"),
        }
    }
}

impl ractor::Message for MemberMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            MemberMsg::Frame(args) => Ok(SerializedMessage::Cast {
                variant: FRAME.to_string(),
                args,
                metadata: None,
            }),
            MemberMsg::Request(args, reply) => Ok(SerializedMessage::Call {
                variant: REQUEST.to_string(),
                args,
                reply,
                metadata: None,
            }),
            MemberMsg::Tick | MemberMsg::DrainSelf(_) | MemberMsg::UndrainSelf(_) => {
                Err(BoxedDowncastErr)
            }
        }
    }

    fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match message {
            SerializedMessage::Cast { args, .. } => Ok(MemberMsg::Frame(args)),
            SerializedMessage::Call { args, reply, .. } => Ok(MemberMsg::Request(args, reply)),
            SerializedMessage::CallReply(..) => Err(BoxedDowncastErr),
        }
    }
}

#[cfg(test)]
mod tests {
    use ractor::Message;

    use super::*;

    #[test]
    fn bytes_cross_untouched_and_local_variants_do_not_cross() {
        let Ok(SerializedMessage::Cast { args, .. }) = MemberMsg::Frame(vec![0xff, 0]).serialize()
        else {
            panic!("a frame serializes as a cast");
        };
        assert_eq!(args, [0xff, 0]);
        // Whatever a peer sends becomes a frame for the actor to judge; nothing is decoded here.
        let back = MemberMsg::deserialize(SerializedMessage::Cast {
            variant: "anything".into(),
            args: vec![1, 2, 3],
            metadata: None,
        });
        assert!(matches!(back, Ok(MemberMsg::Frame(b)) if b == [1, 2, 3]));
        assert!(MemberMsg::Tick.serialize().is_err());
        assert!(MemberMsg::deserialize(SerializedMessage::CallReply(1, vec![])).is_err());
    }
}
