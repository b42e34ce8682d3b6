//! The watched flag file: compiled cleanly at open, valid edits served, invalid ones refused while
//! the last good set keeps serving. Nothing here asserts speed (benchmarks do): the waits below
//! only bound how long a broken watcher can hang a test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bunting_engine::{CompileOptions, EvaluationContext};
use bunting_stores::{FileSource, FileSourceError, FileWatch, WatchedFlagSet};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(20);

/// A directory of its own for each test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bunting-file-source-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("flags.json")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn flags(banner_default: &str) -> Value {
    json!({"flags": {"banner": {
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": banner_default,
    }}})
}

/// Writes in place, as `echo > file` or an editor without safe-write does.
fn write_in_place(path: &Path, document: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(document).unwrap()).unwrap();
}

/// Writes a temporary file and renames it over, as vim, IntelliJ and ConfigMap updates do.
fn replace(path: &Path, document: &Value) {
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, serde_json::to_vec_pretty(document).unwrap()).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn banner(served: &WatchedFlagSet) -> Option<bool> {
    served
        .flag_set
        .resolve_bool("banner", &EvaluationContext::new())
        .value
}

async fn next_set(watch: &mut FileWatch) -> WatchedFlagSet {
    tokio::time::timeout(PATIENCE, watch.changed())
        .await
        .expect("the edit was not picked up")
        .expect("the watch stopped")
}

#[test]
fn open_refuses_a_file_with_problems_and_lists_every_one() {
    let scratch = Scratch::new();
    let path = scratch.file();
    write_in_place(
        &path,
        &json!({"flags": {
            "a": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "missing"},
            "b": {"state": "ON", "variants": {"on": true}, "defaultVariant": "on"},
        }}),
    );
    let error = FileSource::open(&path, CompileOptions::default()).unwrap_err();
    let FileSourceError::Invalid { problems, .. } = &error else {
        panic!("expected Invalid, got {error:?}");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["flags.a.defaultVariant", "flags.b.state"]);
    let message = error.to_string();
    assert!(message.contains("flags.a.defaultVariant") && message.contains("flags.b.state"));
    assert!(message.contains(&path.display().to_string()), "{message}");

    std::fs::write(&path, "{not json").unwrap();
    assert!(matches!(
        FileSource::open(&path, CompileOptions::default()),
        Err(FileSourceError::Definition { .. })
    ));
    assert!(matches!(
        FileSource::open(scratch.0.join("absent.json"), CompileOptions::default()),
        Err(FileSourceError::Read { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_edit_is_served_with_a_higher_version() {
    let scratch = Scratch::new();
    let path = scratch.file();
    write_in_place(&path, &flags("off"));
    let source = FileSource::open(&path, CompileOptions::default()).unwrap();
    assert_eq!(source.current().flag_set.version(), 1);
    assert_eq!(banner(source.current()), Some(false));
    let mut watch = source.watch();

    replace(&path, &flags("on"));
    let served = next_set(&mut watch).await;
    assert_eq!(served.flag_set.version(), 2);
    assert_eq!(banner(&served), Some(true));

    write_in_place(&path, &flags("off"));
    let served = next_set(&mut watch).await;
    assert_eq!(served.flag_set.version(), 3);
    assert_eq!(banner(&served), Some(false));
    assert_eq!(watch.current().flag_set.version(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_is_refused_and_the_last_good_set_keeps_serving() {
    let scratch = Scratch::new();
    let path = scratch.file();
    write_in_place(&path, &flags("off"));
    let mut watch = FileSource::open(&path, CompileOptions::default())
        .unwrap()
        .watch();

    replace(&path, &flags("maybe"));
    let refusal = tokio::time::timeout(PATIENCE, watch.refused())
        .await
        .expect("the invalid edit was not noticed")
        .expect("the watch stopped");
    match &*refusal {
        FileSourceError::Invalid { problems, .. } => {
            assert_eq!(problems.len(), 1);
            assert_eq!(problems[0].path, "flags.banner.defaultVariant");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let serving = watch.current();
    assert_eq!(serving.flag_set.version(), 1);
    assert_eq!(banner(&serving), Some(false));

    // Broken JSON is refused the same way.
    std::fs::write(&path, "{\"flags\": {").unwrap();
    let refusal = tokio::time::timeout(PATIENCE, watch.refused())
        .await
        .expect("the broken edit was not noticed")
        .expect("the watch stopped");
    assert!(
        matches!(&*refusal, FileSourceError::Definition { .. }),
        "{refusal:?}"
    );
    assert_eq!(watch.current().flag_set.version(), 1);

    // The next good edit is the next version: refused edits take no version.
    replace(&path, &flags("on"));
    let served = next_set(&mut watch).await;
    assert_eq!(served.flag_set.version(), 2);
    assert_eq!(banner(&served), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_and_recreated_is_followed() {
    let scratch = Scratch::new();
    let path = scratch.file();
    write_in_place(&path, &flags("off"));
    let mut watch = FileSource::open(&path, CompileOptions::default())
        .unwrap()
        .watch();

    std::fs::remove_file(&path).unwrap();
    // Give the watcher a chance to see the file gone; it keeps serving meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(watch.current().flag_set.version(), 1);
    write_in_place(&path, &flags("on"));
    let served = next_set(&mut watch).await;
    assert_eq!(served.flag_set.version(), 2);
    assert_eq!(banner(&served), Some(true));
}
