//! The registry: API keys (who may call the APIs, with which role), and
//! device types and devices (who may connect over MQTT, with which token).
//!
//! Keys look like the platform's (`a-{org}-{random}`); tokens are random,
//! 24 characters, shown once at creation and stored only as a SHA-256
//! digest (tokens are long random strings, so a fast hash is the right
//! tool; passwords would need a slow one). Digests are compared in constant
//! time. Records live in their own sled tree (`registry`) of the store's
//! database, apart from the client state: they are not client state and
//! have no revisions. A single node writes the tree directly; a cluster
//! node writes the cluster's key-value bucket and mirrors it into the tree
//! ([`bucket`]), so that reads stay local and synchronous everywhere.
//!
//! A deleted API key or device is *revoked*: the registry hands a
//! [`Revoked`] to whoever took [`Registry::take_revocations`] (the broker,
//! which ends the connections made with it) on every node.

mod bucket;

use std::{fmt, sync::Arc};

use prost::Message;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
    /// The cluster's registry could not be reached or did not answer.
    #[error("{0}")]
    Unavailable(String),
}

/// Credentials that no longer hold: connections made with them end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// A deleted device (MQTT `use-token-auth`).
    Device { type_id: String, device_id: String },
    /// A deleted API key (applications connect with it).
    Key(String),
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
    /// The records (on a cluster node, the mirror of the bucket).
    db: sled::Tree,
    org_id: String,
    /// Serialises this node's key deletions, so that two at once cannot
    /// both see another admin key and together delete the last two.
    deleting: Arc<tokio::sync::Mutex<()>>,
    /// The cluster's bucket, on a cluster node.
    bucket: Option<Arc<bucket::Bucket>>,
    revocations: Arc<Revocations>,
}

/// Where revocations go: a queue its one reader takes.
struct Revocations {
    send: mpsc::UnboundedSender<Revoked>,
    receive: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Revoked>>>,
}

