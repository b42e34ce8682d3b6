//! API tokens as they travel: `bnt_<id>_<secret>`, a public lookup id (16 hex digits) and a
//! 256-bit secret (64 hex digits). The id lets a node find the token's record without scanning
//! or hashing every record; only the secret's hash is ever stored, and it is compared in constant
//! time. The secret has no `Display` and a redacting `Debug`, so it cannot reach a log line or an
//! error message by accident: the one way out is [`ApiToken::reveal`], used where a token is
//! shown once to the operator who asked for it.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every token starts with this, so a leaked one is recognisable (secret scanners, log greps).
pub const PREFIX: &str = "bnt_";
/// Bytes of randomness in an id: enough that two tokens of a deployment never share one.
const ID_BYTES: usize = 8;
/// Bytes of randomness in a secret: 256 bits, so a plain SHA-256 (no salt, no stretching) is a
/// sufficient hash: nobody can search a 2^256 space, unlike a password's.
const SECRET_BYTES: usize = 32;
/// The length of a well-formed token: `bnt_` + 16 + `_` + 64.
pub const TOKEN_LEN: usize = PREFIX.len() + 2 * ID_BYTES + 1 + 2 * SECRET_BYTES;

/// Why a string is not a token. Never carries the secret part; an id is public and is named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    #[error("a token starts with {PREFIX:?}")]
    Prefix,
    #[error("a token is {TOKEN_LEN} characters long, this one is {0}")]
    Length(usize),
    #[error("a token is bnt_<16 hex digits>_<64 hex digits>")]
    Shape,
    /// The text is not quoted: a client that swapped a token's parts would see its secret echoed.
    #[error("a token id is 16 lowercase hex digits")]
    Id,
    #[error("the secret part of token {0} is not 64 lowercase hex digits")]
    Secret(TokenId),
}

/// A token's public lookup id: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(String);

impl TokenId {
    pub fn parse(text: &str) -> Result<TokenId, TokenParseError> {
        if text.len() == 2 * ID_BYTES && is_lower_hex(text) {
            Ok(TokenId(text.to_owned()))
        } else {
            Err(TokenParseError::Id)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A token's secret part. No `Display`; `Debug` prints nothing of it.
#[derive(Clone)]
pub struct Secret([u8; SECRET_BYTES]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A whole token: what a client sends after `Bearer `.
#[derive(Debug, Clone)]
pub struct ApiToken {
    id: TokenId,
    secret: Secret,
}

/// Equal when both parts are; the secrets are compared in constant time.
impl PartialEq for ApiToken {
    fn eq(&self, other: &ApiToken) -> bool {
        self.id == other.id && bool::from(self.secret.0.ct_eq(&other.secret.0))
    }
}

impl Eq for ApiToken {}

/// The OS's random source failed: no token can be made safely, so none is.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomError(String);

impl ApiToken {
    /// A fresh token from the operating system's random source.
    pub fn generate() -> Result<ApiToken, RandomError> {
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut id).map_err(|e| RandomError(e.to_string()))?;
        getrandom::fill(&mut secret).map_err(|e| RandomError(e.to_string()))?;
        Ok(ApiToken {
            id: TokenId(hex(&id)),
            secret: Secret(secret),
        })
    }

    pub fn parse(text: &str) -> Result<ApiToken, TokenParseError> {
        let rest = text.strip_prefix(PREFIX).ok_or(TokenParseError::Prefix)?;
        if text.len() != TOKEN_LEN {
            return Err(TokenParseError::Length(text.len()));
        }
        let (id, secret) = rest.split_once('_').ok_or(TokenParseError::Shape)?;
        let id = TokenId::parse(id)?;
        let secret = unhex::<SECRET_BYTES>(secret).ok_or(TokenParseError::Secret(id.clone()))?;
        Ok(ApiToken {
            id,
            secret: Secret(secret),
        })
    }

    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// The token as the client must send it. Only for showing it once to whoever created it.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, hex(&self.secret.0))
    }

    /// What is stored: SHA-256 over the id and the secret, so a hash copied to another id's
    /// record does not verify there.
    pub fn hash(&self) -> TokenHash {
        let mut digest = Sha256::new();
        digest.update(b"bunting-token-v1:");
        digest.update(self.id.0.as_bytes());
        digest.update(b":");
        digest.update(self.secret.0);
        TokenHash(digest.finalize().into())
    }
}

/// A stored token hash (SHA-256, 32 bytes; 64 hex digits in files and listings).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash of a 256-bit secret reveals nothing, but there is no reason to print it either.
        f.write_str("TokenHash(..)")
    }
}

