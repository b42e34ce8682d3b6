//! Bunting's frames between cluster members, and their defensive decoding.
//!
//! Everything Bunting sends over ractor_cluster is opaque bytes to ractor (see `peer_msg`):
//! a [`Frame`] cast (heartbeat, shard map, notice) or a [`Request`] call answered by a
//! [`Response`]. They are protobuf messages declared with prost's derive macros, so decoding
//! untrusted bytes returns an error instead of panicking (ractor's `BytesConvertable` impls may
//! panic). Decoding checks the size before parsing and every field after: node ids are
//! validated, strings and lists are capped, a map must satisfy [`ShardMap`]'s invariants. A peer
//! that sends something else gets its frame logged and dropped, never a crash.

use std::net::SocketAddr;

use prost::Message as _;

use crate::node_id::{NodeId, NodeIdError};
use crate::notice::Notice;
use crate::shard_map::{MapError, MemberAddr, ShardMap};

/// Largest heartbeat/map/notice frame accepted: room for a map of `MAX_SHARDS` shards on
/// `MAX_MEMBERS` members with the longest ids and addresses (about 1.5 MiB).
pub(crate) const MAX_FRAME_BYTES: usize = 2 << 20;
/// Largest shard count a map may carry (and a config may ask for).
pub const MAX_SHARDS: u32 = 1 << 16;
/// Most members a map or a gossip list may name.
pub(crate) const MAX_MEMBERS: usize = 4096;
/// Longest address string (gRPC or cluster) accepted from a peer.
pub(crate) const MAX_ADDR_LEN: usize = 256;
/// Longest flag-set name in a notice, and longest error text in a response.
pub(crate) const MAX_TEXT_LEN: usize = 1024;
/// Room kept for the envelope around a forwarded payload: the frame limit minus this is the
/// largest payload `call` sends or a handler may answer.
pub(crate) const ENVELOPE_SLACK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("frame has no {0}")]
    Missing(&'static str),
    #[error("bad node id in frame: {0}")]
    NodeId(#[from] NodeIdError),
    #[error("{field} of {len} bytes exceeds the {limit}-byte limit")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{field} {value:?} is not a socket address")]
    Addr { field: &'static str, value: String },
    #[error("shard count {0} is outside 1..={MAX_SHARDS}")]
    Shards(u32),
    #[error("invalid shard map: {0}")]
    Map(#[from] MapError),
}

// ---- The protobuf messages -------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FrameWire {
    #[prost(oneof = "frame_wire::Body", tags = "1, 2, 3")]
    pub body: Option<frame_wire::Body>,
}

pub(crate) mod frame_wire {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        #[prost(message, tag = "1")]
        Heartbeat(super::HeartbeatWire),
        #[prost(message, tag = "2")]
        Map(super::MapWire),
        #[prost(message, tag = "3")]
        Notice(super::NoticeWire),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HeartbeatWire {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(uint64, tag = "2")]
    pub incarnation: u64,
    #[prost(string, tag = "3")]
    pub grpc_addr: String,
    #[prost(string, tag = "4")]
    pub cluster_addr: String,
    #[prost(bool, tag = "5")]
    pub draining: bool,
    #[prost(uint32, tag = "6")]
    pub shards: u32,
    #[prost(uint64, tag = "7")]
    pub map_epoch: u64,
    #[prost(message, repeated, tag = "8")]
    pub known: Vec<KnownWire>,
    #[prost(message, optional, tag = "9")]
    pub map: Option<MapWire>,
    /// A digest of the sender's map, so two maps of one epoch can be told apart.
    #[prost(fixed64, tag = "10")]
    pub map_digest: u64,
    /// The sender's application peer protocol version (0 from a node that predates it).
    #[prost(uint32, tag = "11")]
    pub peer_protocol: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct KnownWire {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(string, tag = "2")]
    pub cluster_addr: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MapWire {
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    #[prost(string, tag = "2")]
    pub coordinator: String,
    #[prost(uint32, tag = "3")]
    pub shards: u32,
    #[prost(message, repeated, tag = "4")]
    pub members: Vec<MemberWire>,
    #[prost(uint32, repeated, tag = "5")]
    pub owners: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberWire {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub grpc_addr: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NoticeWire {
    #[prost(string, tag = "1")]
    pub from: String,
    #[prost(oneof = "notice_wire::Kind", tags = "2")]
    pub kind: Option<notice_wire::Kind>,
}

pub(crate) mod notice_wire {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "2")]
        FlagSetChanged(super::FlagSetChangedWire),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FlagSetChangedWire {
    #[prost(string, tag = "1")]
    pub set: String,
    #[prost(uint64, tag = "2")]
    pub version: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RequestWire {
    #[prost(string, tag = "1")]
    pub from: String,
    #[prost(oneof = "request_wire::Kind", tags = "2, 3, 4, 5")]
    pub kind: Option<request_wire::Kind>,
}

pub(crate) mod request_wire {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(bytes, tag = "2")]
        Forward(Vec<u8>),
        #[prost(message, tag = "3")]
        Drain(super::DrainWire),
        #[prost(message, tag = "4")]
        Leave(super::LeaveWire),
        #[prost(message, tag = "5")]
        Undrain(super::UndrainWire),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DrainWire {}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct UndrainWire {}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeaveWire {
    #[prost(uint64, tag = "1")]
    pub incarnation: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ResponseWire {
    #[prost(oneof = "response_wire::Result", tags = "1, 2, 3")]
    pub result: Option<response_wire::Result>,
}

pub(crate) mod response_wire {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Result {
        #[prost(bytes, tag = "1")]
        Ok(Vec<u8>),
        #[prost(bool, tag = "2")]
        Busy(bool),
        #[prost(string, tag = "3")]
        Error(String),
    }
}

// ---- Decoded forms ---------------------------------------------------------------------------

/// A member's heartbeat, checked.
#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    pub node: NodeId,
    pub incarnation: u64,
    pub grpc_addr: String,
    pub cluster_addr: SocketAddr,
    pub draining: bool,
    pub shards: u32,
    pub peer_protocol: u32,
    pub map_epoch: u64,
    pub map_digest: u64,
    /// Members the sender hears from: how nodes learn peers they were not seeded with.
    pub known: Vec<(NodeId, SocketAddr)>,
    /// The sender's map, when it thinks the receiver's is older.
    pub map: Option<ShardMap>,
}

#[derive(Debug, Clone)]
pub(crate) enum Inbound {
    Heartbeat(Box<Heartbeat>),
    Map(ShardMap),
    Notice(NodeId, Notice),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    Forward { from: NodeId, payload: Vec<u8> },
    Drain { from: NodeId },
    Undrain { from: NodeId },
    Leave { from: NodeId, incarnation: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Response {
    Ok(Vec<u8>),
    Busy,
    Error(String),
}

// ---- Encoding --------------------------------------------------------------------------------

pub(crate) fn map_to_wire(map: &ShardMap) -> MapWire {
    MapWire {
        epoch: map.epoch(),
        coordinator: map.coordinator().to_string(),
        shards: map.shards(),
        members: map
            .members()
            .iter()
            .map(|m| MemberWire {
                id: m.id.to_string(),
                grpc_addr: m.grpc_addr.clone(),
            })
            .collect(),
        owners: map.owner_indices().collect(),
    }
}

pub(crate) fn encode_frame(body: frame_wire::Body) -> Vec<u8> {
    FrameWire { body: Some(body) }.encode_to_vec()
}

pub(crate) fn encode_notice(from: &NodeId, notice: &Notice) -> Vec<u8> {
    let kind = match notice {
        Notice::FlagSetChanged { set, version } => {
            notice_wire::Kind::FlagSetChanged(FlagSetChangedWire {
                set: set.clone(),
                version: *version,
            })
        }
    };
    encode_frame(frame_wire::Body::Notice(NoticeWire {
        from: from.to_string(),
        kind: Some(kind),
    }))
}

pub(crate) fn encode_request(request: Request) -> Vec<u8> {
    let (from, kind) = match request {
        Request::Forward { from, payload } => (from, request_wire::Kind::Forward(payload)),
        Request::Drain { from } => (from, request_wire::Kind::Drain(DrainWire {})),
        Request::Undrain { from } => (from, request_wire::Kind::Undrain(UndrainWire {})),
        Request::Leave { from, incarnation } => {
            (from, request_wire::Kind::Leave(LeaveWire { incarnation }))
        }
    };
    RequestWire {
        from: from.to_string(),
        kind: Some(kind),
    }
    .encode_to_vec()
}

pub(crate) fn encode_response(response: Response) -> Vec<u8> {
    let result = match response {
        Response::Ok(bytes) => response_wire::Result::Ok(bytes),
        Response::Busy => response_wire::Result::Busy(true),
        Response::Error(mut text) => {
            truncate_utf8(&mut text, MAX_TEXT_LEN);
            response_wire::Result::Error(text)
        }
    };
    ResponseWire {
        result: Some(result),
    }
    .encode_to_vec()
}

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

// ---- Decoding --------------------------------------------------------------------------------

fn check_len(len: usize, limit: usize) -> Result<(), WireError> {
    if len > limit {
        return Err(WireError::TooLarge { len, limit });
    }
    Ok(())
}

fn capped(field: &'static str, value: String, limit: usize) -> Result<String, WireError> {
    if value.len() > limit {
        return Err(WireError::FieldTooLong {
            field,
            len: value.len(),
            limit,
        });
    }
    Ok(value)
}

fn socket_addr(field: &'static str, value: String) -> Result<SocketAddr, WireError> {
    let value = capped(field, value, MAX_ADDR_LEN)?;
    value.parse().map_err(|_| WireError::Addr { field, value })
}

fn shards(count: u32) -> Result<u32, WireError> {
    if count == 0 || count > MAX_SHARDS {
        return Err(WireError::Shards(count));
    }
    Ok(count)
}

pub(crate) fn decode_frame(bytes: &[u8]) -> Result<Inbound, WireError> {
    check_len(bytes.len(), MAX_FRAME_BYTES)?;
    let frame = FrameWire::decode(bytes)?;
    match frame.body.ok_or(WireError::Missing("body"))? {
        frame_wire::Body::Heartbeat(hb) => Ok(Inbound::Heartbeat(Box::new(heartbeat(hb)?))),
        frame_wire::Body::Map(map) => Ok(Inbound::Map(map_from_wire(map)?)),
        frame_wire::Body::Notice(notice) => {
            let from = NodeId::new(notice.from)?;
            match notice.kind.ok_or(WireError::Missing("notice kind"))? {
                notice_wire::Kind::FlagSetChanged(change) => Ok(Inbound::Notice(
                    from,
                    Notice::FlagSetChanged {
                        set: capped("flag set name", change.set, MAX_TEXT_LEN)?,
                        version: change.version,
                    },
                )),
            }
        }
    }
}

fn heartbeat(hb: HeartbeatWire) -> Result<Heartbeat, WireError> {
    if hb.known.len() > MAX_MEMBERS {
        return Err(WireError::FieldTooLong {
            field: "gossip list",
            len: hb.known.len(),
            limit: MAX_MEMBERS,
        });
    }
    let known = hb
        .known
        .into_iter()
        .map(|k| {
            Ok((
                NodeId::new(k.node)?,
                socket_addr("gossiped cluster address", k.cluster_addr)?,
            ))
        })
        .collect::<Result<_, WireError>>()?;
    Ok(Heartbeat {
        node: NodeId::new(hb.node)?,
        incarnation: hb.incarnation,
        grpc_addr: capped("grpc address", hb.grpc_addr, MAX_ADDR_LEN)?,
        cluster_addr: socket_addr("cluster address", hb.cluster_addr)?,
        draining: hb.draining,
        shards: shards(hb.shards)?,
        peer_protocol: hb.peer_protocol,
        map_epoch: hb.map_epoch,
        map_digest: hb.map_digest,
        known,
        map: hb.map.map(map_from_wire).transpose()?,
    })
}

fn map_from_wire(map: MapWire) -> Result<ShardMap, WireError> {
    if map.members.len() > MAX_MEMBERS {
        return Err(WireError::FieldTooLong {
            field: "map members",
            len: map.members.len(),
            limit: MAX_MEMBERS,
        });
    }
    let members = map
        .members
        .into_iter()
        .map(|m| {
            Ok(MemberAddr {
                id: NodeId::new(m.id)?,
                grpc_addr: capped("member grpc address", m.grpc_addr, MAX_ADDR_LEN)?,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok(ShardMap::from_parts(
        map.epoch,
        NodeId::new(map.coordinator)?,
        shards(map.shards)?,
        members,
        map.owners,
    )?)
}

pub(crate) fn decode_request(bytes: &[u8], max_payload: usize) -> Result<Request, WireError> {
    check_len(bytes.len(), max_payload.saturating_add(ENVELOPE_SLACK))?;
    let request = RequestWire::decode(bytes)?;
    let from = NodeId::new(request.from)?;
    match request.kind.ok_or(WireError::Missing("request kind"))? {
        request_wire::Kind::Forward(payload) => {
            check_len(payload.len(), max_payload)?;
            Ok(Request::Forward { from, payload })
        }
        request_wire::Kind::Drain(DrainWire {}) => Ok(Request::Drain { from }),
        request_wire::Kind::Undrain(UndrainWire {}) => Ok(Request::Undrain { from }),
        request_wire::Kind::Leave(leave) => Ok(Request::Leave {
            from,
            incarnation: leave.incarnation,
        }),
    }
}

pub(crate) fn decode_response(bytes: &[u8], max_payload: usize) -> Result<Response, WireError> {
    check_len(bytes.len(), max_payload.saturating_add(ENVELOPE_SLACK))?;
    let response = ResponseWire::decode(bytes)?;
    match response
        .result
        .ok_or(WireError::Missing("response result"))?
    {
        response_wire::Result::Ok(payload) => Ok(Response::Ok(payload)),
        response_wire::Result::Busy(_) => Ok(Response::Busy),
        response_wire::Result::Error(text) => {
            Ok(Response::Error(capped("error text", text, MAX_TEXT_LEN)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    fn sample_heartbeat() -> HeartbeatWire {
        let map = ShardMap::place(
            4,
            id("a"),
            16,
            8,
            &[MemberAddr {
                id: id("a"),
                grpc_addr: "127.0.0.1:8013".into(),
            }],
        );
        HeartbeatWire {
            node: "a".into(),
            incarnation: 7,
            grpc_addr: "127.0.0.1:8013".into(),
            cluster_addr: "127.0.0.1:7000".into(),
            draining: true,
            shards: 16,
            map_epoch: 4,
            known: vec![KnownWire {
                node: "b".into(),
                cluster_addr: "127.0.0.1:7001".into(),
            }],
            map: Some(map_to_wire(&map)),
            map_digest: 3,
            peer_protocol: 2,
        }
    }

    #[test]
    fn heartbeat_round_trips() {
        let bytes = encode_frame(frame_wire::Body::Heartbeat(sample_heartbeat()));
        let Ok(Inbound::Heartbeat(hb)) = decode_frame(&bytes) else {
            panic!("heartbeat did not decode");
        };
        assert_eq!(hb.node, id("a"));
        assert_eq!(
            (hb.incarnation, hb.draining, hb.shards, hb.map_epoch),
            (7, true, 16, 4)
        );
        assert_eq!(hb.known, vec![(id("b"), "127.0.0.1:7001".parse().unwrap())]);
        assert_eq!(hb.map.map(|m| m.epoch()), Some(4));
    }

    #[test]
    fn garbage_truncation_and_oversize_are_errors_not_panics() {
        let good = encode_frame(frame_wire::Body::Heartbeat(sample_heartbeat()));
        for cut in 0..good.len() {
            // Every prefix either decodes to something checked or is refused; none panics.
            let _ = decode_frame(&good[..cut]);
        }
        assert!(matches!(
            decode_frame(&[0xff; 64]),
            Err(WireError::Decode(_))
        ));
        assert!(matches!(decode_frame(&[]), Err(WireError::Missing("body"))));
        let huge = vec![0u8; MAX_FRAME_BYTES + 1];
        assert!(matches!(
            decode_frame(&huge),
            Err(WireError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_request(&[0u8; 300], 100),
            Err(WireError::Decode(_)) | Err(WireError::Missing(_))
        ));
        assert!(matches!(
            decode_response(&[0x0a, 0xff], 100),
            Err(WireError::Decode(_))
        ));
    }

    #[test]
    fn fields_are_checked() {
        let cases: Vec<(HeartbeatWire, &str)> = vec![
            (
                HeartbeatWire {
                    node: "a@b".into(),
                    ..sample_heartbeat()
                },
                "node id",
            ),
            (
                HeartbeatWire {
                    cluster_addr: "nowhere".into(),
                    ..sample_heartbeat()
                },
                "not a socket address",
            ),
            (
                HeartbeatWire {
                    grpc_addr: "x".repeat(MAX_ADDR_LEN + 1),
                    ..sample_heartbeat()
                },
                "grpc address",
            ),
            (
                HeartbeatWire {
                    shards: 0,
                    ..sample_heartbeat()
                },
                "shard count 0",
            ),
            (
                HeartbeatWire {
                    shards: MAX_SHARDS + 1,
                    ..sample_heartbeat()
                },
                "shard count",
            ),
            (
                HeartbeatWire {
                    map: Some(MapWire {
                        owners: vec![0, 5],
                        ..map_to_wire(&ShardMap::place(
                            1,
                            id("a"),
                            2,
                            1,
                            &[MemberAddr {
                                id: id("a"),
                                grpc_addr: String::new(),
                            }],
                        ))
                    }),
                    ..sample_heartbeat()
                },
                "invalid shard map",
            ),
        ];
        for (hb, expected) in cases {
            let err = decode_frame(&encode_frame(frame_wire::Body::Heartbeat(hb))).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{err} should mention {expected}"
            );
        }
    }

    #[test]
    fn requests_and_responses_round_trip_within_limits() {
        let forward = Request::Forward {
            from: id("b"),
            payload: vec![1, 2, 3],
        };
        assert_eq!(
            decode_request(&encode_request(forward.clone()), 16).unwrap(),
            forward
        );
        let leave = Request::Leave {
            from: id("b"),
            incarnation: 9,
        };
        assert_eq!(
            decode_request(&encode_request(leave.clone()), 16).unwrap(),
            leave
        );
        let drain = Request::Drain { from: id("c") };
        assert_eq!(
            decode_request(&encode_request(drain.clone()), 16).unwrap(),
            drain
        );

        let big = Request::Forward {
            from: id("b"),
            payload: vec![0; 17],
        };
        assert!(matches!(
            decode_request(&encode_request(big), 16),
            Err(WireError::TooLarge { len: 17, limit: 16 })
        ));

        for response in [
            Response::Ok(vec![9]),
            Response::Busy,
            Response::Error("no".into()),
        ] {
            assert_eq!(
                decode_response(&encode_response(response.clone()), 16).unwrap(),
                response
            );
        }
        let long = Response::Error("é".repeat(MAX_TEXT_LEN));
        let Response::Error(text) = decode_response(&encode_response(long), 16).unwrap() else {
            panic!("not an error");
        };
        assert!(text.len() <= MAX_TEXT_LEN);
    }

    #[test]
    fn the_largest_legal_map_fits_a_frame() {
        let members: Vec<MemberAddr> = (0..MAX_MEMBERS)
            .map(|i| MemberAddr {
                id: id(&format!("{i:0>64}")),
                grpc_addr: "g".repeat(MAX_ADDR_LEN),
            })
            .collect();
        let owners = (0..MAX_SHARDS).map(|s| s % 4096).collect();
        let map = ShardMap::from_parts(1, id("a"), MAX_SHARDS, members, owners).unwrap();
        let bytes = encode_frame(frame_wire::Body::Map(map_to_wire(&map)));
        assert!(bytes.len() <= MAX_FRAME_BYTES, "{} bytes", bytes.len());
        assert!(matches!(decode_frame(&bytes), Ok(Inbound::Map(m)) if m == map));
    }

    #[test]
    fn notices_round_trip() {
        let notice = Notice::FlagSetChanged {
            set: "checkout".into(),
            version: 12,
        };
        let Ok(Inbound::Notice(from, got)) = decode_frame(&encode_notice(&id("c"), &notice)) else {
            panic!("notice did not decode");
        };
        assert_eq!((from, got), (id("c"), notice));
    }
}
