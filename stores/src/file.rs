//! The embedded default source: a flag file, compiled at start and watched for edits.
//!
//! Watching polls the file every [`POLL_INTERVAL`] rather than using inotify (`notify`): editors
//! save in too many ways (write in place, write a temporary file and rename it over, delete and
//! re-create, or a Kubernetes ConfigMap swapping a symlinked directory), and an inotify watch on
//! the file follows an inode that a rename replaces, so it must be re-armed on the directory and
//! still misses symlink swaps. Polling `stat` sees every one of them through the path, costs one
//! syscall per tick, and with a 50 ms tick serves a valid edit well within 100 ms.
//!
//! A tick re-reads the file when its length or modification time changed, and also while that
//! time is recent: two writes within the filesystem's timestamp granularity can leave both equal,
//! and the content hash then tells whether anything really changed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bunting_engine::{CompileOptions, DefinitionError, Diagnostic, DiagnosticSummary, FlagSet};
use tokio::sync::watch;

pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long after a modification a file is still re-read on every tick even if its length and
/// time look unchanged: comfortably more than any filesystem's timestamp granularity.
const RECENT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("cannot read flag file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("flag file {path}: {source}")]
    Definition {
        path: PathBuf,
        source: DefinitionError,
    },
    #[error(
        "flag file {path} has {} error(s) that stop flags being served as written (broken_flags = \
         \"refuse\"; `bunting serve --broken-flags serve`, or [flags] broken_flags = \"serve\", \
         serves the rest, each broken flag answering PARSE_ERROR as flagd does): {}",
        errors(problems),
        super::list(problems)
    )]
    Invalid {
        path: PathBuf,
        problems: Vec<Diagnostic>,
    },
}

/// The problems that refuse a file: errors, not the warnings listed beside them.
fn errors(problems: &[Diagnostic]) -> usize {
    problems
        .iter()
        .filter(|p| p.severity == bunting_engine::Severity::Error)
        .count()
}

/// What a file source does with a flag it cannot compile (a `Severity::Error` diagnostic).
/// Warnings (schema violations flagd tolerates) are always served, with a log line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokenFlags {
    /// Refuse the whole file (or edit): the last good flags keep serving. The safe default.
    #[default]
    Refuse,
    /// Serve the file; the broken flag resolves `PARSE_ERROR`, as flagd does.
    Serve,
}

/// How a file source compiles its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileOptions {
    pub compile: CompileOptions,
    pub broken_flags: BrokenFlags,
}

impl From<CompileOptions> for FileOptions {
    fn from(compile: CompileOptions) -> FileOptions {
        FileOptions {
            compile,
            broken_flags: BrokenFlags::default(),
        }
    }
}

/// The flag set a file currently serves.
#[derive(Debug, Clone)]
pub struct WatchedFlagSet {
    /// Stamped with the source's version: 1 at open, one more for each accepted edit.
    pub flag_set: Arc<FlagSet>,
    /// The file's modification time when it was read, for propagation-latency metrics.
    pub modified: SystemTime,
}

/// A flag file, compiled cleanly. [`FileSource::watch`] follows its edits.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    options: FileOptions,
    current: WatchedFlagSet,
    seen: Fingerprint,
}

