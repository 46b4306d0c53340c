//! `POST /sources/{name}`: the webhook endpoint of EMQX and VerneMQ
//! sources. It is outside the API-key gate: each source has its own shared
//! secret, sent as `Authorization: Bearer SECRET` (EMQX webhooks take
//! headers) or as `?secret=SECRET` (VerneMQ's webhooks cannot set headers).
//! Answers `{"result": "ok"}`, which VerneMQ expects.

use axum::{
    Json, Router,
    extract::{Path, Query, Request},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::Deserialize;

use super::{body::JsonBody, error::ApiError};
use crate::{
    query::QueryError,
    source::webhook::{WebhookError, WebhookSources},
};

#[derive(Deserialize)]
struct SecretQuery {
    secret: Option<String>,
}

/// The webhook routes, to merge into the gateway's router.
pub fn router(sources: WebhookSources) -> Router {
    Router::new()
        .route("/sources/{name}", post(receive))
        .with_state(sources)
}

async fn receive(
    axum::extract::State(sources): axum::extract::State<WebhookSources>,
    Path(name): Path<String>,
    Query(query): Query<SecretQuery>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let Some(source) = sources.get(&name) else {
        return Err(ApiError::NoRoute(format!("/sources/{name}")));
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = bearer.or(query.secret.as_deref()) else {
        source.count_bad();
        return Err(ApiError::Unauthorized);
    };
    if !source.is_secret(given) {
        source.count_bad();
        tracing::warn!(source = %source.name(), "webhook call with a wrong secret refused");
        return Err(ApiError::InvalidCredentials);
    }
    let JsonBody(body) = match JsonBody::<serde_json::Value>::from_request(request).await {
        Ok(body) => body,
        Err(e) => {
            source.count_bad();
            return Err(e);
        }
    };
    let hook = headers.get("vernemq-hook").and_then(|v| v.to_str().ok());
    match source.receive(hook, &body).await {
        Ok(_) => Ok(Json(serde_json::json!({"result": "ok"})).into_response()),
        Err(WebhookError::Invalid(e)) => Err(ApiError::BadParameter {
            name: e.field,
            reason: e.reason,
        }),
        Err(WebhookError::Store(e)) => Err(QueryError::from(e).into()),
    }
}
