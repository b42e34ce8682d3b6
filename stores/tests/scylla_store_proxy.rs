#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The ScyllaDB event store against scylla-proxy in dry mode: no Scylla node behind it, the proxy
//! answers every request from the rules below. These tests show what the store sends (schema,
//! PREPARE, BATCH and EXECUTE frames, bound values, timestamps, consistency) and how it treats
//! server errors, silence and the rows it reads back. They do not show that Scylla accepts the
//! CQL or applies last-write-wins as the store relies on; that needs a real cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bunting_experiments::{
    EventStore, EventStoreError, ExperimentId, ExperimentTotals, MetricName, MetricTotals,
    ShardFlush,
};
use bunting_stores::scylladb::{Keyspace, ScyllaSettings, ScyllaStore};
use bytes::{BufMut, BytesMut};
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla_cql::frame::protocol_features::ProtocolFeatures;
use scylla_cql::frame::request::RequestV2;
use scylla_cql::frame::request::batch::BatchStatement;
use scylla_cql::frame::types::{RawValue, write_int, write_short, write_short_bytes, write_string};
use scylla_proxy::{
    Condition, Node, Proxy, ProxyError, Reaction, RequestFrame, RequestOpcode, RequestReaction,
    RequestRule, ResponseFrame, ResponseOpcode, RunningProxy, WorkerError,
};
use tokio::sync::mpsc;

const KEYSPACE: &str = "bunting_events";
const TIMEOUT: Duration = Duration::from_millis(500);

type Feedback = mpsc::UnboundedReceiver<(RequestFrame, Option<u16>)>;

// CQL type ids ([option] in the native protocol spec).
const BIGINT: u16 = 0x0002;
const VARCHAR: u16 = 0x000D;

/// A result frame of kind `kind` with `rest` after it.
fn result(request: &RequestFrame, kind: i32, rest: &[u8]) -> ResponseFrame {
    let mut body = BytesMut::new();
    write_int(kind, &mut body);
    body.extend_from_slice(rest);
    ResponseFrame::new(
        request.params.for_response(),
        ResponseOpcode::Result,
        body.freeze(),
    )
}

fn void(request: &RequestFrame) -> ResponseFrame {
    result(request, 0x0001, &[])
}

/// `<flags><columns_count>[<global_table_spec>]<col_spec>*` with one global table spec.
fn metadata(body: &mut BytesMut, columns: &[(&str, u16)], pk_indexes: Option<&[u16]>) {
    const GLOBAL_TABLES_SPEC: i32 = 0x0001;
    write_int(GLOBAL_TABLES_SPEC, body);
    write_int(columns.len() as i32, body);
    if let Some(pk) = pk_indexes {
        write_int(pk.len() as i32, body);
        for i in pk {
            write_short(*i, body);
        }
    }
    write_string(KEYSPACE, body).unwrap();
    write_string("shard_totals", body).unwrap();
    for (name, typ) in columns {
        write_string(name, body).unwrap();
        write_short(*typ, body);
    }
}

