//! JSON request bodies. Every error leaves in the platform's body and
//! blames what is at fault: 415 without a JSON content type, 413 past
//! [`MAX_BODY_BYTES`], 400 naming `body` when the body is not JSON or not
//! the object the path takes, and 400 naming the field when one is of the
//! wrong type, missing or not taken.

use axum::{
    extract::{FromRequest, Request},
    http::{HeaderMap, header},
};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The largest body any path takes: the bodies are a few short fields.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The name errors give a body that is bad as a whole.
const BODY: &str = "body";

/// A JSON body of type `T`, extracted with the errors above.
pub(super) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> JsonBody<T> {
    /// Extracts the body outside an axum handler's argument list.
    pub(super) async fn from_request(request: Request) -> Result<Self, ApiError> {
        <Self as FromRequest<()>>::from_request(request, &()).await
    }
}

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let headers = request.headers();
        if !is_json(headers) {
            let given = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .chars()
                .take(100)
                .collect();
            return Err(ApiError::UnsupportedMediaType(given));
        }
        let declared_too_large = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > MAX_BODY_BYTES as u64);
        if declared_too_large {
            return Err(ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            })?;
        parse(&bytes).map(JsonBody)
    }
}

/// `application/json` or `application/*+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// Parses `bytes` as a `T`. A syntax error, or a value that is not an
/// object, blames the body; a data error inside the object names its field.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad(BODY, format!("is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad(BODY, "must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path != "." {
            Some(path)
        } else {
            quoted_field(&inner)
        };
        match field {
            Some(field) => ApiError::bad(field, inner),
            None => ApiError::bad(BODY, inner),
        }
    })
}

/// The field of serde's "missing field `x`" and "unknown field `x`, ...".
fn quoted_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    Some(rest.split('`').next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        role: String,
        #[serde(default)]
        count: u32,
    }

    fn blamed(json: &str) -> String {
        match parse::<Body>(json.as_bytes()) {
            Ok(_) => panic!("{json} parsed"),
            Err(ApiError::BadParameter { name, .. }) => name,
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_body_or_the_field() {
        assert_eq!(blamed("{\"role\":"), "body");
        assert_eq!(blamed("[]"), "body");
        assert_eq!(blamed("{}"), "role");
        assert_eq!(blamed("{\"role\": 1}"), "role");
        assert_eq!(blamed("{\"role\": \"a\", \"count\": -1}"), "count");
        assert_eq!(blamed("{\"role\": \"a\", \"colour\": 1}"), "colour");
        assert!(parse::<Body>(b"{\"role\": \"a\"}").is_ok());
    }

    #[test]
    fn json_media_types() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonp"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
