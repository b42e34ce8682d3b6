//! The PostgreSQL admin store against a real server: PostgreSQL at `BUNTING_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`; `scripts/test` starts it). Each test gets
//! a database of its own, created here and dropped when the test ends, so tests run in parallel.
//! Without a server every test fails, loudly: these are the store's only tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bunting_engine::CompileOptions;
use bunting_stores::{
    AdminStore, ChangeNotice, FlagSetFields, PostgresSettings, PostgresStore, StoreError,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

mod common;

use common::admin_contract::{self, audit_count, flag, next_notice};
use common::postgres::TestDb;

impl TestDb {
    async fn store(&self) -> PostgresStore {
        PostgresStore::connect_with(self.options.clone(), settings())
            .await
            .unwrap()
    }

    /// The store as the node holds it.
    async fn shared(&self) -> Arc<dyn AdminStore> {
        Arc::new(self.store().await)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_bump_flag_and_set_versions() {
    let db = TestDb::create().await;
    admin_contract::writes_bump_flag_and_set_versions(db.shared().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_expected_version_is_refused_and_nothing_is_written() {
    let db = TestDb::create().await;
    admin_contract::a_stale_expected_version_is_refused_and_nothing_is_written(db.shared().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_writers_at_one_version_exactly_one_wins() {
    let db = TestDb::create().await;
    admin_contract::of_two_concurrent_writers_at_one_version_exactly_one_wins(db.shared().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_definition_is_refused_with_its_problems_and_nothing_is_written() {
    let db = TestDb::create().await;
    admin_contract::an_invalid_definition_is_refused_with_its_problems_and_nothing_is_written(
        db.shared().await,
    )
    .await;
    // Behind the store's back: the refused writes left no row.
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
    admin_contract::every_write_is_audited_with_who_when_before_and_after(db.shared().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_version_and_a_refused_one_writes_nothing() {
    let db = TestDb::create().await;
    admin_contract::a_batch_is_one_version_and_a_refused_one_writes_nothing(db.shared().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_written_by_another_store_is_notified() {
    let db = TestDb::create().await;
    admin_contract::a_change_written_by_another_store_is_notified(
        db.shared().await,
        db.shared().await,
    )
    .await;
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
    use bunting_stores::{FlagBatch, FlagChange};
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
