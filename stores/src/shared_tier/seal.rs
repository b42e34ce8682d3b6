//! Seals on what the shared tier holds for every node to trust: flag-set snapshots (and their
//! tombstones) and the catalog of running experiments. Anyone who can write to Redis could
//! otherwise make every node serve flags of their choosing (`HSET … version 999` then `PUBLISH`):
//! Redis is reachable by more parties than the flag store and has weaker access control.
//!
//! A seal is HMAC-SHA256 under the deployment's tier key (`[shared_tier] signing_key_file`, or the
//! environment variable `signing_key_env` names) over the deployment id and every field the reader
//! acts on, each length-prefixed so no two field lists encode alike. A node refuses what it cannot
//! verify: a forgery, a write by another deployment sharing the Redis (another deployment id or
//! key), or a snapshot from before seals existed.

use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Keys shorter than this are refused: the key is the only thing between Redis and the flags.
pub const MIN_KEY_BYTES: usize = 32;

/// What a seal covers; the tag keeps a snapshot seal from verifying as an experiments seal.
#[derive(Debug, Clone, Copy)]
pub enum Sealed<'a> {
    /// `json` empty: the tombstone of the set's deletion at `version`.
    Snapshot {
        set: &'a str,
        version: u64,
        json: &'a str,
    },
    RunningExperiments {
        json: &'a str,
    },
}

/// The deployment's tier key and id. `Debug` never shows the key.
#[derive(Clone)]
pub struct Sealer {
    /// Keyed once; each seal starts from a clone.
    keyed: HmacSha256,
    deployment: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("key", &"<redacted>")
            .field("deployment", &self.deployment)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealKeyError {
    /// The key's length, never its bytes.
    #[error("the shared tier signing key has {len} bytes; it needs at least {MIN_KEY_BYTES}")]
    TooShort { len: usize },
    #[error("the shared tier signing key is not usable as an HMAC-SHA256 key")]
    Unusable,
}

impl Sealer {
    /// `key`: the secret shared by the deployment's nodes (surrounding whitespace, such as a
    /// key file's trailing newline, is not part of it).
    pub fn new(key: &[u8], deployment: &str) -> Result<Sealer, SealKeyError> {
        let key = key.trim_ascii();
        if key.len() < MIN_KEY_BYTES {
            return Err(SealKeyError::TooShort { len: key.len() });
        }
        let keyed =
            <HmacSha256 as KeyInit>::new_from_slice(key).map_err(|_| SealKeyError::Unusable)?;
        Ok(Sealer {
            keyed,
            deployment: deployment.to_owned(),
        })
    }

    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// The seal of `what`, as lowercase hex.
    pub fn seal(&self, what: Sealed<'_>) -> String {
        hex::encode(self.mac(what).finalize().into_bytes())
    }

    /// Whether `seal` (hex, as [`Sealer::seal`] writes it) is `what`'s seal; in constant time.
    pub fn verifies(&self, what: Sealed<'_>, seal: &[u8]) -> bool {
        let Ok(seal) = hex::decode(seal) else {
            return false;
        };
        self.mac(what).verify_slice(&seal).is_ok()
    }

    fn mac(&self, what: Sealed<'_>) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        let mut field = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        field(b"bunting shared tier seal v1");
        field(self.deployment.as_bytes());
        match what {
            Sealed::Snapshot { set, version, json } => {
                field(b"snapshot");
                field(set.as_bytes());
                field(&version.to_be_bytes());
                field(json.as_bytes());
            }
            Sealed::RunningExperiments { json } => {
                field(b"running experiments");
                field(json.as_bytes());
            }
        }
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(deployment: &str) -> Sealer {
        Sealer::new(&[7u8; 32], deployment).unwrap()
    }

    const SNAPSHOT: Sealed<'static> = Sealed::Snapshot {
        set: "shop",
        version: 3,
        json: r#"{"flags":{}}"#,
    };

    #[test]
    fn a_seal_verifies_only_what_it_sealed() {
        let s = sealer("prod");
        let seal = s.seal(SNAPSHOT);
        assert!(s.verifies(SNAPSHOT, seal.as_bytes()));
        // Every field is covered: change any one and the seal no longer verifies.
        let altered = [
            Sealed::Snapshot {
                set: "shop2",
                version: 3,
                json: r#"{"flags":{}}"#,
            },
            Sealed::Snapshot {
                set: "shop",
                version: 999,
                json: r#"{"flags":{}}"#,
            },
            Sealed::Snapshot {
                set: "shop",
                version: 3,
                json: r#"{"flags":{"x":1}}"#,
            },
            Sealed::Snapshot {
                set: "shop",
                version: 3,
                json: "",
            },
            Sealed::RunningExperiments {
                json: r#"{"flags":{}}"#,
            },
        ];
        for what in altered {
            assert!(!s.verifies(what, seal.as_bytes()), "{what:?}");
        }
    }

    #[test]
    fn another_deployment_or_key_does_not_verify() {
        let seal = sealer("prod").seal(SNAPSHOT);
        assert!(!sealer("staging").verifies(SNAPSHOT, seal.as_bytes()));
        let other_key = Sealer::new(&[8u8; 32], "prod").unwrap();
        assert!(!other_key.verifies(SNAPSHOT, seal.as_bytes()));
    }

    #[test]
    fn malformed_seals_do_not_verify() {
        let s = sealer("prod");
        for seal in [&b""[..], b"zz", b"00", &[0xff; 64][..]] {
            assert!(!s.verifies(SNAPSHOT, seal));
        }
    }

    #[test]
    fn length_prefixes_keep_field_boundaries() {
        // "ab" + "c" and "a" + "bc" must not seal alike.
        let s = sealer("prod");
        let one = Sealed::Snapshot {
            set: "ab",
            version: 1,
            json: "c",
        };
        let two = Sealed::Snapshot {
            set: "a",
            version: 1,
            json: "bc",
        };
        assert!(!s.verifies(two, s.seal(one).as_bytes()));
    }

    #[test]
    fn short_keys_are_refused_without_showing_them() {
        let e = Sealer::new(b"  short key\n", "prod").unwrap_err();
        assert_eq!(e, SealKeyError::TooShort { len: 9 });
        assert!(!e.to_string().contains("short key"));
        let debug = format!("{:?}", sealer("prod"));
        assert!(debug.contains("<redacted>") && !debug.contains("7, 7"));
    }
}
