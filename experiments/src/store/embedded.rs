//! The single-node event store: one JSON file per experiment in a directory, holding every
//! shard's latest flush.
//!
//! **Crash safety.** A write goes to a temporary file, is fsynced, renamed over the experiment's
//! file, and the directory is fsynced, so after a crash the file is the old version or the new
//! one, never half of either. A leftover temporary file is overwritten by the next write and
//! never read.
//!
//! **Concurrency.** Every shard actor flushes on its own schedule; flushes of one experiment are
//! serialized by a per-experiment lock held across read-modify-write, so two shards writing at
//! once cannot lose each other's update. The lock also guards the parsed file, so reads after the
//! first come from memory. One process owns the directory: two nodes sharing one would overwrite
//! each other (a cluster uses ScyllaDB).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{EventStore, EventStoreError, ShardFlush};
use crate::aggregate::ExperimentTotals;
use crate::model::ExperimentId;

/// The format of one experiment's file, versioned so a later layout can be told apart.
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ExperimentFile {
    version: u32,
    experiment: Option<ExperimentId>,
    /// Shard → its flush with the largest seq. JSON object keys are strings; serde_json reads
    /// them back into `u32` and refuses anything else.
    shards: BTreeMap<u32, StoredShard>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredShard {
    seq: u64,
    totals: ExperimentTotals,
}

/// The experiment's parsed file, loaded on first use (`None` until then).
type Slot = Arc<Mutex<Option<ExperimentFile>>>;

#[derive(Debug)]
pub struct EmbeddedStore {
    dir: PathBuf,
    /// One slot per experiment seen; as many as there are experiments, which is few.
    slots: StdMutex<HashMap<ExperimentId, Slot>>,
}

impl EmbeddedStore {
    /// Opens (creating it if needed) the store kept in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<EmbeddedStore, EventStoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| EventStoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(EmbeddedStore {
            dir,
            slots: StdMutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding `experiment`. Experiment ids are `[A-Za-z0-9._-]{1,64}`, so the name has
    /// no separator and cannot leave the directory (`..` becomes the file `...json`).
    pub fn path_of(&self, experiment: &ExperimentId) -> PathBuf {
        self.dir.join(format!("{experiment}.json"))
    }

    fn slot(&self, experiment: &ExperimentId) -> Slot {
        // A poisoned lock only means another thread panicked while inserting into the map; the
        // map itself is still whole, so carry on with it.
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(slots.entry(experiment.clone()).or_default())
    }

    /// Runs `f` on the experiment's current file contents with the experiment's lock held.
    async fn with_file<T>(
        &self,
        experiment: &ExperimentId,
        f: impl FnOnce(&ExperimentFile) -> T,
    ) -> Result<T, EventStoreError> {
        let slot = self.slot(experiment);
        let mut guard = slot.lock().await;
        let file = self.loaded(experiment, &mut guard).await?;
        Ok(f(file))
    }

    async fn loaded<'a>(
        &self,
        experiment: &ExperimentId,
        cached: &'a mut Option<ExperimentFile>,
    ) -> Result<&'a ExperimentFile, EventStoreError> {
        let file = match cached.take() {
            Some(file) => file,
            None => {
                let path = self.path_of(experiment);
                let id = experiment.clone();
                blocking(move || read_file(&path, &id)).await?
            }
        };
        Ok(cached.insert(file))
    }

    /// Applies the flushes of one experiment and writes its file once, or changes nothing.
    async fn flush_experiment(
        &self,
        experiment: &ExperimentId,
        flushes: &[&ShardFlush],
    ) -> Result<(), EventStoreError> {
        let slot = self.slot(experiment);
        let mut guard = slot.lock().await;
        let current = self.loaded(experiment, &mut guard).await?;
        let mut next = current.clone();
        let mut changed = false;
        for flush in flushes {
            if flush.supersedes(next.shards.get(&flush.shard).map(|stored| stored.seq)) {
                next.shards.insert(
                    flush.shard,
                    StoredShard {
                        seq: flush.seq,
                        totals: flush.totals.clone(),
                    },
                );
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        next.version = FORMAT_VERSION;
        next.experiment = Some(experiment.clone());
        let bytes = serde_json::to_vec(&next).map_err(|e| EventStoreError::Corrupt {
            experiment: experiment.clone(),
            problem: format!("cannot encode the experiment's file: {e}"),
        })?;
        let (dir, path) = (self.dir.clone(), self.path_of(experiment));
        blocking(move || write_atomically(&dir, &path, &bytes)).await?;
        // Only now, with the file durable, does the cache move on: a failed write leaves both
        // the file and the cache at the old version, and the caller may retry.
        *guard = Some(next);
        Ok(())
    }
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn flush(&self, flushes: &[ShardFlush]) -> Result<(), EventStoreError> {
        let mut by_experiment: BTreeMap<&ExperimentId, Vec<&ShardFlush>> = BTreeMap::new();
        for flush in flushes {
            by_experiment
                .entry(&flush.experiment)
                .or_default()
                .push(flush);
        }
        // One experiment at a time, never two locks held at once, so no lock-order deadlock.
        for (experiment, flushes) in by_experiment {
            self.flush_experiment(experiment, &flushes).await?;
        }
        Ok(())
    }

    async fn shard(
        &self,
        experiment: &ExperimentId,
        shard: u32,
    ) -> Result<Option<ShardFlush>, EventStoreError> {
        self.with_file(experiment, |file| {
            file.shards.get(&shard).map(|stored| ShardFlush {
                experiment: experiment.clone(),
                shard,
                seq: stored.seq,
                totals: stored.totals.clone(),
            })
        })
        .await
    }

    async fn totals(&self, experiment: &ExperimentId) -> Result<ExperimentTotals, EventStoreError> {
        self.with_file(experiment, |file| {
            let mut totals = ExperimentTotals::default();
            for stored in file.shards.values() {
                totals.merge(&stored.totals);
            }
            totals
        })
        .await
    }
}

/// Runs blocking file I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EventStoreError> + Send + 'static,
) -> Result<T, EventStoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EventStoreError::Unavailable(format!("file store task failed: {e}")))?
}

fn read_file(path: &Path, experiment: &ExperimentId) -> Result<ExperimentFile, EventStoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ExperimentFile::default());
        }
        Err(source) => {
            return Err(EventStoreError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |problem: String| EventStoreError::Corrupt {
        experiment: experiment.clone(),
        problem,
    };
    let file: ExperimentFile = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(format!("{} is not a valid store file: {e}", path.display())))?;
    if file.version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "{} has format version {}, this build reads {FORMAT_VERSION}",
            path.display(),
            file.version
        )));
    }
    if file.experiment.as_ref() != Some(experiment) {
        return Err(corrupt(format!(
            "{} holds experiment {:?}",
            path.display(),
            file.experiment.as_ref().map(ExperimentId::as_str)
        )));
    }
    Ok(file)
}

/// Replaces `path` with `bytes` so that a crash at any point leaves the old or the new file.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), EventStoreError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| EventStoreError::Io { path, source }
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        // The data must be on disk before the rename makes it the file; otherwise a crash could
        // leave the new name pointing at an empty or partial file.
        file.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    // The rename itself lives in the directory: fsync it, or a crash can bring back the old file
    // after a flush was acknowledged.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}
