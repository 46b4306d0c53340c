//! The registry: API keys (who may call the APIs, with which role), and
//! device types and devices (who may connect over MQTT, with which token).
//!
//! Keys look like the platform's (`a-{org}-{random}`); tokens are random,
//! 24 characters, shown once at creation and stored only as a SHA-256
//! digest (tokens are long random strings, so a fast hash is the right
//! tool; passwords would need a slow one). Digests are compared in constant
//! time. Records live in their own sled tree (`registry`) of the store's
//! database, apart from the client state, and are written directly: they
//! are not client state and have no revisions.

use std::fmt;

use prost::Message;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError};

/// Key prefix of API key records in sled.
const KEY_PREFIX: &[u8] = b"k";
/// Key prefix of device type records.
const TYPE_PREFIX: &[u8] = b"y";
/// Key prefix of device records: type, 0x00, device.
const DEVICE_PREFIX: &[u8] = b"v";
/// Length of generated tokens.
const TOKEN_LEN: usize = 24;

/// What an API key may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Queries, logs, watches.
    ReadOnly,
    /// Also ingest events and delete records.
    Operator,
    /// Also settings, the feature switch and API keys.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read-only" => Some(Role::ReadOnly),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn to_u32(self) -> u32 {
        match self {
            Role::ReadOnly => 1,
            Role::Operator => 2,
            Role::Admin => 3,
        }
    }

    fn from_u32(v: u32) -> Option<Role> {
        match v {
            1 => Some(Role::ReadOnly),
            2 => Some(Role::Operator),
            3 => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API key as listed (never with its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key: String,
    pub role: Role,
    pub description: String,
    pub created: crate::domain::Timestamp,
}

/// A caller that proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key: String,
    pub role: Role,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("no such API key")]
    NotFound,
    #[error("an API key cannot delete itself")]
    OwnKey,
    #[error("the last admin key cannot be deleted")]
    LastAdmin,
    #[error("no such device type")]
    TypeNotFound,
    #[error("no such device")]
    DeviceNotFound,
    #[error("{0} already exists")]
    Exists(&'static str),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the system has no source of randomness: {0}")]
    Random(String),
}

#[derive(Clone, PartialEq, Message)]
struct ApiKeyRecord {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(bytes = "vec", tag = "2")]
    token_sha256: Vec<u8>,
    #[prost(uint32, tag = "3")]
    role: u32,
    #[prost(string, tag = "4")]
    description: String,
    #[prost(int64, tag = "5")]
    created_ms: i64,
}

