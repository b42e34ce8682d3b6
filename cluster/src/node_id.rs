//! A node's name in the cluster.

use std::fmt;
use std::str::FromStr;

/// The longest node id accepted: ids travel in every heartbeat and label every metric.
pub const MAX_NODE_ID_LEN: usize = 64;

/// A node's cluster-wide name: 1 to 64 characters of `[A-Za-z0-9._-]`.
///
/// The ordering is byte order of the name; the coordinator is the live member with the smallest id.
/// The character set leaves out `@` and `/`, which ractor_cluster's peer names
/// (`<id>@<host>`) and Bunting's process-group names (`member/<id>/<incarnation>`) use as
/// separators.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("node id is empty")]
    Empty,
    #[error("node id {0:?} is longer than {MAX_NODE_ID_LEN} characters")]
    TooLong(String),
    #[error("node id {id:?} contains {bad:?}; allowed are A-Z, a-z, 0-9, '.', '_' and '-'")]
    BadChar { id: String, bad: char },
}

impl NodeId {
    pub fn new(id: impl Into<String>) -> Result<NodeId, NodeIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(NodeIdError::TooLong(id));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NodeIdError::BadChar { id, bad });
        }
        Ok(NodeId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<NodeId, NodeIdError> {
        NodeId::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "node-1", "eu_west.3", &"x".repeat(MAX_NODE_ID_LEN)] {
            assert_eq!(NodeId::new(ok).map(|id| id.to_string()), Ok(ok.to_string()));
        }
    }

    #[test]
    fn refuses_what_would_break_peer_or_group_names() {
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
        assert!(matches!(
            NodeId::new("x".repeat(65)),
            Err(NodeIdError::TooLong(_))
        ));
        for (bad, c) in [("a@b", '@'), ("a/b", '/'), ("a b", ' '), ("né", 'é')] {
            assert_eq!(
                NodeId::new(bad),
                Err(NodeIdError::BadChar {
                    id: bad.to_string(),
                    bad: c
                })
            );
        }
    }

    #[test]
    fn orders_by_bytes() {
        let mut ids: Vec<NodeId> = ["b", "a-2", "a", "B"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        ids.sort();
        let names: Vec<&str> = ids.iter().map(NodeId::as_str).collect();
        assert_eq!(names, ["B", "a", "a-2", "b"]);
    }
}
