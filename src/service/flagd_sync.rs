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
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::evaluator::{Evaluator, metadata_struct};
use super::events::record_propagation;
use super::request::selector;

#[derive(Debug, Clone)]
pub struct FlagdSync(pub Evaluator);

impl FlagdSync {
    fn set_name(&self, chosen: Option<Arc<str>>) -> Arc<str> {
        chosen.unwrap_or_else(|| self.0.node.config().default_set.as_str().into())
    }
}

/// The set's definition as flagd's provider schema writes it, or `None` if the set is unknown.
fn configuration(catalog: &Catalog, set: &str) -> Option<String> {
    catalog.get(set).map(|s| s.document().to_string())
}

fn unknown_set(set: &str) -> Status {
    Status::not_found(format!("flag set {set:?} not found"))
}

#[tonic::async_trait]
impl FlagSyncService for FlagdSync {
    type SyncFlagsStream = Pin<Box<dyn Stream<Item = Result<SyncFlagsResponse, Status>> + Send>>;

    async fn sync_flags(
        &self,
        request: Request<SyncFlagsRequest>,
    ) -> Result<Response<Self::SyncFlagsStream>, Status> {
        let set = self.set_name(selector(request.metadata(), &request.get_ref().selector));
        let mut catalog = self.0.node.watch();
        let mut closing = self.0.closing.clone();
        let first = {
            let current = catalog.borrow_and_update();
            configuration(&current, &set).ok_or_else(|| unknown_set(&set))?
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let send = |flag_configuration: String| SyncFlagsResponse {
                flag_configuration,
                sync_context: None,
            };
            if tx.send(Ok(send(first))).await.is_err() {
                return;
            }
            let mut sent_version = catalog.borrow().version_of(&set);
            loop {
                tokio::select! {
                    changed = catalog.changed() => if changed.is_err() { break },
                    () = crate::closing::closed(&mut closing) => break,
                    () = tx.closed() => break,
                }
                let current = catalog.borrow_and_update().clone();
                if current.version_of(&set) == sent_version {
                    continue;
                }
                sent_version = current.version_of(&set);
                // A deleted set syncs as an empty one: providers drop its flags.
                let flags =
                    configuration(&current, &set).unwrap_or_else(|| r#"{"flags":{}}"#.to_owned());
                record_propagation("sync", &current);
                if tx.send(Ok(send(flags))).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_all_flags(
        &self,
        request: Request<FetchAllFlagsRequest>,
    ) -> Result<Response<FetchAllFlagsResponse>, Status> {
        let set = self.set_name(selector(request.metadata(), &request.get_ref().selector));
        let flag_configuration =
            configuration(&self.0.node.catalog(), &set).ok_or_else(|| unknown_set(&set))?;
        Ok(Response::new(FetchAllFlagsResponse { flag_configuration }))
    }

    async fn get_metadata(
        &self,
        request: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status> {
        let set = self.set_name(selector(request.metadata(), ""));
        let catalog = self.0.node.catalog();
        let metadata = catalog
            .get(&set)
            .map(|s| s.metadata().clone())
            .unwrap_or_default();
        Ok(Response::new(GetMetadataResponse {
            metadata: Some(metadata_struct(&metadata)?),
        }))
    }
}