/// A column: name and CQL type id.
type Column = (&'static str, u16);

const ROW_COLUMNS: &[Column] = &[
    ("shard", BIGINT),
    ("arm", VARCHAR),
    ("seq", BIGINT),
    ("exposed", BIGINT),
    ("metrics", VARCHAR),
];

/// The statement text of a PREPARE frame (v4: one `[long string]`).
fn prepared_text(frame: &RequestFrame) -> String {
    let body = &frame.body[..];
    let len = i32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
    String::from_utf8(body[4..4 + len].to_vec()).unwrap()
}

/// Answers a PREPARE with the bind markers and result columns of the store's statements. The
/// statement's id is its own text, so BATCH and EXECUTE frames say which statement they run.
fn forge_prepared(request: RequestFrame) -> ResponseFrame {
    let text = prepared_text(&request);
    let (binds, columns): (Vec<Column>, &[Column]) = if text.starts_with("INSERT") {
        let binds = vec![
            ("experiment", VARCHAR),
            ("shard", BIGINT),
            ("arm", VARCHAR),
            ("seq", BIGINT),
            ("exposed", BIGINT),
            ("metrics", VARCHAR),
            ("[timestamp]", BIGINT),
        ];
        (binds, &[])
    } else if text.contains("AND shard = ?") {
        (
            vec![("experiment", VARCHAR), ("shard", BIGINT)],
            ROW_COLUMNS,
        )
    } else {
        (vec![("experiment", VARCHAR)], ROW_COLUMNS)
    };
    let mut body = BytesMut::new();
    write_short_bytes(text.as_bytes(), &mut body).unwrap();
    metadata(&mut body, &binds, Some(&[0]));
    metadata(&mut body, columns, None);
    result(&request, 0x0004, &body)
}

/// One stored row as the proxy returns it.
#[derive(Clone, Debug)]
struct Row {
    shard: i64,
    arm: String,
    seq: i64,
    exposed: i64,
    metrics: String,
}

fn forge_rows(request: &RequestFrame, rows: &[Row]) -> ResponseFrame {
    let mut body = BytesMut::new();
    metadata(&mut body, ROW_COLUMNS, None);
    write_int(rows.len() as i32, &mut body);
    for row in rows {
        for cell in [
            row.shard.to_be_bytes().to_vec(),
            row.arm.as_bytes().to_vec(),
            row.seq.to_be_bytes().to_vec(),
            row.exposed.to_be_bytes().to_vec(),
            row.metrics.as_bytes().to_vec(),
        ] {
            write_int(cell.len() as i32, &mut body);
            body.put_slice(&cell);
        }
    }
    result(request, 0x0002, &body)
}

fn opcode(op: RequestOpcode) -> Condition {
    Condition::RequestOpcode(op)
}

/// The rules of a node that answers like Scylla for what the driver and the store ask:
/// handshake (OPTIONS, STARTUP, REGISTER); metadata queries on the control connection refused,
/// so the driver falls back to the contact points as the cluster (its documented behaviour when
/// the initial metadata read fails); schema statements, PREPAREs and BATCHes succeed; EXECUTEs
/// of the selects return `rows` (the shard select only its shard's). Every PREPARE, QUERY, BATCH
/// and EXECUTE outside the control connection is copied to `feedback`.
fn node_rules(
    rows: Arc<Mutex<Vec<Row>>>,
    batch: RequestReaction,
    feedback: mpsc::UnboundedSender<(RequestFrame, Option<u16>)>,
    topology: Option<SocketAddr>,
) -> Vec<RequestRule> {
    let mut rules = Vec::new();
    if let Some(addr) = topology {
        rules.extend(topology_rules(addr));
    }
    rules.extend([
        RequestRule(
            opcode(RequestOpcode::Options),
            RequestReaction::forge_response(Arc::new(|f: RequestFrame| {
                ResponseFrame::forged_supported(f.params, &HashMap::new()).unwrap()
            })),
        ),
        RequestRule(
            opcode(RequestOpcode::Startup).or(opcode(RequestOpcode::Register)),
            RequestReaction::forge_response(Arc::new(|f: RequestFrame| {
                ResponseFrame::forged_ready(f.params)
            })),
        ),
        RequestRule(
            Condition::ConnectionRegisteredAnyEvent,
            RequestReaction::forge().server_error(),
        ),
        RequestRule(
            opcode(RequestOpcode::Query),
            RequestReaction::forge_response(Arc::new(|f: RequestFrame| void(&f)))
                .with_feedback_when_performed(feedback.clone()),
        ),
        RequestRule(
            opcode(RequestOpcode::Prepare),
            RequestReaction::forge_response(Arc::new(forge_prepared))
                .with_feedback_when_performed(feedback.clone()),
        ),
        RequestRule(
            opcode(RequestOpcode::Batch),
            batch.with_feedback_when_performed(feedback.clone()),
        ),
        RequestRule(
            opcode(RequestOpcode::Execute),
            RequestReaction::forge_response(Arc::new(move |f: RequestFrame| {
                let request = f.deserialize(&ProtocolFeatures::default()).unwrap();
                let RequestV2::Execute(execute) = request else {
                    panic!("not an EXECUTE")
                };
                let text = String::from_utf8(execute.id.as_ref().to_vec()).unwrap();
                let values: Vec<_> = execute.parameters.values.iter().collect();
                let shard = match values.get(1) {
                    Some(RawValue::Value(v)) => Some(i64::from_be_bytes((*v).try_into().unwrap())),
                    _ => None,
                };
                assert_eq!(shard.is_some(), text.contains("AND shard = ?"));
                let rows: Vec<Row> = rows
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| shard.is_none_or(|s| s == r.shard))
                    .cloned()
                    .collect();
                forge_rows(&f, &rows)
            }))
            .with_feedback_when_performed(feedback),
        ),
    ]);
    rules
}

