//! Whole nodes (`bunting_node::server::bind`, in-process, free ports) with PostgreSQL
//! (`tests/common/postgres.rs`) and a shared tier on real Redis started by the test: a standalone
//! server or a 3-master Redis Cluster (`tests/common/redis.rs`; `scripts/redis-up` installs it).
//! PostgreSQL comes back for a node that started without it through a loopback TCP proxy the test
//! starts, late, on the port the node was given.
//!
//! Changes travel asynchronously; tests wait with a generous deadline and never assert speed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use bunting_node::config::{Config, FlagSourceConfig, RedisTierConfig, SharedTierConfig};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use bunting_proto::flagd::evaluation::v2;
use bunting_stores::shared_tier::{self, SharedTier};
use common::Channel;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tonic::Code;

mod common;

use common::admin::create_set_with_flags;
use common::in_process::TestNode;
use common::{eventually, wait_until};

use common::postgres::TestDb;
use common::redis::{RedisCluster, RedisServer};

const PATIENCE: Duration = Duration::from_secs(20);

/// Changes must arrive by notification, not by the periodic repair.
const NO_VERSION_CHECK: Duration = Duration::from_secs(3600);

impl TestNode {
    async fn flagd(&self) -> v2::service_client::ServiceClient<Channel> {
        v2::service_client::ServiceClient::new(self.channel().await)
    }

    async fn experiments(&self) -> ExperimentsClient<Channel> {
        ExperimentsClient::new(self.channel().await)
    }
}

fn tier_config(redis: &Redis) -> RedisTierConfig {
    let mut config = RedisTierConfig {
        failure_threshold: 2,
        open_for_ms: 300,
        timeout_ms: 1_000,
        signing_key_file: Some(common::redis::tier_key_file()),
        ..RedisTierConfig::default()
    };
    match redis {
        Redis::Single(s) => config.url = Some(s.url().into()),
        Redis::Cluster(c) => config.cluster = c.urls().into_iter().map(Into::into).collect(),
    }
    config
}

fn node_config(url: String, redis: &Redis) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        shards: 4,
        flags: FlagSourceConfig::Postgres {
            url: url.into(),
            version_check: NO_VERSION_CHECK,
        },
        shared_tier: SharedTierConfig::Redis(tier_config(redis)),
        ..Config::default()
    }
}

enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    fn start(cluster: bool, label: &str) -> Redis {
        // Single and cluster runs of one test share a process: their directories must differ.
        let mode = if cluster { "cluster" } else { "single" };
        let dir = common::scratch_dir(&format!("{label}-{mode}"));
        if cluster {
            Redis::Cluster(RedisCluster::start(&dir))
        } else {
            Redis::Single(RedisServer::start(&dir))
        }
    }

    /// A client of the same tier the nodes use, to look at what they wrote.
    async fn tier(&self) -> std::sync::Arc<dyn SharedTier> {
        shared_tier::connect(&SharedTierConfig::Redis(tier_config(self)))
            .await
            .unwrap()
            .unwrap()
    }
}

/// A PostgreSQL URL nothing listens on.
fn unreachable_postgres() -> String {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("postgres://postgres@127.0.0.1:{port}/nowhere")
}

fn colour(value: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"c": value}, "defaultVariant": "c"})
}

async fn create_colour(admin: &mut AdminClient<Channel>, value: &str) {
    create_set_with_flags(admin, "default", &[("colour", colour(value))], "ada").await;
}

async fn set_colour(admin: &mut AdminClient<Channel>, value: &str, expected_version: i64) {
    admin
        .update_flag(pb::UpdateFlagRequest {
            flag_set_id: "default".into(),
            key: "colour".into(),
            definition: colour(value).to_string(),
            expected_version,
            actor: "grace".into(),
        })
        .await
        .unwrap();
}

