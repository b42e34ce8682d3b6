//! The contract every `AdminStore` keeps, as PostgreSQL's does: versions that only grow (a
//! re-created set or flag keeps counting past its deletion), optimistic concurrency, validation
//! before anything is written, the audit log and change notices. `tests/postgres_store.rs` runs
//! it against PostgreSQL, `tests/in_process.rs` against the memory store, so the store that
//! in-process tests run on behaves as production's does.

use std::sync::Arc;
use std::time::Duration;

use bunting_engine::{CompileOptions, EvaluationContext};
use bunting_stores::{
    AdminStore, AuditAction, ChangeNotice, FlagSetFields, StoreError, Subscription,
};
use chrono::Utc;
use serde_json::{Value, json};

/// Long enough for any machine to deliver a notification; the tests wait this long only when
/// something is already broken.
const PATIENCE: Duration = Duration::from_secs(20);

pub fn flag(default_variant: &str) -> Value {
    json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": default_variant,
    })
}

pub async fn next_notice(subscription: &mut Subscription) -> ChangeNotice {
    tokio::time::timeout(PATIENCE, subscription.recv())
        .await
        .expect("no change notice arrived")
        .expect("the subscription ended")
}

pub async fn audit_count(store: &dyn AdminStore) -> usize {
    store
        .list_audit(None, None, None, 1000)
        .await
        .unwrap()
        .len()
}

pub async fn writes_bump_flag_and_set_versions(store: Arc<dyn AdminStore>) {
    let set = store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    assert_eq!(set.version, 1);
    let again = store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "{again:?}"
    );

    let created = store
        .create_flag("default", "banner", flag("off"), None, "ada")
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.flag_set_version, 2);
    assert_eq!(created.definition, flag("off"));
    assert_eq!(store.get_flag_set("default").await.unwrap().version, 2);
    let duplicate = store
        .create_flag("default", "banner", flag("on"), None, "ada")
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::AlreadyExists { .. })),
        "{duplicate:?}"
    );

    let updated = store
        .update_flag("default", "banner", flag("on"), 1, "grace")
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.flag_set_version, 3);
    assert!(updated.updated_at >= created.updated_at);
    assert_eq!(store.get_flag("default", "banner").await.unwrap(), updated);

    let snapshot = store.snapshot("default").await.unwrap();
    assert_eq!(snapshot.version, 3);
    assert_eq!(
        snapshot.document,
        json!({"flags": {"banner": flag("on")}, "$evaluators": {}, "metadata": {}})
    );
    let compiled = snapshot.compile(&CompileOptions::default()).unwrap();
    assert_eq!(compiled.version(), 3);
    let resolution = compiled.resolve_bool("banner", &EvaluationContext::new());
    assert_eq!(resolution.value, Some(true));

    let fields = FlagSetFields {
        metadata: json!({"team": "growth"}).as_object().unwrap().clone(),
        evaluators: json!({"staff": {"ends_with": [{"var": "email"}, "@example.com"]}})
            .as_object()
            .unwrap()
            .clone(),
    };
    let set = store
        .update_flag_set("default", fields.clone(), 3, "grace")
        .await
        .unwrap();
    assert_eq!(set.version, 4);
    assert_eq!(set.metadata, fields.metadata);

    let after_delete = store
        .delete_flag("default", "banner", 2, "grace")
        .await
        .unwrap();
    assert_eq!(after_delete, 5);
    assert!(store.list_flags("default").await.unwrap().flags.is_empty());
    let gone = store.get_flag("default", "banner").await;
    assert!(matches!(gone, Err(StoreError::NotFound { .. })), "{gone:?}");

    // A re-created flag keeps counting: a writer holding the old version 1 cannot overwrite it.
    let recreated = store
        .create_flag("default", "banner", flag("off"), None, "ada")
        .await
        .unwrap();
    assert_eq!(recreated.version, 4);
    let listed = store.list_flags("default").await.unwrap();
    assert_eq!(listed.flag_set_version, 6);
    assert_eq!(listed.flags, vec![recreated]);

    let deleted_at = store.delete_flag_set("default", 6, "ada").await.unwrap();
    assert_eq!(deleted_at, 7);
    let gone = store.get_flag_set("default").await;
    assert!(matches!(gone, Err(StoreError::NotFound { .. })), "{gone:?}");
    assert!(matches!(
        store.list_flags("default").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.snapshots().await.unwrap().is_empty());

    // So does a re-created set, so a node that saw the deletion can tell new from stale.
    let reborn = store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    assert_eq!(reborn.version, 8);
    let listed = store.list_flags("default").await.unwrap();
    assert_eq!((listed.flag_set_version, listed.flags.len()), (8, 0));
    assert_eq!(store.list_flag_sets().await.unwrap(), vec![reborn]);
}