// More CQL type ids.
const UUID: u16 = 0x000C;
const INET: u16 = 0x0010;
const SET: u16 = 0x0022;

/// The forged node's identity in `system.local`.
const HOST_ID: [u8; 16] = *b"bunting-proxy-01";
const DATACENTER: &str = "dc-proxy";
const RACK: &str = "rack-7";

/// `<flags><columns_count>[<pk_count><pk_index>*]<col_spec>*` for a `system` table, with the
/// table spec on each column (no global spec).
fn system_metadata(body: &mut BytesMut, table: &str, columns: &[(&str, &[u16])], bind: bool) {
    write_int(0, body); // no flags: no global spec, no more pages
    write_int(columns.len() as i32, body);
    if bind {
        write_int(0, body); // no partition key columns bound
    }
    for (name, typ) in columns {
        write_string("system", body).unwrap();
        write_string(table, body).unwrap();
        write_string(name, body).unwrap();
        for t in *typ {
            write_short(*t, body);
        }
    }
}

/// The driver prepares its topology queries on the control connection and then executes them:
/// a PREPARE answered with the statement's columns (id: the statement's text), and an EXECUTE
/// answered with `rows`.
fn system_table_rules(
    table: &'static str,
    columns: Vec<(&'static str, &'static [u16])>,
    rows: Vec<Vec<Vec<u8>>>,
) -> [RequestRule; 2] {
    let on_cc = |op| {
        Condition::ConnectionRegisteredAnyEvent.and(opcode(op)).and(
            Condition::BodyContainsCaseSensitive(
                format!("system.{table}").into_bytes().into_boxed_slice(),
            ),
        )
    };
    let prepare_columns = columns.clone();
    [
        RequestRule(
            on_cc(RequestOpcode::Prepare),
            RequestReaction::forge_response(Arc::new(move |f: RequestFrame| {
                let mut body = BytesMut::new();
                write_short_bytes(prepared_text(&f).as_bytes(), &mut body).unwrap();
                system_metadata(&mut body, table, &[], true);
                system_metadata(&mut body, table, &prepare_columns, false);
                result(&f, 0x0004, &body)
            })),
        ),
        RequestRule(
            on_cc(RequestOpcode::Execute),
            RequestReaction::forge_response(Arc::new(move |f: RequestFrame| {
                let mut body = BytesMut::new();
                system_metadata(&mut body, table, &columns, false);
                write_int(rows.len() as i32, &mut body);
                for row in &rows {
                    for cell in row {
                        write_int(cell.len() as i32, &mut body);
                        body.put_slice(cell);
                    }
                }
                result(&f, 0x0002, &body)
            })),
        ),
    ]
}

