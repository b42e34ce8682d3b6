//! `bunting.v1.Admin`: flag sets, flags and the audit log, each RPC one call to the node's
//! [`AdminStore`]. Requests are checked here, before the store is touched; the store checks
//! versions and compiles every write (see `store/postgres.rs`), and its refusals become the
//! statuses bunting.proto lists (`admin_status.rs`). A write reaches the node's own catalog, and
//! every other node's, through the store's change notices, like anybody else's write.

use std::sync::Arc;

use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_server::Admin as AdminRpc;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use super::admin_status::{
    bad_field, check_actor, check_expected_version, check_flag_key, check_flag_set_id,
    parse_definition, store_status, struct_field,
};
use super::request::{RequiredStore, audit_actor, caller, check_all_flag_sets, check_flag_set};
use crate::config::FlagSourceConfig;
use bunting_stores::{
    AdminStore, AuditAction, AuditEntry, FlagRecord, FlagSetFields, FlagSetRecord, MAX_AUDIT_PAGE,
};

/// Audit entries per page when a request does not say (bunting.proto, ListAuditRequest.limit).
pub const DEFAULT_AUDIT_PAGE: u32 = 100;

/// `bunting.v1.Admin` over the node's store, if it has one.
#[derive(Debug, Clone)]
pub struct Admin {
    store: RequiredStore<dyn AdminStore>,
}

impl Admin {
    /// `store` is the node's admin store; `None` when `flags` names a source that has none (a
    /// file), and then every RPC is refused with FAILED_PRECONDITION naming that source.
    pub fn new(store: Option<Arc<dyn AdminStore>>, flags: &FlagSourceConfig) -> Admin {
        let without_store = match flags {
            FlagSourceConfig::File { path, set, .. } => format!(
                "this node serves flags from the file {} (as flag set {set:?}), which the admin \
                 API cannot change: edit the file, or use a node with [flags] source = \"postgres\"",
                path.display()
            ),
            FlagSourceConfig::Postgres { .. } => {
                "this node's flag store is not available to the admin API".to_owned()
            }
        };
        Admin {
            store: RequiredStore::new(store, without_store),
        }
    }

    fn store(&self) -> Result<&dyn AdminStore, Status> {
        self.store.get()
    }
}

