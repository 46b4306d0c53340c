//! The lifecycle rules: one event and the client's current record in, the
//! new record, the log entry and the kind of change out.
//!
//! Pure functions: no I/O, no clock. The store's writer calls [`apply`] for
//! each event in commit order, with the revision the change will get.
//!
//! **Connection-id spaces.** A connection id is only comparable with ids of
//! the same broker (each broker counts its own connections). So an event of
//! broker X against a record whose current connection is on broker Y:
//! a connect is a newer connection (the client moved to X); a disconnect or
//! activity is of a connection that is not the current one (stale for a
//! disconnect, ignored for activity). Within one broker the larger id is
//! the newer connection.

use crate::domain::{
    ActivityKind, ChangeKind, ConnectionInfo, ConnectionState, ConnectionStatus, Counters,
    DisconnectCause, EventKind, LastDisconnect, LifecycleEvent, LogEntry, LogKind, Revision,
};

/// What one event changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub kind: ChangeKind,
    /// The client's record after the event; `None` leaves it as it was
    /// (or absent).
    pub state: Option<ConnectionState>,
    pub log_entry: Option<LogEntry>,
}

/// Applies `event` to the client's `current` record. `None` when the event
/// changes nothing (activity of an older connection, or older than the
/// activity already recorded), in which case no revision is used.
pub fn apply(
    current: Option<&ConnectionState>,
    event: &LifecycleEvent,
    revision: Revision,
) -> Option<Outcome> {
    match &event.kind {
        EventKind::Connected(info) => Some(connected(current, event, info, revision)),
        EventKind::ConnectFailed { info, failure } => {
            let code = failure.reason_code();
            let log_entry = LogEntry {
                message: format!(
                    "Connect failed from {}: {} ({code})",
                    info.endpoint(),
                    code.description()
                ),
                kind: LogKind::ConnectFailed,
                reason_code: Some(code),
                close_code: Some(failure.close_code()),
                ..log_base(event, info, revision)
            };
            let state = current.map(|s| ConnectionState {
                counters: Counters {
                    failed_connects: s.counters.failed_connects + 1,
                    ..s.counters.clone()
                },
                revision,
                ..s.clone()
            });
            Some(Outcome {
                kind: ChangeKind::ConnectFailed,
                state,
                log_entry: Some(log_entry),
            })
        }
        EventKind::Disconnected(cause) => Some(disconnected(current, event, cause, revision)),
        EventKind::Activity(kind) => {
            let s = current?;
            if s.status != ConnectionStatus::Connected
                || *s.broker != *event.broker
                || s.connection_id != event.connection_id
                || event.time <= s.last_activity_time
            {
                return None;
            }
            Some(Outcome {
                kind: ChangeKind::Activity,
                state: Some(ConnectionState {
                    last_activity: *kind,
                    last_activity_time: event.time,
                    revision,
                    ..s.clone()
                }),
                log_entry: None,
            })
        }
    }
}

/// Whether [`apply`] creates the client's first record from `event`: the
/// failed connects logged before it had no record to count in, and the
/// caller adds them with [`count_earlier_failures`].
pub fn creates_first_record(current: Option<&ConnectionState>, event: &LifecycleEvent) -> bool {
    current.is_none() && matches!(event.kind, EventKind::Connected(_))
}

/// Counts in a client's first record the `earlier` failed connects logged
/// for it before it had one.
pub fn count_earlier_failures(outcome: &mut Outcome, earlier: u64) {
    if let Some(state) = &mut outcome.state {
        state.counters.failed_connects += earlier;
    }
}

fn connected(
    current: Option<&ConnectionState>,
    event: &LifecycleEvent,
    info: &ConnectionInfo,
    revision: Revision,
) -> Outcome {
    let mut log_entry = LogEntry {
        message: connected_message(info),
        kind: LogKind::Connected,
        ..log_base(event, info, revision)
    };
    match current {
        Some(s) if *s.broker == *event.broker && s.connection_id >= event.connection_id => {
            // A connect of an older (or the same) connection arrived late: a
            // newer connection is already recorded. Log it, count it, keep
            // the state of the newer connection.
            log_entry.stale = true;
            log_entry.message.push_str(STALE_SUFFIX);
            let mut state = s.clone();
            state.counters.connects += 1;
            state.revision = revision;
            Outcome {
                kind: ChangeKind::Stale,
                state: Some(state),
                log_entry: Some(log_entry),
            }
        }
        _ => {
            let mut counters = current.map(|s| s.counters.clone()).unwrap_or_default();
            counters.connects += 1;
            let state = ConnectionState {
                client_id: event.client_id.clone(),
                status: ConnectionStatus::Connected,
                last_connect_time: event.time,
                last_activity: ActivityKind::Connect,
                last_activity_time: event.time,
                connection: info.clone(),
                connection_id: event.connection_id,
                broker: event.broker.to_string(),
                last_disconnect: current.and_then(|s| s.last_disconnect.clone()),
                counters,
                revision,
            };
            Outcome {
                kind: ChangeKind::Connected,
                state: Some(state),
                log_entry: Some(log_entry),
            }
        }
    }
}