/// `system.local` (this node, one token) and an empty `system.peers` on the control connection,
/// so the driver builds its view of the cluster from forged topology rather than a fallback.
fn topology_rules(addr: SocketAddr) -> Vec<RequestRule> {
    const PEER_COLUMNS: [(&str, &[u16]); 5] = [
        ("host_id", &[UUID]),
        ("rpc_address", &[INET]),
        ("data_center", &[VARCHAR]),
        ("rack", &[VARCHAR]),
        ("tokens", &[SET, VARCHAR]),
    ];
    let mut local_columns = PEER_COLUMNS.to_vec();
    local_columns.push(("cluster_name", &[VARCHAR]));
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("the proxy runs on IPv4 loopback")
    };
    let token = b"0";
    let mut tokens = Vec::new();
    tokens.extend_from_slice(&1i32.to_be_bytes());
    tokens.extend_from_slice(&(token.len() as i32).to_be_bytes());
    tokens.extend_from_slice(token);
    let local_row = vec![
        HOST_ID.to_vec(),
        ip.octets().to_vec(),
        DATACENTER.as_bytes().to_vec(),
        RACK.as_bytes().to_vec(),
        tokens,
        b"forged".to_vec(),
    ];
    let mut rules = Vec::new();
    rules.extend(system_table_rules("local", local_columns, vec![local_row]));
    rules.extend(system_table_rules("peers", PEER_COLUMNS.to_vec(), vec![]));
    rules
}

struct Harness {
    proxy: RunningProxy,
    store: ScyllaStore,
    feedback: Feedback,
    rows: Arc<Mutex<Vec<Row>>>,
    topology: Option<SocketAddr>,
}

impl Harness {
    /// A store connected through `ScyllaStore::connect`, exactly as a node connects.
    async fn start() -> Harness {
        Harness::start_with(None).await
    }

    /// With `builder`, the store connects through `connect_with(builder)` and the proxy forges
    /// `system.local` and `system.peers` too.
    async fn start_with(builder: Option<SessionBuilder>) -> Harness {
        let rows = Arc::new(Mutex::new(Vec::new()));
        let (tx, feedback) = mpsc::unbounded_channel();
        let with_topology = builder.is_some();
        // A fresh port from the kernel for every proxy: a fixed address (what
        // `get_exclusive_local_address` hands out, the same sequence in every process) can still
        // be held in TIME_WAIT by the previous run. Another process may take the port between the
        // probe and the proxy's bind, hence the retries.
        let mut attempts = 0;
        let (addr, topology, proxy) = loop {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = probe.local_addr().unwrap();
            drop(probe);
            let topology = with_topology.then_some(addr);
            let rules = node_rules(Arc::clone(&rows), void_batch(), tx.clone(), topology);
            let node = Node::builder()
                .proxy_address(addr)
                .request_rules(rules)
                .build_dry_mode();
            match Proxy::builder().with_node(node).build().run().await {
                Ok(proxy) => break (addr, topology, proxy),
                Err(e) if attempts < 10 => {
                    attempts += 1;
                    eprintln!("proxy on {addr} did not start ({e}); trying another port");
                }
                Err(e) => panic!("proxy did not start: {e}"),
            }
        };
        let settings = ScyllaSettings {
            known_nodes: vec![addr.to_string()],
            keyspace: KEYSPACE.to_owned(),
            replication_factor: 3,
            consistency: Consistency::LocalQuorum,
            timeout: TIMEOUT,
        };
        let connect = async {
            match builder {
                Some(builder) => ScyllaStore::connect_with(builder, &settings).await,
                None => ScyllaStore::connect(&settings).await,
            }
        };
        let store = tokio::time::timeout(Duration::from_secs(30), connect)
            .await
            .expect("connect against the dry proxy must not hang")
            .expect("connect against the dry proxy");
        Harness {
            proxy,
            store,
            feedback,
            rows,
            topology,
        }
    }

