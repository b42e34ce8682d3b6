//! Console sessions: after a sign-in with an API token, the browser holds a random 256-bit
//! session id in a cookie, never the token. The table is in memory, bounded (the oldest session
//! is evicted when it is full), and each session expires after a time without use and after an
//! absolute lifetime, whichever comes first. A session remembers only the token's public id: the
//! token's principal is read from the registry on every request, so revoking or expiring a token
//! ends its sessions at once.
//!
//! Each session has its own CSRF token, sent in a hidden field with every state-changing form
//! and compared in constant time ([`csrf_matches`]). Sessions are this node's own: behind a load
//! balancer, a console user needs a sticky route to one node (or signs in again).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::TokenId;

/// Bytes of a session id and of a CSRF token: 256 bits each.
const ID_BYTES: usize = 32;

/// The cookie the session id travels in.
pub const COOKIE: &str = "bunting_session";

/// The cookie the sign-in form's own CSRF token travels in (`Path=/ui/sign-in`): a sign-in post
/// must carry the same value in its form, which another site's form cannot, since a
/// `SameSite=Strict` cookie is not sent with it. Without it, another site could sign a browser in
/// with the other site's token, and the user's changes would be made, and audited, as that token.
pub const SIGN_IN_COOKIE: &str = "bunting_sign_in";

/// A fresh 256-bit token in hex (the sign-in form's CSRF token).
pub fn new_token() -> Result<String, RandomError> {
    random().map(hex::encode)
}

/// How long sessions last and how many there may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub capacity: usize,
    pub idle: Duration,
    pub absolute: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            capacity: 10_000,
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 60 * 60),
        }
    }
}

/// The OS's random source failed: no session can be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the OS's random source for a session id: {0}")]
pub struct RandomError(String);

#[derive(Debug)]
struct Session {
    token: TokenId,
    csrf: [u8; ID_BYTES],
    created: Instant,
    used: Instant,
    /// A token secret just created in this session, kept until the one page that shows it.
    secret: Option<Secret>,
}

/// A token secret waiting for its one showing; its `Debug` never prints it.
pub struct Secret(String);

impl Secret {
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A session as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub token: TokenId,
    /// The CSRF token as the forms carry it (hex).
    pub csrf: String,
}

/// A new session: the cookie's value and the CSRF token, both hex.
#[derive(Debug)]
pub struct Created {
    pub cookie: String,
    pub csrf: String,
}