pub async fn a_stale_expected_version_is_refused_and_nothing_is_written(
    store: Arc<dyn AdminStore>,
) {
    store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    store
        .create_flag("default", "banner", flag("off"), None, "ada")
        .await
        .unwrap();
    store
        .update_flag("default", "banner", flag("on"), 1, "ada")
        .await
        .unwrap();
    let before = store.snapshot("default").await.unwrap();
    let audited = audit_count(store.as_ref()).await;

    // Two writers read version 1; the second to write is the one refused.
    let stale = store
        .update_flag("default", "banner", flag("off"), 1, "grace")
        .await;
    match stale {
        Err(StoreError::VersionConflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (1, 2)),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    let stale_delete = store.delete_flag("default", "banner", 1, "grace").await;
    assert!(matches!(
        stale_delete,
        Err(StoreError::VersionConflict { .. })
    ));
    let stale_set = store
        .update_flag_set("default", FlagSetFields::default(), 1, "grace")
        .await;
    assert!(matches!(
        stale_set,
        Err(StoreError::VersionConflict {
            expected: 1,
            actual: 3,
            ..
        })
    ));
    let stale_set_delete = store.delete_flag_set("default", 2, "grace").await;
    assert!(matches!(
        stale_set_delete,
        Err(StoreError::VersionConflict { .. })
    ));
    // A create guarded by the set's version it was computed from.
    let stale_create = store
        .create_flag("default", "other", flag("on"), Some(2), "grace")
        .await;
    assert!(matches!(
        stale_create,
        Err(StoreError::VersionConflict {
            expected: 2,
            actual: 3,
            ..
        })
    ));

    assert_eq!(store.snapshot("default").await.unwrap(), before);
    assert_eq!(
        store.get_flag("default", "banner").await.unwrap().version,
        2
    );
    assert_eq!(audit_count(store.as_ref()).await, audited);

    let message = store
        .update_flag("default", "banner", flag("off"), 1, "grace")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "flag \"banner\" in flag set \"default\" is at version 2, not the expected version 1"
    );
}

