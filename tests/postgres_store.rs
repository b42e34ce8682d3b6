//! The PostgreSQL admin store against a real server: PostgreSQL at `BUNTING_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`; `scripts/test` starts it). Each test gets
//! a database of its own, created here and dropped when the test ends, so tests run in parallel.
//! Without a server every test fails, loudly: these are the store's only tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bunting::store::{
    AdminStore, AuditAction, ChangeNotice, FlagSetFields, PostgresSettings, PostgresStore,
    StoreError, Subscription,
};
use bunting_engine::{CompileOptions, EvaluationContext};
use chrono::Utc;
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

mod common;

use common::postgres::TestDb;

/// Long enough for any machine to deliver a notification; the tests wait this long only when
/// something is already broken.
const PATIENCE: Duration = Duration::from_secs(20);

impl TestDb {
    async fn store(&self) -> PostgresStore {
        PostgresStore::connect_with(self.options.clone(), settings())
            .await
            .unwrap()
    }

    /// A plain connection to the test database, to look behind the store's back.
    async fn raw(&self) -> PgConnection {
        self.options.connect().await.unwrap()
    }
}

fn settings() -> PostgresSettings {
    PostgresSettings {
        compile: CompileOptions::default(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(2),
    }
}

fn flag(default_variant: &str) -> Value {
    json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": default_variant,
    })
}

async fn next_notice(subscription: &mut Subscription) -> ChangeNotice {
    tokio::time::timeout(PATIENCE, subscription.recv())
        .await
        .expect("no change notice arrived")
        .expect("the subscription ended")
}

