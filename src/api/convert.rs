//! Conversions between the generated protobuf types and domain types.
//! Validation of every request field lives here, so that an invalid request
//! is refused with INVALID_ARGUMENT naming the field before anything runs.

use std::{net::IpAddr, sync::Arc, time::Duration};

use crate::{
    domain::{
        ActivityKind, Change, ChangeKind, ClientId, ClientType, ConnectFailure, ConnectionInfo,
        ConnectionState, ConnectionStatus, DisconnectCause, DisconnectInitiator, EventKind,
        LifecycleEvent, LogEntry, LogFilter, LogKind, MqttProtocol, ReasonCode, SortField,
        StateFilter, StateOrder, TimeRange, Timestamp, is_embedded_broker, truncate_to_millis,
    },
    pb,
    query::{MAX_INGEST_BATCH, MAX_PAGE_SIZE, QueryError, WatchItem},
    store::Settings,
};

type Result<T> = std::result::Result<T, QueryError>;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> QueryError {
    QueryError::invalid(field, reason)
}

// ---------------------------------------------------------------------------
// Scalars
// ---------------------------------------------------------------------------

pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Seconds of 0001-01-01T00:00:00Z, the earliest time a protobuf
/// Timestamp may hold.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// Seconds of 9999-12-31T23:59:59Z, the latest.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// The longest watch heartbeat interval.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3600);
/// The most changes a watcher may ask for in one message.
pub const MAX_CHANGES_PER_MESSAGE: u32 = 1000;
/// The longest retention age (ten years).
pub const MAX_RETENTION_AGE: Duration = Duration::from_secs(3650 * 24 * 3600);

/// A request time: valid nanos, within the range protobuf defines for a
/// Timestamp (years 1 to 9999); kept to the millisecond.
pub fn parse_timestamp(field: &str, t: &prost_types::Timestamp) -> Result<Timestamp> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(field, "nanos must be from 0 to 999,999,999"));
    }
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&t.seconds) {
        return Err(invalid(
            field,
            "is out of range: a time must be from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z",
        ));
    }
    chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32)
        .map(truncate_to_millis)
        .ok_or_else(|| invalid(field, "is out of range"))
}

fn optional_timestamp(
    field: &str,
    t: &Option<prost_types::Timestamp>,
) -> Result<Option<Timestamp>> {
    t.as_ref().map(|t| parse_timestamp(field, t)).transpose()
}

pub fn parse_client_id(field: &str, id: &str) -> Result<ClientId> {
    ClientId::new(id).map_err(|e| invalid(field, e.to_string()))
}