async fn resolve_colour(flagd: &mut v2::service_client::ServiceClient<Channel>) -> Option<String> {
    flagd
        .resolve_string(v2::ResolveStringRequest {
            flag_key: "colour".into(),
            context: None,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().value)
}

async fn serves(node: &TestNode, value: &str, what: &str) {
    let flagd = node.flagd().await;
    wait_until(what, PATIENCE, || {
        let mut flagd = flagd.clone();
        async move { resolve_colour(&mut flagd).await.as_deref() == Some(value) }
    })
    .await;
}

async fn tier_holds(tier: &dyn SharedTier, value: &str) -> bool {
    tier.snapshot("default")
        .await
        .ok()
        .flatten()
        .is_some_and(|s| {
            s.flags()
                .is_some_and(|f| f["flags"]["colour"]["variants"]["c"] == json!(value))
        })
}

/// A node writes its snapshots to Redis; a node that cannot reach PostgreSQL starts on them and
/// follows later changes through Redis's notifications alone.
async fn a_node_without_postgres_serves_the_shared_snapshots(cluster: bool) {
    let db = TestDb::create().await;
    let redis = Redis::start(cluster, "node-tier-start");
    let tier = redis.tier().await;

    let writer = TestNode::start(node_config(db.url.clone(), &redis)).await;
    let mut admin = AdminClient::new(writer.channel().await);
    create_colour(&mut admin, "red").await;
    serves(&writer, "red", "the writer serving its own change").await;
    wait_until("the writer's snapshot in redis", PATIENCE, || {
        tier_holds(tier.as_ref(), "red")
    })
    .await;

    let cut_off = TestNode::start(node_config(unreachable_postgres(), &redis)).await;
    serves(&cut_off, "red", "the cut-off node serving redis's snapshot").await;

    // Its version check never runs and it has no database: only a Redis notification can bring it
    // this change.
    set_colour(&mut admin, "blue", 1).await;
    serves(
        &cut_off,
        "blue",
        "the cut-off node hearing of a change through redis",
    )
    .await;
    let snapshot = tier.snapshot("default").await.unwrap().unwrap();
    assert_eq!(
        snapshot.flags().unwrap()["flags"]["colour"]["variants"]["c"],
        json!("blue")
    );

    // A deleted set is deleted on the tier too (a tombstone): the cut-off node, which hears of it
    // only through Redis, stops serving it, and a node that starts from the tier afterwards never
    // serves it.
    let version = admin
        .get_flag_set(pb::GetFlagSetRequest {
            id: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .flag_set
        .unwrap()
        .version;
    let deleted_at = admin
        .delete_flag_set(pb::DeleteFlagSetRequest {
            id: "default".into(),
            expected_version: version,
            actor: "ada".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    let flagd = cut_off.flagd().await;
    wait_until(
        "the cut-off node dropping the deleted set",
        PATIENCE,
        || {
            let mut flagd = flagd.clone();
            async move { resolve_colour(&mut flagd).await.is_none() }
        },
    )
    .await;
    let tombstone = tier.snapshot("default").await.unwrap().unwrap();
    assert_eq!(
        (tombstone.version, tombstone.flags()),
        (u64::try_from(deleted_at).unwrap(), None),
        "a tombstone at the deletion's version"
    );
    let late = TestNode::start(node_config(unreachable_postgres(), &redis)).await;
    let mut late_flagd = late.flagd().await;
    assert_eq!(
        resolve_colour(&mut late_flagd).await,
        None,
        "a node starting from the tier after the deletion serves no deleted set"
    );
    assert_eq!(
        resolve_colour(&mut writer.flagd().await).await,
        None,
        "nor does the writer"
    );

    late.stop().await;
    cut_off.stop().await;
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_redis_a_node_without_postgres_serves_the_shared_snapshots() {
    a_node_without_postgres_serves_the_shared_snapshots(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_a_node_without_postgres_serves_the_shared_snapshots() {
    a_node_without_postgres_serves_the_shared_snapshots(true).await;
}

/// Redis dies: the node goes on evaluating and applying PostgreSQL's changes, shows the open
/// breaker in its metrics, and writes the missed snapshot once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_evaluating_while_redis_is_down() {
    let db = TestDb::create().await;
    let mut redis = Redis::start(false, "node-tier-outage");
    let Redis::Single(server) = &redis else {
        unreachable!()
    };
    let gauge = format!(
        "bunting_shared_tier_breaker_state{{endpoint=\"{}\"}}",
        server.url()
    );
    let node = TestNode::start(node_config(db.url.clone(), &redis)).await;
    let mut admin = AdminClient::new(node.channel().await);
    create_colour(&mut admin, "red").await;
    serves(&node, "red", "the first version").await;

    if let Redis::Single(server) = &mut redis {
        server.stop();
    }
    serves(&node, "red", "evaluation with redis down").await;
    set_colour(&mut admin, "blue", 1).await;
    serves(&node, "blue", "a postgres change applied with redis down").await;
    wait_until(
        "the breaker open in the node's metrics",
        PATIENCE,
        || async { node.scrape().await.contains(&format!("{gauge} 2")) },
    )
    .await;

    if let Redis::Single(server) = &mut redis {
        server.restart();
    }
    let tier = redis.tier().await;
    wait_until(
        "the queued snapshot written after redis came back",
        PATIENCE,
        || tier_holds(tier.as_ref(), "blue"),
    )
    .await;
    wait_until(
        "the breaker closed in the node's metrics",
        PATIENCE,
        || async { node.scrape().await.contains(&format!("{gauge} 0")) },
    )
    .await;
    serves(&node, "blue", "evaluation after redis came back").await;
    node.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Experiments on a node that starts without PostgreSQL
// ---------------------------------------------------------------------------------------------

/// Flag set `default` with `button` (blue, red; everyone gets blue) and `banner` (on, off;
/// everyone gets off).
async fn shop(admin: &mut AdminClient<Channel>) {
    let flags = [
        (
            "button",
            json!({"state": "ENABLED", "variants": {"blue": "#00f", "red": "#f00"},
                   "defaultVariant": "blue"}),
        ),
        (
            "banner",
            json!({"state": "ENABLED", "variants": {"on": "on", "off": "off"},
                   "defaultVariant": "off"}),
        ),
    ];
    create_set_with_flags(admin, "default", &flags, "ada").await;
}

/// Creates and starts experiment `id` on `flag`, with a conversion metric on `purchase`.
async fn run_experiment(
    client: &mut ExperimentsClient<Channel>,
    id: &str,
    flag: &str,
    control: &str,
) {
    client
        .create_experiment(pb::CreateExperimentRequest {
            id: id.into(),
            flag_set_id: "default".into(),
            flag_key: flag.into(),
            control_variant: control.into(),
            metrics: vec![pb::Metric {
                name: "purchased".into(),
                event: "purchase".into(),
                kind: pb::MetricKind::Conversion.into(),
            }],
            traffic_split: Default::default(),
            analysis: None,
            actor: "ada".into(),
        })
        .await
        .unwrap();
    client
        .start_experiment(pb::StartExperimentRequest {
            id: id.into(),
            actor: "ada".into(),
        })
        .await
        .unwrap();
}

/// The ids of the running experiments the tier holds; `None` if it holds none or cannot say.
async fn tier_experiments(tier: &dyn SharedTier) -> Option<Vec<String>> {
    let held = tier.running_experiments().await.ok()??;
    Some(held.into_iter().map(|e| e.id.to_string()).collect())
}

/// Evaluates `flag` for `user` on the node (exposing the user if an experiment runs on it there),
/// then tracks a purchase: the experiments it counted toward. A user is counted only after an
/// exposure that node's shards recorded, so this shows what the node itself counts.
async fn expose_and_track(node: &TestNode, flag: &str, user: &str) -> Vec<String> {
    node.flagd()
        .await
        .resolve_string(v2::ResolveStringRequest {
            flag_key: flag.into(),
            context: Some(
                bunting_proto::json::json_to_struct(
                    json!({"targetingKey": user}).as_object().unwrap(),
                )
                .unwrap(),
            ),
        })
        .await
        .unwrap();
    node.experiments()
        .await
        .track(pb::TrackRequest {
            targeting_key: user.into(),
            event: "purchase".into(),
            value: 1.0,
            flag_set_id: None,
        })
        .await
        .unwrap()
        .into_inner()
        .counted
}

/// A port nothing listens on yet, and a loopback proxy to PostgreSQL started on it on demand: the
/// database "comes back" for a node that was given this port.
struct LatePostgres {
    port: u16,
    upstream: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl LatePostgres {
    async fn new(db: &TestDb) -> LatePostgres {
        let upstream = tokio::net::lookup_host((db.server.get_host(), db.server.get_port()))
            .await
            .unwrap()
            .next()
            .unwrap();
        LatePostgres {
            port: common::spare_port(0),
            upstream,
            accept: None,
        }
    }

    fn url(&self, db: &TestDb) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            db.server.get_username(),
            self.port,
            db.name
        )
    }

    async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, self.port))
            .await
            .unwrap();
        let upstream = self.upstream;
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }
}

impl Drop for LatePostgres {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

/// A node that starts while PostgreSQL is unreachable counts exposures for the running experiments
/// the shared tier holds, follows new ones through the tier, answers UNAVAILABLE on the
/// Experiments API meanwhile, and once PostgreSQL is back serves the API and follows experiments
/// from it without a restart.
async fn a_node_without_postgres_runs_the_shared_experiments(cluster: bool) {
    let db = TestDb::create().await;
    let redis = Redis::start(cluster, "node-tier-experiments");
    let tier = redis.tier().await;

    let writer = TestNode::start(node_config(db.url.clone(), &redis)).await;
    shop(&mut AdminClient::new(writer.channel().await)).await;
    let mut writer_experiments = writer.experiments().await;
    run_experiment(&mut writer_experiments, "checkout", "button", "blue").await;
    wait_until("the running experiment in redis", PATIENCE, || async {
        tier_experiments(tier.as_ref()).await == Some(vec!["checkout".to_owned()])
    })
    .await;

    let mut postgres = LatePostgres::new(&db).await;
    let cut_off = TestNode::start(node_config(postgres.url(&db), &redis)).await;

    // Its shards count an exposure to the experiment it learnt from the tier: a purchase after an
    // evaluation counts toward it. (Evaluations before the node's flags and shards are ready
    // expose nobody, so each attempt takes a new user.)
    let mut attempt = 0;
    let exposed = eventually(
        "a user exposed to checkout on the cut-off node",
        PATIENCE,
        || {
            attempt += 1;
            let user = format!("offline-{attempt}");
            let node = &cut_off;
            async move {
                (expose_and_track(node, "button", &user).await == ["checkout"]).then_some(user)
            }
        },
    )
    .await;
    // The exposure is the cut-off node's own record, written through to the tier.
    let shard = bunting_keyspace::shard_of(&exposed, 4);
    let states = tier.load_user_states(shard).await.unwrap();
    assert!(
        states.iter().any(|(user, _)| *user == exposed),
        "{exposed} not in shard {shard}'s user states"
    );

    // Its Experiments API needs PostgreSQL, and says so.
    let mut experiments = cut_off.experiments().await;
    for refused in [
        experiments
            .get_experiment(pb::GetExperimentRequest {
                id: "checkout".into(),
            })
            .await
            .unwrap_err(),
        experiments
            .list_experiments(pb::ListExperimentsRequest::default())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("PostgreSQL"), "{refused:?}");
    }

    // An experiment started meanwhile elsewhere reaches it through the tier (its periodic check).
    run_experiment(&mut writer_experiments, "promo", "banner", "off").await;
    let mut attempt = 0;
    eventually("promo counted on the cut-off node", PATIENCE, || {
        attempt += 1;
        let user = format!("promo-{attempt}");
        let node = &cut_off;
        async move {
            expose_and_track(node, "banner", &user)
                .await
                .contains(&"promo".to_owned())
                .then_some(())
        }
    })
    .await;

    // PostgreSQL comes back: the API answers, without a restart, with what the node counted.
    postgres.start().await;
    let results = eventually("the experiment results from PostgreSQL", PATIENCE, || {
        let mut experiments = experiments.clone();
        async move {
            experiments
                .get_experiment_results(pb::GetExperimentResultsRequest {
                    id: "checkout".into(),
                })
                .await
                .ok()
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    let users: Vec<(String, u64)> = results
        .users
        .iter()
        .map(|a| (a.arm.clone(), a.users))
        .collect();
    assert_eq!(
        users,
        [("blue".to_owned(), 1), ("red".to_owned(), 0)],
        "the one user exposed on the cut-off node, counted by it"
    );

    // And it follows PostgreSQL again: promo stopped (through its own API) stops counting there.
    experiments
        .stop_experiment(pb::StopExperimentRequest {
            id: "promo".into(),
            actor: "bob".into(),
        })
        .await
        .unwrap();
    let mut attempt = 0;
    eventually("promo no longer counted after its stop", PATIENCE, || {
        attempt += 1;
        let user = format!("after-{attempt}");
        let node = &cut_off;
        async move {
            expose_and_track(node, "banner", &user)
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;
    wait_until("the tier's catalog without promo", PATIENCE, || async {
        tier_experiments(tier.as_ref()).await == Some(vec!["checkout".to_owned()])
    })
    .await;

    drop((experiments, writer_experiments));
    cut_off.stop().await;
    writer.stop().await;
    drop(postgres);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_redis_a_node_without_postgres_runs_the_shared_experiments() {
    a_node_without_postgres_runs_the_shared_experiments(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_a_node_without_postgres_runs_the_shared_experiments() {
    a_node_without_postgres_runs_the_shared_experiments(true).await;
}

/// A node whose version check runs often, so the authority checks below happen within the wait.
fn checked_node_config(url: String, redis: &Redis) -> Config {
    Config {
        flags: FlagSourceConfig::Postgres {
            url: url.into(),
            version_check: Duration::from_millis(200),
        },
        ..node_config(String::new(), redis)
    }
}

/// Writes `value` as the tier's snapshot of `default` at `version` behind the nodes' backs, sealed
/// with `seal` (or with none), then announces it: what anyone who can reach Redis can do.
async fn forge(redis: &Redis, version: u64, value: &str, seal: Option<String>) {
    let url = match redis {
        Redis::Single(s) => s.url(),
        Redis::Cluster(c) => c.urls()[0].clone(),
    };
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let document = json!({"flags": {"colour": colour(value)}}).to_string();
    let mut hset = redis::cmd("HSET");
    hset.arg("{bunting:set:default}:snapshot")
        .arg("version")
        .arg(version)
        .arg("json")
        .arg(&document);
    if let Some(seal) = seal {
        hset.arg("seal").arg(seal);
    }
    let () = hset.query_async(&mut conn).await.unwrap();
    let () = redis::cmd("PUBLISH")
        .arg("bunting:changes")
        .arg(json!({"set": "default", "version": version}).to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// The forged-snapshot reproduction of issue 11: a snapshot written straight into Redis, unsealed
/// or sealed under another key, is never served; PostgreSQL's copy replaces it on the tier; and a
/// later legitimate change is applied as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_shared_tier_snapshot_is_refused_and_repaired_from_postgres() {
    let db = TestDb::create().await;
    let redis = Redis::start(false, "node-tier-forged");
    let tier = redis.tier().await;
    let node = TestNode::start(checked_node_config(db.url.clone(), &redis)).await;
    let mut admin = AdminClient::new(node.channel().await);
    create_colour(&mut admin, "blue").await;
    serves(&node, "blue", "the node serving PostgreSQL's flags").await;
    wait_until("the node's sealed snapshot in redis", PATIENCE, || {
        tier_holds(tier.as_ref(), "blue")
    })
    .await;

    let other_key = bunting_stores::shared_tier::seal::Sealer::new(
        b"another deployment's signing key, long enough",
        "bunting",
    )
    .unwrap();
    let foreign_seal = other_key.seal(bunting_stores::shared_tier::seal::Sealed::Snapshot {
        set: "default",
        version: 999,
        json: &json!({"flags": {"colour": colour("red")}}).to_string(),
    });
    for (what, seal) in [
        ("unsealed", None),
        ("sealed under another key", Some(foreign_seal)),
    ] {
        forge(&redis, 999, "red", seal).await;
        // The tier refuses to hand it out (unless the version check has already replaced it).
        match tier.snapshot("default").await {
            Err(shared_tier::SharedTierError::Unverified { .. }) => {}
            Ok(Some(s)) if s.version < 999 => {}
            other => panic!("{what}: a reader must refuse the forged snapshot, got {other:?}"),
        }
        // The version check puts PostgreSQL's copy back (sealed, at its version), and the node,
        // asked all along, never serves the forgery.
        let flagd = node.flagd().await;
        wait_until(
            &format!("{what}: PostgreSQL's copy back on the tier"),
            PATIENCE,
            || {
                let (tier, mut flagd) = (tier.clone(), flagd.clone());
                async move {
                    let served = resolve_colour(&mut flagd).await;
                    assert_eq!(
                        served.as_deref(),
                        Some("blue"),
                        "{what}: served the forgery"
                    );
                    tier_holds(tier.as_ref(), "blue").await
                }
            },
        )
        .await;
    }

    // The legitimate update that the forged version 999 used to shadow is applied.
    set_colour(&mut admin, "green", 1).await;
    serves(&node, "green", "the node applying a legitimate change").await;
    wait_until("the tier following PostgreSQL", PATIENCE, || {
        tier_holds(tier.as_ref(), "green")
    })
    .await;
    node.stop().await;
}

/// A node ahead of PostgreSQL (here: PostgreSQL restored from a backup, so its version went back)
/// goes back to PostgreSQL's version at the next check, and the tier is repaired the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ahead_of_postgres_goes_back_to_postgres_s_version() {
    use sqlx::{Connection, Executor};
    let db = TestDb::create().await;
    let redis = Redis::start(false, "node-tier-behind");
    let tier = redis.tier().await;
    let node = TestNode::start(checked_node_config(db.url.clone(), &redis)).await;
    let mut admin = AdminClient::new(node.channel().await);
    create_colour(&mut admin, "blue").await;
    set_colour(&mut admin, "green", 1).await;
    serves(&node, "green", "the node at version 2").await;
    wait_until("the tier at version 2", PATIENCE, || {
        tier_holds(tier.as_ref(), "green")
    })
    .await;

    // The "restore": version 1 and its content, without a notification.
    let mut pg = sqlx::PgConnection::connect_with(&db.options).await.unwrap();
    pg.execute(sqlx::AssertSqlSafe(format!(
        "UPDATE flags SET definition = '{}', version = 1 WHERE flag_set_id = 'default'; \
         UPDATE flag_sets SET version = 1 WHERE id = 'default';",
        colour("blue")
    )))
    .await
    .unwrap();
    serves(&node, "blue", "the node back at PostgreSQL's version").await;
    wait_until(
        "the tier back at PostgreSQL's version",
        PATIENCE,
        || async {
            tier.snapshot("default")
                .await
                .is_ok_and(|s| s.is_some_and(|s| s.version == 1))
                && tier_holds(tier.as_ref(), "blue").await
        },
    )
    .await;
    // And changes move forward from there again.
    set_colour(&mut admin, "purple", 1).await;
    serves(&node, "purple", "the node applying the next change").await;
    node.stop().await;
}
