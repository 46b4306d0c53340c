//! The platform's error body, produced in one place for every 4xx and 5xx:
//! `{"message": "CUDCS0404E: text", "exception": {"id": "CUDCS0404E",
//! "properties": [...]}, "violations": [...]}` (`violations` on 400 only).

use axum::{
    Json,
    extract::rejection::PathRejection,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::query::QueryError;

/// An error answered in the platform's body.
#[derive(Debug)]
pub enum ApiError {
    /// A request parameter or body field is invalid.
    BadParameter {
        name: String,
        reason: String,
    },
    /// No record for this client id.
    ClientNotFound(String),
    /// The client is known but has no connection this server can end: it
    /// is not connected, or connected through another broker (`elsewhere`).
    NotConnected {
        client: String,
        elsewhere: Option<String>,
    },
    /// The feature is switched off.
    Disabled,
    /// No such path.
    NoRoute(String),
    /// The path exists but not with this method.
    MethodNotAllowed(String),
    /// No credentials.
    Unauthorized,
    /// Credentials that prove nobody: an unknown key, a wrong token, or an
    /// `Authorization` value that is not HTTP Basic.
    InvalidCredentials,
    /// A body without a JSON content type (the one given, if any).
    UnsupportedMediaType(String),
    /// A body larger than the limit, in bytes.
    PayloadTooLarge {
        limit: usize,
    },
    /// The API key's role does not allow the call.
    Forbidden {
        needed: String,
        has: String,
    },
    /// No such API key.
    KeyNotFound(String),
    /// No such device type or device (the text names it).
    RegistryNotFound(String),
    /// It exists already.
    Conflict(String),
    /// The request conflicts with what must stay true (409): `what` is
    /// the thing, `why` the reason.
    Refused {
        what: String,
        why: &'static str,
    },
    /// A stream asked to resume from a revision no longer kept.
    Gone {
        oldest: u64,
    },
    Unavailable,
    /// The request asked for at least revision `wanted`, and the node had
    /// applied only `reached` when the wait ran out.
    RevisionNotReached {
        wanted: u64,
        reached: u64,
    },
    /// The store records nothing until disk space is freed (the text says
    /// how much).
    StorageFull(String),
    Internal,
}

#[derive(Serialize)]
struct Body {
    message: String,
    exception: Exception,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    violations: Vec<Violation>,
}

#[derive(Serialize)]
struct Exception {
    id: &'static str,
    properties: Vec<String>,
}

#[derive(Serialize)]
struct Violation {
    message: String,
    exception: Exception,
}

impl ApiError {
    /// A path that does not decode: 400 naming the path parameter.
    pub fn bad_path(rejection: PathRejection) -> Self {
        use axum::extract::path::ErrorKind;
        let name = match &rejection {
            PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key }
                | ErrorKind::ParseErrorAtKey { key, .. }
                | ErrorKind::DeserializeError { key, .. } => key.clone(),
                _ => "path".to_owned(),
            },
            _ => "path".to_owned(),
        };
        ApiError::bad(name, rejection.body_text())
    }

    pub fn bad(name: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::BadParameter {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::InvalidArgument { field, reason } => {
                // The query service names fields as gRPC does; the REST
                // edge validated its own parameters first, so this is a
                // page token (bookmark) or an internal mismatch.
                let name = if field == "page_token" {
                    "_bookmark".to_owned()
                } else {
                    field
                };
                ApiError::BadParameter { name, reason }
            }
            QueryError::NotFound(id) => ApiError::ClientNotFound(id),
            QueryError::Disabled => ApiError::Disabled,
            QueryError::OutOfRange { oldest, .. } => ApiError::Gone { oldest },
            e @ QueryError::AheadOfStore { .. } => ApiError::bad("Last-Event-ID", e.to_string()),
            QueryError::ShuttingDown => ApiError::Unavailable,
            QueryError::CannotRecord(text) => ApiError::StorageFull(text),
            QueryError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                ApiError::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, id, text, properties, violations) = match self {
            ApiError::BadParameter { name, reason } => (
                StatusCode::BAD_REQUEST,
                "CUDCS0400E",
                "The request is not valid. Review the constraint violations provided.".to_owned(),
                vec![name.clone()],
                vec![Violation {
                    message: format!(
                        "CUDCS0401E: The value of parameter {name} is not valid: {reason}"
                    ),
                    exception: Exception {
                        id: "CUDCS0401E",
                        properties: vec![name, reason],
                    },
                }],
            ),
            ApiError::ClientNotFound(id) => (
                StatusCode::NOT_FOUND,
                "CUDCS0404E",
                format!("No connection state was found for client id {id}."),
                vec![id],
                vec![],
            ),
            ApiError::NotConnected { client, elsewhere } => (
                StatusCode::CONFLICT,
                "CUDCS0412E",
                match &elsewhere {
                    None => format!("Client {client} is not connected."),
                    Some(broker) => format!(
                        "Client {client} is connected through broker {broker}, not this server's; \
                         only that broker can end its connection."
                    ),
                },
                vec![client],
                vec![],
            ),
            ApiError::Disabled => (
                StatusCode::FORBIDDEN,
                "CUDCS0403E",
                "Client connection state is disabled for this organization.".to_owned(),
                vec![],
                vec![],
            ),
            ApiError::NoRoute(path) => (
                StatusCode::NOT_FOUND,
                "CUDCS0405E",
                format!("There is no resource at {path}."),
                vec![path],
                vec![],
            ),
            ApiError::MethodNotAllowed(method) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "CUDCS0406E",
                format!("The method {method} is not allowed on this resource."),
                vec![method],
                vec![],
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "CUDCS0001E",
                "Authentication is required: HTTP Basic with an API key and its token.".to_owned(),
                vec![],
                vec![],
            ),
            ApiError::InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                "CUDCS0005E",
                "Invalid credentials: the API key or its token is wrong.".to_owned(),
                vec![],
                vec![],
            ),
            ApiError::UnsupportedMediaType(given) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "CUDCS0415E",
                format!(
                    "The request body must be JSON (Content-Type: application/json); it was {}.",
                    if given.is_empty() {
                        "sent without a content type".to_owned()
                    } else {
                        format!("sent as {given}")
                    }
                ),
                vec![given],
                vec![],
            ),
            ApiError::PayloadTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "CUDCS0413E",
                format!("The request body is larger than {limit} bytes."),
                vec![limit.to_string()],
                vec![],
            ),
            ApiError::Forbidden { needed, has } => (
                StatusCode::FORBIDDEN,
                "CUDCS0002E",
                format!("This request needs the {needed} role; the API key has the {has} role."),
                vec![needed, has],
                vec![],
            ),
            ApiError::KeyNotFound(key) => (
                StatusCode::NOT_FOUND,
                "CUDCS0003E",
                format!("There is no API key {key}."),
                vec![key],
                vec![],
            ),
            ApiError::RegistryNotFound(what) => (
                StatusCode::NOT_FOUND,
                "CUDCS0004E",
                format!("There is no {what}."),
                vec![what],
                vec![],
            ),
            ApiError::Conflict(what) => (
                StatusCode::CONFLICT,
                "CUDCS0409E",
                format!("{what} already exists."),
                vec![what],
                vec![],
            ),
            ApiError::Refused { what, why } => (
                StatusCode::CONFLICT,
                "CUDCS0409E",
                format!("{what} cannot be deleted: {why}."),
                vec![what],
                vec![],
            ),
            ApiError::Gone { oldest } => (
                StatusCode::GONE,
                "CUDCS0410E",
                format!(
                    "The changes after that revision are no longer kept (the oldest is {oldest}); \
                     reconnect with snapshot=true and without Last-Event-ID."
                ),
                vec![oldest.to_string()],
                vec![],
            ),
            ApiError::RevisionNotReached { wanted, reached } => (
                StatusCode::GATEWAY_TIMEOUT,
                "CUDCS0504E",
                format!(
                    "This node has applied revision {reached}, and the request asked for at least \
                     {wanted} (X-Connstate-Min-Revision); try again, or ask another node."
                ),
                vec![wanted.to_string(), reached.to_string()],
                vec![],
            ),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "CUDCS0503E",
                "The service is shutting down; try again.".to_owned(),
                vec![],
                vec![],
            ),
            ApiError::StorageFull(text) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "CUDCS0507E",
                format!("Nothing can be recorded: {text}."),
                vec![],
                vec![],
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "CUDCS0500E",
                "An internal error occurred.".to_owned(),
                vec![],
                vec![],
            ),
        };
        let body = Body {
            message: format!("{id}: {text}"),
            exception: Exception { id, properties },
            violations,
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"connstate\""),
            );
        }
        response
    }
}
