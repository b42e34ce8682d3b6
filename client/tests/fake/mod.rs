//! In-process fake cluster nodes: tonic servers on 127.0.0.1:0 that serve `Topology`,
//! flagd.evaluation.v2 and `bunting.v1.Evaluation` with canned answers and the routing metadata,
//! and record which node served which key.
//!
//! Each node runs on its own runtime in its own thread, so that killing it drops its listener and
//! every open connection at once, as a `kill -9` of a real node would (aborting only the serve
//! task would leave the already accepted connections answering).
//!
//! Canned answers: string flags resolve to the serving node's id (so a test sees who answered),
//! booleans to true, ints to 42, floats to 0.5, objects to `{"node": id}`. Flag `missing` is
//! NOT_FOUND, `wrong-type` is INVALID_ARGUMENT, `bad-context` is INVALID_ARGUMENT about the
//! context. A node listed in `View::stopping` answers UNAVAILABLE to everything; one in
//! `View::draining` is reported as draining.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bunting_proto::bunting::v1::evaluation_server::{Evaluation, EvaluationServer};
use bunting_proto::bunting::v1::topology_server::{Topology, TopologyServer};
use bunting_proto::bunting::v1::{
    ClusterNode, EvaluateBulkRequest, EvaluateBulkResponse, FlagResult, GetTopologyRequest,
    GetTopologyResponse, NodeState, SubjectResults, flag_result,
};
use bunting_proto::flagd::evaluation::v2 as flagd;
use bunting_proto::flagd::evaluation::v2::service_server::{Service, ServiceServer};
use prost_types::Struct;
use serde_json::json;
use tonic::{Request, Response, Status};

/// The cluster as every fake node reports it.
#[derive(Debug, Clone)]
pub struct View {
    pub epoch: u64,
    pub shard_count: u32,
    /// (id, grpc_addr) in map order.
    pub nodes: Vec<(String, String)>,
    /// shard -> index in `nodes`.
    pub shard_owner: Vec<u32>,
    /// Node ids that answer UNAVAILABLE (stopping).
    pub stopping: Vec<String>,
    /// Node ids the topology reports as draining.
    pub draining: Vec<String>,
}

impl View {
    pub fn owner_of(&self, key: &str) -> String {
        let shard = bunting_keyspace::shard_of(key, self.shard_count) as usize;
        let index = self.shard_owner[shard] as usize;
        self.nodes[index].0.clone()
    }

    pub fn index_of(&self, id: &str) -> u32 {
        self.nodes.iter().position(|(n, _)| n == id).unwrap() as u32
    }
}

/// One request a node served: which node, for which targeting key ("" when none), what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub node: String,
    pub key: String,
    pub what: String,
}

#[derive(Clone, Default)]
struct Shared {
    view: Arc<Mutex<Option<View>>>,
    served: Arc<Mutex<Vec<Served>>>,
    topology_calls: Arc<AtomicU64>,
}

pub struct FakeCluster {
    shared: Shared,
    nodes: Vec<FakeNode>,
}

struct FakeNode {
    id: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeCluster {
    /// `count` nodes `n0`, `n1`, ...; shard `s` owned by node `s % count`; epoch 1.
    pub fn start(count: usize, shard_count: u32) -> FakeCluster {
        let shared = Shared::default();
        let listeners: Vec<std::net::TcpListener> = (0..count)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let view = View {
            epoch: 1,
            shard_count,
            nodes: listeners
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("n{i}"), l.local_addr().unwrap().to_string()))
                .collect(),
            shard_owner: (0..shard_count).map(|s| s % count as u32).collect(),
            stopping: Vec::new(),
            draining: Vec::new(),
        };
        *shared.view.lock().unwrap() = Some(view);
        let nodes = listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| spawn_node(format!("n{i}"), listener, shared.clone()))
            .collect();
        FakeCluster { shared, nodes }
    }

    pub fn seeds(&self) -> Vec<String> {
        self.view().nodes.iter().map(|(_, a)| a.clone()).collect()
    }

    pub fn view(&self) -> View {
        self.shared.view.lock().unwrap().clone().unwrap()
    }

    /// Changes what every node reports (and whom they consider the owner).
    pub fn update(&self, change: impl FnOnce(&mut View)) {
        let mut guard = self.shared.view.lock().unwrap();
        change(guard.as_mut().unwrap());
    }

    /// A targeting key whose shard `node` owns in the current view.
    pub fn key_owned_by(&self, node: &str) -> String {
        let view = self.view();
        (0..)
            .map(|i| format!("user-{i}"))
            .find(|k| view.owner_of(k) == node)
            .unwrap()
    }

    /// Every request served so far.
    pub fn served(&self) -> Vec<Served> {
        self.shared.served.lock().unwrap().clone()
    }

    /// The nodes that served `what` for `key`, in order.
    pub fn served_by(&self, key: &str, what: &str) -> Vec<String> {
        self.served()
            .into_iter()
            .filter(|s| s.key == key && s.what == what)
            .map(|s| s.node)
            .collect()
    }

    pub fn topology_calls(&self) -> u64 {
        self.shared.topology_calls.load(Ordering::SeqCst)
    }

    /// Stops node `id` hard: its listener and every connection close at once.
    pub fn kill(&mut self, id: &str) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.id == id) {
            node.kill();
        }
    }
}