impl FileSource {
    /// Reads and compiles the file. A flag that cannot be compiled refuses the file unless
    /// `options.broken_flags` says to serve it as flagd does; warnings are logged and served.
    pub fn open(
        path: impl Into<PathBuf>,
        options: impl Into<FileOptions>,
    ) -> Result<FileSource, FileSourceError> {
        let path = path.into();
        let options = options.into();
        let read = read(&path, options.compile.limits.max_document_bytes)?;
        let flag_set = compile(&path, &read.bytes, &options)?.with_version(1);
        Ok(FileSource {
            current: WatchedFlagSet {
                flag_set: Arc::new(flag_set),
                modified: read.stamp.modified,
            },
            seen: read.fingerprint(),
            path,
            options,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn current(&self) -> &WatchedFlagSet {
        &self.current
    }

    /// Starts polling the file on the current tokio runtime. The watch stops when every
    /// [`FileWatch`] for it is dropped.
    pub fn watch(self) -> FileWatch {
        let (serving, rx) = watch::channel(self.current.clone());
        let (refusals, refused) = watch::channel(None);
        tokio::spawn(poll(self, serving, refusals));
        FileWatch { rx, refused }
    }
}

/// The latest good flag set of a watched file, and a way to wait for the next one.
#[derive(Debug, Clone)]
pub struct FileWatch {
    rx: watch::Receiver<WatchedFlagSet>,
    refused: watch::Receiver<Option<Arc<FileSourceError>>>,
}

impl FileWatch {
    pub fn current(&self) -> WatchedFlagSet {
        self.rx.borrow().clone()
    }

    /// Waits for a flag set newer than the last one this handle returned (at first, the one served
    /// when the watch started) and returns it. Edits that come faster than they are taken are
    /// collapsed: only the newest is returned. `None` if the watch has stopped.
    pub async fn changed(&mut self) -> Option<WatchedFlagSet> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// Why the last edit refused was refused, if one was since the watch started: for a status
    /// page, where a log line is easy to miss.
    pub fn last_refusal(&self) -> Option<Arc<FileSourceError>> {
        self.refused.borrow().clone()
    }

    /// Waits for the next edit to be refused and returns why. `None` if the watch has stopped.
    pub async fn refused(&mut self) -> Option<Arc<FileSourceError>> {
        loop {
            self.refused.changed().await.ok()?;
            if let Some(refusal) = self.refused.borrow_and_update().clone() {
                return Some(refusal);
            }
        }
    }
}

async fn poll(
    mut source: FileSource,
    tx: watch::Sender<WatchedFlagSet>,
    refusals: watch::Sender<Option<Arc<FileSourceError>>>,
) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The stamp of the last read; the hash of content refused and reported (so one bad save is
    // reported once, not on every tick); the hash of content found invalid once, to be confirmed.
    let mut last_stamp = Some(source.seen.stamp);
    let mut refused: Option<u64> = None;
    let mut pending: Option<u64> = None;
    let mut unreadable = false;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            _ = ticks.tick() => {}
        }
        let path = source.path.clone();
        let stamp = match tokio::fs::metadata(&path).await {
            Ok(meta) => Stamp::of(&meta),
            Err(error) => {
                // Between an editor's delete and re-create, say; keep serving what we have.
                if !unreadable {
                    tracing::warn!(path = %path.display(), %error, "flag file unreadable; still serving the last good version");
                    unreadable = true;
                }
                last_stamp = None;
                continue;
            }
        };
        if last_stamp == Some(stamp) && !stamp.is_recent() {
            continue;
        }
        let max_bytes = source.options.compile.limits.max_document_bytes;
        let read = match tokio::task::spawn_blocking(move || read(&path, max_bytes)).await {
            Ok(Ok(read)) => read,
            Ok(Err(error @ FileSourceError::Definition { .. })) => {
                // Over the size limit: refused from its length, like any invalid edit.
                if !unreadable {
                    tracing::warn!(%error, "flag file edit refused; still serving the last good version");
                    unreadable = true;
                }
                last_stamp = Some(stamp);
                continue;
            }
            Ok(Err(error)) => {
                // Permissions, say: try again when the file changes, and say so once.
                if !unreadable {
                    tracing::warn!(%error, "flag file unreadable; still serving the last good version");
                    unreadable = true;
                }
                last_stamp = Some(stamp);
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "flag file read task failed");
                continue;
            }
        };
        unreadable = false;
        last_stamp = Some(read.stamp);
        let fingerprint = read.fingerprint();
        if fingerprint.hash == source.seen.hash {
            // Back to what is being served (an edit undone).
            refused = None;
            pending = None;
            continue;
        }
        if refused == Some(fingerprint.hash) {
            continue;
        }
        match compile(&source.path, &read.bytes, &source.options) {
            Ok(flag_set) => {
                let version = source.current.flag_set.version() + 1;
                source.current = WatchedFlagSet {
                    flag_set: Arc::new(flag_set.with_version(version)),
                    modified: read.stamp.modified,
                };
                source.seen = fingerprint;
                refused = None;
                pending = None;
                tracing::info!(path = %source.path.display(), version, "flag file reloaded");
                if tx.send(source.current.clone()).is_err() {
                    return;
                }
            }
            // A save caught half-written is invalid too, but the next tick sees the rest of it:
            // a refusal is reported only when the same content is read on two ticks.
            Err(_) if pending != Some(fingerprint.hash) => {
                pending = Some(fingerprint.hash);
                last_stamp = None;
            }
            Err(error) => {
                pending = None;
                refused = Some(fingerprint.hash);
                report(&source.path, &error);
                refusals.send_replace(Some(Arc::new(error)));
            }
        }
    }
}

