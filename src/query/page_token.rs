//! Opaque page tokens: a cursor plus a fingerprint of the query it belongs
//! to, protobuf-encoded and base64url'd. A token of another query, or bytes
//! that are not a token, are refused with INVALID_ARGUMENT.

use std::hash::{DefaultHasher, Hash, Hasher};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use prost::Message;

use super::QueryError;

#[derive(Clone, PartialEq, Message)]
struct PageToken {
    #[prost(fixed64, tag = "1")]
    fingerprint: u64,
    #[prost(bytes = "vec", tag = "2")]
    cursor: Vec<u8>,
}

/// A fingerprint of everything in a request but the page size and token.
pub(super) fn fingerprint(query: &impl std::fmt::Debug) -> u64 {
    let mut hasher = DefaultHasher::new();
    format!("{query:?}").hash(&mut hasher);
    hasher.finish()
}

pub(super) fn encode(cursor: &[u8], fingerprint: u64) -> String {
    let token = PageToken {
        fingerprint,
        cursor: cursor.to_vec(),
    };
    URL_SAFE_NO_PAD.encode(token.encode_to_vec())
}

pub(super) fn decode(token: &str, fingerprint: u64) -> Result<Vec<u8>, QueryError> {
    let invalid = || QueryError::invalid("page_token", "is not a valid page token");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let token = PageToken::decode(bytes.as_slice()).map_err(|_| invalid())?;
    if token.fingerprint != fingerprint {
        return Err(QueryError::invalid(
            "page_token",
            "belongs to a different query: repeat the query of the previous page unchanged",
        ));
    }
    if token.cursor.is_empty() {
        return Err(invalid());
    }
    Ok(token.cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_queries_and_garbage() {
        let token = encode(b"sclient", 7);
        assert_eq!(decode(&token, 7).unwrap(), b"sclient");
        assert!(decode(&token, 8).is_err());
        assert!(decode("not a token!", 7).is_err());
        assert!(decode("AAAA", 7).is_err());
        assert!(decode("", 7).is_err());
    }
}