pub async fn of_two_concurrent_writers_at_one_version_exactly_one_wins(store: Arc<dyn AdminStore>) {
    store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    store
        .create_flag("default", "banner", flag("off"), None, "ada")
        .await
        .unwrap();
    let writes = (0..4).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let definition = flag(if i % 2 == 0 { "on" } else { "off" });
            store
                .update_flag("default", "banner", definition, 1, &format!("writer-{i}"))
                .await
        })
    });
    let mut won = 0;
    for write in writes.collect::<Vec<_>>() {
        match write.await.unwrap() {
            Ok(record) => {
                assert_eq!(record.version, 2);
                won += 1;
            }
            Err(StoreError::VersionConflict { actual: 2, .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.snapshot("default").await.unwrap().version, 3);
    assert_eq!(audit_count(store.as_ref()).await, 3);
}

pub async fn an_invalid_definition_is_refused_with_its_problems_and_nothing_is_written(
    store: Arc<dyn AdminStore>,
) {
    let fields = FlagSetFields {
        metadata: Default::default(),
        evaluators: json!({"staff": {"ends_with": [{"var": "email"}, "@example.com"]}})
            .as_object()
            .unwrap()
            .clone(),
    };
    store
        .create_flag_set("default", fields, "ada")
        .await
        .unwrap();
    let good = json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": "off",
        "targeting": {"if": [{"$ref": "staff"}, "on"]},
    });
    store
        .create_flag("default", "banner", good.clone(), None, "ada")
        .await
        .unwrap();
    let before = store.snapshot("default").await.unwrap();
    let audited = audit_count(store.as_ref()).await;

    let bad = json!({
        "state": "SOMETIMES",
        "variants": {"on": true, "off": false},
        "defaultVariant": "maybe",
        "targeting": {"if": [{"no_such_op": [1]}, "on"]},
    });
    let problems = match store
        .update_flag("default", "banner", bad.clone(), 1, "grace")
        .await
    {
        Err(StoreError::Invalid { problems }) => problems,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "flags.banner.state",
        "flags.banner.defaultVariant",
        "flags.banner.targeting.if[0]",
    ] {
        assert!(
            paths.contains(&expected),
            "no problem at {expected}: {problems:?}"
        );
    }

    let refused_create = store
        .create_flag("default", "other", bad.clone(), None, "grace")
        .await;
    assert!(matches!(refused_create, Err(StoreError::Invalid { .. })));

    // A set-level change is checked against the flags it would break.
    let without_staff = store
        .update_flag_set("default", FlagSetFields::default(), 2, "grace")
        .await;
    match without_staff {
        Err(StoreError::Invalid { problems }) => {
            assert!(
                problems
                    .iter()
                    .any(|p| p.path.starts_with("flags.banner.targeting")),
                "{problems:?}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    let empty_key = store.create_flag("default", "", good, None, "grace").await;
    assert!(matches!(empty_key, Err(StoreError::Invalid { .. })));

    assert_eq!(store.snapshot("default").await.unwrap(), before);
    assert_eq!(audit_count(store.as_ref()).await, audited);
}

pub async fn every_write_is_audited_with_who_when_before_and_after(store: Arc<dyn AdminStore>) {
    let start = Utc::now() - chrono::Duration::seconds(5);
    store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    store
        .create_flag_set("other", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    store
        .create_flag("default", "banner", flag("off"), None, "grace")
        .await
        .unwrap();
    store
        .update_flag("default", "banner", flag("on"), 1, "linus")
        .await
        .unwrap();
    store
        .delete_flag("default", "banner", 2, "margaret")
        .await
        .unwrap();
    let end = Utc::now() + chrono::Duration::seconds(5);

    let log = store
        .list_audit(Some("default"), None, None, 10)
        .await
        .unwrap();
    let summary: Vec<(AuditAction, Option<&str>, &str, i64)> = log
        .iter()
        .map(|e| {
            (
                e.action,
                e.flag_key.as_deref(),
                e.actor.as_str(),
                e.flag_set_version,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (AuditAction::Delete, Some("banner"), "margaret", 4),
            (AuditAction::Update, Some("banner"), "linus", 3),
            (AuditAction::Create, Some("banner"), "grace", 2),
            (AuditAction::Create, None, "ada", 1),
        ]
    );
    assert!(
        log.iter()
            .all(|e| e.at >= start && e.at <= end && e.flag_set_id == "default")
    );
    assert!(
        log.windows(2)
            .all(|w| w[0].id > w[1].id && w[0].at >= w[1].at)
    );
    assert_eq!(log[0].before, Some(flag("on")));
    assert_eq!(log[0].after, None);
    assert_eq!(log[1].before, Some(flag("off")));
    assert_eq!(log[1].after, Some(flag("on")));
    assert_eq!(log[2].before, None);
    assert_eq!(log[2].after, Some(flag("off")));
    assert_eq!(
        log[3].after,
        Some(json!({"metadata": {}, "$evaluators": {}}))
    );

    // Pages: newest first, cut by the last id seen.
    let first = store
        .list_audit(Some("default"), None, None, 2)
        .await
        .unwrap();
    let second = store
        .list_audit(Some("default"), None, Some(first[1].id), 2)
        .await
        .unwrap();
    assert_eq!([first, second].concat(), log);
    assert_eq!(
        store.list_audit(None, None, None, 10).await.unwrap().len(),
        5
    );
    let banner = store
        .list_audit(Some("default"), Some("banner"), None, 10)
        .await
        .unwrap();
    assert_eq!(banner, log[..3]);
    assert_eq!(
        store
            .list_audit(Some("other"), None, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Deleting a set keeps its whole document in the log.
    store
        .create_flag("other", "x", flag("on"), None, "ada")
        .await
        .unwrap();
    store.delete_flag_set("other", 2, "ada").await.unwrap();
    let last = &store
        .list_audit(Some("other"), None, None, 1)
        .await
        .unwrap()[0];
    assert_eq!(last.action, AuditAction::Delete);
    assert_eq!(
        last.before,
        Some(json!({"flags": {"x": flag("on")}, "$evaluators": {}, "metadata": {}}))
    );
}

pub async fn a_change_written_by_another_store_is_notified(
    listener: Arc<dyn AdminStore>,
    writer: Arc<dyn AdminStore>,
) {
    let mut changes = listener.subscribe().await.unwrap();

    writer
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    writer
        .create_flag("default", "banner", flag("off"), None, "ada")
        .await
        .unwrap();
    // A refused write notifies nothing: the next notice is the delete's.
    let _ = writer
        .update_flag("default", "banner", flag("off"), 9, "ada")
        .await
        .unwrap_err();
    writer.delete_flag_set("default", 2, "ada").await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(match next_notice(&mut changes).await {
            ChangeNotice::Changed {
                flag_set, version, ..
            } => (flag_set, version, false),
            ChangeNotice::Deleted {
                flag_set, version, ..
            } => (flag_set, version, true),
            ChangeNotice::Resync => panic!("unexpected resync"),
        });
    }
    assert_eq!(
        seen,
        vec![
            ("default".to_owned(), 1, false),
            ("default".to_owned(), 2, false),
            ("default".to_owned(), 3, true),
        ]
    );
}

/// A batch (`apply_flag_changes`) is one new version of its set with an audit entry per flag; a
/// refused batch, whichever change refuses it, writes nothing.
pub async fn a_batch_is_one_version_and_a_refused_one_writes_nothing(store: Arc<dyn AdminStore>) {
    use bunting_stores::{FlagBatch, FlagChange};
    let create = |key: &str, definition: Value| FlagChange::Create {
        key: key.into(),
        definition,
    };
    let update = |key: &str, definition: Value, expected_version: i64| FlagChange::Update {
        key: key.into(),
        definition,
        expected_version,
    };
    let delete = |key: &str, expected_version: i64| FlagChange::Delete {
        key: key.into(),
        expected_version,
    };
    let batch = |changes: Vec<FlagChange>| FlagBatch {
        changes,
        ..FlagBatch::default()
    };
    store
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    store
        .create_flag("default", "banner", flag("off"), None, "ada")
        .await
        .unwrap();

    let applied = store
        .apply_flag_changes(
            "default",
            batch(vec![
                create("a", flag("on")),
                update("banner", flag("on"), 1),
            ]),
            "grace",
        )
        .await
        .unwrap();
    assert_eq!(applied.flag_set_version, 3);
    assert_eq!(
        applied
            .written
            .iter()
            .map(|r| (r.key.as_str(), r.version, r.flag_set_version))
            .collect::<Vec<_>>(),
        vec![("a", 1, 3), ("banner", 2, 3)]
    );
    let log = store
        .list_audit(Some("default"), None, None, 10)
        .await
        .unwrap();
    let mut newest: Vec<(Option<&str>, AuditAction, i64, &str)> = log[..2]
        .iter()
        .map(|e| {
            (
                e.flag_key.as_deref(),
                e.action,
                e.flag_set_version,
                e.actor.as_str(),
            )
        })
        .collect();
    newest.sort_by_key(|row| row.0);
    assert_eq!(
        newest,
        vec![
            (Some("a"), AuditAction::Create, 3, "grace"),
            (Some("banner"), AuditAction::Update, 3, "grace"),
        ]
    );

    let before = store.snapshot("default").await.unwrap();
    let audited = audit_count(store.as_ref()).await;
    let broken = json!({"state": "SOMETIMES", "variants": {"on": true}, "defaultVariant": "on"});
    let refused: Vec<(&str, FlagBatch)> = vec![
        (
            "a stale update",
            batch(vec![
                create("b", flag("on")),
                update("banner", flag("off"), 1),
            ]),
        ),
        (
            "a create of a live flag",
            batch(vec![create("a", flag("off"))]),
        ),
        (
            "a delete of a missing flag",
            batch(vec![delete("ghost", 1)]),
        ),
        (
            "a definition that does not compile",
            batch(vec![create("c", broken)]),
        ),
        (
            "one key twice",
            batch(vec![create("d", flag("on")), delete("d", 1)]),
        ),
        ("no changes", batch(vec![])),
        (
            "a stale set version",
            FlagBatch {
                changes: vec![create("e", flag("on"))],
                expected_flag_set_version: Some(2),
                create_flag_set: None,
            },
        ),
        (
            "a missing set",
            FlagBatch {
                changes: vec![create("e", flag("on"))],
                ..FlagBatch::default()
            },
        ),
    ];
    for (what, refused_batch) in refused {
        let set = if what == "a missing set" {
            "nope"
        } else {
            "default"
        };
        let outcome = store
            .apply_flag_changes(set, refused_batch, "mallory")
            .await;
        assert!(outcome.is_err(), "{what}: applied {outcome:?}");
        assert_eq!(store.snapshot("default").await.unwrap(), before, "{what}");
        assert_eq!(audit_count(store.as_ref()).await, audited, "{what}");
    }
    assert!(matches!(
        store.get_flag_set("nope").await,
        Err(StoreError::NotFound { .. })
    ));

    // A first push creates its set in the same version as its flags.
    let fresh = store
        .apply_flag_changes(
            "fresh",
            FlagBatch {
                changes: vec![create("x", flag("on")), create("y", flag("off"))],
                expected_flag_set_version: Some(0),
                create_flag_set: Some(FlagSetFields::default()),
            },
            "ada",
        )
        .await
        .unwrap();
    assert!(fresh.created_flag_set);
    assert_eq!(fresh.flag_set_version, 1);
    assert_eq!(store.list_flags("fresh").await.unwrap().flags.len(), 2);

    let deleted = store
        .apply_flag_changes("default", batch(vec![delete("a", 1)]), "ada")
        .await
        .unwrap();
    assert_eq!(
        (deleted.flag_set_version, deleted.deleted),
        (4, vec!["a".to_owned()])
    );
    assert!(matches!(
        store.get_flag("default", "a").await,
        Err(StoreError::NotFound { .. })
    ));
}