fn report(path: &Path, error: &FileSourceError) {
    match error {
        FileSourceError::Invalid { problems, .. } => {
            let summary = DiagnosticSummary::new(problems, super::MAX_REPORTED_PROBLEMS);
            if summary.omitted > 0 {
                tracing::warn!(path = %path.display(), omitted = summary.omitted, problems = problems.len(), "flag file edit refused; only the first problems are logged");
            }
            for problem in summary.shown {
                tracing::warn!(
                    path = %path.display(),
                    severity = %problem.severity,
                    at = %problem.path,
                    message = %problem.message,
                    "flag file edit refused"
                );
            }
            tracing::warn!(
                path = %path.display(),
                problems = problems.len(),
                "flag file edit refused; still serving the last good version"
            );
        }
        other => {
            tracing::warn!(%other, "flag file edit refused; still serving the last good version");
        }
    }
}

fn compile(path: &Path, bytes: &[u8], options: &FileOptions) -> Result<FlagSet, FileSourceError> {
    let definition = |source| FileSourceError::Definition {
        path: path.to_owned(),
        source,
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| definition(DefinitionError::Json(format!("not UTF-8 text: {e}"))))?;
    // `compile` on the text: duplicate keys and the document size limit are checked there.
    let compiled = bunting_engine::compile(text, &options.compile).map_err(definition)?;
    if options.broken_flags == BrokenFlags::Refuse && compiled.has_errors() {
        return Err(FileSourceError::Invalid {
            path: path.to_owned(),
            problems: compiled.diagnostics,
        });
    }
    let summary = DiagnosticSummary::new(&compiled.diagnostics, super::MAX_REPORTED_PROBLEMS);
    for problem in summary.shown {
        tracing::warn!(path = %path.display(), %problem, "flag file served with a problem");
    }
    if summary.omitted > 0 {
        tracing::warn!(path = %path.display(), omitted = summary.omitted, "flag file served with more problems than are logged");
    }
    Ok(compiled.flag_set)
}

/// What `stat` says of the file: enough to skip reading it when nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: SystemTime,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    fn is_recent(&self) -> bool {
        // A time in the future (a clock step) counts as recent: keep looking.
        SystemTime::now()
            .duration_since(self.modified)
            .map_or(true, |age| age < RECENT)
    }
}

#[derive(Debug, Clone, Copy)]
struct Fingerprint {
    stamp: Stamp,
    hash: u64,
}

struct Read {
    stamp: Stamp,
    bytes: Vec<u8>,
}

impl Read {
    fn fingerprint(&self) -> Fingerprint {
        let mut hasher = DefaultHasher::new();
        self.bytes.hash(&mut hasher);
        Fingerprint {
            stamp: self.stamp,
            hash: hasher.finish(),
        }
    }
}

/// The stamp is taken before the content, so a write racing the read leaves a stamp older than
/// the content and the next tick reads again.
fn read(path: &Path, max_bytes: usize) -> Result<Read, FileSourceError> {
    let failed = |source| FileSourceError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(failed)?;
    let stamp = Stamp::of(&meta);
    // Never read more than the document limit: a file that grew to gigabytes is refused from its
    // length, and one that grows while being read is cut one byte past the limit, which `compile`
    // then refuses by name. Either way it costs the node no memory.
    let too_large = |found: u64| FileSourceError::Definition {
        path: path.to_owned(),
        source: DefinitionError::Limit {
            kind: bunting_engine::LimitKind::DocumentBytes,
            found: usize::try_from(found).unwrap_or(usize::MAX),
            limit: max_bytes,
        },
    };
    if meta.len() > u64::try_from(max_bytes).unwrap_or(u64::MAX) {
        return Err(too_large(meta.len()));
    }
    let cap = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len().min(cap)).unwrap_or(0));
    std::fs::File::open(path)
        .and_then(|file| file.take(cap).read_to_end(&mut bytes))
        .map_err(failed)?;
    Ok(Read { stamp, bytes })
}
