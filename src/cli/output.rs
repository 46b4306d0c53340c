//! What the client prints: aligned tables and key/value lists for people,
//! JSON for scripts. The JSON of a state record or log entry has the REST
//! gateway's field names (`id`, `connectionStatus`, `lastConnectTime`, ...),
//! so a script reads the same shape from either.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::pb;

/// Widest a table cell is printed; longer text ends in `…`.
const MAX_CELL: usize = 48;

/// Prints `value` as one line of JSON.
pub fn print_json(value: &Value) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// A table with a header row and aligned columns.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    /// Adds a row; every cell but the last (a message, a description) is
    /// cut at a reasonable width.
    pub fn push(&mut self, row: Vec<String>) {
        let last = row.len().saturating_sub(1);
        self.rows.push(
            row.into_iter()
                .enumerate()
                .map(|(i, c)| if i == last { c } else { cut(&c, MAX_CELL) })
                .collect(),
        );
    }

    pub fn print(&self) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = std::io::stdout().lock();
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let _ = writeln!(out, "{}", line(&widths, row));
        }
        let _ = out.flush();
    }
}

/// One row, padded to `widths` (the last cell is not padded).
pub fn line(widths: &[usize], row: &[String]) -> String {
    let mut text = String::new();
    for (i, cell) in row.iter().enumerate() {
        if i + 1 == row.len() {
            text.push_str(cell);
        } else {
            let width = widths.get(i).copied().unwrap_or(0);
            text.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count()) + 2;
            text.extend(std::iter::repeat_n(' ', pad));
        }
    }
    text.trim_end().to_owned()
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max - 1).collect();
        cut.push('…');
        cut
    }
}

/// `name: value` lines, names aligned.
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (name, value) in fields {
        let _ = writeln!(out, "{name:<width$}  {value}");
    }
    let _ = out.flush();
}

pub fn time(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
}

/// RFC 3339 with milliseconds, as the REST gateway writes times.
pub fn rfc3339(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(time)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// A table cell: RFC 3339 to the second, `-` when unset.
pub fn cell_time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(time).map_or_else(
        || "-".to_owned(),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// `3m ago`, `2h ago`, `in 40s`: how far `t` is from now.
pub fn relative(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t.and_then(time) else {
        return "-".to_owned();
    };
    let secs = (Utc::now() - t).num_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let span = match n {
        0..=59 => format!("{n}s"),
        60..=3599 => format!("{}m", n / 60),
        3600..=86_399 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

pub fn client_type(v: i32) -> &'static str {
    match pb::ClientType::try_from(v) {
        Ok(pb::ClientType::Device) => "device",
        Ok(pb::ClientType::Gateway) => "gateway",
        Ok(pb::ClientType::Application) => "application",
        Ok(pb::ClientType::Unknown) => "unknown",
        _ => "-",
    }
}

pub fn status(v: i32) -> &'static str {
    match pb::ConnectionStatus::try_from(v) {
        Ok(pb::ConnectionStatus::Connected) => "connected",
        Ok(pb::ConnectionStatus::Disconnected) => "disconnected",
        _ => "-",
    }
}

fn activity(v: i32) -> Option<&'static str> {
    Some(match pb::ActivityKind::try_from(v).ok()? {
        pb::ActivityKind::Connect => "mqttConnect",
        pb::ActivityKind::Publish => "mqttPublish",
        pb::ActivityKind::Subscribe => "mqttSubscribe",
        pb::ActivityKind::Unsubscribe => "mqttUnsubscribe",
        pb::ActivityKind::Ping => "mqttPing",
        pb::ActivityKind::Disconnect => "mqttDisconnect",
        pb::ActivityKind::Unspecified => return None,
    })
}

fn protocol(v: i32) -> Option<&'static str> {
    Some(match pb::MqttProtocol::try_from(v).ok()? {
        pb::MqttProtocol::V31 => "3.1",
        pb::MqttProtocol::V311 => "3.1.1",
        pb::MqttProtocol::V50 => "5.0",
        pb::MqttProtocol::Unspecified => return None,
    })
}

pub fn initiator(v: i32) -> Option<&'static str> {
    Some(match pb::DisconnectInitiator::try_from(v).ok()? {
        pb::DisconnectInitiator::Client => "client",
        pb::DisconnectInitiator::Server => "server",
        pb::DisconnectInitiator::Network => "network",
        pb::DisconnectInitiator::Unspecified => return None,
    })
}

pub fn log_kind(v: i32) -> &'static str {
    match pb::LogKind::try_from(v) {
        Ok(pb::LogKind::Connected) => "connected",
        Ok(pb::LogKind::ConnectFailed) => "connectFailed",
        Ok(pb::LogKind::Disconnected) => "disconnected",
        _ => "-",
    }
}