impl FakeNode {
    fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_node(id: String, listener: std::net::TcpListener, shared: Shared) -> FakeNode {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = FakeService {
        id: id.clone(),
        shared,
    };
    listener.set_nonblocking(true).unwrap();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let serve = tonic::transport::Server::builder()
                .add_service(TopologyServer::new(service.clone()))
                .add_service(ServiceServer::new(service.clone()))
                .add_service(EvaluationServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
            tokio::select! {
                _ = serve => {}
                _ = stopped => {}
            }
        });
        // Dropping the runtime cancels every connection task, closing their sockets.
        drop(runtime);
    });
    FakeNode {
        id,
        stop: Some(stop),
        thread: Some(thread),
    }
}

#[derive(Clone)]
struct FakeService {
    id: String,
    shared: Shared,
}

fn key_of(context: &Option<Struct>) -> String {
    context
        .as_ref()
        .and_then(|c| c.fields.get("targetingKey"))
        .and_then(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

impl FakeService {
    fn view(&self) -> View {
        self.shared.view.lock().unwrap().clone().unwrap()
    }

    /// Records the request, fails it as the flag key asks, or answers `body` with the routing
    /// metadata a clustered node adds.
    fn answer<T>(&self, key: &str, flag: &str, body: T) -> Result<Response<T>, Status> {
        let view = self.view();
        if view.stopping.contains(&self.id) {
            return Err(Status::unavailable(format!("node {} is stopping", self.id)));
        }
        self.shared.served.lock().unwrap().push(Served {
            node: self.id.clone(),
            key: key.to_owned(),
            what: flag.to_owned(),
        });
        match flag {
            "missing" => return Err(Status::not_found("flag `missing` not found")),
            "wrong-type" => return Err(Status::invalid_argument("flag is not a boolean")),
            "bad-context" => {
                return Err(Status::invalid_argument("evaluation context: too deep"));
            }
            _ => {}
        }
        let mut response = Response::new(body);
        let metadata = response.metadata_mut();
        metadata.insert("bunting-epoch", view.epoch.to_string().parse().unwrap());
        if !key.is_empty() {
            let owner = view.owner_of(key);
            if owner != self.id {
                metadata.insert("bunting-owner", owner.parse().unwrap());
            }
        }
        Ok(response)
    }

    fn node_object(&self) -> Struct {
        let serde_json::Value::Object(map) = json!({"node": self.id}) else {
            unreachable!()
        };
        bunting_proto::json::json_to_struct(&map).unwrap()
    }
}

#[tonic::async_trait]
impl Topology for FakeService {
    async fn get_topology(
        &self,
        _: Request<GetTopologyRequest>,
    ) -> Result<Response<GetTopologyResponse>, Status> {
        self.shared.topology_calls.fetch_add(1, Ordering::SeqCst);
        let view = self.view();
        Ok(Response::new(GetTopologyResponse {
            epoch: view.epoch,
            shard_count: view.shard_count,
            nodes: view
                .nodes
                .iter()
                .map(|(id, addr)| ClusterNode {
                    id: id.clone(),
                    grpc_addr: addr.clone(),
                    state: if view.draining.contains(id) {
                        NodeState::Draining as i32
                    } else {
                        NodeState::Up as i32
                    },
                })
                .collect(),
            shard_owner: view.shard_owner.clone(),
            answered_by: self.id.clone(),
        }))
    }
}

/// A typed answer with the canned reason and variant.
macro_rules! canned {
    ($resp:ident, $value:expr) => {
        flagd::$resp {
            value: Some($value),
            reason: "STATIC".to_owned(),
            variant: Some("canned".to_owned()),
            metadata: None,
        }
    };
}

#[tonic::async_trait]
impl Service for FakeService {
    async fn resolve_boolean(
        &self,
        request: Request<flagd::ResolveBooleanRequest>,
    ) -> Result<Response<flagd::ResolveBooleanResponse>, Status> {
        let request = request.into_inner();
        let body = canned!(ResolveBooleanResponse, true);
        self.answer(&key_of(&request.context), &request.flag_key, body)
    }

    async fn resolve_string(
        &self,
        request: Request<flagd::ResolveStringRequest>,
    ) -> Result<Response<flagd::ResolveStringResponse>, Status> {
        let request = request.into_inner();
        let body = canned!(ResolveStringResponse, self.id.clone());
        self.answer(&key_of(&request.context), &request.flag_key, body)
    }

    async fn resolve_int(
        &self,
        request: Request<flagd::ResolveIntRequest>,
    ) -> Result<Response<flagd::ResolveIntResponse>, Status> {
        let request = request.into_inner();
        let body = canned!(ResolveIntResponse, 42);
        self.answer(&key_of(&request.context), &request.flag_key, body)
    }

    async fn resolve_float(
        &self,
        request: Request<flagd::ResolveFloatRequest>,
    ) -> Result<Response<flagd::ResolveFloatResponse>, Status> {
        let request = request.into_inner();
        let body = canned!(ResolveFloatResponse, 0.5);
        self.answer(&key_of(&request.context), &request.flag_key, body)
    }

    async fn resolve_object(
        &self,
        request: Request<flagd::ResolveObjectRequest>,
    ) -> Result<Response<flagd::ResolveObjectResponse>, Status> {
        let request = request.into_inner();
        let body = canned!(ResolveObjectResponse, self.node_object());
        self.answer(&key_of(&request.context), &request.flag_key, body)
    }

    async fn resolve_all(
        &self,
        request: Request<flagd::ResolveAllRequest>,
    ) -> Result<Response<flagd::ResolveAllResponse>, Status> {
        let request = request.into_inner();
        let flag = |value| flagd::AnyFlag {
            reason: "STATIC".to_owned(),
            variant: Some("canned".to_owned()),
            value: Some(value),
            metadata: None,
        };
        let flags = BTreeMap::from([
            (
                "who".to_owned(),
                flag(flagd::any_flag::Value::StringValue(self.id.clone())),
            ),
            (
                "on".to_owned(),
                flag(flagd::any_flag::Value::BoolValue(true)),
            ),
        ]);
        let body = flagd::ResolveAllResponse {
            flags: flags.into_iter().collect(),
            metadata: None,
        };
        self.answer(&key_of(&request.context), "*", body)
    }

    type EventStreamStream =
        tonic::codegen::tokio_stream::Empty<Result<flagd::EventStreamResponse, Status>>;

    async fn event_stream(
        &self,
        _: Request<flagd::EventStreamRequest>,
    ) -> Result<Response<Self::EventStreamStream>, Status> {
        Err(Status::unimplemented("the fake has no events"))
    }
}

#[tonic::async_trait]
impl Evaluation for FakeService {
    async fn evaluate_bulk(
        &self,
        request: Request<EvaluateBulkRequest>,
    ) -> Result<Response<EvaluateBulkResponse>, Status> {
        let request = request.into_inner();
        if request.flag_set_id == "missing" {
            return Err(Status::not_found("flag set `missing` not found"));
        }
        let subjects = request
            .subjects
            .iter()
            .map(|subject| {
                let key = key_of(&subject.context);
                SubjectResults {
                    targeting_key: key,
                    results: request
                        .flag_keys
                        .iter()
                        .map(|flag| FlagResult {
                            flag_key: flag.clone(),
                            value: Some(flag_result::Value::StringValue(self.id.clone())),
                            variant: "canned".to_owned(),
                            reason: "STATIC".to_owned(),
                            ..FlagResult::default()
                        })
                        .collect(),
                }
            })
            .collect();
        // One record per call, keyed by the first subject, so tests can count calls per node.
        let first = request
            .subjects
            .first()
            .map(|s| key_of(&s.context))
            .unwrap_or_default();
        self.answer(
            &first,
            "bulk",
            EvaluateBulkResponse {
                subjects,
                flag_set_version: 3,
                flag_set_metadata: None,
            },
        )
    }
}

/// Polls `condition` every 10 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
