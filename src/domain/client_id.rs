//! MQTT client identifiers and the platform naming convention.

use std::fmt;

/// Longest client id accepted, in bytes of UTF-8.
pub const MAX_CLIENT_ID_LEN: usize = 256;

/// Longest part (org, type, device, app) of a platform-convention client id.
const MAX_PART_LEN: usize = 36;

/// A validated MQTT client identifier: 1 to [`MAX_CLIENT_ID_LEN`] bytes of
/// UTF-8 without U+0000 (MQTT forbids it, and the store uses it as a
/// separator).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

/// Why a string is not a valid client id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_CLIENT_ID_LEN} bytes, got {0}")]
    TooLong(usize),
    #[error("must not contain U+0000")]
    ContainsNul,
}

impl ClientId {
    /// Validates `id` as a client id.
    pub fn new(id: impl Into<String>) -> Result<Self, ClientIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(ClientIdError::Empty);
        }
        if id.len() > MAX_CLIENT_ID_LEN {
            return Err(ClientIdError::TooLong(id.len()));
        }
        if id.contains('\0') {
            return Err(ClientIdError::ContainsNul);
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the id says about the client under the platform convention.
    pub fn kind(&self) -> ClientKind<'_> {
        ClientKind::parse(&self.0)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The type of client a client id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientType {
    Device,
    Gateway,
    Application,
    Unknown,
}

impl ClientType {
    /// The REST name (`device`, `gateway`, `application`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClientType::Device => "device",
            ClientType::Gateway => "gateway",
            ClientType::Application => "application",
            ClientType::Unknown => "unknown",
        }
    }
}

/// A client id parsed by the platform convention:
///
/// | client id | kind |
/// |---|---|
/// | `d:{org}:{typeId}:{deviceId}` | device |
/// | `g:{org}:{typeId}:{deviceId}` | gateway |
/// | `a:{org}:{appId}` | application |
/// | `A:{org}:{appId}[:{instanceId}]` | shared application |
/// | anything else | unknown |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind<'a> {
    Device {
        org: &'a str,
        type_id: &'a str,
        device_id: &'a str,
    },
    Gateway {
        org: &'a str,
        type_id: &'a str,
        device_id: &'a str,
    },
    Application {
        org: &'a str,
        app_id: &'a str,
        /// `A:` ids: instances of one application share subscriptions.
        shared: bool,
    },
    Unknown,
}

impl<'a> ClientKind<'a> {
    /// Parses `id`; ids outside the convention are [`ClientKind::Unknown`].
    pub fn parse(id: &'a str) -> Self {
        let mut parts = id.split(':');
        let prefix = parts.next();
        let rest: Vec<&str> = parts.collect();
        if !rest.iter().all(|p| is_valid_part(p)) {
            return ClientKind::Unknown;
        }
        match (prefix, rest.as_slice()) {
            (Some("d"), [org, type_id, device_id]) => ClientKind::Device {
                org,
                type_id,
                device_id,
            },
            (Some("g"), [org, type_id, device_id]) => ClientKind::Gateway {
                org,
                type_id,
                device_id,
            },
            (Some("a"), [org, app_id]) => ClientKind::Application {
                org,
                app_id,
                shared: false,
            },
            (Some("A"), [org, app_id] | [org, app_id, _]) => ClientKind::Application {
                org,
                app_id,
                shared: true,
            },
            _ => ClientKind::Unknown,
        }
    }

    pub fn client_type(&self) -> ClientType {
        match self {
            ClientKind::Device { .. } => ClientType::Device,
            ClientKind::Gateway { .. } => ClientType::Gateway,
            ClientKind::Application { .. } => ClientType::Application,
            ClientKind::Unknown => ClientType::Unknown,
        }
    }

    pub fn org(&self) -> Option<&'a str> {
        match *self {
            ClientKind::Device { org, .. }
            | ClientKind::Gateway { org, .. }
            | ClientKind::Application { org, .. } => Some(org),
            ClientKind::Unknown => None,
        }
    }

    /// Device type of a device or gateway.
    pub fn type_id(&self) -> Option<&'a str> {
        match *self {
            ClientKind::Device { type_id, .. } | ClientKind::Gateway { type_id, .. } => {
                Some(type_id)
            }
            _ => None,
        }
    }

    /// Device id of a device or gateway.
    pub fn device_id(&self) -> Option<&'a str> {
        match *self {
            ClientKind::Device { device_id, .. } | ClientKind::Gateway { device_id, .. } => {
                Some(device_id)
            }
            _ => None,
        }
    }

    pub fn app_id(&self) -> Option<&'a str> {
        match *self {
            ClientKind::Application { app_id, .. } => Some(app_id),
            _ => None,
        }
    }
}

fn is_valid_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= MAX_PART_LEN
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_platform_convention() {
        assert_eq!(
            ClientKind::parse("d:org1:sensor:dev-1"),
            ClientKind::Device {
                org: "org1",
                type_id: "sensor",
                device_id: "dev-1"
            }
        );
        assert_eq!(
            ClientKind::parse("g:org1:gw:g.1").client_type(),
            ClientType::Gateway
        );
        assert_eq!(
            ClientKind::parse("a:org1:app"),
            ClientKind::Application {
                org: "org1",
                app_id: "app",
                shared: false
            }
        );
        assert_eq!(
            ClientKind::parse("A:org1:app:instance7"),
            ClientKind::Application {
                org: "org1",
                app_id: "app",
                shared: true
            }
        );
    }

    #[test]
    fn anything_else_is_unknown() {
        for id in [
            "mosquitto_sub-123",
            "d:org:type",
            "d:org:type:dev:extra",
            "a:org:app:x",
            "d:org:ty pe:dev",
            "d::type:dev",
            &format!("d:org:{}:dev", "t".repeat(37)),
            "x:org:app",
        ] {
            assert_eq!(ClientKind::parse(id), ClientKind::Unknown, "{id}");
        }
    }

    #[test]
    fn validates_client_ids() {
        assert_eq!(ClientId::new(""), Err(ClientIdError::Empty));
        assert_eq!(ClientId::new("a\0b"), Err(ClientIdError::ContainsNul));
        assert_eq!(
            ClientId::new("x".repeat(MAX_CLIENT_ID_LEN + 1)),
            Err(ClientIdError::TooLong(MAX_CLIENT_ID_LEN + 1))
        );
        assert!(ClientId::new("x".repeat(MAX_CLIENT_ID_LEN)).is_ok());
    }
}