fn disconnected(
    current: Option<&ConnectionState>,
    event: &LifecycleEvent,
    cause: &DisconnectCause,
    revision: Revision,
) -> Outcome {
    let initiator = cause.initiator();
    let keep_alive = current.map_or(0, |s| s.connection.keep_alive);
    // The record describes its newest connection: its address is this
    // event's only when the event is of that connection. Otherwise the
    // event's own address, if it came with one, or none.
    let same_connection = current.filter(|s| s.connection_id == event.connection_id);
    let peer = event.peer.or_else(|| {
        same_connection.map(|s| std::net::SocketAddr::new(s.connection.addr, s.connection.port))
    });
    let mut log_entry = LogEntry {
        client_id: event.client_id.clone(),
        message: cause.log_message(keep_alive),
        time: event.time,
        kind: LogKind::Disconnected,
        initiator: Some(initiator),
        reason_code: cause.reason_code(),
        close_code: Some(cause.close_code()),
        addr: peer.map(|p| p.ip()),
        port: peer.map_or(0, |p| p.port()),
        protocol: same_connection.and_then(|s| s.connection.protocol),
        connection_id: event.connection_id,
        revision,
        stale: false,
    };
    let takeover = matches!(cause, DisconnectCause::SessionTakenOver { .. });
    let Some(s) = current else {
        // A disconnect of a client with no record (its connect was never
        // reported): the log keeps it; there is no state to change.
        return Outcome {
            kind: ChangeKind::Disconnected,
            state: None,
            log_entry: Some(log_entry),
        };
    };
    // A connection of another broker than the current one's is not the
    // current connection, whatever its id.
    let other_broker = *s.broker != *event.broker;
    let older = other_broker || event.connection_id < s.connection_id;
    let repeated =
        event.connection_id == s.connection_id && s.status == ConnectionStatus::Disconnected;
    if older || repeated {
        // Either a late disconnect of a connection that was already taken
        // over (counted: it did end), or a second report of the end of the
        // current connection (not counted again).
        log_entry.stale = true;
        if other_broker {
            log_entry.message.push_str(&format!(
                " [stale: the current connection is on broker {}]",
                s.broker
            ));
        } else {
            log_entry.message.push_str(STALE_SUFFIX);
        }
        let mut state = s.clone();
        if older {
            state.counters.count_disconnect(initiator, takeover);
        }
        state.revision = revision;
        return Outcome {
            kind: ChangeKind::Stale,
            state: Some(state),
            log_entry: Some(log_entry),
        };
    }
    let mut state = s.clone();
    state.counters.count_disconnect(initiator, takeover);
    state.status = ConnectionStatus::Disconnected;
    state.connection_id = event.connection_id;
    state.last_activity = ActivityKind::Disconnect;
    state.last_activity_time = state.last_activity_time.max(event.time);
    state.last_disconnect = Some(LastDisconnect {
        time: event.time,
        initiator,
        reason_code: cause.reason_code(),
        reason: cause.reason_text(keep_alive),
        close_code: cause.close_code(),
    });
    state.revision = revision;
    Outcome {
        kind: ChangeKind::Disconnected,
        state: Some(state),
        log_entry: Some(log_entry),
    }
}

const STALE_SUFFIX: &str = " [stale: an older connection than the current one]";

fn log_base(event: &LifecycleEvent, info: &ConnectionInfo, revision: Revision) -> LogEntry {
    LogEntry {
        client_id: event.client_id.clone(),
        message: String::new(),
        time: event.time,
        kind: LogKind::Connected,
        initiator: None,
        reason_code: None,
        close_code: None,
        addr: Some(info.addr),
        port: info.port,
        protocol: info.protocol,
        connection_id: event.connection_id,
        revision,
        stale: false,
    }
}

