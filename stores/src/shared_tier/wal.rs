//! The write-ahead log of per-user writes queued while Redis is unreachable: one file on local
//! disk, so a node killed during an outage still holds them when it starts again.
//!
//! Record: `len: u32 LE | check: first 8 bytes of SHA-256(payload) | payload (len bytes)`.
//! Payload: `kind: u8 (1 put, 2 delete) | shard: u32 | epoch: u64 | user_len: u16 | user |
//! [state_len: u32 | state]` (little-endian). Every byte read back is hostile: a record whose
//! length is out of bounds, whose check does not match or that does not decode ends the log
//! there (a torn tail from a crash mid-append, or damage); the file is cut to the last good
//! record, never a panic.
//!
//! Durability: [`WriteAheadLog::append`] returns only once the record is fsynced (the write is
//! acknowledged to the evaluation after that: nothing acknowledged is lost, even to a power
//! loss). The fsyncs are grouped: appenders write under one lock, then one of them fsyncs
//! everything written so far while the others wait for it, so N evaluations during an outage
//! pay about one fsync together, not N in a row.
//!
//! Bound: `max_bytes` on disk. A write that would pass it is refused ([`WalError::Full`],
//! counted in `bunting_shared_tier_wal_refused_total`) rather than an older acknowledged write
//! being dropped: the caller answers the evaluation "not recorded" instead of losing a record it
//! already promised. The log is emptied (cut to zero) once every record in it was replayed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};

use super::queue::Write;

/// A per-user write as logged and replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserWrite {
    Put {
        shard: u32,
        epoch: u64,
        user: String,
        state: Vec<u8>,
    },
    Delete {
        shard: u32,
        epoch: u64,
        user: String,
    },
}

/// The largest payload accepted on append or read back (a state record is a few hundred bytes).
pub const MAX_PAYLOAD: usize = 1 << 20;
const HEADER: usize = 4 + 8;
const PUT: u8 = 1;
const DELETE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "write-ahead log {path} is full ({len} of {max} bytes); write for user {user:?} refused"
    )]
    Full {
        path: PathBuf,
        len: u64,
        max: u64,
        user: String,
    },
    #[error("write for user {user:?} is too large for the write-ahead log ({size} bytes)")]
    TooLarge { user: String, size: usize },
}

#[derive(Debug)]
pub struct WriteAheadLog {
    path: PathBuf,
    max_bytes: u64,
    appends: Mutex<Appends>,
    /// Held by the one appender fsyncing; the others wait on it, then find their record synced.
    syncing: Mutex<u64>,
}

#[derive(Debug)]
struct Appends {
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Records appended and not yet replayed; the file is cut to zero when this reaches zero.
    pending: u64,
    /// Bumped whenever the file is cut, so an fsync of a cut file's offsets is not mistaken
    /// for one of the new records.
    generation: u64,
}

/// What a log held when it was opened.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub writes: Vec<UserWrite>,
    /// Bytes cut from the end (a torn or damaged tail); 0 when the log was whole.
    pub cut: u64,
}