/// Every signed-in browser of this node. Keyed by the SHA-256 of the id, so looking a cookie up
/// does not compare the secret id itself byte by byte.
#[derive(Debug)]
pub struct Sessions {
    limits: Limits,
    table: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub fn new(limits: Limits) -> Sessions {
        Sessions {
            limits,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// A new session for `token`.
    pub fn create(&self, token: TokenId, now: Instant) -> Result<Created, RandomError> {
        let id = random()?;
        let csrf = random()?;
        let mut table = self.lock();
        if table.len() >= self.limits.capacity {
            table.retain(|_, s| !self.expired(s, now));
        }
        while table.len() >= self.limits.capacity.max(1) {
            let oldest = table
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(key, _)| *key);
            match oldest {
                Some(key) => table.remove(&key),
                None => break,
            };
        }
        table.insert(
            key(&id),
            Session {
                token,
                csrf,
                created: now,
                used: now,
                secret: None,
            },
        );
        Ok(Created {
            cookie: hex::encode(id),
            csrf: hex::encode(csrf),
        })
    }

    /// The live session the cookie value `id` names (and marks it used), or `None`: unknown,
    /// malformed, or expired (then removed).
    pub fn get(&self, id: &str, now: Instant) -> Option<Current> {
        let id = decode(id)?;
        let mut table = self.lock();
        let k = key(&id);
        let session = table.get_mut(&k)?;
        if self.expired(session, now) {
            table.remove(&k);
            return None;
        }
        session.used = now;
        Some(Current {
            token: session.token.clone(),
            csrf: hex::encode(session.csrf),
        })
    }

    /// Keeps `secret` in the session `id` names until [`Sessions::take_secret`] (a newer one
    /// replaces it): the create form redirects to a page that shows it, so a reload of that page
    /// neither shows it again nor posts the form again.
    pub fn hold_secret(&self, id: &str, secret: String) {
        if let Some(id) = decode(id)
            && let Some(session) = self.lock().get_mut(&key(&id))
        {
            session.secret = Some(Secret(secret));
        }
    }

    /// The secret the session `id` names holds, removed: a second call answers `None`.
    pub fn take_secret(&self, id: &str) -> Option<Secret> {
        let id = decode(id)?;
        self.lock().get_mut(&key(&id))?.secret.take()
    }

    /// Ends the session `id` names (sign-out), if it exists.
    pub fn remove(&self, id: &str) {
        if let Some(id) = decode(id) {
            self.lock().remove(&key(&id));
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, session: &Session, now: Instant) -> bool {
        now.saturating_duration_since(session.used) >= self.limits.idle
            || now.saturating_duration_since(session.created) >= self.limits.absolute
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A poisoned lock means a panic mid-update elsewhere; the map itself is still whole.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a form's `sent` CSRF token is the session's `expected` one, compared in constant time
/// (a wrong length or non-hex text is simply a mismatch).
pub fn csrf_matches(expected: &str, sent: &str) -> bool {
    match (decode(expected), decode(sent)) {
        (Some(expected), Some(sent)) => bool::from(expected.ct_eq(&sent)),
        _ => false,
    }
}

fn random() -> Result<[u8; ID_BYTES], RandomError> {
    let mut bytes = [0u8; ID_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
    Ok(bytes)
}

fn decode(text: &str) -> Option<[u8; ID_BYTES]> {
    let mut bytes = [0u8; ID_BYTES];
    hex::decode_to_slice(text.trim(), &mut bytes).ok()?;
    Some(bytes)
}

fn key(id: &[u8; ID_BYTES]) -> [u8; 32] {
    Sha256::digest(id).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str) -> TokenId {
        TokenId::parse(id).unwrap()
    }

    fn limits(capacity: usize) -> Limits {
        Limits {
            capacity,
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(600),
        }
    }

    #[test]
    fn sessions_expire_when_idle_and_at_their_absolute_lifetime() {
        let sessions = Sessions::new(limits(10));
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let a = sessions.create(token("00000000000000aa"), t0).unwrap();
        assert_eq!(a.cookie.len(), 64, "256 bits in hex");
        // Used every 50 s it survives the 60 s idle expiry, until its absolute 600 s.
        for at in (50..600).step_by(50) {
            assert!(sessions.get(&a.cookie, s(at)).is_some(), "at {at}s");
        }
        assert!(sessions.get(&a.cookie, s(600)).is_none(), "absolute expiry");
        // Unused for the idle time: gone, and removed from the table.
        let b = sessions.create(token("00000000000000bb"), t0).unwrap();
        assert!(sessions.get(&b.cookie, s(59)).is_some());
        assert!(sessions.get(&b.cookie, s(119)).is_none());
        assert!(sessions.is_empty());
        // Unknown and malformed ids.
        for id in ["", "zz", &"0".repeat(64), &a.cookie[..63]] {
            assert!(sessions.get(id, t0).is_none(), "{id}");
        }
    }

    #[test]
    fn a_full_table_evicts_the_oldest_session() {
        let sessions = Sessions::new(limits(2));
        let t0 = Instant::now();
        let first = sessions.create(token("00000000000000aa"), t0).unwrap();
        let second = sessions
            .create(token("00000000000000bb"), t0 + Duration::from_secs(1))
            .unwrap();
        let third = sessions
            .create(token("00000000000000cc"), t0 + Duration::from_secs(2))
            .unwrap();
        let at = t0 + Duration::from_secs(3);
        assert!(sessions.get(&first.cookie, at).is_none());
        assert_eq!(
            sessions.get(&second.cookie, at).map(|c| c.token),
            Some(token("00000000000000bb"))
        );
        assert!(sessions.get(&third.cookie, at).is_some());
        assert_eq!(sessions.len(), 2);
        sessions.remove(&third.cookie);
        assert!(sessions.get(&third.cookie, at).is_none());
    }

    #[test]
    fn a_held_secret_is_taken_once_by_its_own_session_and_never_debug_printed() {
        let sessions = Sessions::new(limits(4));
        let now = Instant::now();
        let mine = sessions.create(token("00000000000000aa"), now).unwrap();
        let other = sessions.create(token("00000000000000aa"), now).unwrap();
        sessions.hold_secret(&mine.cookie, "bnt_secret_value".into());
        assert!(!format!("{sessions:?}").contains("bnt_secret_value"));
        assert!(sessions.take_secret(&other.cookie).is_none());
        assert_eq!(
            sessions
                .take_secret(&mine.cookie)
                .map(|s| s.reveal().to_owned()),
            Some("bnt_secret_value".to_owned())
        );
        assert!(sessions.take_secret(&mine.cookie).is_none(), "shown once");
        sessions.hold_secret("not a session", "x".into());
    }

    #[test]
    fn csrf_tokens_compare_as_a_table() {
        let sessions = Sessions::new(limits(4));
        let created = sessions
            .create(token("00000000000000aa"), Instant::now())
            .unwrap();
        let other = sessions
            .create(token("00000000000000aa"), Instant::now())
            .unwrap();
        assert_ne!(created.csrf, other.csrf);
        assert_ne!(created.cookie, created.csrf);
        let expected = created.csrf.as_str();
        let mut flipped = expected.to_owned();
        flipped.replace_range(0..1, if expected.starts_with('0') { "1" } else { "0" });
        let cases: [(&str, bool); 7] = [
            (expected, true),
            (&other.csrf, false),
            (&flipped, false),
            ("", false),
            (&expected[..62], false),
            ("not hex at all", false),
            (&created.cookie, false),
        ];
        for (sent, matches) in cases {
            assert_eq!(csrf_matches(expected, sent), matches, "{sent}");
        }
    }
}