#[tonic::async_trait]
impl AdminRpc for Admin {
    async fn create_flag_set(
        &self,
        request: Request<pb::CreateFlagSetRequest>,
    ) -> Result<Response<pb::CreateFlagSetResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        check_flag_set_id("id", &req.id)?;
        check_flag_set(&caller, &req.id)?;
        check_actor(&req.actor)?;
        let actor = audit_actor(&caller, &req.actor)?;
        let fields = FlagSetFields {
            metadata: struct_field("metadata", req.metadata)?,
            evaluators: struct_field("evaluators", req.evaluators)?,
        };
        let record = store
            .create_flag_set(&req.id, fields, &actor)
            .await
            .map_err(|e| store_status("create_flag_set", e))?;
        Ok(Response::new(pb::CreateFlagSetResponse {
            flag_set: Some(flag_set(record)?),
        }))
    }

    async fn update_flag_set(
        &self,
        request: Request<pb::UpdateFlagSetRequest>,
    ) -> Result<Response<pb::UpdateFlagSetResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        check_flag_set_id("id", &req.id)?;
        check_flag_set(&caller, &req.id)?;
        check_expected_version("expected_version", req.expected_version)?;
        check_actor(&req.actor)?;
        let actor = audit_actor(&caller, &req.actor)?;
        let fields = FlagSetFields {
            metadata: struct_field("metadata", req.metadata)?,
            evaluators: struct_field("evaluators", req.evaluators)?,
        };
        let record = store
            .update_flag_set(&req.id, fields, req.expected_version, &actor)
            .await
            .map_err(|e| store_status("update_flag_set", e))?;
        Ok(Response::new(pb::UpdateFlagSetResponse {
            flag_set: Some(flag_set(record)?),
        }))
    }

    async fn delete_flag_set(
        &self,
        request: Request<pb::DeleteFlagSetRequest>,
    ) -> Result<Response<pb::DeleteFlagSetResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        check_flag_set_id("id", &req.id)?;
        check_flag_set(&caller, &req.id)?;
        check_expected_version("expected_version", req.expected_version)?;
        check_actor(&req.actor)?;
        let actor = audit_actor(&caller, &req.actor)?;
        let version = store
            .delete_flag_set(&req.id, req.expected_version, &actor)
            .await
            .map_err(|e| store_status("delete_flag_set", e))?;
        Ok(Response::new(pb::DeleteFlagSetResponse { version }))
    }

    async fn list_flag_sets(
        &self,
        request: Request<pb::ListFlagSetsRequest>,
    ) -> Result<Response<pb::ListFlagSetsResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?;
        let records = store
            .list_flag_sets()
            .await
            .map_err(|e| store_status("list_flag_sets", e))?;
        Ok(Response::new(pb::ListFlagSetsResponse {
            // Only the sets the caller may touch: the others' ids are theirs too.
            flag_sets: records
                .into_iter()
                .filter(|r| caller.allows_set(&r.id))
                .map(flag_set)
                .collect::<Result<_, _>>()?,
        }))
    }

    async fn get_flag_set(
        &self,
        request: Request<pb::GetFlagSetRequest>,
    ) -> Result<Response<pb::GetFlagSetResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        check_flag_set_id("id", &req.id)?;
        check_flag_set(&caller, &req.id)?;
        let record = store
            .get_flag_set(&req.id)
            .await
            .map_err(|e| store_status("get_flag_set", e))?;
        Ok(Response::new(pb::GetFlagSetResponse {
            flag_set: Some(flag_set(record)?),
        }))
    }

    async fn create_flag(
        &self,
        request: Request<pb::CreateFlagRequest>,
    ) -> Result<Response<pb::CreateFlagResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        check_flag_set_id("flag_set_id", &req.flag_set_id)?;
        check_flag_set(&caller, &req.flag_set_id)?;
        check_flag_key("key", &req.key)?;
        let definition = parse_definition(&req.definition)?;
        // Zero means "no check" here (bunting.proto); only a negative version is malformed.
        let expected_set_version = match req.expected_flag_set_version {
            0 => None,
            v => {
                check_expected_version("expected_flag_set_version", v)?;
                Some(v)
            }
        };
        check_actor(&req.actor)?;
        let actor = audit_actor(&caller, &req.actor)?;
        let record = store
            .create_flag(
                &req.flag_set_id,
                &req.key,
                definition,
                expected_set_version,
                &actor,
            )
            .await
            .map_err(|e| store_status("create_flag", e))?;
        Ok(Response::new(pb::CreateFlagResponse {
            flag_set_version: record.flag_set_version,
            flag: Some(flag(record)),
        }))
    }

    async fn update_flag(
        &self,
        request: Request<pb::UpdateFlagRequest>,
    ) -> Result<Response<pb::UpdateFlagResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        check_flag_set_id("flag_set_id", &req.flag_set_id)?;
        check_flag_set(&caller, &req.flag_set_id)?;
        check_flag_key("key", &req.key)?;
        let definition = parse_definition(&req.definition)?;
        check_expected_version("expected_version", req.expected_version)?;
        check_actor(&req.actor)?;
        let actor = audit_actor(&caller, &req.actor)?;
        let record = store
            .update_flag(
                &req.flag_set_id,
                &req.key,
                definition,
                req.expected_version,
                &actor,
            )
            .await
            .map_err(|e| store_status("update_flag", e))?;
        Ok(Response::new(pb::UpdateFlagResponse {
            flag_set_version: record.flag_set_version,
            flag: Some(flag(record)),
        }))
    }

    async fn delete_flag(
        &self,
        request: Request<pb::DeleteFlagRequest>,
    ) -> Result<Response<pb::DeleteFlagResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        check_flag_set_id("flag_set_id", &req.flag_set_id)?;
        check_flag_set(&caller, &req.flag_set_id)?;
        check_flag_key("key", &req.key)?;
        check_expected_version("expected_version", req.expected_version)?;
        check_actor(&req.actor)?;
        let actor = audit_actor(&caller, &req.actor)?;
        let flag_set_version = store
            .delete_flag(&req.flag_set_id, &req.key, req.expected_version, &actor)
            .await
            .map_err(|e| store_status("delete_flag", e))?;
        Ok(Response::new(pb::DeleteFlagResponse { flag_set_version }))
    }

    async fn list_flags(
        &self,
        request: Request<pb::ListFlagsRequest>,
    ) -> Result<Response<pb::ListFlagsResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        check_flag_set_id("flag_set_id", &req.flag_set_id)?;
        check_flag_set(&caller, &req.flag_set_id)?;
        let list = store
            .list_flags(&req.flag_set_id)
            .await
            .map_err(|e| store_status("list_flags", e))?;
        Ok(Response::new(pb::ListFlagsResponse {
            flags: list.flags.into_iter().map(flag).collect(),
            flag_set_version: list.flag_set_version,
        }))
    }

    async fn apply_flag_changes(
        &self,
        request: Request<pb::ApplyFlagChangesRequest>,
    ) -> Result<Response<pb::ApplyFlagChangesResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        check_flag_set_id("flag_set_id", &req.flag_set_id)?;
        check_flag_set(&caller, &req.flag_set_id)?;
        let batch = super::admin_batch::batch(&req)?;
        check_actor(&req.actor)?;
        let actor = audit_actor(&caller, &req.actor)?;
        let outcome = store
            .apply_flag_changes(&req.flag_set_id, batch, &actor)
            .await
            .map_err(|e| store_status("apply_flag_changes", e))?;
        Ok(Response::new(pb::ApplyFlagChangesResponse {
            flag_set_version: outcome.flag_set_version,
            flags: outcome.written.into_iter().map(flag).collect(),
            deleted_keys: outcome.deleted,
            created_flag_set: outcome.created_flag_set,
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        let page = AuditPage::from_request(&req)?;
        match page.flag_set {
            Some(set) => check_flag_set(&caller, set)?,
            None => check_all_flag_sets(&caller, "ListAudit")?,
        }
        let op = |e| store_status("list_audit", e);
        let mut entries = store
            .list_audit(page.flag_set, page.flag_key, page.before_id, page.limit)
            .await
            .map_err(op)?;
        entries.truncate(page.limit as usize);
        // A full page may be the last one: look one entry further, so that next_before_id is 0
        // exactly when nothing is left.
        let next_before_id = match entries.last() {
            Some(last) if entries.len() == page.limit as usize => {
                let more = store
                    .list_audit(page.flag_set, page.flag_key, Some(last.id), 1)
                    .await
                    .map_err(op)?;
                if more.is_empty() { 0 } else { last.id }
            }
            _ => 0,
        };
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries
                .into_iter()
                .map(audit_entry)
                .collect::<Result<_, _>>()?,
            next_before_id,
        }))
    }
}

