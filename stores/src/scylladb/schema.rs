//! The CQL the store sends: the schema from `migrations/scylla/` with the keyspace and replication
//! filled in, and the statements it prepares.

use bunting_experiments::store::EventStoreError;

/// The migrations, in order. Each runs on every connect; all are idempotent (`IF NOT EXISTS`).
const MIGRATIONS: &[&str] = &[include_str!(
    "../../../migrations/scylla/001_shard_totals.cql"
)];

/// The table every statement reads or writes, inside the configured keyspace.
pub(crate) const TABLE: &str = "shard_totals";

/// A keyspace name as CQL takes it unquoted: a letter, then letters, digits or underscores, 48
/// characters at most. Checked once here because it is spliced into every statement's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace(String);

impl Keyspace {
    pub fn new(name: impl Into<String>) -> Result<Keyspace, EventStoreError> {
        let name = name.into();
        let mut bytes = name.bytes();
        let ok = name.len() <= 48
            && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(Keyspace(name))
        } else {
            Err(EventStoreError::Invalid(format!(
                "keyspace {name:?} is not a valid CQL name (a letter, then up to 47 letters, digits or underscores)"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The schema statements for `keyspace`, in the order they must run.
pub(crate) fn schema_statements(keyspace: &Keyspace, replication_factor: u16) -> Vec<String> {
    MIGRATIONS
        .iter()
        .flat_map(|migration| split_statements(migration))
        .map(|statement| {
            statement
                .replace("${keyspace}", keyspace.as_str())
                .replace("${replication_factor}", &replication_factor.to_string())
        })
        .collect()
}

/// A migration's statements: whole-line `--` comments dropped, split at semicolons.
fn split_statements(migration: &str) -> Vec<String> {
    let code: String = migration
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .map(|line| format!("{line}\n"))
        .collect();
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One arm's row of one shard's flush. `USING TIMESTAMP` makes the flush's seq the write time of
/// every cell, so Scylla's last-write-wins keeps the largest seq whatever order the writes (or
/// their retries) arrive in. Bound: experiment, shard, arm, seq, exposed, metrics, timestamp.
pub(crate) fn insert_arm(keyspace: &Keyspace) -> String {
    format!(
        "INSERT INTO {}.{TABLE} (experiment, shard, arm, seq, exposed, metrics) \
         VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
        keyspace.as_str()
    )
}

/// Every row of an experiment: one partition.
pub(crate) fn select_experiment(keyspace: &Keyspace) -> String {
    format!(
        "SELECT shard, arm, seq, exposed, metrics FROM {}.{TABLE} WHERE experiment = ?",
        keyspace.as_str()
    )
}

/// The rows of one shard of an experiment.
pub(crate) fn select_shard(keyspace: &Keyspace) -> String {
    format!(
        "SELECT shard, arm, seq, exposed, metrics FROM {}.{TABLE} WHERE experiment = ? AND shard = ?",
        keyspace.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names_are_checked() {
        for good in ["bunting", "b", "Events_2", &"k".repeat(48)] {
            assert!(Keyspace::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "2x",
            "_x",
            "a-b",
            "a.b",
            "a b",
            "x;DROP",
            &"k".repeat(49),
        ] {
            assert!(Keyspace::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_migration_becomes_two_filled_in_statements() {
        let statements = schema_statements(&Keyspace::new("ev").unwrap(), 3);
        assert_eq!(statements.len(), 2, "{statements:#?}");
        assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS ev"));
        assert!(statements[0].contains("'replication_factor': 3}"));
        assert!(statements[1].starts_with("CREATE TABLE IF NOT EXISTS ev.shard_totals ("));
        assert!(statements[1].contains("PRIMARY KEY ((experiment), shard, arm)"));
        for s in &statements {
            assert!(!s.contains("${") && !s.contains("--"), "{s}");
        }
    }

    #[test]
    fn statements_name_the_keyspace_and_the_timestamp() {
        let ks = Keyspace::new("ev").unwrap();
        assert_eq!(
            insert_arm(&ks),
            "INSERT INTO ev.shard_totals (experiment, shard, arm, seq, exposed, metrics) \
             VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
        );
        assert!(select_shard(&ks).ends_with("WHERE experiment = ? AND shard = ?"));
        assert!(select_experiment(&ks).ends_with("FROM ev.shard_totals WHERE experiment = ?"));
    }
}
