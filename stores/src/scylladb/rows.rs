//! A shard's flush as rows of `shard_totals` and back, without a database: one row per arm.

use std::collections::BTreeMap;

use bunting_experiments::aggregate::{ArmTotals, ExperimentTotals, MetricTotals};
use bunting_experiments::model::{ExperimentId, MetricName};
use bunting_experiments::store::{EventStoreError, ShardFlush};

/// The values bound to [`super::schema::insert_arm`], in marker order: experiment, shard, arm,
/// seq, exposed, metrics (JSON), and the write timestamp (the seq again).
pub(crate) type InsertRow = (String, i64, String, i64, i64, String, i64);

/// A row as the selects return it: shard, arm, seq, exposed, metrics (JSON).
pub(crate) type StoredRow = (i64, String, i64, i64, String);

/// The rows that store `flush`. A flush without arms has none: it stands for totals with no
/// arms, which is also what an absent shard reads as.
pub(crate) fn insert_rows(flush: &ShardFlush) -> Result<Vec<InsertRow>, EventStoreError> {
    let invalid = |what: &str, value: u64| {
        EventStoreError::Invalid(format!(
            "experiment {} shard {}: {what} {value} exceeds a CQL bigint",
            flush.experiment, flush.shard
        ))
    };
    // A CQL write timestamp is a signed 64-bit number; a seq drawn from the clock in µs is far
    // below its limit, so only a broken caller gets here.
    let seq = i64::try_from(flush.seq).map_err(|_| invalid("seq", flush.seq))?;
    flush
        .totals
        .arms
        .iter()
        .map(|(arm, totals)| {
            let exposed =
                i64::try_from(totals.exposed).map_err(|_| invalid("exposed", totals.exposed))?;
            let metrics = serde_json::to_string(&totals.metrics).map_err(|e| {
                EventStoreError::Invalid(format!(
                    "experiment {} shard {} arm {arm:?}: metrics cannot be encoded: {e}",
                    flush.experiment, flush.shard
                ))
            })?;
            Ok((
                flush.experiment.as_str().to_owned(),
                i64::from(flush.shard),
                arm.clone(),
                seq,
                exposed,
                metrics,
                seq,
            ))
        })
        .collect()
}

