//! `GET /api/v0002/whoami` (the caller's key and role, so that a console
//! shows only what the caller may do) and `GET
//! /api/v0002/clientconnectionstats` (the fleet at a glance: connected
//! clients by type, and the last hour's connects and disconnects, which
//! would otherwise take a client fetching every log entry of the hour).

use std::collections::{BTreeMap, HashMap};

use axum::{Extension, Json, extract::State};
use chrono::{DurationRound, TimeDelta, Utc};
use serde::Serialize;

use super::{ApiResult, json::CountersJson, params::format_time};
use crate::{
    api::auth::Gate,
    domain::{ClientId, ClientType, LogFilter, LogKind, TimeRange},
    query::{ListLogs, MAX_PAGE_SIZE, QueryError, QueryService},
    registry::Principal,
};

/// Minutes the statistics look back.
const WINDOW_MINUTES: i64 = 60;
/// Log entries one statistics request reads at most; past that the answer
/// says `truncated` and counts the newest entries only.
const MAX_ENTRIES: usize = 100_000;
/// Clients in the list of those that dropped most often.
const TOP_CLIENTS: usize = 10;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WhoAmIJson {
    key: String,
    role: &'static str,
    /// Whether the server asks for credentials (false in open mode).
    auth: bool,
}

pub(super) async fn whoami(
    Extension(gate): Extension<Gate>,
    Extension(caller): Extension<Principal>,
) -> Json<WhoAmIJson> {
    Json(WhoAmIJson {
        key: caller.key,
        role: caller.role.as_str(),
        auth: !gate.is_open(),
    })
}

#[derive(Serialize, Default)]
pub(super) struct ConnectedJson {
    device: usize,
    gateway: usize,
    application: usize,
    unknown: usize,
    total: usize,
}

#[derive(Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub(super) struct MinuteJson {
    minute: String,
    connects: u64,
    failed_connects: u64,
    disconnects: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CauseJson {
    initiator: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    count: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DroppingJson {
    id: String,
    /// Disconnects in the window.
    disconnects: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_status: Option<&'static str>,
    /// The record's counters since it was first seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    counters: Option<CountersJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StatsJson {
    /// The store revision the answer is at least as new as.
    revision: u64,
    from_time: String,
    to_time: String,
    connected: ConnectedJson,
    per_minute: Vec<MinuteJson>,
    disconnects_by_cause: Vec<CauseJson>,
    most_disconnected: Vec<DroppingJson>,
    entries_read: usize,
    truncated: bool,
}

pub(super) async fn stats(State(query): State<QueryService>) -> ApiResult<Json<StatsJson>> {
    let now = Utc::now();
    let this_minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
    let from = this_minute - TimeDelta::minutes(WINDOW_MINUTES - 1);
    let mut minutes: Vec<MinuteJson> = (0..WINDOW_MINUTES)
        .map(|i| MinuteJson {
            minute: format_time(from + TimeDelta::minutes(i)),
            ..Default::default()
        })
        .collect();
    let mut causes: BTreeMap<(&'static str, Option<u8>), u64> = BTreeMap::new();
    let mut dropped: HashMap<ClientId, u64> = HashMap::new();
    let mut entries_read = 0;
    let mut page_token = None;
    let mut revision = None;
    let truncated = loop {
        let page = query
            .list_logs(ListLogs {
                client: None,
                filter: LogFilter {
                    time: TimeRange {
                        after: Some(from),
                        before: None,
                    },
                    ..Default::default()
                },
                page_size: Some(MAX_PAGE_SIZE),
                page_token: page_token.take(),
            })
            .await?;
        revision.get_or_insert(page.revision);
        for entry in &page.entries {
            entries_read += 1;
            let minute = (entry.time - from).num_minutes();
            let Some(bucket) = usize::try_from(minute)
                .ok()
                .and_then(|m| minutes.get_mut(m))
            else {
                continue;
            };
            match entry.kind {
                LogKind::Connected => bucket.connects += 1,
                LogKind::ConnectFailed => bucket.failed_connects += 1,
                LogKind::Disconnected => {
                    bucket.disconnects += 1;
                    let initiator = entry.initiator.map_or("unknown", |i| i.as_str());
                    *causes
                        .entry((initiator, entry.reason_code.map(|c| c.0)))
                        .or_default() += 1;
                    *dropped.entry(entry.client_id.clone()).or_default() += 1;
                }
            }
        }
        match page.next_page_token {
            Some(token) if entries_read < MAX_ENTRIES => page_token = Some(token),
            Some(_) => break true,
            None => break false,
        }
    };
    let mut connected = ConnectedJson::default();
    for client in query
        .store()
        .connected_clients()
        .map_err(QueryError::from)?
    {
        connected.total += 1;
        match client.kind().client_type() {
            ClientType::Device => connected.device += 1,
            ClientType::Gateway => connected.gateway += 1,
            ClientType::Application => connected.application += 1,
            ClientType::Unknown => connected.unknown += 1,
        }
    }
    let mut dropped: Vec<(ClientId, u64)> = dropped.into_iter().collect();
    dropped.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
    dropped.truncate(TOP_CLIENTS);
    let most_disconnected = dropped
        .into_iter()
        .map(|(client, disconnects)| {
            let state = query.get_state(&client).ok();
            DroppingJson {
                id: client.to_string(),
                disconnects,
                connection_status: state.as_ref().map(|s| s.status.as_str()),
                counters: state
                    .as_ref()
                    .map(|s| super::json::StateJson::from(s).counters),
            }
        })
        .collect();
    let mut disconnects_by_cause: Vec<CauseJson> = causes
        .into_iter()
        .map(|((initiator, reason_code), count)| CauseJson {
            initiator,
            reason_code,
            reason: reason_code.map(|c| crate::domain::ReasonCode(c).description()),
            count,
        })
        .collect();
    disconnects_by_cause.sort_by_key(|c| std::cmp::Reverse(c.count));
    Ok(Json(StatsJson {
        revision: revision.unwrap_or_default(),
        from_time: format_time(from),
        to_time: format_time(now),
        connected,
        per_minute: minutes,
        disconnects_by_cause,
        most_disconnected,
        entries_read,
        truncated,
    }))
}