fn record_key(key: &str) -> Vec<u8> {
    let mut k = KEY_PREFIX.to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// `n` random characters of `[a-z0-9]` (or with upper case when `mixed`).
fn random_chars(n: usize, mixed: bool) -> Result<String, RegistryError> {
    const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    const MIXED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let alphabet = if mixed { MIXED } else { LOWER };
    let mut out = String::with_capacity(n);
    let mut bytes = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut bytes).map_err(|e| RegistryError::Random(e.to_string()))?;
        for &b in &bytes {
            // Rejection sampling keeps every character equally likely.
            let limit = 256 - 256 % alphabet.len();
            if (b as usize) < limit && out.len() < n {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    Ok(out)
}

/// A cheap, cloneable handle to the registry.
#[derive(Clone)]
pub struct Registry {
    db: sled::Tree,
    org_id: String,
    /// Serialises key deletions, so that two at once cannot both see
    /// another admin key and together delete the last two.
    deleting: std::sync::Arc<std::sync::Mutex<()>>,
}

/// Name of the registry's sled tree.
const TREE: &str = "registry";

impl Registry {
    /// Opens the registry of `store`, moving records that earlier versions
    /// kept under their prefixes in the state tree into its own tree.
    pub fn new(store: &Store, org_id: &str) -> Result<Registry, RegistryError> {
        let db = store.db().open_tree(TREE)?;
        migrate(store.db(), &db)?;
        Ok(Registry {
            db,
            org_id: org_id.to_owned(),
            deleting: Default::default(),
        })
    }

    /// Creates a key with a new random token; the token is returned here
    /// and never again.
    pub fn create_key(
        &self,
        role: Role,
        description: &str,
    ) -> Result<(ApiKey, String), RegistryError> {
        let key = format!("a-{}-{}", self.org_id, random_chars(10, false)?);
        let token = random_chars(TOKEN_LEN, true)?;
        let api_key = self.put_key(&key, &token, role, description)?;
        Ok((api_key, token))
    }

    /// Stores `key` with `token` (used to bootstrap an administrator key
    /// from the configuration; replaces an existing record).
    pub fn put_key(
        &self,
        key: &str,
        token: &str,
        role: Role,
        description: &str,
    ) -> Result<ApiKey, RegistryError> {
        let created = crate::domain::truncate_to_millis(chrono::Utc::now());
        let record = ApiKeyRecord {
            key: key.to_owned(),
            token_sha256: digest(token),
            role: role.to_u32(),
            description: description.to_owned(),
            created_ms: created.timestamp_millis(),
        };
        self.db.insert(record_key(key), record.encode_to_vec())?;
        self.db.flush()?;
        Ok(ApiKey {
            key: key.to_owned(),
            role,
            description: description.to_owned(),
            created,
        })
    }

    /// Deletes `key` on behalf of the caller `by`. Nobody locks the
    /// administrators out: a key cannot delete itself, and the last admin
    /// key stays.
    pub fn delete_key(&self, key: &str, by: &str) -> Result<(), RegistryError> {
        let _one_at_a_time = self
            .deleting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let target = self
            .db
            .get(record_key(key))?
            .as_deref()
            .and_then(decode)
            .ok_or(RegistryError::NotFound)?
            .0;
        if key == by {
            return Err(RegistryError::OwnKey);
        }
        if target.role == Role::Admin
            && !self
                .list_keys()?
                .iter()
                .any(|k| k.role == Role::Admin && k.key != key)
        {
            return Err(RegistryError::LastAdmin);
        }
        self.db.remove(record_key(key))?;
        self.db.flush()?;
        Ok(())
    }

    pub fn list_keys(&self) -> Result<Vec<ApiKey>, RegistryError> {
        let mut keys = Vec::new();
        for item in self.db.scan_prefix(KEY_PREFIX) {
            let (_, value) = item?;
            if let Some(k) = decode(&value) {
                keys.push(k.0);
            }
        }
        Ok(keys)
    }

    /// The caller `key` is if `token` is its token.
    pub fn authenticate(&self, key: &str, token: &str) -> Option<Principal> {
        let presented = digest(token);
        let stored = self.db.get(record_key(key)).ok().flatten();
        // Compare against something of the right length even for unknown
        // keys, so that timing tells nothing either way.
        let (expected, role) = match stored.as_deref().and_then(decode) {
            Some((api_key, digest)) => (digest, Some(api_key.role)),
            None => (vec![0u8; presented.len()], None),
        };
        let equal: bool = presented.ct_eq(&expected).into();
        match (equal, role) {
            (true, Some(role)) => Some(Principal {
                key: key.to_owned(),
                role,
            }),
            _ => None,
        }
    }
}

/// Moves registry records from the default tree (where versions before
/// the registry had its own tree kept them, under the prefixes below) into
/// `tree`. Each record is copied before it is removed, so a crash in
/// between leaves a copy in both and the next start finishes the move.
fn migrate(old: &sled::Db, tree: &sled::Tree) -> Result<(), RegistryError> {
    let mut moved = 0;
    for prefix in [KEY_PREFIX, TYPE_PREFIX, DEVICE_PREFIX] {
        for item in old.scan_prefix(prefix) {
            let (key, value) = item?;
            tree.insert(&key, value)?;
            moved += 1;
        }
    }
    if moved == 0 {
        return Ok(());
    }
    tree.flush()?;
    for prefix in [KEY_PREFIX, TYPE_PREFIX, DEVICE_PREFIX] {
        for key in old.scan_prefix(prefix).keys() {
            old.remove(key?)?;
        }
    }
    old.flush()?;
    tracing::info!(records = moved, "registry moved into its own tree");
    Ok(())
}

fn decode(bytes: &[u8]) -> Option<(ApiKey, Vec<u8>)> {
    let r = ApiKeyRecord::decode(bytes).ok()?;
    Some((
        ApiKey {
            key: r.key,
            role: Role::from_u32(r.role)?,
            description: r.description,
            created: chrono::DateTime::from_timestamp_millis(r.created_ms)?,
        },
        r.token_sha256,
    ))
}

/// A device type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceType {
    pub id: String,
    pub description: String,
    /// `Device` or `Gateway`, as on the platform.
    pub class_id: String,
    pub created: crate::domain::Timestamp,
}

/// A registered device (never with its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub type_id: String,
    pub device_id: String,
    pub class_id: String,
    pub created: crate::domain::Timestamp,
}

