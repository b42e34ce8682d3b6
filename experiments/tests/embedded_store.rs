#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The embedded event store: durable across a restart, retry-safe, and safe under concurrent
//! flushes from many shard actors.

use std::sync::Arc;

use bunting_experiments::store::EmbeddedStore;
use bunting_experiments::{
    EventStore, EventStoreError, ExperimentId, ExperimentTotals, MetricName, MetricTotals,
    ShardFlush,
};

fn id(s: &str) -> ExperimentId {
    ExperimentId::new(s).unwrap()
}

/// Totals with `exposed` users in arm `a` and one mean metric whose sum is not exactly
/// representable in decimal, so a lossy round trip would show.
fn totals(exposed: u64) -> ExperimentTotals {
    let mut t = ExperimentTotals::default();
    for _ in 0..exposed {
        t.expose("a");
    }
    t.expose("b");
    let arm = t.arms.get_mut("a").unwrap();
    arm.metrics.insert(
        MetricName::new("revenue").unwrap(),
        MetricTotals {
            converted: exposed / 2,
            sum: 0.1 * exposed as f64 + 1e-9,
            sum_squares: std::f64::consts::PI * exposed as f64,
        },
    );
    t
}

fn flush(experiment: &str, shard: u32, seq: u64, exposed: u64) -> ShardFlush {
    ShardFlush {
        experiment: id(experiment),
        shard,
        seq,
        totals: totals(exposed),
    }
}

#[tokio::test]
async fn a_flush_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let f = flush("e1", 3, 10, 7);
    store.flush(std::slice::from_ref(&f)).await.unwrap();
    assert_eq!(store.shard(&id("e1"), 3).await.unwrap(), Some(f.clone()));
    assert_eq!(store.shard(&id("e1"), 4).await.unwrap(), None);
    assert_eq!(store.totals(&id("e1")).await.unwrap(), f.totals);
    assert_eq!(
        store.totals(&id("unknown")).await.unwrap(),
        ExperimentTotals::default()
    );
}

#[tokio::test]
async fn flushes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (flush("e1", 0, 5, 3), flush("e2", 1, 6, 4));
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.flush(&[one.clone(), two.clone()]).await.unwrap();
    }
    let reopened = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(reopened.shard(&id("e1"), 0).await.unwrap(), Some(one));
    assert_eq!(reopened.shard(&id("e2"), 1).await.unwrap(), Some(two));
    // Nothing half-written is left behind to be mistaken for data.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["e1.json", "e2.json"]);
}

#[tokio::test]
async fn a_replayed_flush_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let f = flush("e", 0, 10, 5);
    store.flush(std::slice::from_ref(&f)).await.unwrap();
    let written = std::fs::read(store.path_of(&id("e"))).unwrap();
    for _ in 0..3 {
        store.flush(std::slice::from_ref(&f)).await.unwrap();
    }
    assert_eq!(store.totals(&id("e")).await.unwrap(), f.totals);
    assert_eq!(std::fs::read(store.path_of(&id("e"))).unwrap(), written);
}