async fn audit_count(store: &PostgresStore) -> usize {
    store
        .list_audit(None, None, None, 1000)
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_bump_flag_and_set_versions() {
    let db = TestDb::create().await;
    let store = db.store().await;

    let set = store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    assert_eq!(set.version, 1);
    let again = store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "{again:?}"
    );

    let created = store
        .create_flag("default", "banner", flag("off"), None, "ada")
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.flag_set_version, 2);
    assert_eq!(created.definition, flag("off"));
    assert_eq!(store.get_flag_set("default").await.unwrap().version, 2);
    let duplicate = store
        .create_flag("default", "banner", flag("on"), None, "ada")
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::AlreadyExists { .. })),
        "{duplicate:?}"
    );

    let updated = store
        .update_flag("default", "banner", flag("on"), 1, "grace")
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.flag_set_version, 3);
    assert!(updated.updated_at >= created.updated_at);
    assert_eq!(store.get_flag("default", "banner").await.unwrap(), updated);

    let snapshot = store.snapshot("default").await.unwrap();
    assert_eq!(snapshot.version, 3);
    assert_eq!(
        snapshot.document,
        json!({"flags": {"banner": flag("on")}, "$evaluators": {}, "metadata": {}})
    );
    let compiled = snapshot.compile(&CompileOptions::default()).unwrap();
    assert_eq!(compiled.version(), 3);
    let resolution = compiled.resolve_bool("banner", &EvaluationContext::new());
    assert_eq!(resolution.value, Some(true));

    let fields = FlagSetFields {
        metadata: json!({"team": "growth"}).as_object().unwrap().clone(),
        evaluators: json!({"staff": {"ends_with": [{"var": "email"}, "@example.com"]}})
            .as_object()
            .unwrap()
            .clone(),
    };
    let set = store
        .update_flag_set("default", fields.clone(), 3, "grace")
        .await
        .unwrap();
    assert_eq!(set.version, 4);
    assert_eq!(set.metadata, fields.metadata);

    let after_delete = store
        .delete_flag("default", "banner", 2, "grace")
        .await
        .unwrap();
    assert_eq!(after_delete, 5);
    assert!(store.list_flags("default").await.unwrap().flags.is_empty());
    let gone = store.get_flag("default", "banner").await;
    assert!(matches!(gone, Err(StoreError::NotFound { .. })), "{gone:?}");

    // A re-created flag keeps counting: a writer holding the old version 1 cannot overwrite it.
    let recreated = store
        .create_flag("default", "banner", flag("off"), None, "ada")
        .await
        .unwrap();
    assert_eq!(recreated.version, 4);
    let listed = store.list_flags("default").await.unwrap();
    assert_eq!(listed.flag_set_version, 6);
    assert_eq!(listed.flags, vec![recreated]);

    let deleted_at = store.delete_flag_set("default", 6, "ada").await.unwrap();
    assert_eq!(deleted_at, 7);
    let gone = store.get_flag_set("default").await;
    assert!(matches!(gone, Err(StoreError::NotFound { .. })), "{gone:?}");
    assert!(matches!(
        store.list_flags("default").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.snapshots().await.unwrap().is_empty());

    // So does a re-created set, so a node that saw the deletion can tell new from stale.
    let reborn = store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    assert_eq!(reborn.version, 8);
    let listed = store.list_flags("default").await.unwrap();
    assert_eq!((listed.flag_set_version, listed.flags.len()), (8, 0));
    assert_eq!(store.list_flag_sets().await.unwrap(), vec![reborn]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_expected_version_is_refused_and_nothing_is_written() {
    let db = TestDb::create().await;
    let store = db.store().await;
    store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    store
        .create_flag("default", "banner", flag("off"), None, "ada")
        .await
        .unwrap();
    store
        .update_flag("default", "banner", flag("on"), 1, "ada")
        .await
        .unwrap();
    let before = store.snapshot("default").await.unwrap();
    let audited = audit_count(&store).await;

    // Two writers read version 1; the second to write is the one refused.
    let stale = store
        .update_flag("default", "banner", flag("off"), 1, "grace")
        .await;
    match stale {
        Err(StoreError::VersionConflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (1, 2)),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    let stale_delete = store.delete_flag("default", "banner", 1, "grace").await;
    assert!(matches!(
        stale_delete,
        Err(StoreError::VersionConflict { .. })
    ));
    let stale_set = store
        .update_flag_set("default", FlagSetFields::default(), 1, "grace")
        .await;
    assert!(matches!(
        stale_set,
        Err(StoreError::VersionConflict {
            expected: 1,
            actual: 3,
            ..
        })
    ));
    let stale_set_delete = store.delete_flag_set("default", 2, "grace").await;
    assert!(matches!(
        stale_set_delete,
        Err(StoreError::VersionConflict { .. })
    ));
    // A create guarded by the set's version it was computed from.
    let stale_create = store
        .create_flag("default", "other", flag("on"), Some(2), "grace")
        .await;
    assert!(matches!(
        stale_create,
        Err(StoreError::VersionConflict {
            expected: 2,
            actual: 3,
            ..
        })
    ));

    assert_eq!(store.snapshot("default").await.unwrap(), before);
    assert_eq!(
        store.get_flag("default", "banner").await.unwrap().version,
        2
    );
    assert_eq!(audit_count(&store).await, audited);

    let message = store
        .update_flag("default", "banner", flag("off"), 1, "grace")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "flag \"banner\" in flag set \"default\" is at version 2, not the expected version 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_writers_at_one_version_exactly_one_wins() {
    let db = TestDb::create().await;
    let store = db.store().await;
    store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    store
        .create_flag("default", "banner", flag("off"), None, "ada")
        .await
        .unwrap();
    let writes = (0..4).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let definition = flag(if i % 2 == 0 { "on" } else { "off" });
            store
                .update_flag("default", "banner", definition, 1, &format!("writer-{i}"))
                .await
        })
    });
    let mut won = 0;
    for write in writes.collect::<Vec<_>>() {
        match write.await.unwrap() {
            Ok(record) => {
                assert_eq!(record.version, 2);
                won += 1;
            }
            Err(StoreError::VersionConflict { actual: 2, .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.snapshot("default").await.unwrap().version, 3);
    assert_eq!(audit_count(&store).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_definition_is_refused_with_its_problems_and_nothing_is_written() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let fields = FlagSetFields {
        metadata: Default::default(),
        evaluators: json!({"staff": {"ends_with": [{"var": "email"}, "@example.com"]}})
            .as_object()
            .unwrap()
            .clone(),
    };
    store
        .create_flag_set("default", fields, "ada")
        .await
        .unwrap();
    let good = json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": "off",
        "targeting": {"if": [{"$ref": "staff"}, "on"]},
    });
    store
        .create_flag("default", "banner", good.clone(), None, "ada")
        .await
        .unwrap();
    let before = store.snapshot("default").await.unwrap();
    let audited = audit_count(&store).await;

    let bad = json!({
        "state": "SOMETIMES",
        "variants": {"on": true, "off": false},
        "defaultVariant": "maybe",
        "targeting": {"if": [{"no_such_op": [1]}, "on"]},
    });
    let problems = match store
        .update_flag("default", "banner", bad.clone(), 1, "grace")
        .await
    {
        Err(StoreError::Invalid { problems }) => problems,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "flags.banner.state",
        "flags.banner.defaultVariant",
        "flags.banner.targeting.if[0]",
    ] {
        assert!(
            paths.contains(&expected),
            "no problem at {expected}: {problems:?}"
        );
    }

    let refused_create = store
        .create_flag("default", "other", bad.clone(), None, "grace")
        .await;
    assert!(matches!(refused_create, Err(StoreError::Invalid { .. })));

    // A set-level change is checked against the flags it would break.
    let without_staff = store
        .update_flag_set("default", FlagSetFields::default(), 2, "grace")
        .await;
    match without_staff {
        Err(StoreError::Invalid { problems }) => {
            assert!(
                problems
                    .iter()
                    .any(|p| p.path.starts_with("flags.banner.targeting")),
                "{problems:?}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    let empty_key = store.create_flag("default", "", good, None, "grace").await;
    assert!(matches!(empty_key, Err(StoreError::Invalid { .. })));

    assert_eq!(store.snapshot("default").await.unwrap(), before);
    assert_eq!(audit_count(&store).await, audited);
    let mut raw = db.raw().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM flags")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_audited_with_who_when_before_and_after() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let start = Utc::now() - chrono::Duration::seconds(5);
    store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    store
        .create_flag_set("other", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    store
        .create_flag("default", "banner", flag("off"), None, "grace")
        .await
        .unwrap();
    store
        .update_flag("default", "banner", flag("on"), 1, "linus")
        .await
        .unwrap();
    store
        .delete_flag("default", "banner", 2, "margaret")
        .await
        .unwrap();
    let end = Utc::now() + chrono::Duration::seconds(5);

    let log = store
        .list_audit(Some("default"), None, None, 10)
        .await
        .unwrap();
    let summary: Vec<(AuditAction, Option<&str>, &str, i64)> = log
        .iter()
        .map(|e| {
            (
                e.action,
                e.flag_key.as_deref(),
                e.actor.as_str(),
                e.flag_set_version,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (AuditAction::Delete, Some("banner"), "margaret", 4),
            (AuditAction::Update, Some("banner"), "linus", 3),
            (AuditAction::Create, Some("banner"), "grace", 2),
            (AuditAction::Create, None, "ada", 1),
        ]
    );
    assert!(
        log.iter()
            .all(|e| e.at >= start && e.at <= end && e.flag_set_id == "default")
    );
    assert!(
        log.windows(2)
            .all(|w| w[0].id > w[1].id && w[0].at >= w[1].at)
    );
    assert_eq!(log[0].before, Some(flag("on")));
    assert_eq!(log[0].after, None);
    assert_eq!(log[1].before, Some(flag("off")));
    assert_eq!(log[1].after, Some(flag("on")));
    assert_eq!(log[2].before, None);
    assert_eq!(log[2].after, Some(flag("off")));
    assert_eq!(
        log[3].after,
        Some(json!({"metadata": {}, "$evaluators": {}}))
    );

    // Pages: newest first, cut by the last id seen.
    let first = store
        .list_audit(Some("default"), None, None, 2)
        .await
        .unwrap();
    let second = store
        .list_audit(Some("default"), None, Some(first[1].id), 2)
        .await
        .unwrap();
    assert_eq!([first, second].concat(), log);
    assert_eq!(
        store.list_audit(None, None, None, 10).await.unwrap().len(),
        5
    );
    let banner = store
        .list_audit(Some("default"), Some("banner"), None, 10)
        .await
        .unwrap();
    assert_eq!(banner, log[..3]);
    assert_eq!(
        store
            .list_audit(Some("other"), None, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Deleting a set keeps its whole document in the log.
    store
        .create_flag("other", "x", flag("on"), None, "ada")
        .await
        .unwrap();
    store.delete_flag_set("other", 2, "ada").await.unwrap();
    let last = &store
        .list_audit(Some("other"), None, None, 1)
        .await
        .unwrap()[0];
    assert_eq!(last.action, AuditAction::Delete);
    assert_eq!(
        last.before,
        Some(json!({"flags": {"x": flag("on")}, "$evaluators": {}, "metadata": {}}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_written_by_another_store_is_notified() {
    let db = TestDb::create().await;
    let listener = db.store().await;
    let writer = db.store().await;
    let mut changes = listener.subscribe().await.unwrap();

    writer
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    writer
        .create_flag("default", "banner", flag("off"), None, "ada")
        .await
        .unwrap();
    // A refused write notifies nothing: the next notice is the delete's.
    let _ = writer
        .update_flag("default", "banner", flag("off"), 9, "ada")
        .await
        .unwrap_err();
    writer.delete_flag_set("default", 2, "ada").await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(match next_notice(&mut changes).await {
            ChangeNotice::Changed {
                flag_set, version, ..
            } => (flag_set, version, false),
            ChangeNotice::Deleted {
                flag_set, version, ..
            } => (flag_set, version, true),
            ChangeNotice::Resync => panic!("unexpected resync"),
        });
    }
    assert_eq!(
        seen,
        vec![
            ("default".to_owned(), 1, false),
            ("default".to_owned(), 2, false),
            ("default".to_owned(), 3, true),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listen_connection_comes_back_with_a_resync() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let mut changes = store.subscribe().await.unwrap();

    let mut raw = db.raw().await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND application_name = 'bunting-listener'",
    )
    .bind(&db.name)
    .fetch_all(&mut raw)
    .await
    .unwrap();
    assert_eq!(killed, vec![true]);

    assert_eq!(next_notice(&mut changes).await, ChangeNotice::Resync);
    // Listening again: the next change arrives.
    store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    match next_notice(&mut changes).await {
        ChangeNotice::Changed {
            flag_set, version, ..
        } => assert_eq!((flag_set.as_str(), version), ("default", 1)),
        other => panic!("expected a change, got {other:?}"),
    }
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable_with_the_cause() {
    let url = format!("postgres://postgres@127.0.0.1:{}/test", closed_port());
    let result = PostgresStore::connect(&url, settings()).await;
    match result {
        Err(error @ StoreError::Unavailable { .. }) => {
            let message = error.to_string();
            assert!(message.contains("refused"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Issue 13: a missing database was reported as `... does not exist at line 948`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_named_with_how_to_create_it() {
    let server = std::env::var("BUNTING_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let url = common::postgres::with_database(&server, "bunting_no_such_database");
    let message = PostgresStore::connect(&url, settings())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("database \"bunting_no_such_database\" does not exist")
            && message.contains("CREATE DATABASE bunting_no_such_database")
            && !message.contains("at line"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_going_away_makes_calls_unavailable_with_the_cause() {
    let db = TestDb::create().await;
    let proxy = Proxy::start(&db.options).await;
    let settings = PostgresSettings {
        acquire_timeout: Duration::from_millis(500),
        ..settings()
    };
    let store = PostgresStore::connect_with(db.options.clone().port(proxy.port), settings)
        .await
        .unwrap();
    store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();

    proxy.stop().await;
    let read = store.snapshots().await;
    match read {
        Err(error @ StoreError::Unavailable { .. }) => {
            let message = error.to_string();
            assert!(message.contains("refused"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let write = store
        .create_flag("default", "banner", flag("on"), None, "ada")
        .await;
    assert!(
        matches!(write, Err(StoreError::Unavailable { .. })),
        "{write:?}"
    );
}

/// A TCP forwarder to the test server that can be pulled out, to take the database away from a
/// store without stopping the server other tests use.
struct Proxy {
    port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: &PgConnectOptions) -> Proxy {
        let upstream = format!("{}:{}", target.get_host(), target.get_port());
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = &mut stopped => break,
                    accepted = socket.accept() => accepted.unwrap(),
                };
                let upstream = upstream.clone();
                connections.spawn(async move {
                    let mut outbound = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
            // Every forwarded connection is cut before the socket closes.
            connections.shutdown().await;
        });
        Proxy { port, stop, task }
    }

    /// Returns once nothing listens on the port and every forwarded connection is closed.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// Two editors send batches computed from the same read at once: exactly one applies, whole, as
/// one version with one notice; the other is refused naming a flag, and none of its writes land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_from_one_read_apply_one_whole_and_refuse_the_other() {
    use bunting::store::{FlagBatch, FlagChange};
    let db = TestDb::create().await;
    let store = db.store().await;
    store
        .create_flag_set("web", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    let keys = ["a", "b", "c", "d"];
    let created = store
        .apply_flag_changes(
            "web",
            FlagBatch {
                changes: keys
                    .iter()
                    .map(|k| FlagChange::Create {
                        key: (*k).to_owned(),
                        definition: flag("off"),
                    })
                    .collect(),
                ..FlagBatch::default()
            },
            "ada",
        )
        .await
        .unwrap();
    assert_eq!(created.flag_set_version, 2);
    let mut subscription = store.subscribe().await.unwrap();
    // Each editor updates every flag from version 1; they differ in the value they write.
    let batch = |variant: &str| FlagBatch {
        changes: keys
            .iter()
            .map(|k| FlagChange::Update {
                key: (*k).to_owned(),
                definition: flag(variant),
                expected_version: 1,
            })
            .collect(),
        ..FlagBatch::default()
    };
    let (on, off) = tokio::join!(
        store.apply_flag_changes("web", batch("on"), "grace"),
        store.apply_flag_changes("web", batch("off"), "linus"),
    );
    let (won, lost, variant) = match (on, off) {
        (Ok(won), Err(lost)) => (won, lost, "on"),
        (Err(lost), Ok(won)) => (won, lost, "off"),
        other => panic!("exactly one batch must apply: {other:?}"),
    };
    assert_eq!(won.flag_set_version, 3);
    assert!(
        matches!(&lost, StoreError::VersionConflict { what, .. } if what.starts_with("flag \"")),
        "{lost:?}"
    );
    let list = store.list_flags("web").await.unwrap();
    assert_eq!(list.flag_set_version, 3);
    for f in &list.flags {
        assert_eq!((f.version, &f.definition), (2, &flag(variant)), "{}", f.key);
    }
    // One notice for the batch's one version.
    assert!(matches!(
        next_notice(&mut subscription).await,
        ChangeNotice::Changed { version: 3, .. }
    ));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), subscription.recv())
            .await
            .is_err(),
        "a second notice for one batch"
    );
    // 1 set + 4 creates + 4 updates.
    assert_eq!(audit_count(&store).await, 9);
}