/// An optional string filter: empty means unset; at most 256 bytes.
fn optional_text(field: &str, value: &str) -> Result<Option<String>> {
    if value.len() > crate::domain::MAX_CLIENT_ID_LEN {
        return Err(invalid(field, "is longer than 256 bytes"));
    }
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

/// `page_size`: 0 means the default (as proto3 sends it when unset);
/// negative or above the maximum is refused.
pub fn parse_page_size(field: &str, size: i32) -> Result<Option<usize>> {
    match size {
        0 => Ok(None),
        s if s < 0 => Err(invalid(field, "must not be negative")),
        s if s as usize > MAX_PAGE_SIZE => {
            Err(invalid(field, format!("must be at most {MAX_PAGE_SIZE}")))
        }
        s => Ok(Some(s as usize)),
    }
}

fn page_token(token: &str) -> Option<String> {
    (!token.is_empty()).then(|| token.to_owned())
}

/// A duration from `min` to `max`, both named in the error.
fn parse_duration(
    field: &str,
    d: &prost_types::Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(invalid(field, "must be a positive duration"));
    }
    let d = Duration::new(d.seconds as u64, d.nanos as u32);
    if d < min || d > max {
        return Err(invalid(
            field,
            format!(
                "must be from {} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

// ---------------------------------------------------------------------------
// Enumerations
// ---------------------------------------------------------------------------

fn unknown_enum(field: &str, value: i32) -> QueryError {
    invalid(field, format!("unknown value {value}"))
}

fn parse_status(field: &str, v: i32) -> Result<Option<ConnectionStatus>> {
    match pb::ConnectionStatus::try_from(v) {
        Ok(pb::ConnectionStatus::Unspecified) => Ok(None),
        Ok(pb::ConnectionStatus::Connected) => Ok(Some(ConnectionStatus::Connected)),
        Ok(pb::ConnectionStatus::Disconnected) => Ok(Some(ConnectionStatus::Disconnected)),
        Err(_) => Err(unknown_enum(field, v)),
    }
}

fn parse_client_type(field: &str, v: i32) -> Result<Option<ClientType>> {
    match pb::ClientType::try_from(v) {
        Ok(pb::ClientType::Unspecified) => Ok(None),
        Ok(pb::ClientType::Device) => Ok(Some(ClientType::Device)),
        Ok(pb::ClientType::Gateway) => Ok(Some(ClientType::Gateway)),
        Ok(pb::ClientType::Application) => Ok(Some(ClientType::Application)),
        Ok(pb::ClientType::Unknown) => Ok(Some(ClientType::Unknown)),
        Err(_) => Err(unknown_enum(field, v)),
    }
}

fn parse_initiator(field: &str, v: i32) -> Result<Option<DisconnectInitiator>> {
    match pb::DisconnectInitiator::try_from(v) {
        Ok(pb::DisconnectInitiator::Unspecified) => Ok(None),
        Ok(pb::DisconnectInitiator::Client) => Ok(Some(DisconnectInitiator::Client)),
        Ok(pb::DisconnectInitiator::Server) => Ok(Some(DisconnectInitiator::Server)),
        Ok(pb::DisconnectInitiator::Network) => Ok(Some(DisconnectInitiator::Network)),
        Err(_) => Err(unknown_enum(field, v)),
    }
}

fn parse_log_kind(field: &str, v: i32) -> Result<LogKind> {
    match pb::LogKind::try_from(v) {
        Ok(pb::LogKind::Connected) => Ok(LogKind::Connected),
        Ok(pb::LogKind::ConnectFailed) => Ok(LogKind::ConnectFailed),
        Ok(pb::LogKind::Disconnected) => Ok(LogKind::Disconnected),
        Ok(pb::LogKind::Unspecified) => Err(invalid(field, "must not be LOG_KIND_UNSPECIFIED")),
        Err(_) => Err(unknown_enum(field, v)),
    }
}

fn parse_change_kind(field: &str, v: i32) -> Result<ChangeKind> {
    Ok(match pb::ChangeKind::try_from(v) {
        Ok(pb::ChangeKind::Connected) => ChangeKind::Connected,
        Ok(pb::ChangeKind::ConnectFailed) => ChangeKind::ConnectFailed,
        Ok(pb::ChangeKind::Disconnected) => ChangeKind::Disconnected,
        Ok(pb::ChangeKind::Stale) => ChangeKind::Stale,
        Ok(pb::ChangeKind::Activity) => ChangeKind::Activity,
        Ok(pb::ChangeKind::Deleted) => ChangeKind::Deleted,
        Ok(pb::ChangeKind::AllDeleted) => ChangeKind::AllDeleted,
        Ok(pb::ChangeKind::Unspecified | pb::ChangeKind::Snapshot) => {
            return Err(invalid(field, "must name a kind of change"));
        }
        Err(_) => return Err(unknown_enum(field, v)),
    })
}

fn parse_protocol(field: &str, v: i32) -> Result<Option<MqttProtocol>> {
    match pb::MqttProtocol::try_from(v) {
        Ok(pb::MqttProtocol::Unspecified) => Ok(None),
        Ok(pb::MqttProtocol::V31) => Ok(Some(MqttProtocol::V3_1)),
        Ok(pb::MqttProtocol::V311) => Ok(Some(MqttProtocol::V3_1_1)),
        Ok(pb::MqttProtocol::V50) => Ok(Some(MqttProtocol::V5_0)),
        Err(_) => Err(unknown_enum(field, v)),
    }
}

fn protocol(p: Option<MqttProtocol>) -> pb::MqttProtocol {
    match p {
        None => pb::MqttProtocol::Unspecified,
        Some(MqttProtocol::V3_1) => pb::MqttProtocol::V31,
        Some(MqttProtocol::V3_1_1) => pb::MqttProtocol::V311,
        Some(MqttProtocol::V5_0) => pb::MqttProtocol::V50,
    }
}

fn client_type(t: ClientType) -> pb::ClientType {
    match t {
        ClientType::Device => pb::ClientType::Device,
        ClientType::Gateway => pb::ClientType::Gateway,
        ClientType::Application => pb::ClientType::Application,
        ClientType::Unknown => pb::ClientType::Unknown,
    }
}

fn initiator(i: Option<DisconnectInitiator>) -> pb::DisconnectInitiator {
    match i {
        None => pb::DisconnectInitiator::Unspecified,
        Some(DisconnectInitiator::Client) => pb::DisconnectInitiator::Client,
        Some(DisconnectInitiator::Server) => pb::DisconnectInitiator::Server,
        Some(DisconnectInitiator::Network) => pb::DisconnectInitiator::Network,
    }
}

fn activity(a: ActivityKind) -> pb::ActivityKind {
    match a {
        ActivityKind::Connect => pb::ActivityKind::Connect,
        ActivityKind::Publish => pb::ActivityKind::Publish,
        ActivityKind::Subscribe => pb::ActivityKind::Subscribe,
        ActivityKind::Unsubscribe => pb::ActivityKind::Unsubscribe,
        ActivityKind::Ping => pb::ActivityKind::Ping,
        ActivityKind::Disconnect => pb::ActivityKind::Disconnect,
    }
}

fn change_kind(k: ChangeKind) -> pb::ChangeKind {
    match k {
        ChangeKind::Connected => pb::ChangeKind::Connected,
        ChangeKind::ConnectFailed => pb::ChangeKind::ConnectFailed,
        ChangeKind::Disconnected => pb::ChangeKind::Disconnected,
        ChangeKind::Stale => pb::ChangeKind::Stale,
        ChangeKind::Activity => pb::ChangeKind::Activity,
        ChangeKind::Deleted => pb::ChangeKind::Deleted,
        ChangeKind::AllDeleted => pb::ChangeKind::AllDeleted,
    }
}

fn log_kind(k: LogKind) -> pb::LogKind {
    match k {
        LogKind::Connected => pb::LogKind::Connected,
        LogKind::ConnectFailed => pb::LogKind::ConnectFailed,
        LogKind::Disconnected => pb::LogKind::Disconnected,
    }
}

// ---------------------------------------------------------------------------
// Records out
// ---------------------------------------------------------------------------

impl From<&ConnectionState> for pb::ConnectionState {
    fn from(s: &ConnectionState) -> Self {
        let kind = s.client_id.kind();
        let last = s.last_disconnect.as_ref();
        let c = &s.counters;
        pb::ConnectionState {
            client_id: s.client_id.to_string(),
            client_type: client_type(kind.client_type()) as i32,
            type_id: kind.type_id().unwrap_or_default().to_owned(),
            device_id: kind.device_id().unwrap_or_default().to_owned(),
            app_id: kind.app_id().unwrap_or_default().to_owned(),
            org_id: kind.org().unwrap_or_default().to_owned(),
            connection_status: match s.status {
                ConnectionStatus::Connected => pb::ConnectionStatus::Connected,
                ConnectionStatus::Disconnected => pb::ConnectionStatus::Disconnected,
            } as i32,
            last_connect_time: Some(timestamp(s.last_connect_time)),
            last_disconnect_time: last.map(|d| timestamp(d.time)),
            last_activity_event: activity(s.last_activity) as i32,
            last_activity_time: Some(timestamp(s.last_activity_time)),
            mqtt_connect_protocol: protocol(s.connection.protocol) as i32,
            last_disconnect_initiator: initiator(last.map(|d| d.initiator)) as i32,
            last_disconnect_reason_code: last.and_then(|d| d.reason_code).map(|c| u32::from(c.0)),
            last_disconnect_reason: last.map(|d| d.reason.clone()).unwrap_or_default(),
            last_close_code: last.map(|d| u32::from(d.close_code.0)),
            client_addr: s.connection.addr.to_string(),
            port: u32::from(s.connection.port),
            secure: s.connection.secure,
            username: s.connection.username.clone(),
            keep_alive_seconds: u32::from(s.connection.keep_alive),
            clean_session: s.connection.clean_session,
            connection_id: s.connection_id,
            revision: s.revision,
            expected_alive_until: s.expected_alive_until().map(timestamp),
            counters: Some(pb::ConnectionCounters {
                connects: c.connects,
                failed_connects: c.failed_connects,
                takeovers: c.takeovers,
                disconnects_by_client: c.disconnects_by_client,
                disconnects_by_server: c.disconnects_by_server,
                disconnects_by_network: c.disconnects_by_network,
            }),
            broker: s.broker.clone(),
        }
    }
}

impl From<&LogEntry> for pb::LogEntry {
    fn from(e: &LogEntry) -> Self {
        pb::LogEntry {
            client_id: e.client_id.to_string(),
            message: e.message.clone(),
            timestamp: Some(timestamp(e.time)),
            kind: log_kind(e.kind) as i32,
            initiator: initiator(e.initiator) as i32,
            reason_code: e.reason_code.map(|c| u32::from(c.0)),
            close_code: e.close_code.map(|c| u32::from(c.0)),
            client_addr: e.addr.map(|a| a.to_string()).unwrap_or_default(),
            port: u32::from(e.port),
            protocol: protocol(e.protocol) as i32,
            connection_id: e.connection_id,
            revision: e.revision,
            stale: e.stale,
        }
    }
}

impl From<&Change> for pb::Change {
    fn from(c: &Change) -> Self {
        pb::Change {
            revision: c.revision,
            kind: change_kind(c.kind) as i32,
            client_id: c
                .client_id
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            state: c.state.as_ref().map(pb::ConnectionState::from),
            log_entry: c.log_entry.as_ref().map(pb::LogEntry::from),
            commit_time: Some(timestamp(c.commit_time)),
        }
    }
}

impl From<&Settings> for pb::Settings {
    fn from(s: &Settings) -> Self {
        pb::Settings {
            enabled: s.enabled,
            log_max_age: Some(duration(s.log_max_age)),
            log_max_entries_per_client: s.log_max_entries_per_client,
            feed_max_age: Some(duration(s.feed_max_age)),
            feed_max_entries: s.feed_max_entries,
        }
    }
}

// ---------------------------------------------------------------------------
// Requests in
// ---------------------------------------------------------------------------

fn time_range(
    prefix: &str,
    name: &str,
    after: &Option<prost_types::Timestamp>,
    before: &Option<prost_types::Timestamp>,
) -> Result<TimeRange> {
    let after_field = format!("{prefix}{name}_after");
    let before_field = format!("{prefix}{name}_before");
    let range = TimeRange {
        after: optional_timestamp(&after_field, after)?,
        before: optional_timestamp(&before_field, before)?,
    };
    if let (Some(a), Some(b)) = (range.after, range.before)
        && a > b
    {
        return Err(invalid(
            after_field,
            format!("must not be later than {before_field}"),
        ));
    }
    Ok(range)
}

/// A state filter; `prefix` is the path of the filter field (`filter.`).
pub fn parse_filter(prefix: &str, f: &pb::ConnectionStateFilter) -> Result<StateFilter> {
    let field = |name: &str| format!("{prefix}{name}");
    Ok(StateFilter {
        status: parse_status(&field("connection_status"), f.connection_status)?,
        client_type: parse_client_type(&field("client_type"), f.client_type)?,
        type_id: optional_text(&field("type_id"), &f.type_id)?,
        device_id: optional_text(&field("device_id"), &f.device_id)?,
        app_id: optional_text(&field("app_id"), &f.app_id)?,
        client_id_prefix: optional_text(&field("client_id_prefix"), &f.client_id_prefix)?,
        connected: time_range(prefix, "connected", &f.connected_after, &f.connected_before)?,
        disconnected: time_range(
            prefix,
            "disconnected",
            &f.disconnected_after,
            &f.disconnected_before,
        )?,
        active: time_range(prefix, "active", &f.active_after, &f.active_before)?,
    })
}

/// `order_by`: one field, API or REST spelling, optionally ` desc`/` asc`
/// or a leading `-`; a trailing `, client_id` tie-break is accepted.
pub fn parse_order_by(field: &str, order_by: &str) -> Result<StateOrder> {
    let terms: Vec<&str> = order_by
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let parse_term = |term: &str| -> Result<StateOrder> {
        let (name, descending) = match term.split_whitespace().collect::<Vec<_>>().as_slice() {
            [name] => match name.strip_prefix('-') {
                Some(name) => (name.to_owned(), true),
                None => (name.to_string(), false),
            },
            [name, dir] if dir.eq_ignore_ascii_case("desc") => (name.to_string(), true),
            [name, dir] if dir.eq_ignore_ascii_case("asc") => (name.to_string(), false),
            _ => return Err(invalid(field, format!("cannot parse {term:?}"))),
        };
        let sort = match name.as_str() {
            "client_id" | "id" | "clientId" => SortField::ClientId,
            "last_connect_time" | "lastConnectTime" => SortField::LastConnectTime,
            "last_disconnect_time" | "lastDisconnectTime" => SortField::LastDisconnectTime,
            "last_activity_time" | "lastActivityTime" => SortField::LastActivityTime,
            "connection_status" | "connectionStatus" => SortField::ConnectionStatus,
            other => {
                return Err(invalid(
                    field,
                    format!(
                        "unknown sort field {other:?}; use client_id, last_connect_time, \
                         last_disconnect_time, last_activity_time or connection_status"
                    ),
                ));
            }
        };
        Ok(StateOrder {
            field: sort,
            descending,
        })
    };
    match terms.as_slice() {
        [] => Ok(StateOrder::default()),
        [one] => parse_term(one),
        [first, second] => {
            let first = parse_term(first)?;
            let second = parse_term(second)?;
            if second.field == SortField::ClientId && second.descending == first.descending {
                Ok(first)
            } else {
                Err(invalid(
                    field,
                    "only one sort field is supported (ties are ordered by client id)",
                ))
            }
        }
        _ => Err(invalid(
            field,
            "only one sort field is supported (ties are ordered by client id)",
        )),
    }
}

pub fn parse_log_filter(r: &pb::ListConnectionLogsRequest) -> Result<LogFilter> {
    let kinds = r
        .kinds
        .iter()
        .enumerate()
        .map(|(i, &k)| parse_log_kind(&format!("kinds[{i}]"), k))
        .collect::<Result<Vec<_>>>()?;
    let time = TimeRange {
        after: optional_timestamp("start_time", &r.start_time)?,
        before: optional_timestamp("end_time", &r.end_time)?,
    };
    if let (Some(a), Some(b)) = (time.after, time.before)
        && a > b
    {
        return Err(invalid("start_time", "must not be later than end_time"));
    }
    Ok(LogFilter {
        kinds,
        initiator: parse_initiator("initiator", r.initiator)?,
        time,
    })
}

/// The client a log request names: `client_id`, or `type_id` + `device_id`
/// resolved by `device` (the query service's device lookup).
pub fn parse_log_client(
    r: &pb::ListConnectionLogsRequest,
    device: impl Fn(&str, &str) -> Option<ClientId>,
) -> Result<Option<ClientId>> {
    match (
        r.client_id.is_empty(),
        r.type_id.is_empty(),
        r.device_id.is_empty(),
    ) {
        (true, true, true) => Ok(None),
        (false, true, true) => Ok(Some(parse_client_id("client_id", &r.client_id)?)),
        (false, _, _) => Err(invalid(
            "client_id",
            "give either client_id or type_id and device_id, not both",
        )),
        (true, false, false) => device(&r.type_id, &r.device_id).map(Some).ok_or_else(|| {
            invalid(
                "device_id",
                "type_id and device_id must be 1 to 36 characters of A-Z, a-z, 0-9, '.', '_', '-'",
            )
        }),
        (true, true, false) => Err(invalid("type_id", "is required with device_id")),
        (true, false, true) => Err(invalid("device_id", "is required with type_id")),
    }
}

pub fn parse_watch(r: &pb::WatchConnectionsRequest) -> Result<crate::query::WatchRequest> {
    let filter = parse_filter("filter.", &r.filter.clone().unwrap_or_default())?;
    if filter.has_time_bounds() {
        return Err(invalid(
            "filter",
            "time bounds cannot be used to watch; filter on status, type or id",
        ));
    }
    if r.include_snapshot && r.start_revision.is_some() {
        return Err(invalid(
            "include_snapshot",
            "cannot be combined with start_revision",
        ));
    }
    let kinds = r
        .kinds
        .iter()
        .enumerate()
        .map(|(i, &k)| parse_change_kind(&format!("kinds[{i}]"), k))
        .collect::<Result<Vec<_>>>()?;
    let heartbeat_interval = match &r.heartbeat_interval {
        None => None,
        // Zero means the server's default.
        Some(d) if d.seconds == 0 && d.nanos == 0 => None,
        Some(d) => Some(parse_duration(
            "heartbeat_interval",
            d,
            Duration::from_secs(1),
            MAX_HEARTBEAT_INTERVAL,
        )?),
    };
    Ok(crate::query::WatchRequest {
        filter,
        start_revision: r.start_revision,
        include_snapshot: r.include_snapshot,
        kinds,
        heartbeat_interval,
    })
}

/// How many changes a watch stream may put in one message (1: one
/// `change` per message, as for clients that do not know `changes`).
pub fn parse_max_changes_per_message(r: &pb::WatchConnectionsRequest) -> Result<usize> {
    match r.max_changes_per_message {
        0 => Ok(1),
        n if n <= MAX_CHANGES_PER_MESSAGE => Ok(n as usize),
        _ => Err(invalid(
            "max_changes_per_message",
            format!("must be 0 to {MAX_CHANGES_PER_MESSAGE}"),
        )),
    }
}

pub fn parse_list_states(r: &pb::ListConnectionStatesRequest) -> Result<crate::query::ListStates> {
    Ok(crate::query::ListStates {
        filter: parse_filter("filter.", &r.filter.clone().unwrap_or_default())?,
        order: parse_order_by("order_by", &r.order_by)?,
        page_size: parse_page_size("page_size", r.page_size)?,
        page_token: page_token(&r.page_token),
    })
}

pub fn parse_list_logs(
    r: &pb::ListConnectionLogsRequest,
    client: Option<ClientId>,
) -> Result<crate::query::ListLogs> {
    Ok(crate::query::ListLogs {
        client,
        filter: parse_log_filter(r)?,
        page_size: parse_page_size("page_size", r.page_size)?,
        page_token: page_token(&r.page_token),
    })
}

fn parse_info(field: &str, info: &Option<pb::ConnectionInfo>) -> Result<ConnectionInfo> {
    let Some(info) = info else {
        return Err(invalid(field, "is required"));
    };
    let addr: IpAddr = info
        .client_addr
        .parse()
        .map_err(|_| invalid(format!("{field}.client_addr"), "is not an IP address"))?;
    let port = u16::try_from(info.port)
        .map_err(|_| invalid(format!("{field}.port"), "must be at most 65535"))?;
    let keep_alive = u16::try_from(info.keep_alive_seconds).map_err(|_| {
        invalid(
            format!("{field}.keep_alive_seconds"),
            "must be at most 65535",
        )
    })?;
    if info.username.len() > 1024 {
        return Err(invalid(
            format!("{field}.username"),
            "is longer than 1024 bytes",
        ));
    }
    Ok(ConnectionInfo {
        addr,
        port,
        secure: info.secure,
        username: info.username.clone(),
        protocol: parse_protocol(&format!("{field}.protocol"), info.protocol)?,
        keep_alive,
        clean_session: info.clean_session,
    })
}

fn parse_cause(field: &str, d: &pb::Disconnected) -> Result<DisconnectCause> {
    use pb::DisconnectCause as C;
    let cause_field = format!("{field}.cause");
    let cause = C::try_from(d.cause).map_err(|_| unknown_enum(&cause_field, d.cause))?;
    if cause != C::ClientDisconnect && d.reason_code.is_some() {
        return Err(invalid(
            format!("{field}.reason_code"),
            "is only for DISCONNECT_CAUSE_CLIENT_DISCONNECT",
        ));
    }
    Ok(match cause {
        C::Unspecified => return Err(invalid(cause_field, "is required")),
        C::ClientDisconnect => {
            let code = d.reason_code.unwrap_or(0);
            let code = u8::try_from(code)
                .map_err(|_| invalid(format!("{field}.reason_code"), "must be at most 255"))?;
            DisconnectCause::ClientDisconnect(ReasonCode(code))
        }
        C::SocketClosed => DisconnectCause::SocketClosed,
        C::KeepAliveTimeout => DisconnectCause::KeepAliveTimeout,
        C::SessionTakenOver => {
            if d.detail.len() > 128 {
                return Err(invalid(
                    format!("{field}.detail"),
                    "is longer than 128 bytes",
                ));
            }
            DisconnectCause::SessionTakenOver {
                by: d.detail.clone(),
            }
        }
        C::MalformedPacket => DisconnectCause::MalformedPacket,
        C::ProtocolError => DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR),
        C::PacketTooLarge => DisconnectCause::PacketTooLarge,
        C::AdministrativeAction => DisconnectCause::AdministrativeAction,
        C::CredentialsRevoked => DisconnectCause::CredentialsRevoked,
        C::ServerShuttingDown => DisconnectCause::ServerShuttingDown,
        C::ServerRestarted => DisconnectCause::ServerRestarted,
    })
}

fn parse_failure(field: &str, v: i32) -> Result<ConnectFailure> {
    use pb::ConnectFailure as F;
    Ok(match F::try_from(v) {
        Ok(F::BadCredentials) => ConnectFailure::BadCredentials,
        Ok(F::NotAuthorized) => ConnectFailure::NotAuthorized,
        Ok(F::BadClientId) => ConnectFailure::BadClientId,
        Ok(F::UnsupportedProtocol) => ConnectFailure::UnsupportedProtocol,
        Ok(F::ServerBusy) => ConnectFailure::ServerBusy,
        Ok(F::Unspecified) => return Err(invalid(field, "is required")),
        Err(_) => return Err(unknown_enum(field, v)),
    })
}

fn parse_event(field: &str, e: &pb::LifecycleEvent, broker: &Arc<str>) -> Result<LifecycleEvent> {
    use pb::lifecycle_event::Event;
    let client_id = parse_client_id(&format!("{field}.client_id"), &e.client_id)?;
    let time = match &e.time {
        Some(t) => parse_timestamp(&format!("{field}.time"), t)?,
        None => return Err(invalid(format!("{field}.time"), "is required")),
    };
    let kind = match &e.event {
        None => {
            return Err(invalid(
                format!("{field}.event"),
                "one of connected, connect_failed, disconnected or activity is required",
            ));
        }
        Some(Event::Connected(c)) => {
            EventKind::Connected(parse_info(&format!("{field}.connected.info"), &c.info)?)
        }
        Some(Event::ConnectFailed(c)) => EventKind::ConnectFailed {
            info: parse_info(&format!("{field}.connect_failed.info"), &c.info)?,
            failure: parse_failure(&format!("{field}.connect_failed.failure"), c.failure)?,
        },
        Some(Event::Disconnected(d)) => {
            EventKind::Disconnected(parse_cause(&format!("{field}.disconnected"), d)?)
        }
        Some(Event::Activity(a)) => {
            let kind_field = format!("{field}.activity.kind");
            EventKind::Activity(match pb::ActivityKind::try_from(a.kind) {
                Ok(pb::ActivityKind::Publish) => ActivityKind::Publish,
                Ok(pb::ActivityKind::Subscribe) => ActivityKind::Subscribe,
                Ok(pb::ActivityKind::Unsubscribe) => ActivityKind::Unsubscribe,
                Ok(pb::ActivityKind::Ping) => ActivityKind::Ping,
                Ok(_) => {
                    return Err(invalid(
                        kind_field,
                        "must be PUBLISH, SUBSCRIBE, UNSUBSCRIBE or PING (connects and disconnects have their own events)",
                    ));
                }
                Err(_) => return Err(unknown_enum(&kind_field, a.kind)),
            })
        }
    };
    if e.connection_id == 0 && !matches!(kind, EventKind::ConnectFailed { .. }) {
        return Err(invalid(
            format!("{field}.connection_id"),
            "is required (non-zero) for every event but connect_failed",
        ));
    }
    Ok(LifecycleEvent {
        client_id,
        time,
        connection_id: e.connection_id,
        broker: broker.clone(),
        kind,
        // IngestEvents carries the address with connects only.
        peer: None,
    })
}

/// The name of a reporting broker: 1 to 64 characters, not "embedded".
pub fn parse_broker(broker: &str) -> Result<&str> {
    let broker = broker.trim();
    if broker.is_empty() || broker.len() > 64 {
        return Err(invalid("broker", "must be 1 to 64 characters"));
    }
    if is_embedded_broker(broker) {
        return Err(invalid(
            "broker",
            "\"embedded\" and \"embedded@NODE\" are reserved for the built-in broker",
        ));
    }
    Ok(broker)
}

/// A lease duration: 1 s to 1 day.
pub fn parse_lease(field: &str, d: Option<&prost_types::Duration>) -> Result<Option<Duration>> {
    let Some(d) = d else {
        return Ok(None);
    };
    parse_duration(
        field,
        d,
        crate::tracker::MIN_LEASE,
        crate::tracker::MAX_LEASE,
    )
    .map(Some)
}

/// A lease as the API shows it.
impl From<&crate::tracker::Lease> for pb::BrokerLease {
    fn from(l: &crate::tracker::Lease) -> Self {
        pb::BrokerLease {
            broker: l.holder.clone(),
            lease_duration: Some(duration(l.duration)),
            expire_time: Some(timestamp(l.expire_time)),
        }
    }
}

pub fn parse_ingest(r: &pb::IngestEventsRequest) -> Result<Vec<LifecycleEvent>> {
    let broker = parse_broker(&r.broker)?;
    if r.events.is_empty() {
        return Err(invalid("events", "must not be empty"));
    }
    if r.events.len() > MAX_INGEST_BATCH {
        return Err(invalid(
            "events",
            format!("at most {MAX_INGEST_BATCH} events per call"),
        ));
    }
    let broker: Arc<str> = Arc::from(broker);
    r.events
        .iter()
        .enumerate()
        .map(|(i, e)| parse_event(&format!("events[{i}]"), e, &broker))
        .collect()
}

/// New settings: the fields named in `mask` (or every set field when the
/// mask is empty) replace the current ones.
pub fn parse_settings_update(
    r: &pb::UpdateSettingsRequest,
    current: &Settings,
) -> Result<Settings> {
    let Some(s) = &r.settings else {
        return Err(invalid("settings", "is required"));
    };
    let mut new = current.clone();
    let all = r.update_mask.is_empty();
    let named = |name: &str| r.update_mask.iter().any(|m| m == name);
    for (i, name) in r.update_mask.iter().enumerate() {
        if !matches!(
            name.as_str(),
            "enabled"
                | "log_max_age"
                | "log_max_entries_per_client"
                | "feed_max_age"
                | "feed_max_entries"
        ) {
            return Err(invalid(
                format!("update_mask[{i}]"),
                format!("unknown field {name:?}"),
            ));
        }
    }
    if named("enabled") || (all && s.enabled != current.enabled && s.enabled) {
        new.enabled = s.enabled;
    }
    let age = |field: &str, d: &Option<prost_types::Duration>| -> Result<Option<Duration>> {
        match d {
            None if named(field) => Err(invalid(format!("settings.{field}"), "is required")),
            None => Ok(None),
            Some(d) => parse_duration(
                &format!("settings.{field}"),
                d,
                Duration::from_secs(1),
                MAX_RETENTION_AGE,
            )
            .map(Some),
        }
    };
    if (all || named("log_max_age"))
        && let Some(d) = age("log_max_age", &s.log_max_age)?
    {
        new.log_max_age = d;
    }
    if (all || named("feed_max_age"))
        && let Some(d) = age("feed_max_age", &s.feed_max_age)?
    {
        new.feed_max_age = d;
    }
    if named("log_max_entries_per_client") || (all && s.log_max_entries_per_client != 0) {
        if s.log_max_entries_per_client == 0 {
            return Err(invalid(
                "settings.log_max_entries_per_client",
                "must be at least 1",
            ));
        }
        new.log_max_entries_per_client = s.log_max_entries_per_client;
    }
    if named("feed_max_entries") || (all && s.feed_max_entries != 0) {
        if s.feed_max_entries == 0 {
            return Err(invalid("settings.feed_max_entries", "must be at least 1"));
        }
        new.feed_max_entries = s.feed_max_entries;
    }
    Ok(new)
}

/// The response message of one watch item, as the generated server sends it.
pub fn watch_item(item: WatchItem) -> pb::WatchConnectionsResponse {
    use pb::watch_connections_response::Event;
    let event = match item {
        WatchItem::Change(change) => Event::Change(pb::Change::from(change.as_ref())),
        WatchItem::Snapshot(state) => Event::Change(pb::Change {
            revision: state.revision,
            kind: pb::ChangeKind::Snapshot as i32,
            client_id: state.client_id.to_string(),
            state: Some(pb::ConnectionState::from(state.as_ref())),
            log_entry: None,
            commit_time: None,
        }),
        WatchItem::SnapshotComplete(revision) => {
            Event::SnapshotComplete(pb::SnapshotComplete { revision })
        }
        WatchItem::Heartbeat { revision, time } => Event::Heartbeat(pb::Heartbeat {
            revision,
            time: Some(timestamp(time)),
        }),
    };
    pb::WatchConnectionsResponse { event: Some(event) }
}
