//! Key layout of the single sled tree. A group commit is one atomic batch
//! holding its feed record (`f`) and the revision; the state records, log
//! entries and log batch records are written back from the feed records in
//! later batches that also record how far they reach (`mmaterialised`).
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `m` | `m` name | metadata (revision, materialised position, settings, clearing flag, secrets) |
//! | `s` | `s` client | state record |
//! | `p` | `p` client, 0x00, revision (8) | log entry of one client |
//! | `g` | `g` first revision (8) | the log entries (revision, client) of one commit |
//! | `f` | `f` first revision (8) | the changes of one commit (the change feed), LZ4-compressed behind a 13-byte header (stores made before compression hold plain records, still read) |
//! | `l` | `l` holder | a lease: its duration in milliseconds (8) |
//! | `x` | `x` client | empty: the client has no record and its log may hold failed connects (written with the commit) |
//!
//! The secondary indexes of state records live in memory
//! ([`super::index`]) with their own prefixes, never written to sled:
//!
//! | prefix | key |
//! |---|---|
//! | `a`, `c`, `d` | prefix, time (8), client: by last activity, connect, disconnect time |
//! | `t` | `t`, status (1), client: by connection status |
//! | `y` | `y`, type id, 0x00, client: devices and gateways by device type, in client id order |
//!
//! Times are Unix milliseconds with the sign bit flipped, big-endian, so that
//! byte order is time order. Client ids never contain 0x00.

use crate::domain::{ClientId, ConnectionStatus, Revision, Timestamp};

pub const STATE: u8 = b's';
pub const BY_ACTIVITY: u8 = b'a';
pub const BY_CONNECT: u8 = b'c';
pub const BY_DISCONNECT: u8 = b'd';
pub const BY_STATUS: u8 = b't';
pub const BY_TYPE: u8 = b'y';
pub const CLIENT_LOG: u8 = b'p';
pub const LOG_BATCH: u8 = b'g';
pub const FEED: u8 = b'f';
pub const LEASE: u8 = b'l';
pub const FAILED_ONLY: u8 = b'x';

pub const META_REVISION: &[u8] = b"mrevision";
pub const META_SETTINGS: &[u8] = b"msettings";
pub const META_CLEARING: &[u8] = b"mclearing";
/// Present once every client without a record whose log may hold failed
/// connects has its `x` marker: in stores made since the markers exist.
pub const META_FAILURE_MARKERS: &[u8] = b"mfailuremarkers";
/// The newest revision written back from the log (see [`super::overlay`]).
pub const META_MATERIALISED: &[u8] = b"mmaterialised";
/// `msecret/` name: a secret key of this store.
pub const META_SECRET: &[u8] = b"msecret/";
/// `mcluster/` name: the cluster's metadata (its position in its log, its
/// node table), written with the commits of the writes it applies.
pub const META_CLUSTER: &[u8] = b"mcluster/";

/// [`META_CLUSTER`] name of how far the replicated log is applied: its
/// message sequence (8) and the entry within it (4), big-endian.
pub const APPLIED_POSITION: &[u8] = b"applied";

pub fn encode_position((sequence, entry): (u64, u32)) -> [u8; 12] {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&sequence.to_be_bytes());
    bytes[8..].copy_from_slice(&entry.to_be_bytes());
    bytes
}

pub fn decode_position(bytes: &[u8]) -> Option<(u64, u32)> {
    let bytes: [u8; 12] = bytes.try_into().ok()?;
    Some((
        u64::from_be_bytes(bytes[..8].try_into().ok()?),
        u32::from_be_bytes(bytes[8..].try_into().ok()?),
    ))
}

/// A lease record: its duration in milliseconds (8), and in a replicated
/// log the commit time of its last renewal (8, Unix milliseconds).
pub fn encode_lease(duration: std::time::Duration, renewed_ms: Option<i64>) -> Vec<u8> {
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let mut value = ms.to_be_bytes().to_vec();
    if let Some(renewed) = renewed_ms {
        value.extend_from_slice(&renewed.to_be_bytes());
    }
    value
}

pub fn decode_lease(value: &[u8]) -> Option<(std::time::Duration, Option<i64>)> {
    let ms = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let renewed = match value.len() {
        8 => None,
        16 => Some(i64::from_be_bytes(value[8..].try_into().ok()?)),
        _ => return None,
    };
    Some((std::time::Duration::from_millis(ms), renewed))
}

pub fn lease(holder: &str) -> Vec<u8> {
    let mut key = vec![LEASE];
    key.extend_from_slice(holder.as_bytes());
    key
}

pub fn meta_cluster(name: &[u8]) -> Vec<u8> {
    [META_CLUSTER, name].concat()
}