impl Revocations {
    fn new() -> Arc<Revocations> {
        let (send, receive) = mpsc::unbounded_channel();
        Arc::new(Revocations {
            send,
            receive: std::sync::Mutex::new(Some(receive)),
        })
    }
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
            bucket: None,
            revocations: Revocations::new(),
        })
    }

    /// The registry of a cluster node: its records are those of the
    /// cluster's key-value bucket `kv` (reached through `js`), mirrored
    /// into the store's registry tree until `stop`. Returns once the mirror
    /// holds the bucket's current records.
    pub async fn clustered(
        store: &Store,
        org_id: &str,
        kv: async_nats::jetstream::kv::Store,
        js: async_nats::jetstream::Context,
        stop: CancellationToken,
    ) -> Result<Registry, RegistryError> {
        let db = store.db().open_tree(TREE)?;
        let revocations = Revocations::new();
        let bucket =
            bucket::Bucket::mirror(kv, js, db.clone(), revocations.send.clone(), stop).await?;
        Ok(Registry {
            db,
            org_id: org_id.to_owned(),
            deleting: Default::default(),
            bucket: Some(bucket),
            revocations,
        })
    }

    /// The revocations of deleted API keys and devices, as this node
    /// applies them (on a cluster node, every node's deletions). Only the
    /// first call gets them.
    pub fn take_revocations(&self) -> Option<mpsc::UnboundedReceiver<Revoked>> {
        crate::lock::lock(&self.revocations.receive).take()
    }

    /// A single node's deletion revokes at once; a cluster node's mirror
    /// revokes when it applies the deletion.
    fn revoke_here(&self, revoked: Revoked) {
        if self.bucket.is_none() {
            let _ = self.revocations.send.send(revoked);
        }
    }

    /// Creates a key with a new random token; the token is returned here
    /// and never again.
    pub async fn create_key(
        &self,
        role: Role,
        description: &str,
    ) -> Result<(ApiKey, String), RegistryError> {
        let key = format!("a-{}-{}", self.org_id, random_chars(10, false)?);
        let token = random_chars(TOKEN_LEN, true)?;
        let (record, api_key) = key_record(&key, &token, role, description);
        match &self.bucket {
            Some(bucket) => {
                let id = bucket::RecordId::Key(key);
                bucket
                    .create(&id, record.encode_to_vec(), "the API key")
                    .await?
            }
            None => self.insert(record_key(&key), record.encode_to_vec())?,
        }
        Ok((api_key, token))
    }

    /// Stores `key` with `token` (used to bootstrap an administrator key
    /// from the configuration; replaces an existing record). In a cluster
    /// a record with the same token, role and description stays as it is,
    /// so nodes starting with the same key change nothing.
    pub async fn put_key(
        &self,
        key: &str,
        token: &str,
        role: Role,
        description: &str,
    ) -> Result<ApiKey, RegistryError> {
        let (record, api_key) = key_record(key, token, role, description);
        match &self.bucket {
            Some(bucket) => {
                let id = bucket::RecordId::Key(key.to_owned());
                if let Some((value, revision)) = bucket.get(&id).await?
                    && let Ok(stored) = ApiKeyRecord::decode(value.as_slice())
                    && stored.token_sha256 == record.token_sha256
                    && stored.role == record.role
                    && stored.description == record.description
                {
                    bucket.mirrored(revision).await?;
                    return Ok(ApiKey {
                        created: time_ms(stored.created_ms),
                        ..api_key
                    });
                }
                bucket.put(&id, record.encode_to_vec()).await?;
            }
            None => self.insert(record_key(key), record.encode_to_vec())?,
        }
        Ok(api_key)
    }

    /// Writes one record of a single node.
    fn insert(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), RegistryError> {
        self.db.insert(key, value)?;
        self.db.flush()?;
        Ok(())
    }

    /// Deletes `key` on behalf of the caller `by`. Nobody locks the
    /// administrators out: a key cannot delete itself, and the last admin
    /// key stays. (These checks read this node's copy of a cluster's
    /// registry, and deletions are serialised per node: two nodes deleting
    /// the last two admin keys at the same moment could both succeed; a
    /// node started with `--admin-key` puts its key back.)
    pub async fn delete_key(&self, key: &str, by: &str) -> Result<(), RegistryError> {
        let _one_at_a_time = self.deleting.lock().await;
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
        if !self
            .delete_record(bucket::RecordId::Key(key.to_owned()))
            .await?
        {
            return Err(RegistryError::NotFound);
        }
        self.revoke_here(Revoked::Key(key.to_owned()));
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

/// A new key's record, and the key as listed.
fn key_record(key: &str, token: &str, role: Role, description: &str) -> (ApiKeyRecord, ApiKey) {
    let created = crate::domain::truncate_to_millis(chrono::Utc::now());
    let record = ApiKeyRecord {
        key: key.to_owned(),
        token_sha256: digest(token),
        role: role.to_u32(),
        description: description.to_owned(),
        created_ms: created.timestamp_millis(),
    };
    let api_key = ApiKey {
        key: key.to_owned(),
        role,
        description: description.to_owned(),
        created,
    };
    (record, api_key)
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
    pub async fn create_type(
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
        self.create_record(
            bucket::RecordId::Type(id.to_owned()),
            record.encode_to_vec(),
            "the device type",
        )
        .await?;
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

    /// Writes a new record; `Exists(what)` when its id is taken.
    async fn create_record(
        &self,
        id: bucket::RecordId,
        value: Vec<u8>,
        what: &'static str,
    ) -> Result<(), RegistryError> {
        if let Some(bucket) = &self.bucket {
            return bucket.create(&id, value, what).await;
        }
        let inserted = self
            .db
            .compare_and_swap(id.tree_key(), None::<&[u8]>, Some(value))?;
        if inserted.is_err() {
            return Err(RegistryError::Exists(what));
        }
        self.db.flush()?;
        Ok(())
    }

    /// Deletes a record; whether it was there.
    async fn delete_record(&self, id: bucket::RecordId) -> Result<bool, RegistryError> {
        if let Some(bucket) = &self.bucket {
            return bucket.delete(&id).await;
        }
        let removed = self.db.remove(id.tree_key())?.is_some();
        if removed {
            self.db.flush()?;
        }
        Ok(removed)
    }

    /// Deletes a device type that has no devices. (In a cluster, a device
    /// registered on another node at the same moment may outlive its type;
    /// it then cannot connect, as its type is unknown.)
    pub async fn delete_type(&self, id: &str) -> Result<(), RegistryError> {
        self.get_type(id)?;
        let devices = [DEVICE_PREFIX, id.as_bytes(), b"\0"].concat();
        if self.db.scan_prefix(devices).next().is_some() {
            return Err(RegistryError::Invalid {
                field: "typeId",
                reason: "the device type still has devices".into(),
            });
        }
        if !self
            .delete_record(bucket::RecordId::Type(id.to_owned()))
            .await?
        {
            return Err(RegistryError::TypeNotFound);
        }
        Ok(())
    }

    /// Registers a device; with no `token` a random one is made. The token
    /// is returned here and never again.
    pub async fn create_device(
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
        self.create_record(
            bucket::RecordId::Device(type_id.to_owned(), device_id.to_owned()),
            record.encode_to_vec(),
            "the device",
        )
        .await?;
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

    /// Deletes a device: its token no longer holds ([`Revoked::Device`]).
    pub async fn delete_device(&self, type_id: &str, device_id: &str) -> Result<(), RegistryError> {
        let id = bucket::RecordId::Device(type_id.to_owned(), device_id.to_owned());
        if !self.delete_record(id).await? {
            return Err(RegistryError::DeviceNotFound);
        }
        self.revoke_here(Revoked::Device {
            type_id: type_id.to_owned(),
            device_id: device_id.to_owned(),
        });
        Ok(())
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

    #[tokio::test]
    async fn devices_register_once_and_authenticate_by_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let registry = Registry::new(&store, "org1").unwrap();
        registry
            .create_type("sensor", "a sensor", "Device")
            .await
            .unwrap();
        assert!(matches!(
            registry.create_type("sensor", "", "Device").await,
            Err(RegistryError::Exists(_))
        ));
        let (device, token) = registry.create_device("sensor", "s1", None).await.unwrap();
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
        registry.create_type("gw", "", "Gateway").await.unwrap();
        let (_, gw_token) = registry.create_device("gw", "g1", None).await.unwrap();
        assert_eq!(
            registry.authenticate_device("gw", "g1", &gw_token),
            Some(DeviceClass::Gateway)
        );
        let (_, chosen) = registry
            .create_device("sensor", "s2", Some("my-own-token"))
            .await
            .unwrap();
        assert_eq!(chosen, "my-own-token");
        assert_eq!(registry.list_devices("sensor").unwrap().len(), 2);
        assert!(
            registry.delete_type("sensor").await.is_err(),
            "devices remain"
        );
        let mut revocations = registry.take_revocations().unwrap();
        assert!(registry.take_revocations().is_none(), "one reader");
        registry.delete_device("sensor", "s1").await.unwrap();
        assert_eq!(registry.authenticate_device("sensor", "s1", &token), None);
        assert_eq!(
            revocations.try_recv().unwrap(),
            Revoked::Device {
                type_id: "sensor".into(),
                device_id: "s1".into()
            }
        );
        assert!(matches!(
            registry.delete_device("sensor", "s1").await,
            Err(RegistryError::DeviceNotFound)
        ));
        assert!(revocations.try_recv().is_err(), "nothing more revoked");
        assert!(matches!(
            registry.create_device("nope", "x", None).await,
            Err(RegistryError::TypeNotFound)
        ));
    }

    /// Records an earlier version kept in the state tree move into the
    /// registry's own tree, and still authenticate.
    #[tokio::test]
    async fn records_of_the_state_tree_move_into_the_registry_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let registry = Registry::new(&store, "org1").unwrap();
        registry.create_type("sensor", "", "Device").await.unwrap();
        let (_, device_token) = registry.create_device("sensor", "s1", None).await.unwrap();
        let (key, key_token) = registry.create_key(Role::Admin, "").await.unwrap();
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