pub fn change_kind(v: i32) -> &'static str {
    match pb::ChangeKind::try_from(v) {
        Ok(pb::ChangeKind::Connected) => "connected",
        Ok(pb::ChangeKind::ConnectFailed) => "connectFailed",
        Ok(pb::ChangeKind::Disconnected) => "disconnected",
        Ok(pb::ChangeKind::Stale) => "stale",
        Ok(pb::ChangeKind::Activity) => "activity",
        Ok(pb::ChangeKind::Deleted) => "deleted",
        Ok(pb::ChangeKind::AllDeleted) => "allDeleted",
        Ok(pb::ChangeKind::Snapshot) => "snapshot",
        _ => "-",
    }
}

/// `0x8D`, or `-`.
pub fn code(c: Option<u32>) -> String {
    c.map_or_else(|| "-".to_owned(), |c| format!("0x{c:02X}"))
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v.into());
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A state record with the REST gateway's field names.
pub fn state_json(s: &pb::ConnectionState) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), s.client_id.clone().into());
    m.insert("clientType".into(), client_type(s.client_type).into());
    put(&mut m, "typeId", non_empty(&s.type_id));
    put(&mut m, "deviceId", non_empty(&s.device_id));
    put(&mut m, "appId", non_empty(&s.app_id));
    m.insert(
        "connectionStatus".into(),
        status(s.connection_status).into(),
    );
    put(
        &mut m,
        "lastConnectTime",
        rfc3339(s.last_connect_time.as_ref()),
    );
    put(
        &mut m,
        "lastDisconnectTime",
        rfc3339(s.last_disconnect_time.as_ref()),
    );
    put(&mut m, "lastActivityEvent", activity(s.last_activity_event));
    put(
        &mut m,
        "lastActivityTime",
        rfc3339(s.last_activity_time.as_ref()),
    );
    put(
        &mut m,
        "mqttConnectProtocol",
        protocol(s.mqtt_connect_protocol),
    );
    put(
        &mut m,
        "lastDisconnectInitiator",
        initiator(s.last_disconnect_initiator),
    );
    put(
        &mut m,
        "lastDisconnectReasonCode",
        s.last_disconnect_reason_code,
    );
    put(
        &mut m,
        "lastDisconnectReason",
        non_empty(&s.last_disconnect_reason),
    );
    put(&mut m, "lastCloseCode", s.last_close_code);
    m.insert("clientAddr".into(), s.client_addr.clone().into());
    m.insert("port".into(), s.port.into());
    m.insert("secure".into(), s.secure.into());
    put(&mut m, "username", non_empty(&s.username));
    m.insert("keepAliveSeconds".into(), s.keep_alive_seconds.into());
    m.insert("cleanSession".into(), s.clean_session.into());
    m.insert("connectionId".into(), s.connection_id.into());
    m.insert("revision".into(), s.revision.into());
    put(
        &mut m,
        "expectedAliveUntil",
        rfc3339(s.expected_alive_until.as_ref()),
    );
    let c = s.counters.unwrap_or_default();
    m.insert(
        "counters".into(),
        json!({
            "connects": c.connects,
            "failedConnects": c.failed_connects,
            "takeovers": c.takeovers,
            "disconnectsByClient": c.disconnects_by_client,
            "disconnectsByServer": c.disconnects_by_server,
            "disconnectsByNetwork": c.disconnects_by_network,
        }),
    );
    put(&mut m, "broker", non_empty(&s.broker));
    Value::Object(m)
}

/// A log entry with the REST gateway's field names.
pub fn log_json(e: &pb::LogEntry) -> Value {
    let mut m = Map::new();
    m.insert("clientId".into(), e.client_id.clone().into());
    m.insert("message".into(), e.message.clone().into());
    put(&mut m, "timestamp", rfc3339(e.timestamp.as_ref()));
    m.insert("kind".into(), log_kind(e.kind).into());
    put(&mut m, "initiator", initiator(e.initiator));
    put(&mut m, "reasonCode", e.reason_code);
    put(&mut m, "closeCode", e.close_code);
    put(&mut m, "clientAddr", non_empty(&e.client_addr));
    put(&mut m, "port", (e.port != 0).then_some(e.port));
    put(&mut m, "protocol", protocol(e.protocol));
    m.insert("connectionId".into(), e.connection_id.into());
    m.insert("revision".into(), e.revision.into());
    m.insert("stale".into(), e.stale.into());
    Value::Object(m)
}

/// A change of the feed.
pub fn change_json(c: &pb::Change) -> Value {
    let mut m = Map::new();
    m.insert("revision".into(), c.revision.into());
    m.insert("kind".into(), change_kind(c.kind).into());
    put(&mut m, "clientId", non_empty(&c.client_id));
    put(&mut m, "commitTime", rfc3339(c.commit_time.as_ref()));
    put(&mut m, "state", c.state.as_ref().map(state_json));
    put(&mut m, "logEntry", c.log_entry.as_ref().map(log_json));
    Value::Object(m)
}
