//! The REST gateway: the v0002 paths of Watson IoT Platform's client
//! connection state and connection log APIs, over the same query service
//! as gRPC, so that existing platform clients work by changing the host.
//!
//! Parameters are validated here (each error names its parameter) and every
//! error leaves in the platform's body ([`error`]). JSON shapes are in
//! [`json`]; time parameters in [`params`].

mod apikeys;
pub mod body;
mod devices;
pub mod error;
pub mod json;
pub mod params;
mod stats;
mod stream;
pub mod webhook;

use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::PathRejection},
    http::{Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get},
};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use self::{
    body::JsonBody,
    error::ApiError,
    json::{ListJson, LogJson, MetaJson, PlatformLogJson, StateJson},
    params::parse_time,
};
use crate::{
    api::auth::{Gate, Refusal, require},
    domain::{
        ClientId, ClientType, ConnectionStatus, DisconnectInitiator, LogFilter, LogKind,
        StateFilter, TimeRange, Timestamp,
    },
    mqtt::Broker,
    query::{ListLogs, ListStates, MAX_PAGE_SIZE, QueryService},
    registry::{Registry, Role},
    store::Settings,
};

/// The OpenAPI 3 document of these paths, kept in the repository.
pub const OPENAPI: &str = include_str!("../../../openapi/v0002.json");

type ApiResult<T> = Result<T, ApiError>;

/// Every path of the gateway with its handlers. The router is built from
/// this table, and a test checks it against the OpenAPI document.
pub fn routes() -> Vec<(&'static str, MethodRouter<QueryService>)> {
    vec![
        ("/api/v0002/clientconnectionstates", get(list_states)),
        (
            "/api/v0002/clientconnectionstates/{clientId}",
            get(get_state).delete(delete_state),
        ),
        (
            "/api/v0002/clientconnectionstates/{clientId}/disconnect",
            axum::routing::post(disconnect_client),
        ),
        ("/api/v0002/logs/connection", get(platform_logs)),
        ("/api/v0002/clientconnectionlogs", get(logs)),
        (
            "/api/v0002/config/clientstate",
            get(get_config).put(put_config),
        ),
        (
            "/api/v0002/stream/clientconnectionstates",
            get(stream::stream_states),
        ),
        (
            "/api/v0002/apikeys",
            get(apikeys::list).post(apikeys::create),
        ),
        (
            "/api/v0002/apikeys/{key}",
            axum::routing::delete(apikeys::delete),
        ),
        (
            "/api/v0002/device/types",
            get(devices::list_types).post(devices::create_type),
        ),
        (
            "/api/v0002/device/types/{typeId}",
            get(devices::get_type).delete(devices::delete_type),
        ),
        (
            "/api/v0002/device/types/{typeId}/devices",
            get(devices::list_devices).post(devices::create_device),
        ),
        (
            "/api/v0002/device/types/{typeId}/devices/{deviceId}",
            get(devices::get_device).delete(devices::delete_device),
        ),
        ("/api/v0002/clientconnectionstats", get(stats::stats)),
        ("/api/v0002/whoami", get(stats::whoami)),
        ("/api/v0002/openapi.json", get(openapi)),
        ("/metrics", get(metrics)),
        (READY_PATH, get(ready)),
    ]
}

/// The readiness path: the one path that needs no credentials.
const READY_PATH: &str = "/ready";

/// The gateway's router. `gate` decides who may call; `registry` holds the
/// API keys the key-management paths change.
pub fn router(
    query: QueryService,
    gate: Gate,
    registry: Registry,
    broker: Option<Broker>,
) -> Router {
    let mut router = Router::new();
    for (path, methods) in routes() {
        router = router.route(path, methods);
    }
    let api = router
        .fallback(|uri: Uri| async move { ApiError::NoRoute(uri.path().to_owned()) })
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError::MethodNotAllowed(method.to_string())
        })
        // Inside the authentication: only a caller it admits may wait.
        .layer(axum::middleware::from_fn_with_state(
            query.store().clone(),
            crate::api::revision::rest,
        ))
        .layer(axum::middleware::from_fn_with_state(
            gate.clone(),
            authorise,
        ))
        .layer(axum::Extension(gate))
        .layer(axum::Extension(registry))
        .layer(axum::Extension(broker))
        .with_state(query);
    // The console's files are outside the authentication; the calls they
    // make are not.
    crate::api::console::router().merge(api)
}

