//! A PostgreSQL database per test: created on the server `BUNTING_TEST_DATABASE_URL` names
//! (default [`DEFAULT_URL`]), dropped with its connections when the test ends, even if it fails.
//! Tests run in parallel, each on its own database.

use std::sync::atomic::{AtomicU32, Ordering};

use chrono::Utc;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub struct TestDb {
    pub name: String,
    /// A connection URL for the test database.
    pub url: String,
    /// The server, connected to its default database.
    pub server: PgConnectOptions,
    /// The test database.
    pub options: PgConnectOptions,
}

impl TestDb {
    pub async fn create() -> TestDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server_url =
            std::env::var("BUNTING_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let server: PgConnectOptions = server_url
            .parse()
            .unwrap_or_else(|e| panic!("BUNTING_TEST_DATABASE_URL {server_url:?}: {e}"));
        let mut admin = PgConnection::connect_with(&server)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is required for these tests and is not reachable at {server_url}: \
                 {e}\nstart it with scripts/test, or point BUNTING_TEST_DATABASE_URL at a server"
                )
            });
        let name = format!(
            "bunting_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            Utc::now().timestamp_micros()
        );
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .unwrap();
        admin.close().await.unwrap();
        TestDb {
            url: with_database(&server_url, &name),
            options: server.clone().database(&name),
            name,
            server,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await and the test's runtime may be unwinding: a thread and runtime of its
        // own. FORCE closes whatever the test still holds open.
        let server = self.server.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = PgConnection::connect_with(&server).await.unwrap();
                admin
                    .execute(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .await
                    .unwrap();
            });
        })
        .join();
        if dropped.is_err() {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// `url` with its database (the path) replaced by `name`, query parameters kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    match query {
        Some(query) => format!("{}/{name}?{query}", &base[..path_start]),
        None => format!("{}/{name}", &base[..path_start]),
    }
}
