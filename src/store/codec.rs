//! The on-disk encoding of records: protobuf (prost) messages declared here,
//! separate from the API's messages, so that the storage format evolves by
//! the usual protobuf rules (new fields get new tags; tags are never reused).

use std::net::IpAddr;

use prost::Message;

use super::{Settings, StoreError};
use crate::domain::{
    ActivityKind, Change, ChangeKind, ClientId, CloseCode, ConnectionInfo, ConnectionState,
    ConnectionStatus, Counters, DisconnectInitiator, LastDisconnect, LogEntry, LogKind,
    MqttProtocol, ReasonCode, Timestamp, WireForms,
};

#[derive(Clone, PartialEq, Message)]
pub(super) struct StateRecord {
    #[prost(string, tag = "1")]
    client_id: String,
    #[prost(uint32, tag = "2")]
    status: u32,
    #[prost(int64, tag = "3")]
    last_connect_ms: i64,
    #[prost(uint32, tag = "4")]
    last_activity: u32,
    #[prost(int64, tag = "5")]
    last_activity_ms: i64,
    #[prost(bytes = "vec", tag = "6")]
    addr: Vec<u8>,
    #[prost(uint32, tag = "7")]
    port: u32,
    #[prost(bool, tag = "8")]
    secure: bool,
    #[prost(string, tag = "9")]
    username: String,
    #[prost(uint32, tag = "10")]
    protocol: u32,
    #[prost(uint32, tag = "11")]
    keep_alive: u32,
    #[prost(bool, tag = "12")]
    clean_session: bool,
    #[prost(uint64, tag = "13")]
    connection_id: u64,
    #[prost(string, tag = "14")]
    broker: String,
    #[prost(message, optional, tag = "15")]
    last_disconnect: Option<DisconnectRecord>,
    #[prost(message, optional, tag = "16")]
    counters: Option<CountersRecord>,
    #[prost(uint64, tag = "17")]
    revision: u64,
}