#[tokio::test]
async fn an_older_flush_arriving_late_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let newer = flush("e", 2, 20, 9);
    store.flush(std::slice::from_ref(&newer)).await.unwrap();
    // Older, and with the same seq but different totals: neither may replace the stored flush.
    store.flush(&[flush("e", 2, 19, 4)]).await.unwrap();
    store.flush(&[flush("e", 2, 20, 1)]).await.unwrap();
    assert_eq!(store.shard(&id("e"), 2).await.unwrap(), Some(newer.clone()));
    // And a newer one does.
    let newest = flush("e", 2, 21, 12);
    store.flush(std::slice::from_ref(&newest)).await.unwrap();
    assert_eq!(store.shard(&id("e"), 2).await.unwrap(), Some(newest));
    // Also across a restart: the stored seq, not only the cache, decides.
    let reopened = EmbeddedStore::open(dir.path()).unwrap();
    reopened.flush(&[flush("e", 2, 15, 1)]).await.unwrap();
    assert_eq!(reopened.totals(&id("e")).await.unwrap(), totals(12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_flushes_of_distinct_shards_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let tasks: Vec<_> = (0..16u32)
        .map(|shard| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                // Several flushes per shard, so writes of different shards interleave.
                for seq in 1..=5 {
                    store
                        .flush(&[flush("e", shard, seq, u64::from(shard) + seq)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let reopened = EmbeddedStore::open(dir.path()).unwrap();
    let mut expected = ExperimentTotals::default();
    for shard in 0..16u32 {
        let stored = reopened.shard(&id("e"), shard).await.unwrap();
        assert_eq!(stored, Some(flush("e", shard, 5, u64::from(shard) + 5)));
        expected.merge(&totals(u64::from(shard) + 5));
    }
    assert_eq!(reopened.totals(&id("e")).await.unwrap(), expected);
}

#[tokio::test]
async fn totals_merge_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store
        .flush(&[
            flush("e", 0, 1, 2),
            flush("e", 1, 1, 3),
            flush("other", 0, 1, 50),
        ])
        .await
        .unwrap();
    let merged = store.totals(&id("e")).await.unwrap();
    assert_eq!(merged.arms["a"].exposed, 5);
    assert_eq!(merged.arms["b"].exposed, 2);
    let revenue = merged.arms["a"].metrics[&MetricName::new("revenue").unwrap()];
    assert_eq!(revenue.converted, 1 + 1);
    assert_eq!(revenue.sum, (0.2 + 1e-9) + (0.1 * 3.0 + 1e-9));
}

#[tokio::test]
async fn a_corrupt_file_is_reported_with_its_experiment() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    for (name, bad) in [
        ("truncated", &b"{\"version\":1,\"experiment\":\"trunc"[..]),
        ("garbage", &b"\x00\xffnot json"[..]),
        (
            "wrong-shard-key",
            &b"{\"version\":1,\"experiment\":\"wrong-shard-key\",\"shards\":{\"x\":{}}}"[..],
        ),
        (
            "misplaced",
            &b"{\"version\":1,\"experiment\":\"someone-else\",\"shards\":{}}"[..],
        ),
        (
            "future",
            &b"{\"version\":99,\"experiment\":\"future\",\"shards\":{}}"[..],
        ),
    ] {
        std::fs::write(store.path_of(&id(name)), bad).unwrap();
        let read = store.totals(&id(name)).await;
        assert!(
            matches!(&read, Err(EventStoreError::Corrupt { experiment, .. }) if experiment.as_str() == name),
            "{name}: {read:?}"
        );
        // A flush must not paper over the damage by writing a fresh file.
        let write = store.flush(&[flush(name, 0, 1, 1)]).await;
        assert!(
            matches!(write, Err(EventStoreError::Corrupt { .. })),
            "{name}"
        );
        assert_eq!(std::fs::read(store.path_of(&id(name))).unwrap(), bad);
    }
}

#[tokio::test]
async fn an_unwritable_directory_is_an_io_error_and_keeps_the_old_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let first = flush("e", 0, 1, 1);
    store.flush(std::slice::from_ref(&first)).await.unwrap();
    // A directory where the temporary file must go makes the write fail before the rename.
    std::fs::create_dir(dir.path().join("e.json.tmp")).unwrap();
    let failed = store.flush(&[flush("e", 0, 2, 2)]).await;
    assert!(
        matches!(&failed, Err(EventStoreError::Io { path, .. }) if path.ends_with("e.json.tmp")),
        "{failed:?}"
    );
    assert_eq!(store.shard(&id("e"), 0).await.unwrap(), Some(first));
    // Once the obstacle is gone the retried flush lands.
    std::fs::remove_dir(dir.path().join("e.json.tmp")).unwrap();
    store.flush(&[flush("e", 0, 2, 2)]).await.unwrap();
    assert_eq!(store.totals(&id("e")).await.unwrap(), totals(2));
}
