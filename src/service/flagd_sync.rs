//! flagd's sync protocol (`flagd.sync.v1.FlagSyncService`): in-process providers receive the
//! whole flag definition at start and again on every change, and evaluate it themselves.

use std::pin::Pin;
use std::sync::Arc;

use bunting_actors::Catalog;
use bunting_proto::flagd::sync::v1::{
    FetchAllFlagsRequest, FetchAllFlagsResponse, GetMetadataRequest, GetMetadataResponse,
    SyncFlagsRequest, SyncFlagsResponse, flag_sync_service_server::FlagSyncService,
};
use futures_core::Stream;
use tonic::{Request, Response, Status};

use super::evaluator::{Evaluator, metadata_struct};
use super::request::selector;
use super::wire_text::quoted;

#[derive(Debug, Clone)]
pub struct FlagdSync(pub Evaluator);

impl FlagdSync {
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
        let metadata = catalog
            .get(&set)
            .map(|s| s.metadata().clone())
            .unwrap_or_default();
        Ok(Response::new(GetMetadataResponse {
            metadata: Some(metadata_struct(&metadata)?),
        }))
    }
}
