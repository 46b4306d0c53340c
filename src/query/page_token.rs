//! Opaque page tokens: a cursor plus a fingerprint of the query it belongs
//! to, sealed with an HMAC-SHA256 under the store's secret, protobuf-encoded
//! and base64url'd.
//!
//! A token is untrusted input (any read-only caller can edit one), so its
//! cursor is only ever used once the seal proves the server made it. A
//! token of another query, an edited token, or bytes that are not a token
//! are refused with INVALID_ARGUMENT naming `page_token`; nothing reaches
//! the store that could be mistaken for a corrupt record.

use std::hash::{DefaultHasher, Hash, Hasher};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{KeyInit, Mac};
use prost::Message;

use super::QueryError;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes of the seal kept in a token (a truncated HMAC-SHA256, as
/// RFC 2104 allows; 128 bits leave nothing to guess).
const SEAL_LEN: usize = 16;

#[derive(Clone, PartialEq, Message)]
struct PageToken {
    #[prost(fixed64, tag = "1")]
    fingerprint: u64,
    #[prost(bytes = "vec", tag = "2")]
    cursor: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    seal: Vec<u8>,
}

/// A fingerprint of everything in a request but the page size and token.
pub(super) fn fingerprint(query: &impl std::fmt::Debug) -> u64 {
    let mut hasher = DefaultHasher::new();
    format!("{query:?}").hash(&mut hasher);
    hasher.finish()
}

/// Seals and opens page tokens with one secret key.
#[derive(Clone)]
pub(super) struct PageTokens {
    key: [u8; 32],
}

impl PageTokens {
    pub(super) fn new(key: [u8; 32]) -> Self {
        PageTokens { key }
    }

    fn mac(&self, fingerprint: u64, cursor: &[u8]) -> HmacSha256 {
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&fingerprint.to_be_bytes());
        mac.update(cursor);
        mac
    }

    pub(super) fn seal(&self, cursor: &[u8], fingerprint: u64) -> String {
        let seal = self.mac(fingerprint, cursor).finalize().into_bytes();
        let token = PageToken {
            fingerprint,
            cursor: cursor.to_vec(),
            seal: seal[..SEAL_LEN].to_vec(),
        };
        URL_SAFE_NO_PAD.encode(token.encode_to_vec())
    }

    /// The cursor of `token`, if this server sealed it for this query.
    pub(super) fn open(&self, token: &str, fingerprint: u64) -> Result<Vec<u8>, QueryError> {
        let invalid = || QueryError::invalid("page_token", "is not a valid page token");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let token = PageToken::decode(bytes.as_slice()).map_err(|_| invalid())?;
        if token.cursor.is_empty() || token.seal.len() != SEAL_LEN {
            return Err(invalid());
        }
        // Constant-time comparison of the seal.
        self.mac(token.fingerprint, &token.cursor)
            .verify_truncated_left(&token.seal)
            .map_err(|_| invalid())?;
        if token.fingerprint != fingerprint {
            return Err(QueryError::invalid(
                "page_token",
                "belongs to a different query: repeat the query of the previous page unchanged",
            ));
        }
        Ok(token.cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_queries_and_garbage() {
        let tokens = PageTokens::new([7; 32]);
        let token = tokens.seal(b"sclient", 7);
        assert_eq!(tokens.open(&token, 7).unwrap(), b"sclient");
        assert!(tokens.open(&token, 8).is_err());
        assert!(tokens.open("not a token!", 7).is_err());
        assert!(tokens.open("AAAA", 7).is_err());
        assert!(tokens.open("", 7).is_err());
    }

    #[test]
    fn edited_or_foreign_tokens_are_refused() {
        let tokens = PageTokens::new([7; 32]);
        let token = tokens.seal(b"sclient", 7);
        let mut raw =
            PageToken::decode(URL_SAFE_NO_PAD.decode(&token).unwrap().as_slice()).unwrap();
        raw.cursor = b"s\xff\xfe".to_vec();
        let edited = URL_SAFE_NO_PAD.encode(raw.encode_to_vec());
        assert!(tokens.open(&edited, 7).is_err());
        // Another store's key does not open it either.
        assert!(PageTokens::new([8; 32]).open(&token, 7).is_err());
    }
}