/// `Connected from 127.0.0.1:53422 using MQTT 3.1.1 (TLS, keepalive 60 s)`
fn connected_message(info: &ConnectionInfo) -> String {
    let protocol = info.protocol.map(|p| format!(" {p}")).unwrap_or_default();
    let keep_alive = match info.keep_alive {
        0 => "no keepalive".to_owned(),
        k => format!("keepalive {k} s"),
    };
    let tls = if info.secure { "TLS, " } else { "" };
    format!(
        "Connected from {} using MQTT{protocol} ({tls}{keep_alive})",
        info.endpoint()
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{
        ClientId, ConnectFailure, DisconnectInitiator, MqttProtocol, ReasonCode, Timestamp,
    };

    fn at(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn event(connection_id: u64, secs: i64, kind: EventKind) -> LifecycleEvent {
        LifecycleEvent {
            client_id: ClientId::new("d:org:type:dev1").unwrap(),
            time: at(secs),
            connection_id,
            broker: Arc::from("test"),
            kind,
            peer: None,
        }
    }

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            addr: "127.0.0.1".parse().unwrap(),
            port: 53422,
            secure: true,
            username: "use-token-auth".into(),
            protocol: Some(MqttProtocol::V3_1_1),
            keep_alive: 60,
            clean_session: true,
        }
    }

    fn connect(connection_id: u64, secs: i64) -> LifecycleEvent {
        event(connection_id, secs, EventKind::Connected(info()))
    }

    fn disconnect(connection_id: u64, secs: i64, cause: DisconnectCause) -> LifecycleEvent {
        event(connection_id, secs, EventKind::Disconnected(cause))
    }

    #[test]
    fn connect_creates_a_connected_record() {
        let out = apply(None, &connect(1, 0), 1).unwrap();
        let state = out.state.unwrap();
        assert_eq!(out.kind, ChangeKind::Connected);
        assert_eq!(state.status, ConnectionStatus::Connected);
        assert_eq!(state.counters.connects, 1);
        assert_eq!(state.expected_alive_until(), Some(at(90)));
        assert_eq!(
            out.log_entry.unwrap().message,
            "Connected from 127.0.0.1:53422 using MQTT 3.1.1 (TLS, keepalive 60 s)"
        );
    }

    #[test]
    fn client_disconnect_records_initiator_reason_and_close_code() {
        let s1 = apply(None, &connect(1, 0), 1).unwrap().state.unwrap();
        let out = apply(
            Some(&s1),
            &disconnect(1, 5, DisconnectCause::ClientDisconnect(ReasonCode(0x04))),
            2,
        )
        .unwrap();
        let state = out.state.unwrap();
        let last = state.last_disconnect.as_ref().unwrap();
        assert_eq!(state.status, ConnectionStatus::Disconnected);
        assert_eq!(last.initiator, DisconnectInitiator::Client);
        assert_eq!(last.reason_code, Some(ReasonCode(0x04)));
        assert_eq!(last.close_code.0, 0);
        assert_eq!(state.counters.disconnects_by_client, 1);
        assert_eq!(state.expected_alive_until(), None);
        assert_eq!(
            out.log_entry.unwrap().message,
            "Disconnected by the client: disconnect with will message (0x04)"
        );
    }

    #[test]
    fn late_disconnect_of_an_older_connection_is_stale() {
        let s1 = apply(None, &connect(1, 0), 1).unwrap().state.unwrap();
        let s2 = apply(Some(&s1), &connect(2, 1), 2).unwrap().state.unwrap();
        let cause = DisconnectCause::SessionTakenOver {
            by: "127.0.0.1:1".into(),
        };
        let out = apply(Some(&s2), &disconnect(1, 2, cause), 3).unwrap();
        let state = out.state.unwrap();
        assert_eq!(out.kind, ChangeKind::Stale);
        assert_eq!(state.status, ConnectionStatus::Connected);
        assert_eq!(state.connection_id, 2);
        assert_eq!(state.counters.takeovers, 1);
        assert!(out.log_entry.unwrap().stale);
    }

    #[test]
    fn a_late_disconnect_is_logged_with_its_own_connections_address() {
        let s1 = apply(None, &connect(1, 0), 1).unwrap().state.unwrap();
        let mut second = connect(2, 1);
        if let EventKind::Connected(info) = &mut second.kind {
            info.addr = "10.0.0.2".parse().unwrap();
            info.port = 2222;
        }
        let s2 = apply(Some(&s1), &second, 2).unwrap().state.unwrap();
        let mut late = disconnect(1, 2, DisconnectCause::SocketClosed);
        let entry = apply(Some(&s2), &late, 3).unwrap().log_entry.unwrap();
        assert!(entry.stale);
        assert_eq!((entry.addr, entry.port), (None, 0), "no address given");
        late.peer = Some("127.0.0.1:53422".parse().unwrap());
        let entry = apply(Some(&s2), &late, 3).unwrap().log_entry.unwrap();
        assert_eq!(
            (entry.addr, entry.port),
            (Some("127.0.0.1".parse().unwrap()), 53422)
        );
        // The current connection's own disconnect has its address.
        let entry = apply(
            Some(&s2),
            &disconnect(2, 3, DisconnectCause::SocketClosed),
            4,
        )
        .unwrap()
        .log_entry
        .unwrap();
        assert_eq!(
            (entry.addr, entry.port),
            (Some("10.0.0.2".parse().unwrap()), 2222)
        );
    }

    #[test]
    fn late_connect_of_an_older_connection_is_stale() {
        let s2 = apply(None, &connect(2, 1), 1).unwrap().state.unwrap();
        let out = apply(Some(&s2), &connect(1, 0), 2).unwrap();
        assert_eq!(out.kind, ChangeKind::Stale);
        assert_eq!(out.state.unwrap().last_connect_time, at(1));
    }

    #[test]
    fn connection_ids_compare_within_one_broker_only() {
        let on = |broker: &str, e: LifecycleEvent| LifecycleEvent {
            broker: Arc::from(broker),
            ..e
        };
        let s1 = apply(None, &on("edge", connect(5_000_000, 0)), 1)
            .unwrap()
            .state
            .unwrap();
        // A connect on another broker is newer, whatever its id: it moved.
        let out = apply(Some(&s1), &on("embedded", connect(1, 1)), 2).unwrap();
        assert_eq!(out.kind, ChangeKind::Connected);
        let s2 = out.state.unwrap();
        assert_eq!((s2.broker.as_str(), s2.connection_id), ("embedded", 1));
        // Activity and a disconnect of the other broker's connection are
        // not the current connection's.
        let ping = on(
            "edge",
            event(5_000_000, 2, EventKind::Activity(ActivityKind::Ping)),
        );
        assert!(apply(Some(&s2), &ping, 3).is_none());
        let late = on(
            "edge",
            disconnect(5_000_000, 3, DisconnectCause::SocketClosed),
        );
        let out = apply(Some(&s2), &late, 3).unwrap();
        assert_eq!(out.kind, ChangeKind::Stale);
        let state = out.state.unwrap();
        assert_eq!(state.status, ConnectionStatus::Connected);
        assert_eq!(state.connection_id, 1);
        assert_eq!(state.counters.disconnects_by_network, 1);
        let entry = out.log_entry.unwrap();
        assert!(entry.stale);
        assert!(
            entry
                .message
                .ends_with("[stale: the current connection is on broker embedded]"),
            "{}",
            entry.message
        );
    }

    #[test]
    fn repeated_disconnect_is_logged_but_not_counted_twice() {
        let s1 = apply(None, &connect(1, 0), 1).unwrap().state.unwrap();
        let s2 = apply(
            Some(&s1),
            &disconnect(1, 1, DisconnectCause::SocketClosed),
            2,
        )
        .unwrap()
        .state
        .unwrap();
        let out = apply(
            Some(&s2),
            &disconnect(1, 2, DisconnectCause::ServerRestarted),
            3,
        )
        .unwrap();
        assert_eq!(out.kind, ChangeKind::Stale);
        assert_eq!(out.state.unwrap().counters.disconnects_by_network, 1);
    }

    #[test]
    fn activity_moves_forward_only_on_the_current_connection() {
        let s1 = apply(None, &connect(1, 0), 1).unwrap().state.unwrap();
        let ping = |conn, secs| event(conn, secs, EventKind::Activity(ActivityKind::Ping));
        let s2 = apply(Some(&s1), &ping(1, 10), 2).unwrap().state.unwrap();
        assert_eq!(s2.last_activity, ActivityKind::Ping);
        assert_eq!(s2.expected_alive_until(), Some(at(100)));
        assert!(apply(Some(&s2), &ping(1, 5), 3).is_none());
        assert!(apply(Some(&s2), &ping(0, 20), 3).is_none());
        assert!(apply(None, &ping(1, 20), 3).is_none());
    }

    #[test]
    fn failed_connect_is_logged_and_counted() {
        let failed = event(
            0,
            0,
            EventKind::ConnectFailed {
                info: info(),
                failure: ConnectFailure::BadCredentials,
            },
        );
        let out = apply(None, &failed, 1).unwrap();
        assert!(out.state.is_none());
        let entry = out.log_entry.unwrap();
        assert_eq!(
            entry.message,
            "Connect failed from 127.0.0.1:53422: bad user name or password (0x86)"
        );
        assert_eq!(entry.close_code.map(|c| c.0), Some(180));
        let s1 = apply(None, &connect(1, 0), 1).unwrap().state.unwrap();
        let out = apply(Some(&s1), &failed, 2).unwrap();
        assert_eq!(out.state.unwrap().counters.failed_connects, 1);
    }
}