#[derive(Clone, PartialEq, Message)]
struct DeviceTypeRecord {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    description: String,
    #[prost(string, tag = "3")]
    class_id: String,
    #[prost(int64, tag = "4")]
    created_ms: i64,
}

#[derive(Clone, PartialEq, Message)]
struct DeviceRecord {
    #[prost(string, tag = "1")]
    type_id: String,
    #[prost(string, tag = "2")]
    device_id: String,
    #[prost(bytes = "vec", tag = "3")]
    token_sha256: Vec<u8>,
    #[prost(int64, tag = "4")]
    created_ms: i64,
}

/// Platform ids: 1 to 36 characters of `[A-Za-z0-9._-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 36
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn type_key(type_id: &str) -> Vec<u8> {
    [TYPE_PREFIX, type_id.as_bytes()].concat()
}

fn device_key(type_id: &str, device_id: &str) -> Vec<u8> {
    [
        DEVICE_PREFIX,
        type_id.as_bytes(),
        b"\0",
        device_id.as_bytes(),
    ]
    .concat()
}

fn time_ms(ms: i64) -> crate::domain::Timestamp {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl Registry {
    pub fn create_type(
        &self,
        id: &str,
        description: &str,
        class_id: &str,
    ) -> Result<DeviceType, RegistryError> {
        if !valid_id(id) {
            return Err(RegistryError::Invalid {
                field: "id",
                reason: "must be 1 to 36 characters of A-Z, a-z, 0-9, '.', '_', '-'".into(),
            });
        }
        if !matches!(class_id, "Device" | "Gateway") {
            return Err(RegistryError::Invalid {
                field: "classId",
                reason: "must be Device or Gateway".into(),
            });
        }
        let created = crate::domain::truncate_to_millis(chrono::Utc::now());
        let record = DeviceTypeRecord {
            id: id.to_owned(),
            description: description.to_owned(),
            class_id: class_id.to_owned(),
            created_ms: created.timestamp_millis(),
        };
        let inserted =
            self.db
                .compare_and_swap(type_key(id), None::<&[u8]>, Some(record.encode_to_vec()))?;
        if inserted.is_err() {
            return Err(RegistryError::Exists("the device type"));
        }
        self.db.flush()?;
        Ok(DeviceType {
            id: id.to_owned(),
            description: description.to_owned(),
            class_id: class_id.to_owned(),
            created,
        })
    }

    pub fn get_type(&self, id: &str) -> Result<DeviceType, RegistryError> {
        let value = self
            .db
            .get(type_key(id))?
            .ok_or(RegistryError::TypeNotFound)?;
        let r =
            DeviceTypeRecord::decode(value.as_ref()).map_err(|_| RegistryError::TypeNotFound)?;
        Ok(DeviceType {
            id: r.id,
            description: r.description,
            class_id: r.class_id,
            created: time_ms(r.created_ms),
        })
    }

    pub fn list_types(&self) -> Result<Vec<DeviceType>, RegistryError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(TYPE_PREFIX) {
            let (_, value) = item?;
            if let Ok(r) = DeviceTypeRecord::decode(value.as_ref()) {
                out.push(DeviceType {
                    id: r.id,
                    description: r.description,
                    class_id: r.class_id,
                    created: time_ms(r.created_ms),
                });
            }
        }
        Ok(out)
    }

    /// Deletes a device type that has no devices.
    pub fn delete_type(&self, id: &str) -> Result<(), RegistryError> {
        self.get_type(id)?;
        let devices = [DEVICE_PREFIX, id.as_bytes(), b"\0"].concat();
        if self.db.scan_prefix(devices).next().is_some() {
            return Err(RegistryError::Invalid {
                field: "typeId",
                reason: "the device type still has devices".into(),
            });
        }
        self.db.remove(type_key(id))?;
        self.db.flush()?;
        Ok(())
    }

    /// Registers a device; with no `token` a random one is made. The token
    /// is returned here and never again.
    pub fn create_device(
        &self,
        type_id: &str,
        device_id: &str,
        token: Option<&str>,
    ) -> Result<(Device, String), RegistryError> {
        let device_type = self.get_type(type_id)?;
        if !valid_id(device_id) {
            return Err(RegistryError::Invalid {
                field: "deviceId",
                reason: "must be 1 to 36 characters of A-Z, a-z, 0-9, '.', '_', '-'".into(),
            });
        }
        let token = match token {
            Some(t) if t.len() < 8 || t.len() > 128 => {
                return Err(RegistryError::Invalid {
                    field: "authToken",
                    reason: "must be 8 to 128 characters".into(),
                });
            }
            Some(t) => t.to_owned(),
            None => random_chars(TOKEN_LEN, true)?,
        };
        let created = crate::domain::truncate_to_millis(chrono::Utc::now());
        let record = DeviceRecord {
            type_id: type_id.to_owned(),
            device_id: device_id.to_owned(),
            token_sha256: digest(&token),
            created_ms: created.timestamp_millis(),
        };
        let inserted = self.db.compare_and_swap(
            device_key(type_id, device_id),
            None::<&[u8]>,
            Some(record.encode_to_vec()),
        )?;
        if inserted.is_err() {
            return Err(RegistryError::Exists("the device"));
        }
        self.db.flush()?;
        Ok((
            Device {
                type_id: type_id.to_owned(),
                device_id: device_id.to_owned(),
                class_id: device_type.class_id,
                created,
            },
            token,
        ))
    }

    pub fn get_device(&self, type_id: &str, device_id: &str) -> Result<Device, RegistryError> {
        let device_type = self.get_type(type_id)?;
        let value = self
            .db
            .get(device_key(type_id, device_id))?
            .ok_or(RegistryError::DeviceNotFound)?;
        let r = DeviceRecord::decode(value.as_ref()).map_err(|_| RegistryError::DeviceNotFound)?;
        Ok(Device {
            type_id: r.type_id,
            device_id: r.device_id,
            class_id: device_type.class_id,
            created: time_ms(r.created_ms),
        })
    }

    pub fn list_devices(&self, type_id: &str) -> Result<Vec<Device>, RegistryError> {
        let device_type = self.get_type(type_id)?;
        let mut out = Vec::new();
        for item in self
            .db
            .scan_prefix([DEVICE_PREFIX, type_id.as_bytes(), b"\0"].concat())
        {
            let (_, value) = item?;
            if let Ok(r) = DeviceRecord::decode(value.as_ref()) {
                out.push(Device {
                    type_id: r.type_id,
                    device_id: r.device_id,
                    class_id: device_type.class_id.clone(),
                    created: time_ms(r.created_ms),
                });
            }
        }
        Ok(out)
    }

    pub fn delete_device(&self, type_id: &str, device_id: &str) -> Result<(), RegistryError> {
        match self.db.remove(device_key(type_id, device_id))? {
            Some(_) => {
                self.db.flush()?;
                Ok(())
            }
            None => Err(RegistryError::DeviceNotFound),
        }
    }

    /// The class of the device's type if `token` is the token of the device
    /// (for MQTT `use-token-auth`), `None` otherwise. Compared in constant
    /// time; unknown devices take the same path.
    pub fn authenticate_device(
        &self,
        type_id: &str,
        device_id: &str,
        token: &str,
    ) -> Option<DeviceClass> {
        let presented = digest(token);
        let stored = self
            .db
            .get(device_key(type_id, device_id))
            .ok()
            .flatten()
            .and_then(|v| DeviceRecord::decode(v.as_ref()).ok());
        let (expected, known) = match stored {
            Some(r) => (r.token_sha256, true),
            None => (vec![0u8; presented.len()], false),
        };
        let equal: bool = presented.ct_eq(&expected).into();
        if !(equal && known) {
            return None;
        }
        // A device cannot outlive its type (a type with devices is never
        // deleted), so a missing type is a refusal, not an error.
        let device_type = self.get_type(type_id).ok()?;
        DeviceClass::parse(&device_type.class_id)
    }
}

