//! The checks of an `ApplyFlagChanges` request (`bunting.v1.Admin`), before the store sees it:
//! every problem is reported at its place in the request (`changes[2].expected_version`).

use std::collections::HashSet;

use bunting_proto::bunting::v1 as pb;
use tonic::Status;

use super::admin_status::{
    bad_field, check_expected_version, check_flag_key, parse_definition_at, struct_field,
};
use bunting_stores::{FlagBatch, FlagChange, FlagSetFields};

/// The batch a request asks for, checked field by field.
pub(super) fn batch(req: &pb::ApplyFlagChangesRequest) -> Result<FlagBatch, Status> {
    if req.changes.is_empty() {
        return Err(bad_field(
            "changes",
            "is empty; send at least one create, update or delete",
        ));
    }
    let mut keys = HashSet::new();
    let changes = req
        .changes
        .iter()
        .enumerate()
        .map(|(i, change)| {
            let field = |name: &str| format!("changes[{i}].{name}");
            check_flag_key(&field("key"), &change.key)?;
            if !keys.insert(change.key.as_str()) {
                return Err(bad_field(
                    &field("key"),
                    "names a flag a second time; each flag at most once per batch",
                ));
            }
            change_of(change, &field)
        })
        .collect::<Result<Vec<_>, Status>>()?;
    let expected_flag_set_version = match req.expected_flag_set_version {
        0 => None,
        v => {
            check_expected_version("expected_flag_set_version", v)?;
            Some(v)
        }
    };
    let create_flag_set = if req.create_flag_set {
        Some(FlagSetFields {
            metadata: struct_field("metadata", req.metadata.clone())?,
            evaluators: struct_field("evaluators", req.evaluators.clone())?,
        })
    } else {
        None
    };
    Ok(FlagBatch {
        changes,
        expected_flag_set_version,
        create_flag_set,
    })
}

fn change_of(
    change: &pb::FlagChange,
    field: &dyn Fn(&str) -> String,
) -> Result<FlagChange, Status> {
    let key = change.key.clone();
    match pb::FlagChangeKind::try_from(change.kind) {
        Ok(pb::FlagChangeKind::Create) => {
            if change.expected_version != 0 {
                return Err(bad_field(
                    &field("expected_version"),
                    "must be 0 for a create (a new flag has no version yet)",
                ));
            }
            Ok(FlagChange::Create {
                definition: parse_definition_at(&field("definition"), &change.definition)?,
                key,
            })
        }
        Ok(pb::FlagChangeKind::Update) => {
            check_expected_version(&field("expected_version"), change.expected_version)?;
            Ok(FlagChange::Update {
                definition: parse_definition_at(&field("definition"), &change.definition)?,
                expected_version: change.expected_version,
                key,
            })
        }
        Ok(pb::FlagChangeKind::Delete) => {
            check_expected_version(&field("expected_version"), change.expected_version)?;
            if !change.definition.is_empty() {
                return Err(bad_field(
                    &field("definition"),
                    "must be empty for a delete",
                ));
            }
            Ok(FlagChange::Delete {
                expected_version: change.expected_version,
                key,
            })
        }
        Ok(pb::FlagChangeKind::Unspecified) | Err(_) => Err(bad_field(
            &field("kind"),
            format!(
                "is {}; use FLAG_CHANGE_KIND_CREATE, _UPDATE or _DELETE",
                change.kind
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(
        kind: pb::FlagChangeKind,
        key: &str,
        definition: &str,
        version: i64,
    ) -> pb::FlagChange {
        pb::FlagChange {
            kind: kind.into(),
            key: key.into(),
            definition: definition.into(),
            expected_version: version,
        }
    }

    const FLAG: &str = r#"{"state":"ENABLED","variants":{"on":true},"defaultVariant":"on"}"#;

    #[test]
    fn each_refusal_names_its_field() {
        use pb::FlagChangeKind::{Create, Delete, Unspecified, Update};
        for (changes, field) in [
            (vec![], "changes"),
            (
                vec![change(Create, "a", FLAG, 0), change(Delete, "a", "", 1)],
                "changes[1].key",
            ),
            (vec![change(Create, "", FLAG, 0)], "changes[0].key"),
            (
                vec![change(Create, "a", FLAG, 3)],
                "changes[0].expected_version",
            ),
            (vec![change(Create, "a", "[1]", 0)], "changes[0].definition"),
            (
                vec![change(Update, "a", FLAG, 0)],
                "changes[0].expected_version",
            ),
            (
                vec![change(Create, "a", FLAG, 0), change(Delete, "b", FLAG, 2)],
                "changes[1].definition",
            ),
            (vec![change(Unspecified, "a", FLAG, 1)], "changes[0].kind"),
        ] {
            let req = pb::ApplyFlagChangesRequest {
                flag_set_id: "shop".into(),
                changes,
                actor: "me".into(),
                ..Default::default()
            };
            let status = batch(&req).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(
                status.message().starts_with(&format!("{field}: ")),
                "{field}: {}",
                status.message()
            );
        }
    }

    #[test]
    fn a_good_batch_keeps_its_order() {
        use pb::FlagChangeKind::{Create, Delete, Update};
        let req = pb::ApplyFlagChangesRequest {
            flag_set_id: "shop".into(),
            changes: vec![
                change(Update, "b", FLAG, 4),
                change(Create, "a", FLAG, 0),
                change(Delete, "c", "", 2),
            ],
            expected_flag_set_version: 9,
            actor: "me".into(),
            ..Default::default()
        };
        let batch = batch(&req).unwrap();
        let keys: Vec<&str> = batch.changes.iter().map(FlagChange::key).collect();
        assert_eq!(keys, ["b", "a", "c"]);
        assert_eq!(batch.expected_flag_set_version, Some(9));
        assert!(batch.create_flag_set.is_none());
    }
}
