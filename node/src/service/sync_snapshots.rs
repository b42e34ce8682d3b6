//! The `SyncFlags` message for each (flag set, version), encoded once and shared by every
//! subscriber as one [`Bytes`].
//!
//! A sync message is the whole set's definition (megabytes for a large set). Encoded per stream,
//! as tonic's codec does, a node with thousands of subscribers held thousands of copies, and a
//! subscriber that does not read held its copy for as long as it stayed connected. Here each
//! version is one gRPC frame (the 5-byte length prefix and the encoded `SyncFlagsResponse`)
//! behind a reference count; sending it to a stream is a reference-count increment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bunting_engine::FlagSet;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::OnceCell;

/// What a deleted (or never created) set syncs as: providers drop its flags.
const EMPTY_DOCUMENT: &str = r#"{"flags":{}}"#;

/// `flag_configuration`'s field number in `flagd.sync.v1.SyncFlagsResponse`.
const FLAG_CONFIGURATION_FIELD: u32 = 1;

/// `sync_context`'s field number in `flagd.sync.v1.SyncFlagsResponse`.
const SYNC_CONTEXT_FIELD: u32 = 2;

/// One version of a set as subscribers receive it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The set's version, `None` for a set that does not exist.
    pub version: Option<u64>,
    /// A whole gRPC message frame: compression flag, big-endian length, `SyncFlagsResponse`.
    pub frame: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "flag set {set:?} version {version}: its sync message is {len} bytes, over gRPC's 4 GiB frame limit"
)]
pub struct TooLarge {
    set: Arc<str>,
    version: u64,
    len: usize,
}

/// The latest encoded version of each set some subscriber asked for.
#[derive(Debug, Default)]
pub struct Snapshots {
    latest: Mutex<HashMap<Arc<str>, Arc<Entry>>>,
    /// The `sync_context` field, encoded once (tag, length, Struct): the same in every message
    /// of this node. Empty: no sync context.
    context: Bytes,
}

#[derive(Debug)]
struct Entry {
    version: u64,
    /// Filled by the first subscriber that needs it; the others wait for that one encoding.
    frame: OnceCell<Bytes>,
}

impl Snapshots {
    /// Snapshots whose messages all carry `context` as their `sync_context`.
    pub fn with_context(context: &prost_types::Struct) -> Snapshots {
        let mut field = BytesMut::new();
        prost::encoding::message::encode(SYNC_CONTEXT_FIELD, context, &mut field);
        Snapshots {
            latest: Mutex::default(),
            context: field.freeze(),
        }
    }