/// The fields of a state record the indexes need, decoded without the rest
/// (start-up rebuilds the indexes from every record).
#[derive(Clone, PartialEq, Message)]
pub(super) struct IndexedFields {
    #[prost(string, tag = "1")]
    pub(super) client_id: String,
    #[prost(uint32, tag = "2")]
    pub(super) status: u32,
    #[prost(int64, tag = "3")]
    pub(super) last_connect_ms: i64,
    #[prost(int64, tag = "5")]
    pub(super) last_activity_ms: i64,
    #[prost(message, optional, tag = "15")]
    pub(super) last_disconnect: Option<DisconnectTime>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct DisconnectTime {
    #[prost(int64, tag = "1")]
    pub(super) time_ms: i64,
}

#[derive(Clone, PartialEq, Message)]
struct DisconnectRecord {
    #[prost(int64, tag = "1")]
    time_ms: i64,
    #[prost(uint32, tag = "2")]
    initiator: u32,
    #[prost(uint32, optional, tag = "3")]
    reason_code: Option<u32>,
    #[prost(string, tag = "4")]
    reason: String,
    #[prost(uint32, tag = "5")]
    close_code: u32,
}

#[derive(Clone, PartialEq, Message)]
struct CountersRecord {
    #[prost(uint64, tag = "1")]
    connects: u64,
    #[prost(uint64, tag = "2")]
    failed_connects: u64,
    #[prost(uint64, tag = "3")]
    takeovers: u64,
    #[prost(uint64, tag = "4")]
    by_client: u64,
    #[prost(uint64, tag = "5")]
    by_server: u64,
    #[prost(uint64, tag = "6")]
    by_network: u64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct LogRecord {
    #[prost(string, tag = "1")]
    client_id: String,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(int64, tag = "3")]
    time_ms: i64,
    #[prost(uint32, tag = "4")]
    kind: u32,
    #[prost(uint32, tag = "5")]
    initiator: u32,
    #[prost(uint32, optional, tag = "6")]
    reason_code: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    close_code: Option<u32>,
    #[prost(bytes = "vec", tag = "8")]
    addr: Vec<u8>,
    #[prost(uint32, tag = "9")]
    port: u32,
    #[prost(uint32, tag = "10")]
    protocol: u32,
    #[prost(uint64, tag = "11")]
    connection_id: u64,
    #[prost(uint64, tag = "12")]
    revision: u64,
    #[prost(bool, tag = "13")]
    stale: bool,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct ChangeRecord {
    #[prost(uint64, tag = "1")]
    revision: u64,
    #[prost(uint32, tag = "2")]
    kind: u32,
    #[prost(string, optional, tag = "3")]
    client_id: Option<String>,
    #[prost(message, optional, tag = "4")]
    state: Option<StateRecord>,
    #[prost(message, optional, tag = "5")]
    log_entry: Option<LogRecord>,
    #[prost(int64, tag = "6")]
    pub(super) commit_ms: i64,
}

/// The most bytes of items (encoded, before compression) one record of a
/// commit's items holds: a commit with more changes (a feed record) or log
/// entries (a log batch record) is stored as several records, each keyed
/// by its first revision. sled writes a node larger than a quarter of its
/// 512 KiB segment to a blob file of its own and counts that node in its
/// cache as the few bytes of the blob's address, so a leaf of large records
/// was never evicted: the whole feed stayed in memory, about 0.8 MB more
/// with every round of pings from 19,800 clients. A leaf holds at most 17
/// records; at 6 KiB each (LZ4 expands incompressible bytes by less than
/// 1 %) it stays under the threshold, and sled's cache bound holds.
pub(super) const RECORD_PIECE_BYTES: usize = 6 * 1024;

/// Splits one commit's items into runs of at most [`RECORD_PIECE_BYTES`]
/// encoded bytes (a single larger item is a run of its own), in order.
pub(super) fn pieces<T: Message>(items: impl IntoIterator<Item = T>) -> Vec<Vec<T>> {
    let mut pieces = Vec::new();
    let mut piece = Vec::new();
    let mut bytes = 0;
    for item in items {
        // The field's tag and length prefix come with each item.
        let len = item.encoded_len() + 4;
        if !piece.is_empty() && bytes + len > RECORD_PIECE_BYTES {
            pieces.push(std::mem::take(&mut piece));
            bytes = 0;
        }
        bytes += len;
        piece.push(item);
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    pieces
}

impl ChangeRecord {
    pub(super) fn revision(&self) -> u64 {
        self.revision
    }
}

/// The changes of one commit, or of a piece of one ([`RECORD_PIECE_BYTES`]):
/// the value of an `f` key.
#[derive(Clone, PartialEq, Message)]
pub(super) struct FeedBatchRecord {
    #[prost(int64, tag = "1")]
    pub(super) commit_ms: i64,
    #[prost(message, repeated, tag = "2")]
    pub(super) changes: Vec<ChangeRecord>,
    /// True for a piece that continues the commit of the record before it
    /// (absent, false, in records written before commits were split).
    #[prost(bool, tag = "3")]
    pub(super) continued: bool,
}

/// Where the log entries of one commit are: the value of a `g` key.
#[derive(Clone, PartialEq, Message)]
pub(super) struct LogBatchRecord {
    #[prost(int64, tag = "1")]
    pub(super) commit_ms: i64,
    #[prost(message, repeated, tag = "2")]
    pub(super) entries: Vec<LogRef>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct LogRef {
    #[prost(uint64, tag = "1")]
    pub(super) revision: u64,
    #[prost(string, tag = "2")]
    pub(super) client_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct SettingsRecord {
    #[prost(bool, tag = "1")]
    enabled: bool,
    #[prost(uint64, tag = "2")]
    log_max_age_secs: u64,
    #[prost(uint32, tag = "3")]
    log_max_entries_per_client: u32,
    #[prost(uint64, tag = "4")]
    feed_max_age_secs: u64,
    #[prost(uint64, tag = "5")]
    feed_max_entries: u64,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn time_from_ms(ms: i64) -> Result<Timestamp, StoreError> {
    chrono::DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt("time out of range"))
}

fn addr_to_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn addr_from_bytes(bytes: &[u8]) -> Result<Option<IpAddr>, StoreError> {
    Ok(match bytes.len() {
        0 => None,
        4 => Some(IpAddr::from(
            <[u8; 4]>::try_from(bytes).expect("length checked"),
        )),
        16 => Some(IpAddr::from(
            <[u8; 16]>::try_from(bytes).expect("length checked"),
        )),
        _ => return Err(corrupt("address length")),
    })
}

fn protocol_to_u32(p: Option<MqttProtocol>) -> u32 {
    match p {
        None => 0,
        Some(MqttProtocol::V3_1) => 1,
        Some(MqttProtocol::V3_1_1) => 2,
        Some(MqttProtocol::V5_0) => 3,
    }
}

fn protocol_from_u32(v: u32) -> Result<Option<MqttProtocol>, StoreError> {
    Ok(match v {
        0 => None,
        1 => Some(MqttProtocol::V3_1),
        2 => Some(MqttProtocol::V3_1_1),
        3 => Some(MqttProtocol::V5_0),
        _ => return Err(corrupt("protocol")),
    })
}

fn initiator_to_u32(i: Option<DisconnectInitiator>) -> u32 {
    match i {
        None => 0,
        Some(DisconnectInitiator::Client) => 1,
        Some(DisconnectInitiator::Server) => 2,
        Some(DisconnectInitiator::Network) => 3,
    }
}

fn initiator_from_u32(v: u32) -> Result<Option<DisconnectInitiator>, StoreError> {
    Ok(match v {
        0 => None,
        1 => Some(DisconnectInitiator::Client),
        2 => Some(DisconnectInitiator::Server),
        3 => Some(DisconnectInitiator::Network),
        _ => return Err(corrupt("initiator")),
    })
}

fn activity_to_u32(a: ActivityKind) -> u32 {
    match a {
        ActivityKind::Connect => 1,
        ActivityKind::Publish => 2,
        ActivityKind::Subscribe => 3,
        ActivityKind::Unsubscribe => 4,
        ActivityKind::Ping => 5,
        ActivityKind::Disconnect => 6,
    }
}

fn activity_from_u32(v: u32) -> Result<ActivityKind, StoreError> {
    Ok(match v {
        1 => ActivityKind::Connect,
        2 => ActivityKind::Publish,
        3 => ActivityKind::Subscribe,
        4 => ActivityKind::Unsubscribe,
        5 => ActivityKind::Ping,
        6 => ActivityKind::Disconnect,
        _ => return Err(corrupt("activity")),
    })
}

fn log_kind_to_u32(k: LogKind) -> u32 {
    match k {
        LogKind::Connected => 1,
        LogKind::ConnectFailed => 2,
        LogKind::Disconnected => 3,
    }
}

fn log_kind_from_u32(v: u32) -> Result<LogKind, StoreError> {
    Ok(match v {
        1 => LogKind::Connected,
        2 => LogKind::ConnectFailed,
        3 => LogKind::Disconnected,
        _ => return Err(corrupt("log kind")),
    })
}

fn change_kind_to_u32(k: ChangeKind) -> u32 {
    match k {
        ChangeKind::Connected => 1,
        ChangeKind::ConnectFailed => 2,
        ChangeKind::Disconnected => 3,
        ChangeKind::Stale => 4,
        ChangeKind::Activity => 5,
        ChangeKind::Deleted => 6,
        ChangeKind::AllDeleted => 7,
    }
}

fn change_kind_from_u32(v: u32) -> Result<ChangeKind, StoreError> {
    Ok(match v {
        1 => ChangeKind::Connected,
        2 => ChangeKind::ConnectFailed,
        3 => ChangeKind::Disconnected,
        4 => ChangeKind::Stale,
        5 => ChangeKind::Activity,
        6 => ChangeKind::Deleted,
        7 => ChangeKind::AllDeleted,
        _ => return Err(corrupt("change kind")),
    })
}

fn client_id(s: String) -> Result<ClientId, StoreError> {
    ClientId::new(s).map_err(|_| corrupt("client id"))
}

impl From<&ConnectionState> for StateRecord {
    fn from(s: &ConnectionState) -> Self {
        StateRecord {
            client_id: s.client_id.as_str().to_owned(),
            status: match s.status {
                ConnectionStatus::Connected => 1,
                ConnectionStatus::Disconnected => 2,
            },
            last_connect_ms: s.last_connect_time.timestamp_millis(),
            last_activity: activity_to_u32(s.last_activity),
            last_activity_ms: s.last_activity_time.timestamp_millis(),
            addr: addr_to_bytes(s.connection.addr),
            port: u32::from(s.connection.port),
            secure: s.connection.secure,
            username: s.connection.username.clone(),
            protocol: protocol_to_u32(s.connection.protocol),
            keep_alive: u32::from(s.connection.keep_alive),
            clean_session: s.connection.clean_session,
            connection_id: s.connection_id,
            broker: s.broker.clone(),
            last_disconnect: s.last_disconnect.as_ref().map(|d| DisconnectRecord {
                time_ms: d.time.timestamp_millis(),
                initiator: initiator_to_u32(Some(d.initiator)),
                reason_code: d.reason_code.map(|c| u32::from(c.0)),
                reason: d.reason.clone(),
                close_code: u32::from(d.close_code.0),
            }),
            counters: Some(CountersRecord {
                connects: s.counters.connects,
                failed_connects: s.counters.failed_connects,
                takeovers: s.counters.takeovers,
                by_client: s.counters.disconnects_by_client,
                by_server: s.counters.disconnects_by_server,
                by_network: s.counters.disconnects_by_network,
            }),
            revision: s.revision,
        }
    }
}

impl TryFrom<StateRecord> for ConnectionState {
    type Error = StoreError;

    fn try_from(r: StateRecord) -> Result<Self, StoreError> {
        let last_disconnect = match r.last_disconnect {
            None => None,
            Some(d) => Some(LastDisconnect {
                time: time_from_ms(d.time_ms)?,
                initiator: initiator_from_u32(d.initiator)?.ok_or_else(|| corrupt("initiator"))?,
                reason_code: d.reason_code.map(|c| ReasonCode(c as u8)),
                reason: d.reason,
                close_code: CloseCode(d.close_code as u16),
            }),
        };
        let c = r.counters.unwrap_or_default();
        Ok(ConnectionState {
            client_id: client_id(r.client_id)?,
            status: match r.status {
                1 => ConnectionStatus::Connected,
                2 => ConnectionStatus::Disconnected,
                _ => return Err(corrupt("status")),
            },
            last_connect_time: time_from_ms(r.last_connect_ms)?,
            last_activity: activity_from_u32(r.last_activity)?,
            last_activity_time: time_from_ms(r.last_activity_ms)?,
            connection: ConnectionInfo {
                addr: addr_from_bytes(&r.addr)?.ok_or_else(|| corrupt("address"))?,
                port: r.port as u16,
                secure: r.secure,
                username: r.username,
                protocol: protocol_from_u32(r.protocol)?,
                keep_alive: r.keep_alive as u16,
                clean_session: r.clean_session,
            },
            connection_id: r.connection_id,
            broker: r.broker,
            last_disconnect,
            counters: Counters {
                connects: c.connects,
                failed_connects: c.failed_connects,
                takeovers: c.takeovers,
                disconnects_by_client: c.by_client,
                disconnects_by_server: c.by_server,
                disconnects_by_network: c.by_network,
            },
            revision: r.revision,
        })
    }
}

impl From<&LogEntry> for LogRecord {
    fn from(e: &LogEntry) -> Self {
        LogRecord {
            client_id: e.client_id.as_str().to_owned(),
            message: e.message.clone(),
            time_ms: e.time.timestamp_millis(),
            kind: log_kind_to_u32(e.kind),
            initiator: initiator_to_u32(e.initiator),
            reason_code: e.reason_code.map(|c| u32::from(c.0)),
            close_code: e.close_code.map(|c| u32::from(c.0)),
            addr: e.addr.map(addr_to_bytes).unwrap_or_default(),
            port: u32::from(e.port),
            protocol: protocol_to_u32(e.protocol),
            connection_id: e.connection_id,
            revision: e.revision,
            stale: e.stale,
        }
    }
}

impl TryFrom<LogRecord> for LogEntry {
    type Error = StoreError;

    fn try_from(r: LogRecord) -> Result<Self, StoreError> {
        Ok(LogEntry {
            client_id: client_id(r.client_id)?,
            message: r.message,
            time: time_from_ms(r.time_ms)?,
            kind: log_kind_from_u32(r.kind)?,
            initiator: initiator_from_u32(r.initiator)?,
            reason_code: r.reason_code.map(|c| ReasonCode(c as u8)),
            close_code: r.close_code.map(|c| CloseCode(c as u16)),
            addr: addr_from_bytes(&r.addr)?,
            port: r.port as u16,
            protocol: protocol_from_u32(r.protocol)?,
            connection_id: r.connection_id,
            revision: r.revision,
            stale: r.stale,
        })
    }
}

impl From<&Change> for ChangeRecord {
    fn from(c: &Change) -> Self {
        ChangeRecord {
            revision: c.revision,
            kind: change_kind_to_u32(c.kind),
            client_id: c.client_id.as_ref().map(|id| id.as_str().to_owned()),
            state: c.state.as_ref().map(StateRecord::from),
            log_entry: c.log_entry.as_ref().map(LogRecord::from),
            commit_ms: c.commit_time.timestamp_millis(),
        }
    }
}

impl TryFrom<ChangeRecord> for Change {
    type Error = StoreError;

    fn try_from(r: ChangeRecord) -> Result<Self, StoreError> {
        Ok(Change {
            revision: r.revision,
            kind: change_kind_from_u32(r.kind)?,
            client_id: r.client_id.map(client_id).transpose()?,
            state: r.state.map(ConnectionState::try_from).transpose()?,
            log_entry: r.log_entry.map(LogEntry::try_from).transpose()?,
            commit_time: time_from_ms(r.commit_ms)?,
            wire: WireForms::default(),
        })
    }
}

impl From<&Settings> for SettingsRecord {
    fn from(s: &Settings) -> Self {
        SettingsRecord {
            enabled: s.enabled,
            log_max_age_secs: s.log_max_age.as_secs(),
            log_max_entries_per_client: s.log_max_entries_per_client,
            feed_max_age_secs: s.feed_max_age.as_secs(),
            feed_max_entries: s.feed_max_entries,
        }
    }
}

impl From<SettingsRecord> for Settings {
    fn from(r: SettingsRecord) -> Self {
        Settings {
            enabled: r.enabled,
            log_max_age: std::time::Duration::from_secs(r.log_max_age_secs),
            log_max_entries_per_client: r.log_max_entries_per_client,
            feed_max_age: std::time::Duration::from_secs(r.feed_max_age_secs),
            feed_max_entries: r.feed_max_entries,
        }
    }
}

/// Decodes a stored protobuf record.
pub(super) fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn decode_state(bytes: &[u8]) -> Result<ConnectionState, StoreError> {
    ConnectionState::try_from(decode::<StateRecord>(bytes)?)
}

pub(super) fn encode_state(state: &ConnectionState) -> Vec<u8> {
    StateRecord::from(state).encode_to_vec()
}

pub(super) fn decode_log(bytes: &[u8]) -> Result<LogEntry, StoreError> {
    LogEntry::try_from(decode::<LogRecord>(bytes)?)
}

/// First byte of a compressed feed record. A plain [`FeedBatchRecord`]
/// (what stores wrote before compression) never starts with it: 0 is no
/// protobuf field tag.
const FEED_LZ4: u8 = 0;

/// Bytes before the compressed block: the marker, the commit time (big
/// endian, for retention, which reads nothing else) and the length of the
/// record before compression (little endian).
const FEED_HEADER: usize = 1 + 8 + 4;

/// A stored feed record: `record` compressed with LZ4, behind
/// [`FEED_HEADER`]. A commit's changes repeat client ids, brokers, types
/// and times: compressed they take about a third of the bytes, in what
/// sled writes and flushes per commit, keeps in its cache and in its files.
pub(super) fn encode_feed_batch(record: &FeedBatchRecord) -> Vec<u8> {
    let plain = record.encode_to_vec();
    let mut out = Vec::with_capacity(FEED_HEADER + plain.len() / 2);
    out.push(FEED_LZ4);
    out.extend_from_slice(&record.commit_ms.to_be_bytes());
    // A commit is far below 4 GiB (at most `max_batch_events` changes).
    out.extend_from_slice(&u32::try_from(plain.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&lz4_flex::block::compress(&plain));
    out
}

/// The commit time of a stored feed record, compressed or not.
pub(super) fn feed_commit_ms(bytes: &[u8]) -> Result<i64, StoreError> {
    match bytes.split_first() {
        Some((&FEED_LZ4, rest)) => rest
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt("a feed record's header is cut short".into())),
        _ => Ok(decode::<FeedBatchRecord>(bytes)?.commit_ms),
    }
}

/// The record of a stored feed batch, compressed or not.
pub(super) fn decode_feed_record(bytes: &[u8]) -> Result<FeedBatchRecord, StoreError> {
    let Some((&FEED_LZ4, _)) = bytes.split_first() else {
        return decode(bytes);
    };
    let corrupt = |what: &str| StoreError::Corrupt(format!("a compressed feed record: {what}"));
    if bytes.len() < FEED_HEADER {
        return Err(corrupt("its header is cut short"));
    }
    let (header, block) = bytes.split_at(FEED_HEADER);
    let len = u32::from_le_bytes([header[9], header[10], header[11], header[12]]) as usize;
    // LZ4 expands at most 255-fold: a larger length is damage, and is not
    // allocated.
    if len > block.len().saturating_mul(255) {
        return Err(corrupt("its length does not match its block"));
    }
    let plain = lz4_flex::block::decompress(block, len).map_err(|e| corrupt(&e.to_string()))?;
    if plain.len() != len {
        return Err(corrupt("its length does not match its block"));
    }
    decode(&plain)
}

pub(super) fn encode_log(entry: &LogEntry) -> Vec<u8> {
    LogRecord::from(entry).encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(changes: u64) -> FeedBatchRecord {
        FeedBatchRecord {
            continued: false,
            commit_ms: 1_764_547_200_123,
            changes: (1..=changes)
                .map(|revision| ChangeRecord {
                    revision,
                    kind: 1,
                    client_id: Some(format!("d:org1:sensor:device-{revision:06}")),
                    state: None,
                    log_entry: None,
                    commit_ms: 1_764_547_200_123,
                })
                .collect(),
        }
    }

    #[test]
    fn a_feed_record_is_stored_compressed_and_read_back_whole() {
        let original = record(1000);
        let stored = encode_feed_batch(&original);
        assert!(
            stored.len() * 2 < original.encoded_len(),
            "{} bytes stored for {}",
            stored.len(),
            original.encoded_len()
        );
        assert_eq!(decode_feed_record(&stored).unwrap(), original);
        assert_eq!(feed_commit_ms(&stored).unwrap(), original.commit_ms);
    }

    #[test]
    fn a_feed_record_stored_before_compression_is_still_read() {
        let original = record(3);
        let plain = original.encode_to_vec();
        assert_ne!(plain[0], FEED_LZ4);
        assert_eq!(decode_feed_record(&plain).unwrap(), original);
        assert_eq!(feed_commit_ms(&plain).unwrap(), original.commit_ms);
    }

    #[test]
    fn a_damaged_compressed_feed_record_is_an_error() {
        let stored = encode_feed_batch(&record(50));
        // Cut short, in the header and in the block.
        for len in [1, 5, FEED_HEADER - 1, FEED_HEADER + 3, stored.len() - 1] {
            assert!(
                matches!(
                    decode_feed_record(&stored[..len]),
                    Err(StoreError::Corrupt(_))
                ),
                "cut to {len} bytes"
            );
        }
        assert!(feed_commit_ms(&stored[..5]).is_err());
        // A length no block of this size can hold is refused before
        // anything that large is allocated.
        let mut huge = stored.clone();
        huge[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_feed_record(&huge),
            Err(StoreError::Corrupt(_))
        ));
        // A length that does not match what the block holds.
        let mut short = stored;
        short[9] ^= 1;
        assert!(matches!(
            decode_feed_record(&short),
            Err(StoreError::Corrupt(_))
        ));
    }
}
