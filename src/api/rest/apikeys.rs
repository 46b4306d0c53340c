//! `/api/v0002/apikeys`: API keys and their roles (administrators only).
//! A new key's token is in the creation response and nowhere else.

use axum::{Extension, Json, http::StatusCode};
use serde::{Deserialize, Serialize};

use super::{
    ApiResult, PathParams, body::JsonBody, error::ApiError, json::ListJson, params::format_time,
};
use crate::registry::{ApiKey, Principal, Registry, RegistryError, Role};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewKey {
    role: String,
    #[serde(default)]
    description: String,
}

#[derive(Serialize)]
pub(super) struct KeyJson {
    key: String,
    role: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    description: String,
    created: String,
    /// Only in the creation response.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl KeyJson {
    fn new(key: ApiKey, token: Option<String>) -> Self {
        KeyJson {
            key: key.key,
            role: key.role.as_str(),
            description: key.description,
            created: format_time(key.created),
            token,
        }
    }
}

fn internal(e: RegistryError) -> ApiError {
    match e {
        RegistryError::NotFound => ApiError::KeyNotFound(String::new()),
        RegistryError::Unavailable(reason) => {
            tracing::error!(%reason, "registry request failed");
            ApiError::Unavailable
        }
        other => {
            tracing::error!(error = %other, "registry request failed");
            ApiError::Internal
        }
    }
}

pub(super) async fn create(
    Extension(registry): Extension<Registry>,
    JsonBody(body): JsonBody<NewKey>,
) -> ApiResult<(StatusCode, Json<KeyJson>)> {
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::bad("role", "must be read-only, operator or admin"))?;
    if body.description.len() > 256 {
        return Err(ApiError::bad(
            "description",
            "is longer than 256 characters",
        ));
    }
    let (key, token) = registry
        .create_key(role, &body.description)
        .await
        .map_err(internal)?;
    Ok((StatusCode::CREATED, Json(KeyJson::new(key, Some(token)))))
}

pub(super) async fn list(
    Extension(registry): Extension<Registry>,
) -> ApiResult<Json<ListJson<KeyJson>>> {
    let keys = registry.list_keys().map_err(internal)?;
    Ok(Json(ListJson {
        results: keys.into_iter().map(|k| KeyJson::new(k, None)).collect(),
        bookmark: None,
        meta: None,
    }))
}

pub(super) async fn delete(
    Extension(registry): Extension<Registry>,
    Extension(caller): Extension<Principal>,
    PathParams(key): PathParams<String>,
) -> ApiResult<StatusCode> {
    // Applications connected with this key lose their connection: the
    // registry revokes it (on every node of a cluster).
    match registry.delete_key(&key, &caller.key).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(RegistryError::NotFound) => Err(ApiError::KeyNotFound(key)),
        Err(RegistryError::OwnKey) => Err(ApiError::Refused {
            what: key,
            why: "a request cannot delete the API key it is made with (its own key); \
                  delete it with another admin key",
        }),
        Err(RegistryError::LastAdmin) => Err(ApiError::Refused {
            what: key,
            why: "it is the last admin key; create another admin key first",
        }),
        Err(e) => Err(internal(e)),
    }
}
