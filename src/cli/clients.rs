//! `connstate clients list|get|logs|watch|disconnect`.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tonic::Code;

use super::{
    Failure, Options, Result,
    endpoint::Endpoints,
    output::{self, Table},
    rest::segment,
};
use crate::pb;

#[derive(Subcommand, Debug)]
pub enum ClientsCommand {
    /// Clients matching the filters, every page (or --limit); --watch
    /// follows changes live after the list
    List {
        #[command(flatten)]
        filter: Filter,
        /// Order: client_id (default), last_connect_time,
        /// last_disconnect_time, last_activity_time, connection_status, each
        /// optionally followed by " desc" (or the REST names: -lastActivityTime)
        #[arg(long, allow_hyphen_values = true)]
        sort: Option<String>,
        /// Print at most this many clients
        #[arg(long)]
        limit: Option<usize>,
        /// After the list (the current state of every matching client),
        /// print changes as they happen
        #[arg(long)]
        watch: bool,
    },
    /// The state record of one client
    Get {
        /// The MQTT client id, e.g. d:local:sensor:s1
        client_id: String,
    },
    /// Connection log, newest first: one client's, or every client's
    Logs {
        /// The MQTT client id (or --device-type with --device-id); every
        /// client's log when left out
        client_id: Option<String>,
        /// With --device-id: the device or gateway of this type
        #[arg(long, requires = "device_id", conflicts_with = "client_id")]
        device_type: Option<String>,
        #[arg(long, requires = "device_type")]
        device_id: Option<String>,
        /// Only entries of this kind (repeatable)
        #[arg(long, value_enum)]
        kind: Vec<LogKindArg>,
        /// Only disconnects by this initiator
        #[arg(long, value_enum)]
        initiator: Option<InitiatorArg>,
        /// Only entries at or after this time (RFC 3339, or now-1h, -P2D)
        #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
        since: Option<String>,
        /// Only entries before this time
        #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
        until: Option<String>,
        /// Print at most this many entries
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Follow changes live; resumes where it was after the server restarts
    Watch {
        #[command(flatten)]
        filter: Filter,
        /// Only changes of this kind (repeatable)
        #[arg(long, value_enum)]
        kind: Vec<ChangeKindArg>,
        /// Replay every change after this revision first
        #[arg(long, value_name = "REVISION")]
        from_revision: Option<u64>,
    },
    /// End a client's MQTT connection (reason 0x98, administrative action)
    Disconnect {
        /// The MQTT client id
        client_id: String,
    },
}

/// The filters of a listing (and, without the times, of a watch).
#[derive(Args, Debug)]
pub struct Filter {
    /// Only clients with this status
    #[arg(long, value_enum)]
    status: Option<StatusArg>,
    /// Only clients of this type
    #[arg(long, value_enum)]
    client_type: Option<ClientTypeArg>,
    /// Only devices and gateways of this device type
    #[arg(long = "device-type", id = "filter_device_type")]
    device_type: Option<String>,
    /// Only devices and gateways with this device id
    #[arg(long = "device-id", id = "filter_device_id")]
    device_id: Option<String>,
    /// Only applications with this application id
    #[arg(long)]
    app_id: Option<String>,
    /// Only client ids starting with this
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// Connected at or after TIME (RFC 3339, or now-1h, -P2D)
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    connected_after: Option<String>,
    /// Connected before TIME
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    connected_before: Option<String>,
    /// Disconnected at or after TIME
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    disconnected_after: Option<String>,
    /// Disconnected before TIME
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    disconnected_before: Option<String>,
    /// Active at or after TIME
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    active_after: Option<String>,
    /// Active before TIME
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    active_before: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum StatusArg {
    Connected,
    Disconnected,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ClientTypeArg {
    Device,
    Gateway,
    Application,
    Unknown,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LogKindArg {
    Connected,
    ConnectFailed,
    Disconnected,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum InitiatorArg {
    Client,
    Server,
    Network,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ChangeKindArg {
    Connected,
    ConnectFailed,
    Disconnected,
    Stale,
    Activity,
    Deleted,
}

/// A time flag: absolute or relative to now; a bad one names its flag.
fn time(flag: &str, value: Option<&String>) -> Result<Option<prost_types::Timestamp>> {
    value
        .map(|v| {
            crate::api::rest::params::parse_time(v, chrono::Utc::now())
                .map(crate::api::convert::timestamp)
                .map_err(|e| Failure::usage(format!("--{flag}: {e}")))
        })
        .transpose()
}

impl Filter {
    fn to_pb(&self) -> Result<pb::ConnectionStateFilter> {
        Ok(pb::ConnectionStateFilter {
            connection_status: match self.status {
                None => pb::ConnectionStatus::Unspecified,
                Some(StatusArg::Connected) => pb::ConnectionStatus::Connected,
                Some(StatusArg::Disconnected) => pb::ConnectionStatus::Disconnected,
            } as i32,
            client_type: match self.client_type {
                None => pb::ClientType::Unspecified,
                Some(ClientTypeArg::Device) => pb::ClientType::Device,
                Some(ClientTypeArg::Gateway) => pb::ClientType::Gateway,
                Some(ClientTypeArg::Application) => pb::ClientType::Application,
                Some(ClientTypeArg::Unknown) => pb::ClientType::Unknown,
            } as i32,
            type_id: self.device_type.clone().unwrap_or_default(),
            device_id: self.device_id.clone().unwrap_or_default(),
            client_id_prefix: self.prefix.clone().unwrap_or_default(),
            app_id: self.app_id.clone().unwrap_or_default(),
            connected_after: time("connected-after", self.connected_after.as_ref())?,
            connected_before: time("connected-before", self.connected_before.as_ref())?,
            disconnected_after: time("disconnected-after", self.disconnected_after.as_ref())?,
            disconnected_before: time("disconnected-before", self.disconnected_before.as_ref())?,
            active_after: time("active-after", self.active_after.as_ref())?,
            active_before: time("active-before", self.active_before.as_ref())?,
        })
    }

    /// The filter of a watch, which has no time fields.
    fn to_watch_pb(&self) -> Result<pb::ConnectionStateFilter> {
        let times = [
            ("connected-after", &self.connected_after),
            ("connected-before", &self.connected_before),
            ("disconnected-after", &self.disconnected_after),
            ("disconnected-before", &self.disconnected_before),
            ("active-after", &self.active_after),
            ("active-before", &self.active_before),
        ];
        if let Some((flag, _)) = times.iter().find(|(_, v)| v.is_some()) {
            return Err(Failure::usage(format!(
                "--{flag} cannot be used while watching: a watch follows changes, not time windows"
            )));
        }
        self.to_pb()
    }
}

pub async fn run(endpoints: &Endpoints, options: &Options, command: ClientsCommand) -> Result<()> {
    match command {
        ClientsCommand::List {
            filter,
            sort,
            limit,
            watch: false,
        } => list(endpoints, options, &filter, sort, limit).await,
        ClientsCommand::List {
            filter,
            sort,
            limit,
            watch: true,
        } => {
            if sort.is_some() || limit.is_some() {
                return Err(Failure::usage(
                    "--watch lists every matching client in client id order: leave out --sort and --limit",
                ));
            }
            let request = pb::WatchConnectionsRequest {
                filter: Some(filter.to_watch_pb()?),
                include_snapshot: true,
                ..Default::default()
            };
            follow(endpoints, options, request, None).await
        }
        ClientsCommand::Get { client_id } => get(endpoints, options, client_id).await,
        ClientsCommand::Logs {
            client_id,
            device_type,
            device_id,
            kind,
            initiator,
            since,
            until,
            limit,
        } => {
            let request = pb::ListConnectionLogsRequest {
                client_id: client_id.unwrap_or_default(),
                type_id: device_type.unwrap_or_default(),
                device_id: device_id.unwrap_or_default(),
                kinds: kind
                    .iter()
                    .map(|k| match k {
                        LogKindArg::Connected => pb::LogKind::Connected,
                        LogKindArg::ConnectFailed => pb::LogKind::ConnectFailed,
                        LogKindArg::Disconnected => pb::LogKind::Disconnected,
                    } as i32)
                    .collect(),
                initiator: match initiator {
                    None => pb::DisconnectInitiator::Unspecified,
                    Some(InitiatorArg::Client) => pb::DisconnectInitiator::Client,
                    Some(InitiatorArg::Server) => pb::DisconnectInitiator::Server,
                    Some(InitiatorArg::Network) => pb::DisconnectInitiator::Network,
                } as i32,
                start_time: time("since", since.as_ref())?,
                end_time: time("until", until.as_ref())?,
                page_size: 0,
                page_token: String::new(),
            };
            logs(endpoints, options, request, limit).await
        }
        ClientsCommand::Watch {
            filter,
            kind,
            from_revision,
        } => {
            let kinds = kind
                .iter()
                .map(|k| match k {
                    ChangeKindArg::Connected => pb::ChangeKind::Connected,
                    ChangeKindArg::ConnectFailed => pb::ChangeKind::ConnectFailed,
                    ChangeKindArg::Disconnected => pb::ChangeKind::Disconnected,
                    ChangeKindArg::Stale => pb::ChangeKind::Stale,
                    ChangeKindArg::Activity => pb::ChangeKind::Activity,
                    ChangeKindArg::Deleted => pb::ChangeKind::Deleted,
                } as i32)
                .collect();
            let filter = filter.to_watch_pb()?;
            // Without a starting revision, start from the current one: a
            // watch that knows its position from the start can resume
            // from it even before its first change.
            let start = match from_revision {
                Some(r) => r,
                None => current_revision(endpoints).await?,
            };
            let request = pb::WatchConnectionsRequest {
                filter: Some(filter),
                kinds,
                ..Default::default()
            };
            follow(endpoints, options, request, Some(start)).await
        }
        ClientsCommand::Disconnect { client_id } => {
            let path = format!(
                "/api/v0002/clientconnectionstates/{}/disconnect",
                segment(&client_id)
            );
            endpoints.rest()?.post(&path, json!({})).await?;
            if options.json {
                output::print_json(&json!({"clientId": client_id, "disconnected": true}));
            } else {
                println!("disconnected {client_id}");
            }
            Ok(())
        }
    }
}

async fn current_revision(endpoints: &Endpoints) -> Result<u64> {
    let page = endpoints
        .states()?
        .list_connection_states(endpoints.request(pb::ListConnectionStatesRequest {
            page_size: 1,
            ..Default::default()
        }))
        .await?
        .into_inner();
    Ok(page.revision)
}

const LIST_HEADER: [&str; 9] = [
    "CLIENT ID",
    "TYPE",
    "STATUS",
    "SINCE",
    "LAST CONNECT",
    "LAST DISCONNECT",
    "BY",
    "REASON",
    "CLOSE",
];

fn list_row(s: &pb::ConnectionState) -> Vec<String> {
    let connected = s.connection_status == pb::ConnectionStatus::Connected as i32;
    let since = if connected {
        s.last_connect_time.as_ref()
    } else {
        s.last_disconnect_time
            .as_ref()
            .or(s.last_connect_time.as_ref())
    };
    vec![
        s.client_id.clone(),
        output::client_type(s.client_type).to_owned(),
        output::status(s.connection_status).to_owned(),
        output::relative(since),
        output::cell_time(s.last_connect_time.as_ref()),
        output::cell_time(s.last_disconnect_time.as_ref()),
        output::initiator(s.last_disconnect_initiator)
            .unwrap_or("-")
            .to_owned(),
        output::code(s.last_disconnect_reason_code),
        s.last_close_code
            .map_or_else(|| "-".to_owned(), |c| c.to_string()),
    ]
}

async fn list(
    endpoints: &Endpoints,
    options: &Options,
    filter: &Filter,
    sort: Option<String>,
    limit: Option<usize>,
) -> Result<()> {
    let filter = filter.to_pb()?;
    let mut states_client = endpoints.states()?;
    let mut states = Vec::new();
    let mut revision = None;
    let mut page_token = String::new();
    loop {
        let want = limit.map_or(1000, |l| l.saturating_sub(states.len()).min(1000));
        if want == 0 {
            break;
        }
        let page = states_client
            .list_connection_states(endpoints.request(pb::ListConnectionStatesRequest {
                filter: Some(filter.clone()),
                order_by: sort.clone().unwrap_or_default(),
                page_size: want as i32,
                page_token: page_token.clone(),
            }))
            .await?
            .into_inner();
        revision.get_or_insert(page.revision);
        states.extend(page.states);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if let Some(limit) = limit {
        states.truncate(limit);
    }
    if options.json {
        output::print_json(&json!({
            "results": states.iter().map(output::state_json).collect::<Vec<_>>(),
            "revision": revision.unwrap_or_default(),
        }));
    } else {
        let mut table = Table::new(LIST_HEADER.to_vec());
        for s in &states {
            table.push(list_row(s));
        }
        table.print();
    }
    Ok(())
}

async fn get(endpoints: &Endpoints, options: &Options, client_id: String) -> Result<()> {
    let s = endpoints
        .states()?
        .get_connection_state(endpoints.request(pb::GetConnectionStateRequest { client_id }))
        .await?
        .into_inner();
    if options.json {
        output::print_json(&output::state_json(&s));
        return Ok(());
    }
    let t = |t: Option<&prost_types::Timestamp>| match t {
        None => "-".to_owned(),
        Some(_) => format!("{} ({})", output::cell_time(t), output::relative(t)),
    };
    let c = s.counters.unwrap_or_default();
    let mut fields = vec![
        ("client id", s.client_id.clone()),
        ("type", output::client_type(s.client_type).to_owned()),
        ("status", output::status(s.connection_status).to_owned()),
        ("last connect", t(s.last_connect_time.as_ref())),
        ("last disconnect", t(s.last_disconnect_time.as_ref())),
    ];
    let json = output::state_json(&s);
    let text = |key: &str| json[key].as_str().unwrap_or("-").to_owned();
    fields.push((
        "last activity",
        format!(
            "{} at {}",
            text("lastActivityEvent"),
            t(s.last_activity_time.as_ref())
        ),
    ));
    if s.last_disconnect_time.is_some() {
        fields.push((
            "last drop",
            format!(
                "by {}, reason {} {}, close code {}",
                output::initiator(s.last_disconnect_initiator).unwrap_or("-"),
                output::code(s.last_disconnect_reason_code),
                s.last_disconnect_reason,
                s.last_close_code
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            ),
        ));
    }
    fields.extend([
        (
            "address",
            format!(
                "{}:{}{}",
                s.client_addr,
                s.port,
                if s.secure { " (TLS)" } else { "" }
            ),
        ),
        ("protocol", format!("MQTT {}", text("mqttConnectProtocol"))),
        (
            "username",
            if s.username.is_empty() { "-".to_owned() } else { s.username.clone() },
        ),
        ("keepalive", format!("{} s", s.keep_alive_seconds)),
        ("clean session", s.clean_session.to_string()),
        ("alive until", t(s.expected_alive_until.as_ref())),
        ("broker", s.broker.clone()),
        ("connection id", s.connection_id.to_string()),
        ("revision", s.revision.to_string()),
        (
            "counters",
            format!(
                "{} connects, {} failed, {} takeovers; disconnects by client {}, server {}, network {}",
                c.connects,
                c.failed_connects,
                c.takeovers,
                c.disconnects_by_client,
                c.disconnects_by_server,
                c.disconnects_by_network
            ),
        ),
    ]);
    output::print_fields(&fields);
    Ok(())
}

async fn logs(
    endpoints: &Endpoints,
    options: &Options,
    mut request: pb::ListConnectionLogsRequest,
    limit: Option<usize>,
) -> Result<()> {
    let one_client = !request.client_id.is_empty() || !request.type_id.is_empty();
    let mut client = endpoints.states()?;
    let mut entries = Vec::new();
    loop {
        let want = limit.map_or(1000, |l| l.saturating_sub(entries.len()).min(1000));
        if want == 0 {
            break;
        }
        request.page_size = want as i32;
        let page = client
            .list_connection_logs(endpoints.request(request.clone()))
            .await?
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    if let Some(limit) = limit {
        entries.truncate(limit);
    }
    if options.json {
        output::print_json(&serde_json::Value::Array(
            entries.iter().map(output::log_json).collect(),
        ));
        return Ok(());
    }
    let mut header = vec!["TIME"];
    if !one_client {
        header.push("CLIENT ID");
    }
    header.extend(["KIND", "BY", "REASON", "CLOSE", "MESSAGE"]);
    let mut table = Table::new(header);
    for e in &entries {
        let mut row = vec![output::cell_time(e.timestamp.as_ref())];
        if !one_client {
            row.push(e.client_id.clone());
        }
        row.extend([
            output::log_kind(e.kind).to_owned(),
            output::initiator(e.initiator).unwrap_or("-").to_owned(),
            output::code(e.reason_code),
            e.close_code
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            if e.stale {
                format!("{} (stale)", e.message)
            } else {
                e.message.clone()
            },
        ]);
        table.push(row);
    }
    table.print();
    Ok(())
}

/// Column widths of live change lines (they cannot wait for the widest).
const CHANGE_WIDTHS: [usize; 5] = [8, 20, 13, 40, 12];

fn change_line(c: &pb::Change) -> String {
    let status = c
        .state
        .as_ref()
        .map_or("-", |s| output::status(s.connection_status));
    let detail = c
        .log_entry
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    output::line(
        &CHANGE_WIDTHS,
        &[
            c.revision.to_string(),
            output::cell_time(c.commit_time.as_ref()),
            output::change_kind(c.kind).to_owned(),
            c.client_id.clone(),
            status.to_owned(),
            detail,
        ],
    )
}

fn change_header() -> String {
    output::line(
        &CHANGE_WIDTHS,
        &[
            "REVISION",
            "TIME",
            "CHANGE",
            "CLIENT ID",
            "STATUS",
            "DETAIL",
        ]
        .map(str::to_owned),
    )
}

/// Whether a watch that ended with `status` is resumed (clients/CONTRACT.md).
fn resumable(status: &tonic::Status) -> bool {
    // A status with a source was made here from a transport error (an
    // HTTP/2 connection reset by a server killed mid-stream reads as
    // UNKNOWN): the transport cut the stream, the server said nothing.
    if std::error::Error::source(status).is_some() {
        return true;
    }
    match status.code() {
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => true,
        Code::Internal => last_revision(status).is_some(),
        _ => false,
    }
}

/// The `x-connstate-last-revision` trailer of a status.
fn last_revision(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get("x-connstate-last-revision")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `min(5 s, 100 ms · 2^(n−1))` with ±20 % jitter, never above 5 s.
fn backoff(failures: u32) -> Duration {
    let base = 100f64 * 2f64.powi(failures.saturating_sub(1).min(16) as i32);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
    Duration::from_millis((base.min(5000.0) * jitter).min(5000.0) as u64)
}

/// Follows the change feed and prints each change once, in revision
/// order, resuming after a lost connection or a server restart from the
/// last revision it printed (the rules of clients/CONTRACT.md): no gap, no
/// duplicate. `start` is the position to replay from; without one the
/// request asks for a snapshot first, printed as a table (or as
/// `snapshot` objects), then changes.
async fn follow(
    endpoints: &Endpoints,
    options: &Options,
    request: pb::WatchConnectionsRequest,
    start: Option<u64>,
) -> Result<()> {
    use pb::watch_connections_response::Event;
    let mut client = endpoints.states()?;
    let mut position = start;
    let mut failures = 0u32;
    let mut header_printed = false;
    loop {
        let mut attempt = request.clone();
        match position {
            Some(p) => {
                attempt.start_revision = Some(p);
                attempt.include_snapshot = false;
            }
            None => attempt.include_snapshot = true,
        }
        let mut snapshot = Table::new(LIST_HEADER.to_vec());
        let ended = match client
            .watch_connections(endpoints.stream_request(attempt))
            .await
        {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let message = match stream.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) => break tonic::Status::unavailable("the stream ended"),
                        Err(status) => break status,
                    };
                    if failures > 0 {
                        eprintln!("connstate: watch resumed");
                    }
                    failures = 0;
                    match message.event {
                        Some(Event::Change(c)) if c.kind == pb::ChangeKind::Snapshot as i32 => {
                            if options.json {
                                output::print_json(&output::change_json(&c));
                            } else if let Some(s) = &c.state {
                                snapshot.push(list_row(s));
                            }
                        }
                        Some(Event::Change(c)) => {
                            if position.is_some_and(|p| c.revision <= p) {
                                continue;
                            }
                            position = Some(c.revision);
                            if options.json {
                                output::print_json(&output::change_json(&c));
                            } else {
                                if !header_printed {
                                    println!("{}", change_header());
                                    header_printed = true;
                                }
                                println!("{}", change_line(&c));
                            }
                        }
                        Some(Event::SnapshotComplete(done)) => {
                            position = Some(done.revision);
                            if options.json {
                                output::print_json(&json!({
                                    "kind": "snapshotComplete",
                                    "revision": done.revision,
                                }));
                            } else {
                                snapshot.print();
                                println!();
                            }
                        }
                        Some(Event::Heartbeat(beat)) => {
                            // Everything up to it was sent or did not match.
                            if let Some(p) = &mut position {
                                *p = (*p).max(beat.revision);
                            }
                        }
                        // Sent only to a watch that asks for several
                        // changes per message; this one does not.
                        Some(Event::Changes(_)) | None => {}
                    }
                }
            }
        };
        if let (Some(p), Some(last)) = (&mut position, last_revision(&ended)) {
            *p = (*p).max(last);
        }
        if ended.code() == Code::OutOfRange && position.is_some() {
            // The position has left the feed: start again from a snapshot.
            eprintln!(
                "connstate: watch resynchronising from a snapshot: {}",
                ended.message()
            );
            if options.json {
                output::print_json(&json!({"kind": "resync"}));
            }
            position = None;
            continue;
        }
        if !resumable(&ended) {
            return Err(Failure::from(ended));
        }
        failures += 1;
        if failures == 1 {
            match position {
                Some(p) => eprintln!(
                    "connstate: watch interrupted ({}); resuming after revision {p}",
                    ended.message()
                ),
                None => eprintln!(
                    "connstate: watch interrupted ({}); starting again",
                    ended.message()
                ),
            }
        }
        tokio::time::sleep(backoff(failures)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let first = backoff(1);
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        let third = backoff(3);
        assert!(third >= Duration::from_millis(320) && third <= Duration::from_millis(480));
        for n in [10, 30, 1000] {
            assert!(backoff(n) <= Duration::from_secs(5));
            assert!(backoff(n) >= Duration::from_secs(4));
        }
    }

    #[test]
    fn resumable_codes_follow_the_contract() {
        assert!(resumable(&tonic::Status::unavailable("x")));
        assert!(resumable(&tonic::Status::resource_exhausted("x")));
        assert!(!resumable(&tonic::Status::internal("x")));
        assert!(!resumable(&tonic::Status::permission_denied("x")));
        let mut with_trailer = tonic::Status::internal("x");
        with_trailer
            .metadata_mut()
            .insert("x-connstate-last-revision", "7".parse().unwrap());
        assert!(resumable(&with_trailer));
        assert_eq!(last_revision(&with_trailer), Some(7));
    }
}