impl WriteAheadLog {
    /// Opens (creating) the log at `path` and returns the writes it holds, oldest first. They
    /// stay in the log, counted as pending, until [`WriteAheadLog::replayed`] is called for each.
    pub fn open(path: &Path, max_bytes: u64) -> Result<(WriteAheadLog, Recovered), WalError> {
        let io = |source| WalError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let on_disk = file.metadata().map_err(io)?.len();
        // Bounded: the log never grows past `max_bytes` (plus one record), and a larger file is
        // read only up to that.
        let mut bytes = Vec::new();
        (&mut file)
            .take(max_bytes.saturating_add(MAX_PAYLOAD as u64 + HEADER as u64))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let (writes, good) = decode_all(&bytes);
        let cut = on_disk - good as u64;
        if cut > 0 {
            tracing::warn!(path = %path.display(), cut, kept = writes.len(), "write-ahead log had a torn or damaged tail; cut it");
            file.set_len(good as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let log = WriteAheadLog {
            path: path.to_owned(),
            max_bytes,
            appends: Mutex::new(Appends {
                file,
                len: good as u64,
                pending: writes.len() as u64,
                generation: 0,
            }),
            syncing: Mutex::new(0),
        };
        Ok((log, Recovered { writes, cut }))
    }

    /// Appends `write` and returns once it is on disk (fsynced, grouped with concurrent
    /// appends). Blocking: call it off the async runtime's workers.
    pub fn append(&self, write: &UserWrite) -> Result<(), WalError> {
        let record = encode(write)?;
        let (end, file) = {
            let mut appends = self.lock();
            let len = appends.len;
            if len + record.len() as u64 > self.max_bytes {
                metrics::counter!("bunting_shared_tier_wal_refused_total").increment(1);
                return Err(WalError::Full {
                    path: self.path.clone(),
                    len,
                    max: self.max_bytes,
                    user: write.user().to_owned(),
                });
            }
            if let Err(e) = appends.file.write_all(&record) {
                // A partial record would end the log at the next start, hiding every record
                // appended after it: cut it off (best effort; if that fails too, the next start
                // cuts it and loses only what follows).
                let good = appends.len;
                let _ = appends.file.set_len(good);
                return Err(self.io(e));
            }
            appends.len += record.len() as u64;
            appends.pending += 1;
            let file = appends.file.try_clone().map_err(|e| self.io(e))?;
            ((appends.generation, appends.len), file)
        };
        // Group commit: whoever holds `syncing` fsyncs all that was written before it started;
        // a waiter whose record that covered returns without an fsync of its own.
        let mut synced = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        // A later generation also covers this record: the log is cut only once every pending
        // record, this one included, was replayed.
        if synced_key(*synced) < end {
            let (generation, len) = {
                let appends = self.lock();
                (appends.generation, appends.len)
            };
            file.sync_data().map_err(|e| self.io(e))?;
            *synced = pack(generation, len);
        }
        Ok(())
    }

    /// Says one more logged write reached Redis (or was settled otherwise); when none is left,
    /// the log is cut to zero so it never replays them again.
    pub fn replayed(&self) -> Result<(), WalError> {
        let mut appends = self.lock();
        appends.pending = appends.pending.saturating_sub(1);
        if appends.pending == 0 && appends.len > 0 {
            appends.file.set_len(0).map_err(|e| self.io(e))?;
            appends.file.sync_all().map_err(|e| self.io(e))?;
            appends.len = 0;
            appends.generation += 1;
        }
        Ok(())
    }

    /// Bytes in the log now.
    pub fn len(&self) -> u64 {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn io(&self, source: std::io::Error) -> WalError {
        WalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Appends> {
        self.appends.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// The synced mark: the generation in the top 16 bits, the synced length below (a log is far
// smaller than 2^48 bytes).
fn pack(generation: u64, len: u64) -> u64 {
    (generation << 48) | (len & ((1 << 48) - 1))
}

fn synced_key(packed: u64) -> (u64, u64) {
    (packed >> 48, packed & ((1 << 48) - 1))
}

impl TryFrom<&Write> for UserWrite {
    type Error = ();

    /// The per-user writes; the others (snapshots, publishes) are versioned or re-derived and
    /// are not logged.
    fn try_from(write: &Write) -> Result<UserWrite, ()> {
        match write {
            Write::PutUserState {
                shard,
                epoch,
                user,
                state,
            } => Ok(UserWrite::Put {
                shard: *shard,
                epoch: *epoch,
                user: user.clone(),
                state: state.clone(),
            }),
            Write::DeleteUserState { shard, epoch, user } => Ok(UserWrite::Delete {
                shard: *shard,
                epoch: *epoch,
                user: user.clone(),
            }),
            _ => Err(()),
        }
    }
}

impl From<UserWrite> for Write {
    fn from(write: UserWrite) -> Write {
        match write {
            UserWrite::Put {
                shard,
                epoch,
                user,
                state,
            } => Write::PutUserState {
                shard,
                epoch,
                user,
                state,
            },
            UserWrite::Delete { shard, epoch, user } => {
                Write::DeleteUserState { shard, epoch, user }
            }
        }
    }
}

impl UserWrite {
    pub fn user(&self) -> &str {
        match self {
            UserWrite::Put { user, .. } | UserWrite::Delete { user, .. } => user,
        }
    }
}

fn encode(write: &UserWrite) -> Result<Vec<u8>, WalError> {
    let too_large = |size| WalError::TooLarge {
        user: write.user().to_owned(),
        size,
    };
    let (kind, shard, epoch, user, state) = match write {
        UserWrite::Put {
            shard,
            epoch,
            user,
            state,
        } => (PUT, shard, epoch, user, Some(state)),
        UserWrite::Delete { shard, epoch, user } => (DELETE, shard, epoch, user, None),
    };
    let user_len = u16::try_from(user.len()).map_err(|_| too_large(user.len()))?;
    let mut payload =
        Vec::with_capacity(1 + 4 + 8 + 2 + user.len() + 4 + state.map_or(0, Vec::len));
    payload.push(kind);
    payload.extend_from_slice(&shard.to_le_bytes());
    payload.extend_from_slice(&epoch.to_le_bytes());
    payload.extend_from_slice(&user_len.to_le_bytes());
    payload.extend_from_slice(user.as_bytes());
    if let Some(state) = state {
        let state_len = u32::try_from(state.len()).map_err(|_| too_large(state.len()))?;
        payload.extend_from_slice(&state_len.to_le_bytes());
        payload.extend_from_slice(state);
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(too_large(payload.len()));
    }
    let mut record = Vec::with_capacity(HEADER + payload.len());
    // In bounds: checked against MAX_PAYLOAD just above.
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&check(&payload));
    record.extend_from_slice(&payload);
    Ok(record)
}

fn check(payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// The records in `bytes` up to the first bad one, and the length of that good prefix.
fn decode_all(bytes: &[u8]) -> (Vec<UserWrite>, usize) {
    let mut writes = Vec::new();
    let mut at = 0usize;
    while let Some((write, next)) = decode_one(bytes, at) {
        writes.push(write);
        at = next;
    }
    (writes, at)
}

fn decode_one(bytes: &[u8], at: usize) -> Option<(UserWrite, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let start = at + HEADER;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    if check(payload) != header[4..] {
        return None;
    }
    Some((decode_payload(payload)?, start + len))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

fn decode_payload(payload: &[u8]) -> Option<UserWrite> {
    let mut r = Reader(payload);
    let [kind] = r.array::<1>()?;
    let shard = u32::from_le_bytes(r.array()?);
    let epoch = u64::from_le_bytes(r.array()?);
    let user_len = u16::from_le_bytes(r.array()?) as usize;
    let user = String::from_utf8(r.take(user_len)?.to_vec()).ok()?;
    let write = match kind {
        PUT => {
            let state_len = u32::from_le_bytes(r.array()?) as usize;
            let state = r.take(state_len)?.to_vec();
            UserWrite::Put {
                shard,
                epoch,
                user,
                state,
            }
        }
        DELETE => UserWrite::Delete { shard, epoch, user },
        _ => return None,
    };
    // Trailing bytes mean the record is not what this code wrote.
    r.0.is_empty().then_some(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(user: &str, state: &str) -> UserWrite {
        UserWrite::Put {
            shard: 7,
            epoch: 3,
            user: user.to_owned(),
            state: state.as_bytes().to_vec(),
        }
    }

    fn delete(user: &str) -> UserWrite {
        UserWrite::Delete {
            shard: 9,
            epoch: u64::MAX,
            user: user.to_owned(),
        }
    }

    fn record_len(write: &UserWrite) -> u64 {
        encode(write).unwrap().len() as u64
    }

    #[test]
    fn appended_writes_come_back_in_order_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal").join("user-writes.log");
        let writes = vec![
            put("alice", "{\"a\":1}"),
            delete("bob"),
            put("", ""),
            put("carol", "x"),
        ];
        {
            let (log, recovered) = WriteAheadLog::open(&path, 1 << 20).unwrap();
            assert_eq!(recovered, Recovered::default());
            for w in &writes {
                log.append(w).unwrap();
            }
        }
        let (_, recovered) = WriteAheadLog::open(&path, 1 << 20).unwrap();
        assert_eq!(recovered.writes, writes);
        assert_eq!(recovered.cut, 0);
    }

    /// A damaged log, table-driven: what is done to the file after three good records, and how
    /// many of them must come back.
    #[test]
    fn a_torn_or_damaged_tail_is_cut_and_the_good_prefix_kept() {
        type Damage = fn(&mut Vec<u8>, &[u64]);
        let cases: &[(&str, Damage, usize)] = &[
            (
                "torn mid-payload of the last record",
                |b, _| {
                    b.truncate(b.len() - 3);
                },
                2,
            ),
            (
                "torn mid-header of the last record",
                |b, ends| {
                    b.truncate(ends[1] as usize + 5);
                },
                2,
            ),
            (
                "a flipped byte in the second payload",
                |b, ends| {
                    b[ends[0] as usize + HEADER + 2] ^= 0x40;
                },
                1,
            ),
            (
                "a flipped checksum byte in the first",
                |b, _| {
                    b[5] ^= 1;
                },
                0,
            ),
            (
                "a length past the bound",
                |b, ends| {
                    b[ends[1] as usize..ends[1] as usize + 4]
                        .copy_from_slice(&u32::MAX.to_le_bytes());
                },
                2,
            ),
            (
                "garbage appended",
                |b, _| b.extend_from_slice(&[0xff; 40]),
                3,
            ),
            (
                "zeros appended (a preallocated tail)",
                |b, _| b.extend_from_slice(&[0; 64]),
                3,
            ),
            (
                "a whole file of garbage",
                |b, _| {
                    b.iter_mut().for_each(|x| *x = 0xa5);
                },
                0,
            ),
        ];
        let writes = [
            put("alice", "{}"),
            delete("bob"),
            put("carol", "{\"e\":[1,2]}"),
        ];
        for (name, damage, kept) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("log");
            let mut ends = Vec::new();
            {
                let (log, _) = WriteAheadLog::open(&path, 1 << 20).unwrap();
                for w in &writes {
                    log.append(w).unwrap();
                    ends.push(log.len());
                }
            }
            let mut bytes = std::fs::read(&path).unwrap();
            damage(&mut bytes, &ends);
            std::fs::write(&path, &bytes).unwrap();
            let (log, recovered) = WriteAheadLog::open(&path, 1 << 20).unwrap();
            assert_eq!(recovered.writes, writes[..*kept].to_vec(), "{name}");
            let good = if *kept == 0 { 0 } else { ends[kept - 1] };
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                good,
                "{name}: file cut to the good prefix"
            );
            assert_eq!(recovered.cut, bytes.len() as u64 - good, "{name}");
            // Appending after the cut yields a readable log again.
            log.append(&put("dave", "{}")).unwrap();
            drop(log);
            let (_, again) = WriteAheadLog::open(&path, 1 << 20).unwrap();
            assert_eq!(again.writes.len(), kept + 1, "{name}");
            assert_eq!(again.cut, 0, "{name}");
        }
    }

    #[test]
    fn a_full_log_refuses_and_keeps_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let one = record_len(&put("alice", "{}"));
        let (log, _) = WriteAheadLog::open(&path, 2 * one).unwrap();
        log.append(&put("alice", "{}")).unwrap();
        log.append(&put("bobby", "{}")).unwrap();
        let refused = log.append(&put("carol", "{}"));
        assert!(
            matches!(&refused, Err(WalError::Full { user, .. }) if user == "carol"),
            "{refused:?}"
        );
        drop(log);
        let (_, recovered) = WriteAheadLog::open(&path, 2 * one).unwrap();
        assert_eq!(
            recovered.writes,
            vec![put("alice", "{}"), put("bobby", "{}")]
        );
    }

    #[test]
    fn too_large_writes_are_refused_before_touching_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (log, _) = WriteAheadLog::open(&path, u64::MAX >> 20).unwrap();
        let huge = put("alice", &"x".repeat(MAX_PAYLOAD));
        assert!(matches!(log.append(&huge), Err(WalError::TooLarge { .. })));
        let long_user = put(&"u".repeat(70_000), "{}");
        assert!(matches!(
            log.append(&long_user),
            Err(WalError::TooLarge { .. })
        ));
        assert!(log.is_empty());
    }

    #[test]
    fn the_log_is_emptied_once_every_record_was_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (log, _) = WriteAheadLog::open(&path, 1 << 20).unwrap();
        log.append(&put("alice", "{}")).unwrap();
        log.append(&put("bob", "{}")).unwrap();
        log.replayed().unwrap();
        assert!(!log.is_empty(), "one record still pending");
        log.replayed().unwrap();
        assert!(log.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // Writes after the cut start a fresh log that replays only them.
        log.append(&delete("carol")).unwrap();
        drop(log);
        let (log, recovered) = WriteAheadLog::open(&path, 1 << 20).unwrap();
        assert_eq!(recovered.writes, vec![delete("carol")]);
        // Recovered records count as pending until replayed.
        log.replayed().unwrap();
        assert!(log.is_empty());
    }

    #[test]
    fn concurrent_appends_all_reach_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (log, _) = WriteAheadLog::open(&path, 1 << 24).unwrap();
        let log = std::sync::Arc::new(log);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        log.append(&put(&format!("u{t}-{i}"), "{}")).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(log);
        let (_, recovered) = WriteAheadLog::open(&path, 1 << 24).unwrap();
        assert_eq!(recovered.writes.len(), 400);
        assert_eq!(recovered.cut, 0);
    }
}
