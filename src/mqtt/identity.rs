//! Who a client is, and the topics it may use.
//!
//! In open mode every client may use every topic, and topics are used as
//! they are. In auth mode clients follow the platform convention
//! (DESIGN.md §4): a device publishes `iot-2/evt/{e}/fmt/{f}` and
//! subscribes to `iot-2/cmd/{c}/fmt/{f}`; the broker routes both inside the
//! device's own namespace `iot-2/type/{t}/id/{d}/...`, so a device never
//! sees another device's traffic. Applications use the namespaced topics
//! directly and may subscribe to nothing outside `iot-2/` (and the `$SYS`
//! monitor topics).

use bytestring::ByteString;

use crate::{
    domain::{ClientKind, ConnectFailure},
    registry::Registry,
};

/// The user name devices and gateways authenticate with.
pub const TOKEN_AUTH_USER: &str = "use-token-auth";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Open mode: anonymous, any topic.
    Open,
    /// A device or gateway in auth mode.
    Device {
        /// `iot-2/type/{t}/id/{d}/`
        namespace: String,
        gateway: bool,
    },
    /// An application in auth mode, authenticated with an API key.
    Application,
}

/// Why a topic or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAuthorized;

impl Identity {
    /// Checks the credentials of a CONNECT in auth mode.
    pub fn authenticate(
        registry: &Registry,
        org_id: &str,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Identity, ConnectFailure> {
        let kind = ClientKind::parse(client_id);
        if kind.org() != Some(org_id) {
            // Outside the convention, or another organisation's id.
            return Err(ConnectFailure::BadClientId);
        }
        let password = password
            .and_then(|p| std::str::from_utf8(p).ok())
            .unwrap_or("");
        match kind {
            ClientKind::Device {
                type_id, device_id, ..
            }
            | ClientKind::Gateway {
                type_id, device_id, ..
            } => {
                if username != Some(TOKEN_AUTH_USER)
                    || !registry.authenticate_device(type_id, device_id, password)
                {
                    return Err(ConnectFailure::BadCredentials);
                }
                Ok(Identity::Device {
                    namespace: format!("iot-2/type/{type_id}/id/{device_id}/"),
                    gateway: matches!(kind, ClientKind::Gateway { .. }),
                })
            }
            ClientKind::Application { .. } => {
                let key = username.unwrap_or("");
                match registry.authenticate(key, password) {
                    Some(_) => Ok(Identity::Application),
                    None => Err(ConnectFailure::BadCredentials),
                }
            }
            ClientKind::Unknown => Err(ConnectFailure::BadClientId),
        }
    }

    /// The internal topic a PUBLISH to `topic` is routed as.
    pub fn publish_topic(&self, topic: &ByteString) -> Result<ByteString, NotAuthorized> {
        if topic.starts_with('$') || is_monitor_topic(topic) {
            // `$` topics are the broker's own (MQTT 4.7.2), and so are the
            // monitor topics: no client may forge a device's state there.
            return Err(NotAuthorized);
        }
        match self {
            Identity::Open => Ok(topic.clone()),
            Identity::Device { namespace, gateway } => {
                if let Some(rest) = topic.strip_prefix("iot-2/")
                    && is_event(rest)
                {
                    return Ok(format!("{namespace}{rest}").into());
                }
                if *gateway && is_device_topic(topic, is_event) {
                    return Ok(topic.clone());
                }
                Err(NotAuthorized)
            }
            Identity::Application => {
                if is_device_topic(topic, is_event) || is_device_topic(topic, is_command) {
                    Ok(topic.clone())
                } else {
                    Err(NotAuthorized)
                }
            }
        }
    }

    /// The internal filter a SUBSCRIBE to `filter` (already valid) stands
    /// for.
    pub fn subscribe_filter(&self, filter: &str) -> Result<String, NotAuthorized> {
        match self {
            Identity::Open => Ok(filter.to_owned()),
            Identity::Device { namespace, gateway } => {
                if let Some(rest) = filter.strip_prefix("iot-2/")
                    && rest.starts_with("cmd/")
                {
                    return Ok(format!("{namespace}{rest}"));
                }
                if *gateway && is_device_topic(filter, |rest| rest.starts_with("cmd/")) {
                    return Ok(filter.to_owned());
                }
                Err(NotAuthorized)
            }
            Identity::Application => {
                if filter.starts_with("iot-2/") || filter.starts_with("$SYS/clients/") {
                    Ok(filter.to_owned())
                } else {
                    Err(NotAuthorized)
                }
            }
        }
    }

    /// The topic a client sees for the internal `topic`.
    pub fn client_topic(&self, topic: &ByteString) -> ByteString {
        if let Identity::Device { namespace, .. } = self
            && let Some(rest) = topic.strip_prefix(namespace.as_str())
        {
            return format!("iot-2/{rest}").into();
        }
        topic.clone()
    }
}

/// `iot-2/type/{t}/id/{d}/mon` or `iot-2/app/{a}/mon`.
fn is_monitor_topic(topic: &str) -> bool {
    is_device_topic(topic, |rest| rest == "mon")
        || matches!(
            topic.split('/').collect::<Vec<_>>()[..],
            ["iot-2", "app", _, "mon"]
        )
}

/// `evt/{e}/fmt/{f}`
fn is_event(rest: &str) -> bool {
    matches!(rest.split('/').collect::<Vec<_>>()[..], ["evt", e, "fmt", f] if !e.is_empty() && !f.is_empty())
}

/// `cmd/{c}/fmt/{f}`
fn is_command(rest: &str) -> bool {
    matches!(rest.split('/').collect::<Vec<_>>()[..], ["cmd", c, "fmt", f] if !c.is_empty() && !f.is_empty())
}

/// `iot-2/type/{t}/id/{d}/{rest}` with `rest` accepted by `tail`.
fn is_device_topic(topic: &str, tail: impl Fn(&str) -> bool) -> bool {
    let Some(rest) = topic.strip_prefix("iot-2/type/") else {
        return false;
    };
    let mut parts = rest.splitn(4, '/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(t), Some("id"), Some(d), Some(tail_part)) if !t.is_empty() && !d.is_empty() => {
            tail(tail_part)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> Identity {
        Identity::Device {
            namespace: "iot-2/type/sensor/id/d1/".into(),
            gateway: false,
        }
    }

    #[test]
    fn devices_publish_events_in_their_own_namespace() {
        let d = device();
        assert_eq!(
            d.publish_topic(&"iot-2/evt/temp/fmt/json".into()).unwrap(),
            "iot-2/type/sensor/id/d1/evt/temp/fmt/json"
        );
        for refused in [
            "iot-2/cmd/reboot/fmt/json",
            "iot-2/type/sensor/id/d2/evt/temp/fmt/json",
            "iot-2/type/sensor/id/d1/mon",
            "other",
            "iot-2/evt/temp",
        ] {
            assert_eq!(
                d.publish_topic(&refused.into()),
                Err(NotAuthorized),
                "{refused}"
            );
        }
    }

    #[test]
    fn devices_subscribe_to_their_own_commands_only() {
        let d = device();
        assert_eq!(
            d.subscribe_filter("iot-2/cmd/+/fmt/+").unwrap(),
            "iot-2/type/sensor/id/d1/cmd/+/fmt/+"
        );
        for refused in [
            "#",
            "iot-2/#",
            "iot-2/type/+/id/+/mon",
            "$SYS/#",
            "iot-2/evt/+/fmt/+",
        ] {
            assert_eq!(d.subscribe_filter(refused), Err(NotAuthorized), "{refused}");
        }
        assert_eq!(
            d.client_topic(&"iot-2/type/sensor/id/d1/cmd/reboot/fmt/json".into()),
            "iot-2/cmd/reboot/fmt/json"
        );
    }

    #[test]
    fn applications_stay_inside_the_platform_topics() {
        let a = Identity::Application;
        assert!(a.subscribe_filter("iot-2/type/+/id/+/evt/+/fmt/+").is_ok());
        assert!(a.subscribe_filter("iot-2/type/+/id/+/mon").is_ok());
        assert!(a.subscribe_filter("$SYS/clients/+/mon").is_ok());
        for refused in ["#", "+/#", "$SYS/#", "other/topic"] {
            assert_eq!(a.subscribe_filter(refused), Err(NotAuthorized), "{refused}");
        }
        assert!(
            a.publish_topic(&"iot-2/type/sensor/id/d1/cmd/reboot/fmt/json".into())
                .is_ok()
        );
        assert!(
            a.publish_topic(&"iot-2/type/sensor/id/d1/mon".into())
                .is_err()
        );
    }

    #[test]
    fn gateways_act_for_devices() {
        let g = Identity::Device {
            namespace: "iot-2/type/gw/id/g1/".into(),
            gateway: true,
        };
        assert!(
            g.publish_topic(&"iot-2/type/sensor/id/d9/evt/t/fmt/json".into())
                .is_ok()
        );
        assert!(g.subscribe_filter("iot-2/type/+/id/+/cmd/+/fmt/+").is_ok());
        assert!(g.subscribe_filter("iot-2/type/+/id/+/evt/+/fmt/+").is_err());
    }
}