    /// Every frame the proxy has copied so far.
    fn drain(&mut self) -> Vec<RequestFrame> {
        let mut frames = Vec::new();
        while let Ok((frame, _)) = self.feedback.try_recv() {
            frames.push(frame);
        }
        frames
    }

    /// Checks the proxy reported no error, then stops it. The driver hanging up is expected: it
    /// drops a control connection whose metadata reads were refused and opens another later.
    /// (Not `RunningProxy::finish`: in 0.0.8 it can hit `unreachable!` when a worker is still
    /// winding down under load.)
    fn finish(mut self) {
        drop(self.store);
        loop {
            match self.proxy.sanity_check() {
                Ok(()) => break,
                Err(ProxyError::Worker(WorkerError::DriverDisconnected(_))) => continue,
                Err(e) => panic!("proxy error: {e:?}"),
            }
        }
        drop(self.proxy);
    }

    fn set_batch_reaction(&mut self, batch: RequestReaction) {
        let (tx, feedback) = mpsc::unbounded_channel();
        self.feedback = feedback;
        self.proxy.running_nodes[0].change_request_rules(Some(node_rules(
            Arc::clone(&self.rows),
            batch,
            tx,
            self.topology,
        )));
    }
}

fn void_batch() -> RequestReaction {
    RequestReaction::forge_response(Arc::new(|f: RequestFrame| void(&f)))
}

fn id(s: &str) -> ExperimentId {
    ExperimentId::new(s).unwrap()
}

fn flush(shard: u32, seq: u64) -> ShardFlush {
    let mut totals = ExperimentTotals::default();
    totals.expose("control");
    totals.expose("control");
    totals.expose("treatment");
    totals.arms.get_mut("treatment").unwrap().metrics.insert(
        MetricName::new("revenue").unwrap(),
        MetricTotals {
            converted: 1,
            sum: 12.5,
            sum_squares: 156.25,
        },
    );
    ShardFlush {
        experiment: id("checkout"),
        shard,
        seq,
        totals,
    }
}

fn text(v: &RawValue<'_>) -> String {
    match v {
        RawValue::Value(b) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("expected a value, got {other:?}"),
    }
}

