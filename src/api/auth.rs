//! Authentication and authorisation at the edges: both APIs take the same
//! API key and token (HTTP Basic, or gRPC `authorization` metadata with the
//! same value) and apply the same roles.

use crate::registry::{Principal, Registry, Role, parse_basic};

/// Who may call: the registry when authentication is on, nobody to ask in
/// open mode (loopback development), where every caller is an administrator.
#[derive(Clone)]
pub struct Gate {
    registry: Option<Registry>,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials.
    Unauthenticated,
    /// Credentials that prove nobody: an unknown key, a wrong token, or a
    /// value that is not HTTP Basic.
    InvalidCredentials,
    /// Valid credentials without the role the call needs.
    Forbidden { needed: Role, has: Role },
}

impl Gate {
    pub fn open() -> Gate {
        Gate { registry: None }
    }

    pub fn with_registry(registry: Registry) -> Gate {
        Gate {
            registry: Some(registry),
        }
    }

    pub fn is_open(&self) -> bool {
        self.registry.is_none()
    }

    /// The caller an `Authorization` value proves.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Refusal> {
        let Some(registry) = &self.registry else {
            return Ok(Principal {
                key: "open-mode".to_owned(),
                role: Role::Admin,
            });
        };
        let authorization = authorization.ok_or(Refusal::Unauthenticated)?;
        let (key, token) = parse_basic(authorization).ok_or(Refusal::InvalidCredentials)?;
        registry
            .authenticate(&key, &token)
            .ok_or(Refusal::InvalidCredentials)
    }
}

/// Whether `principal` may do what needs `needed`.
pub fn require(principal: &Principal, needed: Role) -> Result<(), Refusal> {
    if principal.role >= needed {
        Ok(())
    } else {
        Err(Refusal::Forbidden {
            needed,
            has: principal.role,
        })
    }
}
