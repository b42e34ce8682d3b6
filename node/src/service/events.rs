//! Server-streaming updates shared by flagd's EventStream (both versions) and the sync
//! protocol's SyncFlags: each stream is a task that watches the node's catalog.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bunting_actors::Catalog;
use futures_core::Stream;
use prost_types::Struct;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::evaluator::Evaluator;

/// flagd providers expect a keep-alive at least this often on an idle event stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Messages buffered per stream. A slow client back-pressures its own task only; the catalog
/// watch coalesces changes meanwhile, so nothing grows without bound.
const STREAM_BUFFER: usize = 16;

/// flagd's event stream: `provider_ready` first, then `configuration_change` with the changed
/// flag keys whenever the selected set changes, and `keep_alive` when idle. Refused with
/// RESOURCE_EXHAUSTED when the node has `max_streams` open; `kind` labels it in the metrics.
pub fn stream<T, F>(
    evaluator: &Evaluator,
    kind: &'static str,
    set: Option<Arc<str>>,
    make: F,
) -> Result<impl Stream<Item = Result<T, Status>> + Send + 'static, Status>
where
    T: Send + 'static,
    F: Fn(&str, Struct) -> T + Send + 'static,
{
    let slot = evaluator.gate().open_stream(kind)?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let mut catalog = evaluator.node().watch();
    let mut closing = evaluator.closing.clone();
    let set: Arc<str> =
        set.unwrap_or_else(|| evaluator.node().config().default_set.as_str().into());
    tokio::spawn(async move {
        // The stream's slot is given back when this task ends, whatever ends it.
        let _slot = slot;
        let mut previous = catalog.borrow_and_update().clone();
        if tx
            .send(Ok(make("provider_ready", Struct::default())))
            .await
            .is_err()
        {
            return;
        }
        let mut keep_alive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            let message = tokio::select! {
                changed = catalog.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let current = catalog.borrow_and_update().clone();
                    let changes = changed_flags(&previous, &current, &set);
                    previous = current;
                    if changes.is_empty() {
                        continue;
                    }
                    record_propagation("event_stream", &previous);
                    let data = json!({"flags": changes});
                    make("configuration_change", to_struct(&data))
                }
                _ = keep_alive.tick() => make("keep_alive", Struct::default()),
                () = crate::closing::closed(&mut closing) => break,
                () = tx.closed() => break,
            };
            if tx.send(Ok(message)).await.is_err() {
                break;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// The flags of `set` that differ between two catalogs, as flagd reports them:
/// `{key: {"type": "write" | "update" | "delete", "flagKey": key}}`.
pub fn changed_flags(before: &Catalog, after: &Catalog, set: &str) -> Map<String, Value> {
    // Borrowed, not cloned: every open stream runs this on every change, and a large set's
    // definitions are megabytes.
    let none = Map::new();
    fn flags_of<'c>(c: &'c Catalog, set: &str) -> Option<&'c Map<String, Value>> {
        c.get(set)?.document().get("flags")?.as_object()
    }
    let (old, new) = (
        flags_of(before, set).unwrap_or(&none),
        flags_of(after, set).unwrap_or(&none),
    );
    let mut changes = Map::new();
    let mut note = |key: &str, kind: &str| {
        changes.insert(key.to_owned(), json!({"type": kind, "flagKey": key}));
    };
    for (key, definition) in new {
        match old.get(key) {
            None => note(key, "write"),
            Some(before) if before != definition => note(key, "update"),
            Some(_) => {}
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        note(key, "delete");
    }
    changes
}

/// Time from the change's commit at its source to this stream sending it.
pub fn record_propagation(stream: &'static str, catalog: &Catalog) {
    if let Some(age) = catalog
        .changed_at()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
    {
        metrics::histogram!("bunting_change_propagation_seconds", "stream" => stream)
            .record(age.as_secs_f64());
    }
}

pub fn to_struct(value: &Value) -> Struct {
    match value {
        Value::Object(map) => bunting_proto::json::json_to_struct(map).unwrap_or_default(),
        _ => Struct::default(),
    }
}
