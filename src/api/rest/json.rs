//! The REST JSON shapes, with the platform's field names. Absent values are
//! left out, never `null`.

use serde::Serialize;

use super::params::format_time;
use crate::domain::{ConnectionState, LogEntry};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateJson {
    pub id: String,
    pub client_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    pub connection_status: &'static str,
    pub last_connect_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_disconnect_time: Option<String>,
    pub last_activity_event: &'static str,
    pub last_activity_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_connect_protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_disconnect_initiator: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_disconnect_reason_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_disconnect_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_close_code: Option<u16>,
    pub client_addr: String,
    pub port: u16,
    pub secure: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    pub keep_alive_seconds: u16,
    pub clean_session: bool,
    pub connection_id: u64,
    pub revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_alive_until: Option<String>,
    pub counters: CountersJson,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountersJson {
    pub connects: u64,
    pub failed_connects: u64,
    pub takeovers: u64,
    pub disconnects_by_client: u64,
    pub disconnects_by_server: u64,
    pub disconnects_by_network: u64,
}

impl From<&ConnectionState> for StateJson {
    fn from(s: &ConnectionState) -> Self {
        let kind = s.client_id.kind();
        let last = s.last_disconnect.as_ref();
        let c = &s.counters;
        StateJson {
            id: s.client_id.to_string(),
            client_type: kind.client_type().as_str(),
            type_id: kind.type_id().map(str::to_owned),
            device_id: kind.device_id().map(str::to_owned),
            app_id: kind.app_id().map(str::to_owned),
            connection_status: s.status.as_str(),
            last_connect_time: format_time(s.last_connect_time),
            last_disconnect_time: last.map(|d| format_time(d.time)),
            last_activity_event: s.last_activity.as_str(),
            last_activity_time: format_time(s.last_activity_time),
            mqtt_connect_protocol: s.connection.protocol.map(|p| p.as_str()),
            last_disconnect_initiator: last.map(|d| d.initiator.as_str()),
            last_disconnect_reason_code: last.and_then(|d| d.reason_code).map(|c| c.0),
            last_disconnect_reason: last.map(|d| d.reason.clone()),
            last_close_code: last.map(|d| d.close_code.0),
            client_addr: s.connection.addr.to_string(),
            port: s.connection.port,
            secure: s.connection.secure,
            username: s.connection.username.clone(),
            keep_alive_seconds: s.connection.keep_alive,
            clean_session: s.connection.clean_session,
            connection_id: s.connection_id,
            revision: s.revision,
            expected_alive_until: s.expected_alive_until().map(format_time),
            counters: CountersJson {
                connects: c.connects,
                failed_connects: c.failed_connects,
                takeovers: c.takeovers,
                disconnects_by_client: c.disconnects_by_client,
                disconnects_by_server: c.disconnects_by_server,
                disconnects_by_network: c.disconnects_by_network,
            },
        }
    }
}

/// The list envelope: `bookmark` only when another page exists.
#[derive(Serialize)]
pub struct ListJson<T> {
    pub results: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bookmark: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<MetaJson>,
}

#[derive(Serialize)]
pub struct MetaJson {
    pub total_rows: usize,
}

/// A log entry on the platform's path: exactly `{message, timestamp}`.
#[derive(Serialize)]
pub struct PlatformLogJson {
    pub message: String,
    pub timestamp: String,
}

impl From<&LogEntry> for PlatformLogJson {
    fn from(e: &LogEntry) -> Self {
        PlatformLogJson {
            message: e.message.clone(),
            timestamp: format_time(e.time),
        }
    }
}

/// A log entry with every structured field (connstate's own path).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogJson {
    pub client_id: String,
    pub message: String,
    pub timestamp: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initiator: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    pub connection_id: u64,
    pub revision: u64,
    pub stale: bool,
}

impl From<&LogEntry> for LogJson {
    fn from(e: &LogEntry) -> Self {
        LogJson {
            client_id: e.client_id.to_string(),
            message: e.message.clone(),
            timestamp: format_time(e.time),
            kind: e.kind.as_str(),
            initiator: e.initiator.map(|i| i.as_str()),
            reason_code: e.reason_code.map(|c| c.0),
            close_code: e.close_code.map(|c| c.0),
            client_addr: e.addr.map(|a| a.to_string()),
            port: e.addr.map(|_| e.port),
            protocol: e.protocol.map(|p| p.as_str()),
            connection_id: e.connection_id,
            revision: e.revision,
            stale: e.stale,
        }
    }
}