/// The role a request needs, by method and path.
fn needed_role(method: &Method, path: &str) -> Role {
    if path.starts_with("/api/v0002/apikeys") {
        Role::Admin
    } else if *method == Method::GET || *method == Method::HEAD {
        Role::ReadOnly
    } else if path.starts_with("/api/v0002/config/") {
        Role::Admin
    } else {
        Role::Operator
    }
}

/// Authenticates every request and checks its role.
async fn authorise(
    State(gate): State<Gate>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path() == READY_PATH {
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = match gate.authenticate(header) {
        Ok(principal) => principal,
        Err(Refusal::InvalidCredentials) => return ApiError::InvalidCredentials.into_response(),
        Err(_) => return ApiError::Unauthorized.into_response(),
    };
    let needed = needed_role(request.method(), request.uri().path());
    if let Err(Refusal::Forbidden { needed, has }) = require(&principal, needed) {
        return ApiError::Forbidden {
            needed: needed.to_string(),
            has: has.to_string(),
        }
        .into_response();
    }
    // Handlers that act on the caller's own records read who it is.
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Path parameters: a path that does not decode (bad percent-encoding,
/// invalid UTF-8) is the platform's 400 naming the parameter, like every
/// other bad input.
pub(crate) struct PathParams<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for PathParams<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParams(value)),
            Err(rejection) => Err(ApiError::bad_path(rejection)),
        }
    }
}

/// The query parameters of the state listing.
const STATE_LIST_PARAMS: &[&str] = &[
    "connectionStatus",
    "clientType",
    "deviceType",
    "deviceId",
    "appId",
    "clientIdPrefix",
    "connectedAfter",
    "lastConnectedAfter",
    "connectedBefore",
    "lastConnectedBefore",
    "disconnectedAfter",
    "lastDisconnectedAfter",
    "disconnectedBefore",
    "lastDisconnectedBefore",
    "activeAfter",
    "lastActivityAfter",
    "activeBefore",
    "lastActivityBefore",
    "_limit",
    "_bookmark",
    "_sort",
];
/// The query parameters of the platform's connection log path.
const PLATFORM_LOG_PARAMS: &[&str] = &[
    "typeId", "deviceId", "limit", "offset", "fromTime", "toTime",
];
/// The query parameters of connstate's own log listing.
const LOG_LIST_PARAMS: &[&str] = &[
    "clientId",
    "typeId",
    "deviceId",
    "kind",
    "initiator",
    "fromTime",
    "toTime",
    "_limit",
    "_bookmark",
];
/// The query parameters of the server-sent event stream (no time filters:
/// a stream has no end to compare times with).
const STREAM_PARAMS: &[&str] = &[
    "lastEventId",
    "snapshot",
    "connectionStatus",
    "clientType",
    "deviceType",
    "deviceId",
    "appId",
    "clientIdPrefix",
];

/// The paths that take query parameters, with the names each takes. Any
/// other name is refused (400 naming it), as the platform does; a test
/// checks this table against the OpenAPI document.
pub fn query_parameters() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("/api/v0002/clientconnectionstates", STATE_LIST_PARAMS),
        ("/api/v0002/logs/connection", PLATFORM_LOG_PARAMS),
        ("/api/v0002/clientconnectionlogs", LOG_LIST_PARAMS),
        ("/api/v0002/stream/clientconnectionstates", STREAM_PARAMS),
    ]
}

/// Longest parameter name echoed back in an error.
const MAX_ECHOED_NAME: usize = 64;

