//! Per-user state for a single node, in files: one append-only log per shard under
//! `<data_dir>/users/`, one JSON line per write (`{"user": ..., "state": ...}`), replayed on load
//! (the last line of a user wins) and compacted then.
//!
//! A write is appended before the shard answers the request that made it, so it survives the
//! process being killed (it is in the kernel's page cache); it is not fsynced per write, so a
//! power loss can lose the last writes. In a cluster the shared tier (Redis) holds this state
//! instead, so a shard's next owner on another node finds it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use bunting_actors::{UserStateError, UserStateStore};
use serde::{Deserialize, Serialize};

#[derive(Debug)]
pub struct FileUserStates {
    dir: PathBuf,
    /// Each shard's log, opened for appending once and kept open (a save is one `write`). The lock
    /// is held for that one system call, and for a load's read and compaction, which must not
    /// interleave with an append (a release and the next acquire of one shard may overlap).
    files: Mutex<HashMap<u32, File>>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    user: String,
    state: Box<serde_json::value::RawValue>,
}

impl FileUserStates {
    pub fn open(data_dir: &Path) -> Result<FileUserStates, UserStateError> {
        let dir = data_dir.join("users");
        std::fs::create_dir_all(&dir).map_err(|e| unavailable(&dir, &e))?;
        Ok(FileUserStates {
            dir,
            files: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, shard: u32) -> PathBuf {
        self.dir.join(format!("shard-{shard:05}.log"))
    }
}

fn unavailable(path: &Path, e: &std::io::Error) -> UserStateError {
    UserStateError::Unavailable(format!("{}: {e}", path.display()))
}

#[async_trait]
impl UserStateStore for FileUserStates {
    async fn claim(&self, _shard: u32, _epoch: u64) -> Result<(), UserStateError> {
        // The file belongs to one node, the shards' only writer: nothing to fence.
        Ok(())
    }

    async fn load(&self, shard: u32) -> Result<Vec<(String, Vec<u8>)>, UserStateError> {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        // Compaction replaces the file: an open handle would append to the replaced one.
        files.remove(&shard);
        let path = self.path(shard);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(&path, &e)),
        };
        let mut users = BTreeMap::new();
        let mut lines = 0usize;
        for (n, line) in text.lines().enumerate() {
            lines += 1;
            match serde_json::from_str::<Line>(line) {
                Ok(l) => {
                    users.insert(l.user, l.state.get().as_bytes().to_vec());
                }
                // A torn last line (the process died mid-write) or a damaged one: skip it, say
                // where; the rest of the shard is still good.
                Err(e) => {
                    tracing::warn!(path = %path.display(), line = n + 1, error = %e, "skipping an unreadable user state line")
                }
            }
        }
        if lines >= 2 * users.len().max(1) {
            compact(&path, &users).map_err(|e| unavailable(&path, &e))?;
        }
        Ok(users.into_iter().collect())
    }

    async fn save(
        &self,
        shard: u32,
        _epoch: u64,
        user: &str,
        state: &[u8],
    ) -> Result<(), UserStateError> {
        let path = self.path(shard);
        let state =
            serde_json::value::RawValue::from_string(String::from_utf8_lossy(state).into_owned())
                .map_err(|e| UserStateError::Corrupt {
                shard,
                user: user.to_owned(),
                problem: e.to_string(),
            })?;
        let mut line = serde_json::to_vec(&Line {
            user: user.to_owned(),
            state,
        })
        .map_err(|e| UserStateError::Unavailable(e.to_string()))?;
        line.push(b'\n');
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        let file = match files.entry(shard) {
            std::collections::hash_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => slot.insert(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| unavailable(&path, &e))?,
            ),
        };
        // One write call per line, so a line is never interleaved with another.
        file.write_all(&line).map_err(|e| unavailable(&path, &e))
    }
}

/// Rewrites a shard's log with one line per user: temp file, fsync, rename.
fn compact(path: &Path, users: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    let temp = path.with_extension("log.compacting");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&temp)?);
    for (user, state) in users {
        let state =
            serde_json::value::RawValue::from_string(String::from_utf8_lossy(state).into_owned())
                .map_err(std::io::Error::other)?;
        serde_json::to_writer(
            &mut out,
            &Line {
                user: user.clone(),
                state,
            },
        )
        .map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(label: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bunting-users-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn the_last_write_of_each_user_survives_a_reopen_and_a_torn_line() {
        let dir = dir("reopen");
        let store = FileUserStates::open(&dir).unwrap();
        store
            .save(3, 0, "ann", br#"{"e":{"arm":"a"}}"#)
            .await
            .unwrap();
        store
            .save(3, 0, "bob", br#"{"e":{"arm":"b"}}"#)
            .await
            .unwrap();
        store
            .save(3, 0, "ann", br#"{"e":{"arm":"a","n":2}}"#)
            .await
            .unwrap();
        store.save(4, 0, "cat", b"{}").await.unwrap();
        // A crash mid-append leaves a partial line at the end.
        std::fs::OpenOptions::new()
            .append(true)
            .open(store.path(3))
            .unwrap()
            .write_all(br#"{"user":"dan","sta"#)
            .unwrap();
        drop(store);
        let reopened = FileUserStates::open(&dir).unwrap();
        let users = reopened.load(3).await.unwrap();
        assert_eq!(
            users,
            vec![
                ("ann".to_owned(), br#"{"e":{"arm":"a","n":2}}"#.to_vec()),
                ("bob".to_owned(), br#"{"e":{"arm":"b"}}"#.to_vec()),
            ]
        );
        assert_eq!(reopened.load(4).await.unwrap().len(), 1);
        assert!(reopened.load(5).await.unwrap().is_empty());
        // The load compacted shard 3 (4 lines for 2 users); loading again gives the same.
        assert_eq!(reopened.load(3).await.unwrap(), users);
        assert_eq!(
            std::fs::read_to_string(reopened.path(3))
                .unwrap()
                .lines()
                .count(),
            2
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_state_that_is_not_json_is_refused_and_not_written() {
        let dir = dir("refuse");
        let store = FileUserStates::open(&dir).unwrap();
        assert!(matches!(
            store.save(0, 0, "ann", b"not json").await,
            Err(UserStateError::Corrupt { .. })
        ));
        assert!(store.load(0).await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
