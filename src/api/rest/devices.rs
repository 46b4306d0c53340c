//! `/api/v0002/device/types[/{typeId}/devices[/{deviceId}]]`: the device
//! registry with the platform's field names. A device's `authToken` is in
//! its registration response and nowhere else; it is what the device gives
//! as its MQTT password with user name `use-token-auth`.

use axum::{Extension, Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};

use super::{
    ApiResult, PathParams, body::JsonBody, error::ApiError, json::ListJson, params::format_time,
};
use crate::{
    query::QueryService,
    registry::{Device, DeviceType, Registry, RegistryError},
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NewType {
    id: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_class")]
    class_id: String,
}

fn default_class() -> String {
    "Device".to_owned()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NewDevice {
    device_id: String,
    auth_token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TypeJson {
    id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    description: String,
    class_id: String,
    created_date_time: String,
}

impl From<DeviceType> for TypeJson {
    fn from(t: DeviceType) -> Self {
        TypeJson {
            id: t.id,
            description: t.description,
            class_id: t.class_id,
            created_date_time: format_time(t.created),
        }
    }
}

#[derive(Serialize)]
pub(super) struct RegistrationJson {
    date: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeviceJson {
    type_id: String,
    device_id: String,
    client_id: String,
    class_id: String,
    registration: RegistrationJson,
    /// Only in the registration response.
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_token: Option<String>,
}

impl DeviceJson {
    fn new(d: Device, org: &str, token: Option<String>) -> Self {
        let prefix = if d.class_id == "Gateway" { "g" } else { "d" };
        DeviceJson {
            client_id: format!("{prefix}:{org}:{}:{}", d.type_id, d.device_id),
            type_id: d.type_id,
            device_id: d.device_id,
            class_id: d.class_id,
            registration: RegistrationJson {
                date: format_time(d.created),
            },
            auth_token: token,
        }
    }
}

fn registry_error(e: RegistryError, type_id: &str, device_id: Option<&str>) -> ApiError {
    match e {
        RegistryError::TypeNotFound => ApiError::RegistryNotFound(format!("device type {type_id}")),
        RegistryError::DeviceNotFound => ApiError::RegistryNotFound(format!(
            "device {type_id}/{}",
            device_id.unwrap_or_default()
        )),
        RegistryError::Exists(what) => ApiError::Conflict(what.to_owned()),
        RegistryError::Invalid { field, reason } => ApiError::bad(field, reason),
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

/// Refuses path ids no device type or device can have (400 naming them),
/// rather than looking them up.
fn check_path(type_id: &str, device_id: Option<&str>) -> ApiResult<()> {
    const RULE: &str = "must be 1 to 36 characters of A-Z, a-z, 0-9, '.', '_', '-'";
    if !crate::registry::valid_id(type_id) {
        return Err(ApiError::bad("typeId", RULE));
    }
    if device_id.is_some_and(|d| !crate::registry::valid_id(d)) {
        return Err(ApiError::bad("deviceId", RULE));
    }
    Ok(())
}

fn list<T>(results: Vec<T>) -> ListJson<T> {
    let total_rows = results.len();
    ListJson {
        results,
        bookmark: None,
        meta: Some(super::json::MetaJson { total_rows }),
    }
}

pub(super) async fn create_type(
    Extension(registry): Extension<Registry>,
    JsonBody(body): JsonBody<NewType>,
) -> ApiResult<(StatusCode, Json<TypeJson>)> {
    let created = registry
        .create_type(&body.id, &body.description, &body.class_id)
        .await
        .map_err(|e| registry_error(e, &body.id, None))?;
    Ok((StatusCode::CREATED, Json(TypeJson::from(created))))
}

pub(super) async fn list_types(
    Extension(registry): Extension<Registry>,
) -> ApiResult<Json<ListJson<TypeJson>>> {
    let types = registry
        .list_types()
        .map_err(|e| registry_error(e, "", None))?;
    Ok(Json(list(types.into_iter().map(TypeJson::from).collect())))
}

pub(super) async fn get_type(
    Extension(registry): Extension<Registry>,
    PathParams(type_id): PathParams<String>,
) -> ApiResult<Json<TypeJson>> {
    check_path(&type_id, None)?;
    let t = registry
        .get_type(&type_id)
        .map_err(|e| registry_error(e, &type_id, None))?;
    Ok(Json(TypeJson::from(t)))
}

pub(super) async fn delete_type(
    Extension(registry): Extension<Registry>,
    PathParams(type_id): PathParams<String>,
) -> ApiResult<StatusCode> {
    check_path(&type_id, None)?;
    registry
        .delete_type(&type_id)
        .await
        .map_err(|e| registry_error(e, &type_id, None))?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn create_device(
    State(query): State<QueryService>,
    Extension(registry): Extension<Registry>,
    PathParams(type_id): PathParams<String>,
    JsonBody(body): JsonBody<NewDevice>,
) -> ApiResult<(StatusCode, Json<DeviceJson>)> {
    check_path(&type_id, None)?;
    let (device, token) = registry
        .create_device(&type_id, &body.device_id, body.auth_token.as_deref())
        .await
        .map_err(|e| registry_error(e, &type_id, Some(&body.device_id)))?;
    let json = DeviceJson::new(device, &query.options().org_id, Some(token));
    Ok((StatusCode::CREATED, Json(json)))
}

pub(super) async fn list_devices(
    State(query): State<QueryService>,
    Extension(registry): Extension<Registry>,
    PathParams(type_id): PathParams<String>,
) -> ApiResult<Json<ListJson<DeviceJson>>> {
    check_path(&type_id, None)?;
    let devices = registry
        .list_devices(&type_id)
        .map_err(|e| registry_error(e, &type_id, None))?;
    let org = &query.options().org_id;
    Ok(Json(list(
        devices
            .into_iter()
            .map(|d| DeviceJson::new(d, org, None))
            .collect(),
    )))
}

pub(super) async fn get_device(
    State(query): State<QueryService>,
    Extension(registry): Extension<Registry>,
    PathParams((type_id, device_id)): PathParams<(String, String)>,
) -> ApiResult<Json<DeviceJson>> {
    check_path(&type_id, Some(&device_id))?;
    let device = registry
        .get_device(&type_id, &device_id)
        .map_err(|e| registry_error(e, &type_id, Some(&device_id)))?;
    Ok(Json(DeviceJson::new(device, &query.options().org_id, None)))
}

pub(super) async fn delete_device(
    Extension(registry): Extension<Registry>,
    PathParams((type_id, device_id)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    check_path(&type_id, Some(&device_id))?;
    // Its token is gone: so is its connection (0x98, credentials revoked),
    // which the registry revokes (on every node of a cluster).
    registry
        .delete_device(&type_id, &device_id)
        .await
        .map_err(|e| registry_error(e, &type_id, Some(&device_id)))?;
    Ok(StatusCode::NO_CONTENT)
}