/// Query parameters; empty values count as absent (client libraries send
/// `_bookmark=` on the first page). A name the path does not take is
/// refused, with or without a value: a misspelt filter must not return
/// every record.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn from_query(
        query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
        known: &[&str],
    ) -> ApiResult<Params> {
        let pairs = match query {
            Ok(Query(pairs)) => pairs,
            Err(e) => return Err(ApiError::bad("query", e.body_text())),
        };
        if let Some((name, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            let mut name = name.clone();
            if name.len() > MAX_ECHOED_NAME {
                let mut end = MAX_ECHOED_NAME;
                while !name.is_char_boundary(end) {
                    end -= 1;
                }
                name.truncate(end);
            }
            return Err(ApiError::bad(
                name,
                format!(
                    "is not a parameter of this path; it takes {}",
                    known.join(", ")
                ),
            ));
        }
        Ok(Params(pairs))
    }

    /// The last non-empty value of the first of `names` that has one.
    pub(crate) fn get(&self, names: &[&'static str]) -> Option<(&'static str, &str)> {
        names.iter().find_map(|&name| {
            self.0
                .iter()
                .rev()
                .find(|(k, v)| k == name && !v.trim().is_empty())
                .map(|(_, v)| (name, v.as_str()))
        })
    }

    fn text(&self, name: &'static str) -> ApiResult<Option<String>> {
        match self.get(&[name]) {
            Some((_, v)) if v.len() > crate::domain::MAX_CLIENT_ID_LEN => {
                Err(ApiError::bad(name, "is longer than 256 characters"))
            }
            Some((_, v)) => Ok(Some(v.to_owned())),
            None => Ok(None),
        }
    }

    fn time(&self, names: &[&'static str], now: Timestamp) -> ApiResult<Option<Timestamp>> {
        match self.get(names) {
            Some((name, v)) => parse_time(v, now)
                .map(|t| Some(crate::domain::truncate_to_millis(t)))
                .map_err(|reason| ApiError::bad(name, reason)),
            None => Ok(None),
        }
    }

    fn range(
        &self,
        after: &[&'static str],
        before: &[&'static str],
        now: Timestamp,
    ) -> ApiResult<TimeRange> {
        let range = TimeRange {
            after: self.time(after, now)?,
            before: self.time(before, now)?,
        };
        if let (Some(a), Some(b)) = (range.after, range.before)
            && a > b
        {
            let name = self.get(after).map_or(after[0], |(n, _)| n);
            return Err(ApiError::bad(
                name,
                "is later than the matching ...Before parameter",
            ));
        }
        Ok(range)
    }

    fn number(
        &self,
        name: &'static str,
        min: usize,
        max: usize,
        default: usize,
    ) -> ApiResult<usize> {
        match self.get(&[name]) {
            None => Ok(default),
            Some((_, v)) => match v.trim().parse::<usize>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad(
                    name,
                    format!("must be a whole number from {min} to {max}"),
                )),
            },
        }
    }
}

/// The state filter of a listing (`with_times`) or a stream.
fn state_filter(p: &Params, now: Timestamp, with_times: bool) -> ApiResult<StateFilter> {
    let status = match p.get(&["connectionStatus"]) {
        None => None,
        Some((_, v)) if v.eq_ignore_ascii_case("connected") => Some(ConnectionStatus::Connected),
        Some((_, v)) if v.eq_ignore_ascii_case("disconnected") => {
            Some(ConnectionStatus::Disconnected)
        }
        Some((name, _)) => return Err(ApiError::bad(name, "must be connected or disconnected")),
    };
    let client_type = match p.get(&["clientType"]) {
        None => None,
        Some((name, v)) => Some(match v.to_ascii_lowercase().as_str() {
            "device" => ClientType::Device,
            "gateway" => ClientType::Gateway,
            "application" => ClientType::Application,
            "unknown" => ClientType::Unknown,
            _ => {
                return Err(ApiError::bad(
                    name,
                    "must be device, gateway, application or unknown",
                ));
            }
        }),
    };
    let mut filter = StateFilter {
        status,
        client_type,
        type_id: p.text("deviceType")?,
        device_id: p.text("deviceId")?,
        app_id: p.text("appId")?,
        client_id_prefix: p.text("clientIdPrefix")?,
        ..Default::default()
    };
    if with_times {
        filter.connected = p.range(
            &["connectedAfter", "lastConnectedAfter"],
            &["connectedBefore", "lastConnectedBefore"],
            now,
        )?;
        filter.disconnected = p.range(
            &["disconnectedAfter", "lastDisconnectedAfter"],
            &["disconnectedBefore", "lastDisconnectedBefore"],
            now,
        )?;
        filter.active = p.range(
            &["activeAfter", "lastActivityAfter"],
            &["activeBefore", "lastActivityBefore"],
            now,
        )?;
    }
    Ok(filter)
}

fn parse_client_id(value: &str) -> ApiResult<ClientId> {
    ClientId::new(value).map_err(|e| ApiError::bad("clientId", e.to_string()))
}

/// The `{clientId}` of the path, percent-decoded.
fn path_client_id(path: Result<Path<String>, PathRejection>) -> ApiResult<ClientId> {
    match path {
        Ok(Path(id)) => parse_client_id(&id),
        Err(e) => Err(ApiError::bad_path(e)),
    }
}

async fn get_state(
    State(query): State<QueryService>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<StateJson>> {
    let client = path_client_id(path)?;
    let state = query.get_state(&client)?;
    Ok(Json(StateJson::from(&state)))
}

/// An administrator's kick: the embedded broker ends the client's
/// connection (0x98, close code 94). A client the server knows but cannot
/// end, because it is not connected or connected through another broker,
/// is a conflict (409); a client it has never seen is not found (404).
async fn disconnect_client(
    State(query): State<QueryService>,
    axum::Extension(broker): axum::Extension<Option<Broker>>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let client = path_client_id(path)?;
    let kicked = broker.is_some_and(|b| {
        b.disconnect(
            client.as_str(),
            crate::domain::DisconnectCause::AdministrativeAction,
        )
    });
    if kicked {
        return Ok(StatusCode::ACCEPTED);
    }
    let state = query.get_state(&client)?;
    let elsewhere = (state.status == ConnectionStatus::Connected
        && !crate::domain::is_embedded_broker(&state.broker))
    .then_some(state.broker);
    Err(ApiError::NotConnected {
        client: client.as_str().to_owned(),
        elsewhere,
    })
}

async fn delete_state(
    State(query): State<QueryService>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let client = path_client_id(path)?;
    query.delete_state(client).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_states(
    State(query): State<QueryService>,
    raw: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<ListJson<StateJson>>> {
    let p = Params::from_query(raw, STATE_LIST_PARAMS)?;
    let filter = state_filter(&p, Utc::now(), true)?;
    let order = match p.get(&["_sort"]) {
        None => Default::default(),
        Some((_, v)) => crate::api::convert::parse_order_by("_sort", v)?,
    };
    let unfiltered = filter == StateFilter::default();
    let limit = p.number("_limit", 1, MAX_PAGE_SIZE, 25)?;
    let page = query
        .list_states(ListStates {
            filter,
            order,
            page_size: Some(limit),
            page_token: p.get(&["_bookmark"]).map(|(_, v)| v.to_owned()),
        })
        .await?;
    Ok(Json(ListJson {
        results: page.states.iter().map(StateJson::from).collect(),
        bookmark: page.next_page_token,
        meta: unfiltered.then(|| MetaJson {
            total_rows: query.store().count_states(),
        }),
    }))
}

/// The device (or, failing that, gateway) of this organisation named by
/// `typeId` and `deviceId`.
fn device_client(query: &QueryService, type_id: &str, device_id: &str) -> ApiResult<ClientId> {
    const RULE: &str = "must be 1 to 36 characters of A-Z, a-z, 0-9, '.', '_', '-'";
    // Blame the one that is bad.
    if !crate::registry::valid_id(type_id) {
        return Err(ApiError::bad("typeId", RULE));
    }
    query
        .device_client_id(type_id, device_id)
        .ok_or_else(|| ApiError::bad("deviceId", RULE))
}

/// `GET /api/v0002/logs/connection?typeId=&deviceId=`: a bare array of
/// `{message, timestamp}`, newest first.
async fn platform_logs(
    State(query): State<QueryService>,
    raw: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<PlatformLogJson>>> {
    let p = Params::from_query(raw, PLATFORM_LOG_PARAMS)?;
    let now = Utc::now();
    let Some((_, type_id)) = p.get(&["typeId"]) else {
        return Err(ApiError::bad("typeId", "is required"));
    };
    let Some((_, device_id)) = p.get(&["deviceId"]) else {
        return Err(ApiError::bad("deviceId", "is required"));
    };
    let client = device_client(&query, type_id, device_id)?;
    let limit = p.number("limit", 1, 20, 20)?;
    let offset = p.number("offset", 0, MAX_PAGE_SIZE - 20, 0)?;
    let from = p.time(&["fromTime"], now)?;
    let to = p.time(&["toTime"], now)?;
    let time = match (from, to) {
        (Some(a), Some(b)) if a > b => {
            return Err(ApiError::bad("fromTime", "is later than toTime"));
        }
        (Some(_), None) => return Err(ApiError::bad("toTime", "is required with fromTime")),
        (None, Some(_)) => return Err(ApiError::bad("fromTime", "is required with toTime")),
        (after, before) => TimeRange { after, before },
    };
    let page = query
        .list_logs(ListLogs {
            client: Some(client),
            filter: LogFilter {
                time,
                ..Default::default()
            },
            page_size: Some(offset + limit),
            page_token: None,
        })
        .await?;
    Ok(Json(
        page.entries
            .iter()
            .skip(offset)
            .take(limit)
            .map(PlatformLogJson::from)
            .collect(),
    ))
}

/// `GET /api/v0002/clientconnectionlogs`: every structured field, all
/// clients or one, with filters and bookmarks.
async fn logs(
    State(query): State<QueryService>,
    raw: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<ListJson<LogJson>>> {
    let p = Params::from_query(raw, LOG_LIST_PARAMS)?;
    let now = Utc::now();
    let client = match (
        p.get(&["clientId"]),
        p.get(&["typeId"]),
        p.get(&["deviceId"]),
    ) {
        (Some((_, id)), None, None) => Some(parse_client_id(id)?),
        (None, Some((_, t)), Some((_, d))) => Some(device_client(&query, t, d)?),
        (None, None, None) => None,
        (Some(_), _, _) => {
            return Err(ApiError::bad(
                "clientId",
                "give either clientId or typeId and deviceId",
            ));
        }
        (None, Some(_), None) => return Err(ApiError::bad("deviceId", "is required with typeId")),
        (None, None, Some(_)) => return Err(ApiError::bad("typeId", "is required with deviceId")),
    };
    let kinds = match p.get(&["kind"]) {
        None => Vec::new(),
        Some((name, v)) => v
            .split(',')
            .map(|k| match k.trim() {
                "connected" => Ok(LogKind::Connected),
                "connectFailed" => Ok(LogKind::ConnectFailed),
                "disconnected" => Ok(LogKind::Disconnected),
                _ => Err(ApiError::bad(
                    name,
                    "must be a comma list of connected, connectFailed, disconnected",
                )),
            })
            .collect::<ApiResult<_>>()?,
    };
    let initiator = match p.get(&["initiator"]) {
        None => None,
        Some((_, "client")) => Some(DisconnectInitiator::Client),
        Some((_, "server")) => Some(DisconnectInitiator::Server),
        Some((_, "network")) => Some(DisconnectInitiator::Network),
        Some((name, _)) => return Err(ApiError::bad(name, "must be client, server or network")),
    };
    let time = p.range(&["fromTime"], &["toTime"], now)?;
    let page = query
        .list_logs(ListLogs {
            client,
            filter: LogFilter {
                kinds,
                initiator,
                time,
            },
            page_size: Some(p.number("_limit", 1, MAX_PAGE_SIZE, 100)?),
            page_token: p.get(&["_bookmark"]).map(|(_, v)| v.to_owned()),
        })
        .await?;
    Ok(Json(ListJson {
        results: page.entries.iter().map(LogJson::from).collect(),
        bookmark: page.next_page_token,
        meta: None,
    }))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureJson {
    enabled: bool,
}

async fn get_config(State(query): State<QueryService>) -> Json<FeatureJson> {
    Json(FeatureJson {
        enabled: query.settings().enabled,
    })
}

async fn put_config(
    State(query): State<QueryService>,
    JsonBody(body): JsonBody<FeatureJson>,
) -> ApiResult<Json<FeatureJson>> {
    let settings = Settings {
        enabled: body.enabled,
        ..query.settings()
    };
    let settings = query.update_settings(settings).await?;
    Ok(Json(FeatureJson {
        enabled: settings.enabled,
    }))
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
async fn metrics(State(query): State<QueryService>) -> Response {
    let pending = i64::try_from(query.store().write_back_pending()).unwrap_or(i64::MAX);
    query.metrics().store_write_back_pending.set(pending);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        query.metrics().render(),
    )
        .into_response()
}

/// `GET /ready`: 200 while the store is healthy, every configured MQTT
/// listener accepts and the server is not shutting down (the same truth
/// as gRPC health for the whole server), 503 otherwise, with the reasons.
async fn ready(
    State(query): State<QueryService>,
    axum::Extension(broker): axum::Extension<Option<Broker>>,
) -> Response {
    let reasons: Vec<String> = query
        .unready()
        .into_iter()
        .chain(broker.iter().flat_map(Broker::problems))
        .collect();
    if reasons.is_empty() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready", "reasons": reasons})),
        )
            .into_response()
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