/// The class of a device type: what its devices may act as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClass {
    /// A device: its own events and commands only.
    Device,
    /// A gateway: may also act for other devices (DESIGN.md §4).
    Gateway,
}

impl DeviceClass {
    pub fn parse(class_id: &str) -> Option<DeviceClass> {
        match class_id {
            "Device" => Some(DeviceClass::Device),
            "Gateway" => Some(DeviceClass::Gateway),
            _ => None,
        }
    }
}

/// Parses an `Authorization: Basic base64(key:token)` header value.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (key, token) = text.split_once(':')?;
    Some((key.to_owned(), token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_long_and_different() {
        let a = random_chars(TOKEN_LEN, true).unwrap();
        let b = random_chars(TOKEN_LEN, true).unwrap();
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn basic_headers_parse() {
        assert_eq!(
            parse_basic("Basic YS1vcmctYWJjOnNlY3JldA=="),
            Some(("a-org-abc".into(), "secret".into()))
        );
        assert_eq!(parse_basic("Bearer x"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
    }

    #[test]
    fn devices_register_once_and_authenticate_by_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let registry = Registry::new(&store, "org1").unwrap();
        registry
            .create_type("sensor", "a sensor", "Device")
            .unwrap();
        assert!(matches!(
            registry.create_type("sensor", "", "Device"),
            Err(RegistryError::Exists(_))
        ));
        let (device, token) = registry.create_device("sensor", "s1", None).unwrap();
        assert_eq!(device.device_id, "s1");
        assert!(token.len() >= 18);
        assert_eq!(
            registry.authenticate_device("sensor", "s1", &token),
            Some(DeviceClass::Device)
        );
        assert_eq!(
            registry.authenticate_device("sensor", "s1", "wrong-token"),
            None
        );
        assert_eq!(
            registry.authenticate_device("sensor", "nobody", &token),
            None
        );
        registry.create_type("gw", "", "Gateway").unwrap();
        let (_, gw_token) = registry.create_device("gw", "g1", None).unwrap();
        assert_eq!(
            registry.authenticate_device("gw", "g1", &gw_token),
            Some(DeviceClass::Gateway)
        );
        let (_, chosen) = registry
            .create_device("sensor", "s2", Some("my-own-token"))
            .unwrap();
        assert_eq!(chosen, "my-own-token");
        assert_eq!(registry.list_devices("sensor").unwrap().len(), 2);
        assert!(registry.delete_type("sensor").is_err(), "devices remain");
        registry.delete_device("sensor", "s1").unwrap();
        assert_eq!(registry.authenticate_device("sensor", "s1", &token), None);
        assert!(matches!(
            registry.create_device("nope", "x", None),
            Err(RegistryError::TypeNotFound)
        ));
    }

    /// Records an earlier version kept in the state tree move into the
    /// registry's own tree, and still authenticate.
    #[test]
    fn records_of_the_state_tree_move_into_the_registry_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let registry = Registry::new(&store, "org1").unwrap();
        registry.create_type("sensor", "", "Device").unwrap();
        let (_, device_token) = registry.create_device("sensor", "s1", None).unwrap();
        let (key, key_token) = registry.create_key(Role::Admin, "").unwrap();
        // The old layout: the same records in the default tree.
        let tree = store.db().open_tree(TREE).unwrap();
        for item in tree.iter() {
            let (k, v) = item.unwrap();
            store.db().insert(k, v).unwrap();
        }
        tree.clear().unwrap();

        let registry = Registry::new(&store, "org1").unwrap();
        assert_eq!(
            registry.authenticate_device("sensor", "s1", &device_token),
            Some(DeviceClass::Device)
        );
        assert!(registry.authenticate(&key.key, &key_token).is_some());
        for prefix in [KEY_PREFIX, TYPE_PREFIX, DEVICE_PREFIX] {
            assert_eq!(store.db().scan_prefix(prefix).count(), 0);
        }
    }

    #[test]
    fn roles_order_by_power() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::ReadOnly);
        assert_eq!(Role::parse("operator"), Some(Role::Operator));
    }
}