fn bigint(v: &RawValue<'_>) -> i64 {
    match v {
        RawValue::Value(b) => i64::from_be_bytes((*b).try_into().unwrap()),
        other => panic!("expected a value, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_creates_the_schema_and_prepares_the_statements() {
    let mut h = Harness::start().await;
    let frames = h.drain();
    let features = ProtocolFeatures::default();
    let queries: Vec<String> = frames
        .iter()
        .filter(|f| f.opcode == RequestOpcode::Query)
        .map(|f| match f.deserialize(&features).unwrap() {
            RequestV2::Query(q) => q.contents.into_owned(),
            _ => panic!("not a QUERY"),
        })
        .collect();
    assert_eq!(queries.len(), 2, "{queries:#?}");
    assert!(
        queries[0].starts_with("CREATE KEYSPACE IF NOT EXISTS bunting_events")
            && queries[0].contains("'replication_factor': 3}"),
        "{}",
        queries[0]
    );
    assert!(queries[1].starts_with("CREATE TABLE IF NOT EXISTS bunting_events.shard_totals"));
    let mut prepared: Vec<String> = frames
        .iter()
        .filter(|f| f.opcode == RequestOpcode::Prepare)
        .map(prepared_text)
        .collect();
    prepared.sort();
    prepared.dedup();
    assert_eq!(
        prepared,
        [
            "INSERT INTO bunting_events.shard_totals (experiment, shard, arm, seq, exposed, metrics) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
            "SELECT shard, arm, seq, exposed, metrics FROM bunting_events.shard_totals WHERE experiment = ?",
            "SELECT shard, arm, seq, exposed, metrics FROM bunting_events.shard_totals WHERE experiment = ? AND shard = ?",
        ]
    );
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_is_one_batch_of_prepared_inserts_stamped_with_its_seq() {
    let mut h = Harness::start().await;
    h.drain();
    let seq = 1_754_000_000_123_456u64;
    h.store.flush(&[flush(7, seq)]).await.unwrap();
    let frames = h.drain();
    assert_eq!(frames.len(), 1, "{frames:?}");
    let RequestV2::Batch(batch) = frames[0].deserialize(&ProtocolFeatures::default()).unwrap()
    else {
        panic!("not a BATCH: {:?}", frames[0].opcode)
    };
    assert_eq!(batch.consistency, Consistency::LocalQuorum);
    assert_eq!(
        format!("{:?}", batch.batch_type),
        "Unlogged",
        "one partition needs no batchlog"
    );
    assert_eq!(batch.statements.len(), 2, "one insert per arm");
    for statement in batch.statements.iter() {
        let BatchStatement::Prepared { id } = statement else {
            panic!("an unprepared statement in the batch: {statement:?}")
        };
        let cql = String::from_utf8(id.to_vec()).unwrap();
        assert!(cql.starts_with("INSERT INTO bunting_events.shard_totals"));
        assert!(cql.ends_with("USING TIMESTAMP ?"));
    }
    let rows: Vec<Vec<RawValue<'_>>> = batch.values.iter().map(|v| v.iter().collect()).collect();
    let arms: Vec<(String, i64)> = rows.iter().map(|r| (text(&r[2]), bigint(&r[4]))).collect();
    assert_eq!(
        arms,
        [("control".to_owned(), 2), ("treatment".to_owned(), 1)]
    );
    for row in &rows {
        assert_eq!(row.len(), 7);
        assert_eq!(text(&row[0]), "checkout");
        assert_eq!(bigint(&row[1]), 7, "shard");
        assert_eq!(bigint(&row[3]), seq as i64, "seq column");
        assert_eq!(bigint(&row[6]), seq as i64, "write timestamp is the seq");
    }
    let metrics: serde_json::Value = serde_json::from_str(&text(&rows[1][5])).unwrap();
    assert_eq!(
        metrics,
        serde_json::json!({"revenue": {"converted": 1, "sum": 12.5, "sum_squares": 156.25}})
    );
    // A replay sends the very same batch: same values, same timestamp, so Scylla keeps one copy.
    h.store.flush(&[flush(7, seq)]).await.unwrap();
    let replay = h.drain();
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0].body, frames[0].body);
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_merge_shards_and_keep_each_shards_largest_seq() {
    let mut h = Harness::start().await;
    let m = r#"{"revenue":{"converted":1,"sum":2.5,"sum_squares":6.25}}"#;
    let row = |shard, arm: &str, seq, exposed| Row {
        shard,
        arm: arm.to_owned(),
        seq,
        exposed,
        metrics: m.to_owned(),
    };
    *h.rows.lock().unwrap() = vec![
        row(0, "a", 10, 3),
        row(0, "b", 10, 4),
        // A leftover of shard 0's older flush: not part of its latest one.
        row(0, "c", 9, 100),
        row(1, "a", 20, 5),
    ];
    let totals = h.store.totals(&id("checkout")).await.unwrap();
    assert_eq!(totals.arms["a"].exposed, 8);
    assert_eq!(totals.arms["b"].exposed, 4);
    assert!(!totals.arms.contains_key("c"), "{totals:?}");
    let revenue = totals.arms["a"].metrics[&MetricName::new("revenue").unwrap()];
    assert_eq!((revenue.converted, revenue.sum), (2, 5.0));

    let shard = h.store.shard(&id("checkout"), 1).await.unwrap().unwrap();
    assert_eq!((shard.shard, shard.seq, shard.totals.exposed()), (1, 20, 5));
    assert_eq!(h.store.shard(&id("checkout"), 2).await.unwrap(), None);
    let executes: Vec<_> = h
        .drain()
        .into_iter()
        .filter(|f| f.opcode == RequestOpcode::Execute)
        .collect();
    assert_eq!(executes.len(), 3);
    for f in &executes {
        let RequestV2::Execute(e) = f.deserialize(&ProtocolFeatures::default()).unwrap() else {
            panic!()
        };
        assert_eq!(e.parameters.consistency, Consistency::LocalQuorum);
    }

    // A row the store cannot have written is reported, not trusted.
    h.rows.lock().unwrap().push(row(1, "a", 21, -1));
    let bad = h.store.totals(&id("checkout")).await;
    assert!(
        matches!(&bad, Err(EventStoreError::Corrupt { experiment, .. }) if experiment.as_str() == "checkout"),
        "{bad:?}"
    );
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_become_unavailable_with_their_cause() {
    let mut h = Harness::start().await;
    for (reaction, cause) in [
        (
            RequestReaction::forge().unavailable(),
            "required: 2, alive: 1",
        ),
        (RequestReaction::forge().overloaded(), "overloaded"),
        (
            RequestReaction::forge().write_timeout(),
            "write request in time",
        ),
    ] {
        h.set_batch_reaction(reaction);
        let err = h.store.flush(&[flush(3, 99)]).await.unwrap_err();
        match &err {
            EventStoreError::Unavailable(message) => {
                assert!(
                    message.contains("experiment checkout shard 3 seq 99")
                        && message.to_lowercase().contains(cause),
                    "{message}"
                );
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(
            h.drain().iter().any(|f| f.opcode == RequestOpcode::Batch),
            "the batch reached the node"
        );
    }
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_left_unanswered_times_out_within_the_bound() {
    let mut h = Harness::start().await;
    h.set_batch_reaction(RequestReaction::drop_frame());
    let started = Instant::now();
    let result = tokio::time::timeout(TIMEOUT * 20, h.store.flush(&[flush(3, 100)]))
        .await
        .expect("the store must give up by itself");
    assert!(
        matches!(result, Err(EventStoreError::Timeout(t)) if t == TIMEOUT),
        "{result:?}"
    );
    assert!(started.elapsed() >= TIMEOUT, "it did wait for the answer");
    assert_eq!(h.drain().len(), 1, "the batch was sent once");
    // The connection is still usable once the node answers again.
    h.set_batch_reaction(void_batch());
    h.store.flush(&[flush(3, 100)]).await.unwrap();
    h.finish();
}

#[tokio::test]
async fn a_bad_keyspace_is_refused_before_connecting() {
    let mut settings = ScyllaSettings::new(vec!["127.0.0.1:1".to_owned()], "no-dashes");
    assert!(matches!(
        ScyllaStore::connect(&settings).await,
        Err(EventStoreError::Invalid(m)) if m.contains("no-dashes")
    ));
    settings.keyspace = "ok".to_owned();
    settings.replication_factor = 0;
    assert!(matches!(
        ScyllaStore::connect(&settings).await,
        Err(EventStoreError::Invalid(_))
    ));
    assert!(Keyspace::new("ok").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_takes_the_forged_topology_and_the_store_works_on_it() {
    // Schema metadata off: forging every system_schema table is not worth it here, and the
    // driver fails the whole metadata read (falling back as in the other tests) if one fails.
    let builder = SessionBuilder::new().fetch_schema_metadata(false);
    let mut h = Harness::start_with(Some(builder)).await;
    let state = h.store.session().get_cluster_state();
    let nodes = state.get_nodes_info();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].datacenter.as_deref(), Some(DATACENTER));
    assert_eq!(nodes[0].rack.as_deref(), Some(RACK));
    assert_eq!(nodes[0].host_id.as_bytes(), &HOST_ID);
    h.drain();
    h.store.flush(&[flush(1, 5)]).await.unwrap();
    assert_eq!(
        h.drain()
            .iter()
            .filter(|f| f.opcode == RequestOpcode::Batch)
            .count(),
        1
    );
    h.finish();
}