    /// `set` as `flags` (the set in the subscriber's catalog, `None` if it has none) encodes it.
    pub async fn get(
        &self,
        set: &Arc<str>,
        flags: Option<&Arc<FlagSet>>,
    ) -> Result<Snapshot, TooLarge> {
        let Some(flags) = flags else {
            self.entries().remove(set);
            return Ok(Snapshot {
                version: None,
                frame: encode_frame(EMPTY_DOCUMENT, &self.context).map_err(|len| TooLarge {
                    set: set.clone(),
                    version: 0,
                    len,
                })?,
            });
        };
        let version = flags.version();
        let entry = {
            let mut entries = self.entries();
            match entries.get(set) {
                Some(entry) if entry.version == version => entry.clone(),
                // A subscriber still on an older catalog: encode for it alone rather than evict
                // the newer version everyone else is about to need.
                Some(entry) if entry.version > version => Arc::new(Entry::new(version)),
                _ => {
                    let entry = Arc::new(Entry::new(version));
                    entries.insert(set.clone(), entry.clone());
                    entry
                }
            }
        };
        let frame = entry
            .frame
            .get_or_try_init(|| async {
                encode_frame(&flags.document().to_string(), &self.context).map_err(|len| TooLarge {
                    set: set.clone(),
                    version,
                    len,
                })
            })
            .await?
            .clone();
        Ok(Snapshot {
            version: Some(version),
            frame,
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Entry>>> {
        // The map is never left half-updated (one insert or remove at a time), so a panic
        // elsewhere while it was locked leaves nothing to repair.
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Entry {
    fn new(version: u64) -> Entry {
        Entry {
            version,
            frame: OnceCell::new(),
        }
    }
}

/// `SyncFlagsResponse { flag_configuration: document, sync_context }` as one uncompressed gRPC
/// frame (`context` is the encoded `sync_context` field, or empty), or the message's length when
/// it does not fit the frame's 32-bit length.
fn encode_frame(document: &str, context: &[u8]) -> Result<Bytes, usize> {
    let len = prost::encoding::key_len(FLAG_CONFIGURATION_FIELD)
        + prost::encoding::encoded_len_varint(document.len() as u64)
        + document.len()
        + context.len();
    let prefix = u32::try_from(len).map_err(|_| len)?;
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0);
    frame.put_u32(prefix);
    prost::encoding::encode_key(
        FLAG_CONFIGURATION_FIELD,
        prost::encoding::WireType::LengthDelimited,
        &mut frame,
    );
    prost::encoding::encode_varint(document.len() as u64, &mut frame);
    frame.put_slice(document.as_bytes());
    frame.put_slice(context);
    Ok(frame.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bunting_proto::flagd::sync::v1::SyncFlagsResponse;
    use prost::Message;

    fn flag_set(version: u64) -> Arc<FlagSet> {
        let document = r#"{"flags": {"f": {
            "state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"
        }}}"#;
        Arc::new(
            bunting_engine::compile(document, &bunting_engine::CompileOptions::default())
                .unwrap()
                .flag_set
                .with_version(version),
        )
    }

    #[test]
    fn a_frame_is_a_grpc_prefix_and_a_sync_flags_response() {
        let frame = encode_frame(r#"{"flags":{}}"#, &[]).unwrap();
        assert_eq!(frame[0], 0, "uncompressed");
        let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 5);
        let decoded = SyncFlagsResponse::decode(&frame[5..]).unwrap();
        assert_eq!(decoded.flag_configuration, r#"{"flags":{}}"#);
        assert_eq!(decoded.sync_context, None);
    }

    #[tokio::test]
    async fn every_frame_carries_the_sync_context() {
        let context = bunting_proto::json::json_to_struct(
            serde_json::json!({"bunting.fractional": "string"})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        let snapshots = Snapshots::with_context(&context);
        let set: Arc<str> = "s".into();
        for snapshot in [
            snapshots.get(&set, Some(&flag_set(1))).await.unwrap(),
            snapshots.get(&set, None).await.unwrap(),
        ] {
            let len = u32::from_be_bytes(snapshot.frame[1..5].try_into().unwrap()) as usize;
            assert_eq!(len, snapshot.frame.len() - 5);
            let decoded = SyncFlagsResponse::decode(&snapshot.frame[5..]).unwrap();
            assert_eq!(decoded.sync_context.as_ref(), Some(&context));
            assert!(decoded.flag_configuration.starts_with('{'));
        }
    }

    #[tokio::test]
    async fn every_subscriber_of_a_version_shares_one_buffer() {
        let snapshots = Snapshots::default();
        let set: Arc<str> = "s".into();
        let v1 = flag_set(1);
        let a = snapshots.get(&set, Some(&v1)).await.unwrap();
        let b = snapshots.get(&set, Some(&v1)).await.unwrap();
        assert_eq!(a.version, Some(1));
        assert_eq!(a.frame.as_ptr(), b.frame.as_ptr(), "one encoding, shared");
        let v2 = flag_set(2);
        let c = snapshots.get(&set, Some(&v2)).await.unwrap();
        assert_ne!(
            a.frame.as_ptr(),
            c.frame.as_ptr(),
            "a new version is a new encoding"
        );
        let gone = snapshots.get(&set, None).await.unwrap();
        assert_eq!(gone.version, None);
        let decoded = SyncFlagsResponse::decode(&gone.frame[5..]).unwrap();
        assert_eq!(decoded.flag_configuration, EMPTY_DOCUMENT);
    }
}