impl TokenHash {
    pub fn from_bytes(bytes: &[u8]) -> Option<TokenHash> {
        <[u8; 32]>::try_from(bytes).ok().map(TokenHash)
    }

    pub fn from_hex(text: &str) -> Option<TokenHash> {
        unhex::<32>(text).map(TokenHash)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Whether `token` hashes to this, in constant time.
    pub fn verifies(&self, token: &ApiToken) -> bool {
        bool::from(self.0.ct_eq(&token.hash().0))
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !is_lower_hex(text) {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *slot = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "bnt_0123456789abcdef_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn tokens_round_trip_and_bad_ones_are_named() {
        let token = ApiToken::parse(GOOD).unwrap();
        assert_eq!(token.id().as_str(), "0123456789abcdef");
        assert_eq!(token.reveal(), GOOD);
        let generated = ApiToken::generate().unwrap();
        assert_eq!(ApiToken::parse(&generated.reveal()).unwrap(), generated);
        assert_ne!(ApiToken::generate().unwrap(), generated);

        let upper = GOOD.replace("ff0011", "FF0011");
        let cases: &[(&str, TokenParseError)] = &[
            ("", TokenParseError::Prefix),
            ("Bearer x", TokenParseError::Prefix),
            ("bnt_short", TokenParseError::Length(9)),
            (&GOOD.replace("_0011", "-0011"), TokenParseError::Shape),
            (
                &GOOD.replace("0123456789abcdef", "0123456789abcdeg"),
                TokenParseError::Id,
            ),
            (
                &upper,
                TokenParseError::Secret(TokenId("0123456789abcdef".into())),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(ApiToken::parse(text).unwrap_err(), *expected, "{text:?}");
        }
    }

    #[test]
    fn no_error_or_debug_output_contains_the_secret() {
        let token = ApiToken::parse(GOOD).unwrap();
        let secret = &GOOD[21..];
        assert!(!format!("{token:?}").contains(secret));
        assert!(!format!("{:?}", token.hash()).contains(secret));
        // A token whose secret is one character off: the error names the id only.
        let bad = format!("{}X", &GOOD[..GOOD.len() - 1]);
        let error = ApiToken::parse(&bad).unwrap_err().to_string();
        assert!(error.contains("0123456789abcdef"), "{error}");
        assert!(!error.contains(&secret[..40]), "{error}");
        // Parts swapped (secret first): nothing of it is echoed.
        let swapped = format!("bnt_{}_{}", &GOOD[21..], &GOOD[4..20]);
        let error = ApiToken::parse(&swapped).unwrap_err().to_string();
        assert!(!error.contains(&secret[..8]), "{error}");
    }

    #[test]
    fn hashes_verify_only_their_own_token() {
        let token = ApiToken::parse(GOOD).unwrap();
        let hash = token.hash();
        let other_secret = ApiToken::parse(&GOOD.replace("eeff00", "eeff01")).unwrap();
        let other_id = ApiToken::parse(&GOOD.replace("89abcdef_", "89abcdee_")).unwrap();
        for (candidate, verifies) in [(&token, true), (&other_secret, false), (&other_id, false)] {
            assert_eq!(hash.verifies(candidate), verifies, "{candidate:?}");
        }
        assert_eq!(TokenHash::from_hex(&hash.to_hex()), Some(hash.clone()));
        assert_eq!(TokenHash::from_bytes(hash.as_bytes()), Some(hash));
        assert_eq!(TokenHash::from_hex("00"), None);
    }
}