/// Every shard's flush from an experiment's rows.
///
/// Per shard only the rows carrying the shard's largest seq are taken. Cumulative totals never
/// lose an arm, so a newer flush rewrites every row an older one wrote; a row with a smaller seq
/// can only be a leftover, such as an arm carried by a late older flush that the newest one does
/// not have, and counting it would mix two flushes.
pub(crate) fn flushes_from_rows(
    experiment: &ExperimentId,
    rows: impl IntoIterator<Item = StoredRow>,
) -> Result<BTreeMap<u32, ShardFlush>, EventStoreError> {
    let corrupt = |problem: String| EventStoreError::Corrupt {
        experiment: experiment.clone(),
        problem,
    };
    let mut shards: BTreeMap<u32, ShardFlush> = BTreeMap::new();
    for (shard, arm, seq, exposed, metrics) in rows {
        let shard =
            u32::try_from(shard).map_err(|_| corrupt(format!("shard {shard} is not a u32")))?;
        let seq = u64::try_from(seq)
            .map_err(|_| corrupt(format!("shard {shard} arm {arm:?}: seq {seq} is negative")))?;
        let exposed = u64::try_from(exposed).map_err(|_| {
            corrupt(format!(
                "shard {shard} arm {arm:?}: exposed {exposed} is negative"
            ))
        })?;
        let metrics: BTreeMap<MetricName, MetricTotals> = serde_json::from_str(&metrics)
            .map_err(|e| corrupt(format!("shard {shard} arm {arm:?}: metrics: {e}")))?;
        let entry = shards.entry(shard).or_insert_with(|| ShardFlush {
            experiment: experiment.clone(),
            shard,
            seq,
            totals: ExperimentTotals::default(),
        });
        if seq > entry.seq {
            entry.seq = seq;
            entry.totals = ExperimentTotals::default();
        }
        if seq == entry.seq {
            entry
                .totals
                .arms
                .insert(arm, ArmTotals { exposed, metrics });
        }
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ExperimentId {
        ExperimentId::new("e").unwrap()
    }

    fn totals(arms: &[(&str, u64)]) -> ExperimentTotals {
        let mut t = ExperimentTotals::default();
        for (arm, exposed) in arms {
            let a = t.arms.entry((*arm).to_owned()).or_default();
            a.exposed = *exposed;
            a.metrics.insert(
                MetricName::new("revenue").unwrap(),
                MetricTotals {
                    converted: 1,
                    sum: 0.1 + *exposed as f64,
                    sum_squares: 1e-300,
                },
            );
        }
        t
    }

    fn stored(rows: Vec<InsertRow>) -> Vec<StoredRow> {
        rows.into_iter()
            .map(|(_, shard, arm, seq, exposed, metrics, _)| (shard, arm, seq, exposed, metrics))
            .collect()
    }

    #[test]
    fn a_flush_round_trips_through_its_rows() {
        let flush = ShardFlush {
            experiment: id(),
            shard: u32::MAX,
            seq: 1_700_000_000_000_000,
            totals: totals(&[("a", 3), ("b", 4)]),
        };
        let rows = insert_rows(&flush).unwrap();
        assert_eq!(rows.len(), 2);
        for row in &rows {
            assert_eq!(row.0, "e");
            assert_eq!(row.1, i64::from(u32::MAX));
            assert_eq!(
                (row.3, row.6),
                (1_700_000_000_000_000, 1_700_000_000_000_000)
            );
        }
        let back = flushes_from_rows(&id(), stored(rows)).unwrap();
        assert_eq!(back.into_values().collect::<Vec<_>>(), vec![flush]);
    }

    #[test]
    fn only_the_rows_of_a_shards_largest_seq_count() {
        let older = ShardFlush {
            experiment: id(),
            shard: 1,
            seq: 5,
            totals: totals(&[("a", 9), ("stale", 2)]),
        };
        let newer = ShardFlush {
            seq: 6,
            totals: totals(&[("a", 10)]),
            ..older.clone()
        };
        let other = ShardFlush {
            shard: 2,
            ..older.clone()
        };
        // Rows in any order: the older flush's extra arm must not join the newer flush.
        let mut rows = stored(insert_rows(&newer).unwrap());
        rows.extend(stored(insert_rows(&older).unwrap()));
        rows.extend(stored(insert_rows(&other).unwrap()));
        rows.reverse();
        let back = flushes_from_rows(&id(), rows).unwrap();
        assert_eq!(back.get(&1), Some(&newer));
        assert_eq!(back.get(&2), Some(&other));
    }

    #[test]
    fn values_a_bigint_cannot_hold_are_refused() {
        let flush = ShardFlush {
            experiment: id(),
            shard: 0,
            seq: u64::MAX,
            totals: totals(&[("a", 1)]),
        };
        assert!(matches!(
            insert_rows(&flush),
            Err(EventStoreError::Invalid(m)) if m.contains("seq")
        ));
        assert!(
            insert_rows(&ShardFlush {
                seq: 1,
                totals: ExperimentTotals::default(),
                ..flush
            })
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn bad_rows_are_corrupt_and_name_the_experiment() {
        for row in [
            (-1, "a".to_owned(), 1, 1, "{}".to_owned()),
            (0, "a".to_owned(), -1, 1, "{}".to_owned()),
            (0, "a".to_owned(), 1, -1, "{}".to_owned()),
            (0, "a".to_owned(), 1, 1, "{not json".to_owned()),
            (0, "a".to_owned(), 1, 1, r#"{"bad name":{}}"#.to_owned()),
        ] {
            let result = flushes_from_rows(&id(), [row.clone()]);
            assert!(
                matches!(&result, Err(EventStoreError::Corrupt { experiment, .. }) if experiment == &id()),
                "{row:?}: {result:?}"
            );
        }
    }
}
