//! `GET /api/v0002/stream/clientconnectionstates`: the change feed as
//! Server-Sent Events for browsers. Each change is an event with the
//! revision as its id, so a browser's `EventSource` resumes after a
//! reconnect with `Last-Event-ID` and misses nothing. The JSON text of a
//! change is built once and shared by every stream that sends it.

use std::{convert::Infallible, sync::Arc};

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use chrono::Utc;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};

use super::{
    ApiResult, Params, STREAM_PARAMS,
    error::ApiError,
    json::{LogJson, StateJson},
    state_filter,
};
use crate::{
    domain::{Change, ChangeKind},
    metrics::FormatLabel,
    query::{QueryError, QueryService, WatchEnd, WatchItem, WatchRequest},
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChangeJson {
    revision: u64,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<StateJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_entry: Option<LogJson>,
}

fn kind_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Connected => "connected",
        ChangeKind::ConnectFailed => "connectFailed",
        ChangeKind::Disconnected => "disconnected",
        ChangeKind::Stale => "stale",
        ChangeKind::Activity => "activity",
        ChangeKind::Deleted => "deleted",
        ChangeKind::AllDeleted => "allDeleted",
    }
}

impl From<&Change> for ChangeJson {
    fn from(c: &Change) -> Self {
        ChangeJson {
            revision: c.revision,
            kind: kind_name(c.kind),
            client_id: c.client_id.as_ref().map(|id| id.to_string()),
            state: c.state.as_ref().map(StateJson::from),
            log_entry: c.log_entry.as_ref().map(LogJson::from),
        }
    }
}

fn json_event(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name))
}

/// The JSON text of `change`: built by the first stream that sends it
/// (counted in `encoded`), shared by the rest.
fn change_json(change: &Change, encoded: &Counter) -> Arc<str> {
    change
        .wire
        .json
        .get_or_init(|| {
            encoded.inc();
            // Serialising these plain fields cannot fail; an empty text
            // sends the event without data, as `json_event` would.
            serde_json::to_string(&ChangeJson::from(change))
                .unwrap_or_default()
                .into()
        })
        .clone()
}

fn sse_event(item: Result<WatchItem, WatchEnd>, encoded: &Counter) -> Event {
    match item {
        Ok(WatchItem::Change(change)) => {
            let json = change_json(&change, encoded);
            let event = Event::default().event("change");
            let event = if json.is_empty() {
                event
            } else {
                event.data(&*json)
            };
            event.id(change.revision.to_string())
        }
        Ok(WatchItem::Snapshot(state)) => json_event("snapshot", &StateJson::from(state.as_ref())),
        Ok(WatchItem::SnapshotComplete(revision)) => json_event(
            "snapshotComplete",
            &serde_json::json!({ "revision": revision }),
        )
        .id(revision.to_string()),
        Ok(WatchItem::Heartbeat { revision, .. }) => {
            Event::default().comment(format!("heartbeat {revision}"))
        }
        Err(end) => {
            let (reason, revision) = match end {
                WatchEnd::Lagged { last_delivered } => ("lagged", last_delivered),
                WatchEnd::OutOfRange { oldest, .. } => ("outOfRange", oldest),
                WatchEnd::ShuttingDown { last_delivered } => ("shuttingDown", last_delivered),
                WatchEnd::Failed { last_delivered } => ("failed", last_delivered),
            };
            json_event(
                "end",
                &serde_json::json!({ "reason": reason, "revision": revision }),
            )
        }
    }
}

pub(super) async fn stream_states(
    State(query): State<QueryService>,
    headers: HeaderMap,
    raw: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let p = Params::from_query(raw, STREAM_PARAMS)?;
    let filter = state_filter(&p, Utc::now(), false)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(("Last-Event-ID", v.to_str().unwrap_or("").to_owned())),
        None => p.get(&["lastEventId"]).map(|(n, v)| (n, v.to_owned())),
    };
    let start_revision = match &last_event_id {
        None => None,
        Some((name, v)) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad(*name, "must be a revision (a whole number)"))?,
        ),
    };
    let include_snapshot = match p.get(&["snapshot"]) {
        None => false,
        Some((_, "true")) => start_revision.is_none(),
        Some((_, "false")) => false,
        Some((name, _)) => return Err(ApiError::bad(name, "must be true or false")),
    };
    let items = query
        .watch(WatchRequest {
            filter,
            start_revision,
            include_snapshot,
            kinds: Vec::new(),
            heartbeat_interval: None,
        })
        .map_err(|e| match (e, &last_event_id) {
            // Name the parameter the revision came in.
            (e @ QueryError::AheadOfStore { .. }, Some((name, _))) => {
                ApiError::bad(*name, e.to_string())
            }
            (e, _) => ApiError::from(e),
        })?;
    let encoded = query
        .metrics()
        .watch_changes_encoded
        .get_or_create(&FormatLabel { format: "json" })
        .clone();
    let events = ReceiverStream::new(items).map(move |item| Ok(sse_event(item, &encoded)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