/// Every sled prefix that holds client data (what turning the feature off
/// clears).
pub const DATA_PREFIXES: [u8; 5] = [STATE, CLIENT_LOG, LOG_BATCH, FEED, FAILED_ONLY];

pub fn encode_time(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

#[cfg(test)]
pub fn decode_time(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// `prefix` and the client id: a key of one client's own.
fn of_client(prefix: u8, client: &ClientId) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + client.as_str().len());
    key.push(prefix);
    key.extend_from_slice(client.as_str().as_bytes());
    key
}

/// The marker of a client without a record whose log may hold failed
/// connects.
pub fn failed_only(client: &ClientId) -> Vec<u8> {
    of_client(FAILED_ONLY, client)
}

pub fn state(client: &ClientId) -> Vec<u8> {
    of_client(STATE, client)
}

/// Index key: prefix, time, client. `None` (never) sorts before every time.
pub fn time_index(prefix: u8, time: Option<Timestamp>, client: &ClientId) -> Vec<u8> {
    time_index_ms(prefix, time.map(|t| t.timestamp_millis()), client)
}

/// [`time_index`] from Unix milliseconds.
pub fn time_index_ms(prefix: u8, ms: Option<i64>, client: &ClientId) -> Vec<u8> {
    let ms = ms.unwrap_or(i64::MIN);
    let mut key = Vec::with_capacity(9 + client.as_str().len());
    key.push(prefix);
    key.extend_from_slice(&encode_time(ms));
    key.extend_from_slice(client.as_str().as_bytes());
    key
}

pub fn status_byte(status: ConnectionStatus) -> u8 {
    match status {
        ConnectionStatus::Connected => 1,
        ConnectionStatus::Disconnected => 2,
    }
}

pub fn status_index(status: ConnectionStatus, client: &ClientId) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + client.as_str().len());
    key.push(BY_STATUS);
    key.push(status_byte(status));
    key.extend_from_slice(client.as_str().as_bytes());
    key
}

pub fn revision_key(prefix: u8, revision: Revision) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&revision.to_be_bytes());
    key
}

/// The revision of a `g` or `f` key.
pub fn revision_of(key: &[u8]) -> Option<Revision> {
    Some(Revision::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

/// Start of one client's log entries in the `p` index.
pub fn client_log_prefix(client: &ClientId) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + client.as_str().len());
    key.push(CLIENT_LOG);
    key.extend_from_slice(client.as_str().as_bytes());
    key.push(0);
    key
}

pub fn client_log(client: &ClientId, revision: Revision) -> Vec<u8> {
    let mut key = client_log_prefix(client);
    key.extend_from_slice(&revision.to_be_bytes());
    key
}

/// The revision at the end of a `p` key.
pub fn client_log_revision(key: &[u8]) -> Option<Revision> {
    let tail = key.get(key.len().checked_sub(8)?..)?;
    Some(Revision::from_be_bytes(tail.try_into().ok()?))
}

/// Start of the `y` index entries of one device type.
pub fn type_prefix(type_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + type_id.len());
    key.push(BY_TYPE);
    key.extend_from_slice(type_id.as_bytes());
    key.push(0);
    key
}

pub fn type_index(type_id: &str, client: &ClientId) -> Vec<u8> {
    let mut key = type_prefix(type_id);
    key.extend_from_slice(client.as_str().as_bytes());
    key
}

/// The client id of an index key (`a`, `c`, `d`, `t` or `y`).
pub fn client_of_index(key: &[u8]) -> Option<&str> {
    let offset = match *key.first()? {
        BY_STATUS => 2,
        BY_TYPE => key.iter().position(|&b| b == 0)? + 1,
        _ => 9,
    };
    std::str::from_utf8(key.get(offset..)?).ok()
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_sort_in_time_order() {
        let times = [i64::MIN, -5, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(encode_time(pair[0]) < encode_time(pair[1]));
            assert_eq!(decode_time(encode_time(pair[0])), pair[0]);
        }
    }

    #[test]
    fn index_keys_give_back_their_client() {
        let client = ClientId::new("d:o:t:x").unwrap();
        let key = time_index(BY_ACTIVITY, None, &client);
        assert_eq!(client_of_index(&key), Some("d:o:t:x"));
        let key = status_index(ConnectionStatus::Connected, &client);
        assert_eq!(client_of_index(&key), Some("d:o:t:x"));
        assert_eq!(client_of_index(&type_index("t", &client)), Some("d:o:t:x"));
        assert_eq!(client_log_revision(&client_log(&client, 42)), Some(42));
    }

    #[test]
    fn prefix_end_is_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff]), None);
    }
}
