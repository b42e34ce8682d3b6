//! flagd's sync protocol (`flagd.sync.v1.FlagSyncService`): in-process providers receive the
//! whole flag definition at start and again on every change, and evaluate it themselves.

use std::pin::Pin;
use std::sync::Arc;

use bunting_actors::Catalog;
use bunting_engine::FractionalMode;
use bunting_proto::flagd::sync::v1::{
    FetchAllFlagsRequest, FetchAllFlagsResponse, GetMetadataRequest, GetMetadataResponse,
    SyncFlagsRequest, SyncFlagsResponse, flag_sync_service_server::FlagSyncService,
};
use futures_core::Stream;
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use super::evaluator::{Evaluator, metadata_struct};
use super::request::selector;
use super::wire_text::quoted;

/// The sync-context key naming the node's `fractional` mode (`cbor`, `string` or `legacy`).
/// flagd defines no key for it; the `bunting.` prefix keeps it apart from anything flagd or a
/// deployment's static context sets.
pub const FRACTIONAL_KEY: &str = "bunting.fractional";

/// The sync service; the mode is the node's `fractional` setting, which every in-process provider
/// syncing from it must share for its users to land in the node's buckets.
#[derive(Debug, Clone)]
pub struct FlagdSync(pub Evaluator, pub FractionalMode);

impl FlagdSync {
    /// What in-process providers get as sync context (`SyncFlags`' `sync_context`, and
    /// `GetMetadata`, which flagd deprecated in its favour): `bunting.fractional`, so an
    /// operator can see which bucketing a node's clients must use. Providers merge it into their
    /// evaluation contexts like flagd's static context values; no rule reads it.
    pub fn sync_context(&self) -> Map<String, Value> {
        let mut context = Map::new();
        context.insert(FRACTIONAL_KEY.into(), Value::from(self.1.as_str()));
        context
    }

    pub(super) fn set_name(&self, chosen: Option<Arc<str>>) -> Arc<str> {
        chosen.unwrap_or_else(|| self.0.node().config().default_set.as_str().into())
    }
}

/// The set's definition as flagd's provider schema writes it, or `None` if the set is unknown.
fn configuration(catalog: &Catalog, set: &str) -> Option<String> {
    catalog.get(set).map(|s| s.document().to_string())
}

pub(super) fn unknown_set(set: &str) -> Status {
    Status::not_found(format!("flag set {} not found", quoted(set)))
}

#[tonic::async_trait]
impl FlagSyncService for FlagdSync {
    type SyncFlagsStream = Pin<Box<dyn Stream<Item = Result<SyncFlagsResponse, Status>> + Send>>;

    /// Never called: `SyncService` (sync_stream.rs) answers this path itself, from encoded
    /// snapshots shared by every subscriber, before the request reaches this generated service.
    async fn sync_flags(
        &self,
        _request: Request<SyncFlagsRequest>,
    ) -> Result<Response<Self::SyncFlagsStream>, Status> {
        Err(Status::internal(
            "SyncFlags is served by the sync stream service, not here",
        ))
    }

    async fn fetch_all_flags(
        &self,
        request: Request<FetchAllFlagsRequest>,
    ) -> Result<Response<FetchAllFlagsResponse>, Status> {
        let set = self.set_name(selector(request.metadata(), &request.get_ref().selector));
        self.0.authorize_set(request.extensions(), Some(&set))?;
        let flag_configuration =
            configuration(&self.0.node().catalog(), &set).ok_or_else(|| unknown_set(&set))?;
        Ok(Response::new(FetchAllFlagsResponse { flag_configuration }))
    }

    async fn get_metadata(
        &self,
        request: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status> {
        let set = self.set_name(selector(request.metadata(), ""));
        self.0.authorize_set(request.extensions(), Some(&set))?;
        let catalog = self.0.node().catalog();
        let mut metadata = catalog
            .get(&set)
            .map(|s| s.metadata().clone())
            .unwrap_or_default();
        // The node's own keys last: they describe this node, whatever the set's metadata says.
        metadata.extend(self.sync_context());
        Ok(Response::new(GetMetadataResponse {
            metadata: Some(metadata_struct(&metadata)?),
        }))
    }
}