/// A checked ListAudit request.
struct AuditPage<'r> {
    flag_set: Option<&'r str>,
    flag_key: Option<&'r str>,
    before_id: Option<i64>,
    limit: u32,
}

impl<'r> AuditPage<'r> {
    fn from_request(req: &'r pb::ListAuditRequest) -> Result<AuditPage<'r>, Status> {
        let flag_set = (!req.flag_set_id.is_empty()).then_some(req.flag_set_id.as_str());
        let flag_key = (!req.flag_key.is_empty()).then_some(req.flag_key.as_str());
        if let Some(id) = flag_set {
            check_flag_set_id("flag_set_id", id)?;
        }
        if let Some(key) = flag_key {
            if flag_set.is_none() {
                return Err(bad_field(
                    "flag_key",
                    "needs flag_set_id: flag keys are unique only within a flag set",
                ));
            }
            check_flag_key("flag_key", key)?;
        }
        let before_id = match req.before_id {
            0 => None,
            id if id < 0 => {
                return Err(bad_field(
                    "before_id",
                    format!("is {id}; pass 0 or a previous page's next_before_id"),
                ));
            }
            id => Some(id),
        };
        let limit = match u32::try_from(req.limit) {
            Ok(0) => DEFAULT_AUDIT_PAGE,
            Ok(n) if n <= MAX_AUDIT_PAGE => n,
            _ => {
                return Err(bad_field(
                    "limit",
                    format!(
                        "is {}; pass 1 to {MAX_AUDIT_PAGE}, or 0 for {DEFAULT_AUDIT_PAGE}",
                        req.limit
                    ),
                ));
            }
        };
        Ok(AuditPage {
            flag_set,
            flag_key,
            before_id,
            limit,
        })
    }
}

fn flag_set(record: FlagSetRecord) -> Result<pb::FlagSet, Status> {
    Ok(pb::FlagSet {
        metadata: Some(stored_struct(&record.metadata)?),
        evaluators: Some(stored_struct(&record.evaluators)?),
        id: record.id,
        version: record.version,
    })
}

fn flag(record: FlagRecord) -> pb::Flag {
    pb::Flag {
        definition: record.definition.to_string(),
        flag_set_id: record.flag_set_id,
        key: record.key,
        version: record.version,
        updated_at: Some(timestamp(record.updated_at)),
    }
}

fn audit_entry(entry: AuditEntry) -> Result<pb::AuditEntry, Status> {
    let json = |value: Option<Value>| value.map(|v| v.to_string()).unwrap_or_default();
    let action = match entry.action {
        AuditAction::Create => pb::AuditAction::Create,
        AuditAction::Update => pb::AuditAction::Update,
        AuditAction::Delete => pb::AuditAction::Delete,
    };
    Ok(pb::AuditEntry {
        id: entry.id,
        flag_set_id: entry.flag_set_id,
        flag_key: entry.flag_key.unwrap_or_default(),
        action: action.into(),
        actor: entry.actor,
        at: Some(timestamp(entry.at)),
        before_json: json(entry.before),
        after_json: json(entry.after),
        flag_set_version: entry.flag_set_version,
    })
}

/// Stored JSON as a Struct. Everything stored came in as a Struct (or was compiled from one), so
/// this fails only if the database holds something the API never wrote.
fn stored_struct(map: &Map<String, Value>) -> Result<prost_types::Struct, Status> {
    bunting_proto::json::json_to_struct(map)
        .map_err(|e| Status::internal(format!("stored flag set field: {e}")))
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        // Below 10^9 by definition, so it fits.
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use bunting_stores::file::BrokenFlags;

    #[tokio::test]
    async fn a_node_without_a_store_refuses_naming_its_file() {
        let admin = Admin::new(
            None,
            &FlagSourceConfig::File {
                path: PathBuf::from("/etc/bunting/flags.json"),
                set: "default".into(),
                broken_flags: BrokenFlags::default(),
            },
        );
        let status = admin
            .list_flag_sets(Request::new(pb::ListFlagSetsRequest {}))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("/etc/bunting/flags.json"));
        // Refused before the request is even checked.
        let status = admin
            .create_flag(Request::new(pb::CreateFlagRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn audit_pages_are_checked() {
        let page = |flag_set_id: &str, flag_key: &str, before_id: i64, limit: i32| {
            let req = pb::ListAuditRequest {
                flag_set_id: flag_set_id.into(),
                flag_key: flag_key.into(),
                before_id,
                limit,
            };
            AuditPage::from_request(&req).map(|p| (p.before_id, p.limit))
        };
        assert_eq!(page("", "", 0, 0).unwrap(), (None, DEFAULT_AUDIT_PAGE));
        assert_eq!(page("shop", "banner", 9, 1000).unwrap(), (Some(9), 1000));
        for (set, key, before, limit) in [
            ("", "banner", 0, 0),
            ("shop", "", 0, -1),
            ("shop", "", 0, 1001),
            ("shop", "", -3, 0),
            ("no spaces", "", 0, 0),
        ] {
            let status = page(set, key, before, limit).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
    }
}
