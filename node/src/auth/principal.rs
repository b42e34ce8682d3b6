//! Who is calling: a token's (or a client certificate's) name, scopes, flag sets and expiry, as
//! the layer puts it in each request's extensions ([`Caller`]), and the checks services make
//! with it.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::scope::{Scope, Scopes};
use super::token::TokenId;

/// The flag sets a token may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagSets {
    All,
    /// These sets only; never empty (a token that may touch no set is refused at creation).
    Only(BTreeSet<String>),
}

impl FlagSets {
    pub fn allows(&self, set: &str) -> bool {
        match self {
            FlagSets::All => true,
            FlagSets::Only(sets) => sets.contains(set),
        }
    }

    /// Every set `other` allows, `self` allows too.
    pub fn covers(&self, other: &FlagSets) -> bool {
        match (self, other) {
            (FlagSets::All, _) => true,
            (FlagSets::Only(_), FlagSets::All) => false,
            (FlagSets::Only(mine), FlagSets::Only(theirs)) => theirs.is_subset(mine),
        }
    }

    /// From a stored list: `None` (SQL NULL, JSON null) is every set.
    pub fn from_list(list: Option<Vec<String>>) -> FlagSets {
        match list {
            None => FlagSets::All,
            Some(sets) => FlagSets::Only(sets.into_iter().collect()),
        }
    }

    pub fn to_list(&self) -> Option<Vec<String>> {
        match self {
            FlagSets::All => None,
            FlagSets::Only(sets) => Some(sets.iter().cloned().collect()),
        }
    }
}

/// What authenticated a principal: an API token (by its public id) or a verified client
/// certificate (by its subject, `[[auth.certificates]]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PrincipalId {
    Token(TokenId),
    Certificate(Arc<str>),
}

impl PrincipalId {
    pub fn token(&self) -> Option<&TokenId> {
        match self {
            PrincipalId::Token(id) => Some(id),
            PrincipalId::Certificate(_) => None,
        }
    }
}

impl fmt::Display for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrincipalId::Token(id) => write!(f, "token {id}"),
            PrincipalId::Certificate(subject) => write!(f, "certificate {subject}"),
        }
    }
}

/// An authenticated caller's identity and rights: a token's, or a mapped client certificate's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: PrincipalId,
    /// The name the audit log records.
    pub name: String,
    pub scopes: Scopes,
    pub flag_sets: FlagSets,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Principal {
    /// How refusals and logs name the caller: `token <id> (<name>)`, or `certificate <subject>`
    /// (never a secret: a token's id is public).
    pub fn describe(&self) -> String {
        match &self.id {
            PrincipalId::Token(id) => format!("token {id} ({})", self.name),
            PrincipalId::Certificate(_) => self.id.to_string(),
        }
    }

    pub fn expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether this principal may hand out a token with `scopes` on `flag_sets`: never more than
    /// it holds itself, so a tokens:admin token limited to one set cannot mint a wider one.
    pub fn may_grant(&self, scopes: Scopes, flag_sets: &FlagSets) -> bool {
        self.scopes.covers(scopes) && self.flag_sets.covers(flag_sets)
    }
}

/// What the layer knows of a request's caller, in its extensions.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No token (and no mapped certificate), on a method the operator opened (`[auth] open_*`):
    /// no flag-set limits.
    Anonymous,
    /// A token's or a mapped client certificate's principal.
    Authenticated(Arc<Principal>),
}

impl Caller {
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Caller::Anonymous => None,
            Caller::Authenticated(p) => Some(p),
        }
    }

    pub fn allows_set(&self, set: &str) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Authenticated(p) => p.flag_sets.allows(set),
        }
    }

    /// Whether the caller may touch every set (a request that names none means all of them).
    pub fn allows_all_sets(&self) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Authenticated(p) => p.flag_sets == FlagSets::All,
        }
    }

    pub fn has(&self, scope: Scope) -> bool {
        match self {
            Caller::Anonymous => false,
            Caller::Authenticated(p) => p.scopes.contains(scope),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(sets: &[&str]) -> FlagSets {
        FlagSets::Only(sets.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn flag_set_access_as_a_table() {
        let cases: &[(FlagSets, &str, bool)] = &[
            (FlagSets::All, "shop", true),
            (only(&["shop"]), "shop", true),
            (only(&["shop"]), "billing", false),
            (only(&["shop", "billing"]), "billing", true),
            (only(&["shop"]), "", false),
            (only(&["shop"]), "Shop", false),
        ];
        for (sets, set, allowed) in cases {
            assert_eq!(sets.allows(set), *allowed, "{sets:?} {set}");
        }
        let covers: &[(FlagSets, FlagSets, bool)] = &[
            (FlagSets::All, FlagSets::All, true),
            (FlagSets::All, only(&["a"]), true),
            (only(&["a"]), FlagSets::All, false),
            (only(&["a", "b"]), only(&["a"]), true),
            (only(&["a"]), only(&["a", "b"]), false),
        ];
        for (mine, theirs, expected) in covers {
            assert_eq!(mine.covers(theirs), *expected, "{mine:?} {theirs:?}");
        }
        assert_eq!(FlagSets::from_list(None), FlagSets::All);
        assert_eq!(
            only(&["b", "a"]).to_list(),
            Some(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn expiry_and_grants() {
        let now = Utc::now();
        let principal = |expires_at| Principal {
            id: PrincipalId::Token(TokenId::parse("00000000000000aa").unwrap()),
            name: "ci".into(),
            scopes: Scopes::parse(["tokens:admin", "evaluate"]).unwrap(),
            flag_sets: only(&["shop"]),
            expires_at,
        };
        let hour = chrono::Duration::hours(1);
        for (expires, expired) in [
            (None, false),
            (Some(now + hour), false),
            (Some(now), true),
            (Some(now - hour), true),
        ] {
            assert_eq!(principal(expires).expired_at(now), expired, "{expires:?}");
        }
        let p = principal(None);
        let evaluate = Scopes::parse(["evaluate"]).unwrap();
        assert!(p.may_grant(evaluate, &only(&["shop"])));
        assert!(!p.may_grant(evaluate, &FlagSets::All));
        assert!(!p.may_grant(Scopes::all(), &only(&["shop"])));
        let caller = Caller::Authenticated(Arc::new(p));
        assert!(caller.allows_set("shop") && !caller.allows_set("billing"));
        assert!(!caller.allows_all_sets());
        assert!(Caller::Anonymous.allows_all_sets());
        assert!(!Caller::Anonymous.has(Scope::Evaluate));
    }
}
