//! Who a client is, and the topics it may use.
//!
//! In open mode every client may use every topic, and topics are used as
//! they are. In auth mode clients follow the platform convention
//! (DESIGN.md §4): a device publishes `iot-2/evt/{e}/fmt/{f}` and
//! subscribes to `iot-2/cmd/{c}/fmt/{f}`; the broker routes both inside the
//! device's own namespace `iot-2/type/{t}/id/{d}/...`, so a device never
//! sees another device's traffic. Applications use the namespaced topics
//! directly and may subscribe to nothing outside `iot-2/` (and the `$SYS`
//! monitor topics and broker statistics).

use bytestring::ByteString;

use crate::{
    domain::{ClientKind, ConnectFailure},
    registry::{DeviceClass, Registry},
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
                let class = match username {
                    Some(TOKEN_AUTH_USER) => {
                        registry.authenticate_device(type_id, device_id, password)
                    }
                    _ => None,
                }
                .ok_or(ConnectFailure::BadCredentials)?;
                let as_gateway = matches!(kind, ClientKind::Gateway { .. });
                // A `g:` login acts for other devices: only a device of a
                // gateway-class type may make it. A gateway's `d:` login is
                // allowed, as on the platform, with a device's rights.
                if as_gateway && class != DeviceClass::Gateway {
                    return Err(ConnectFailure::NotAuthorized);
                }
                Ok(Identity::Device {
                    namespace: format!("iot-2/type/{type_id}/id/{device_id}/"),
                    gateway: as_gateway,
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
                if filter.starts_with("iot-2/")
                    || filter.starts_with("$SYS/clients/")
                    || filter.starts_with("$SYS/broker/")
                {
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
        assert!(a.subscribe_filter("$SYS/broker/#").is_ok());
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

    /// Every kind of login against the registry: who gets in, as what.
    #[tokio::test]
    async fn logins_by_client_kind() {
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let registry = Registry::new(&store, "org1").unwrap();
        registry.create_type("sensor", "", "Device").await.unwrap();
        registry.create_type("gw", "", "Gateway").await.unwrap();
        let (_, device_token) = registry.create_device("sensor", "d1", None).await.unwrap();
        let (_, gateway_token) = registry.create_device("gw", "g1", None).await.unwrap();
        let (api_key, key_token) = registry
            .create_key(crate::registry::Role::ReadOnly, "")
            .await
            .unwrap();
        let key = api_key.key;
        let user = Some(TOKEN_AUTH_USER);
        let device = |ns: &str, gateway| {
            Ok(Identity::Device {
                namespace: ns.into(),
                gateway,
            })
        };
        let key = Some(key.as_str());
        let cases = [
            (
                "d:org1:sensor:d1",
                user,
                &device_token,
                device("iot-2/type/sensor/id/d1/", false),
            ),
            // A device's token never makes a gateway.
            (
                "g:org1:sensor:d1",
                user,
                &device_token,
                Err(ConnectFailure::NotAuthorized),
            ),
            (
                "g:org1:gw:g1",
                user,
                &gateway_token,
                device("iot-2/type/gw/id/g1/", true),
            ),
            // A gateway may log in as a device, with a device's rights.
            (
                "d:org1:gw:g1",
                user,
                &gateway_token,
                device("iot-2/type/gw/id/g1/", false),
            ),
            (
                "d:org1:sensor:d1",
                user,
                &gateway_token,
                Err(ConnectFailure::BadCredentials),
            ),
            (
                "d:org1:sensor:d1",
                Some("someone"),
                &device_token,
                Err(ConnectFailure::BadCredentials),
            ),
            (
                "d:org1:sensor:d1",
                None,
                &device_token,
                Err(ConnectFailure::BadCredentials),
            ),
            (
                "d:org1:sensor:nobody",
                user,
                &device_token,
                Err(ConnectFailure::BadCredentials),
            ),
            (
                "d:org2:sensor:d1",
                user,
                &device_token,
                Err(ConnectFailure::BadClientId),
            ),
            ("a:org1:app1", key, &key_token, Ok(Identity::Application)),
            ("A:org1:app1:i1", key, &key_token, Ok(Identity::Application)),
            (
                "a:org1:app1",
                key,
                &device_token,
                Err(ConnectFailure::BadCredentials),
            ),
            (
                "a:org2:app1",
                key,
                &key_token,
                Err(ConnectFailure::BadClientId),
            ),
            (
                "plain-client",
                key,
                &key_token,
                Err(ConnectFailure::BadClientId),
            ),
        ];
        for (client_id, username, password, expected) in cases {
            let got = Identity::authenticate(
                &registry,
                "org1",
                client_id,
                username,
                Some(password.as_bytes()),
            );
            assert_eq!(got, expected, "{client_id} as {username:?}");
        }
    }

    /// Every identity against every topic rule: `Some` is the internal
    /// topic or filter it is routed as, `None` a refusal.
    #[test]
    fn topic_rules_by_identity() {
        let identities = [
            Identity::Open,
            device(),
            Identity::Device {
                namespace: "iot-2/type/gw/id/g1/".into(),
                gateway: true,
            },
            Identity::Application,
        ];
        const SAME: Option<&str> = Some("=");
        // Columns: open, device d1, gateway g1, application.
        let publish: &[(&str, [Option<&str>; 4])] = &[
            (
                "iot-2/evt/temp/fmt/json",
                [
                    SAME,
                    Some("iot-2/type/sensor/id/d1/evt/temp/fmt/json"),
                    Some("iot-2/type/gw/id/g1/evt/temp/fmt/json"),
                    None,
                ],
            ),
            (
                "iot-2/type/sensor/id/d2/evt/temp/fmt/json",
                [SAME, None, SAME, SAME],
            ),
            (
                "iot-2/type/sensor/id/d1/evt/temp/fmt/json",
                [SAME, None, SAME, SAME],
            ),
            (
                "iot-2/type/sensor/id/d2/evt/temp/fmt/json/x",
                [SAME, None, None, None],
            ),
            (
                "iot-2/type/sensor/id/d2/cmd/reboot/fmt/json",
                [SAME, None, None, SAME],
            ),
            ("iot-2/cmd/reboot/fmt/json", [SAME, None, None, None]),
            ("iot-2/type/sensor/id/d2/mon", [None, None, None, None]),
            ("iot-2/app/a1/mon", [None, None, None, None]),
            ("$SYS/clients/x/mon", [None, None, None, None]),
            ("$SYS/broker/uptime", [None, None, None, None]),
            ("plain/topic", [SAME, None, None, None]),
        ];
        let subscribe: &[(&str, [Option<&str>; 4])] = &[
            (
                "iot-2/cmd/+/fmt/+",
                [
                    SAME,
                    Some("iot-2/type/sensor/id/d1/cmd/+/fmt/+"),
                    Some("iot-2/type/gw/id/g1/cmd/+/fmt/+"),
                    SAME,
                ],
            ),
            (
                "iot-2/cmd/#",
                [
                    SAME,
                    Some("iot-2/type/sensor/id/d1/cmd/#"),
                    Some("iot-2/type/gw/id/g1/cmd/#"),
                    SAME,
                ],
            ),
            ("iot-2/type/+/id/+/cmd/+/fmt/+", [SAME, None, SAME, SAME]),
            ("iot-2/type/+/id/+/cmd/#", [SAME, None, SAME, SAME]),
            ("iot-2/type/+/id/+/evt/+/fmt/+", [SAME, None, None, SAME]),
            ("iot-2/type/+/id/#", [SAME, None, None, SAME]),
            ("iot-2/type/+/#", [SAME, None, None, SAME]),
            ("iot-2/type/+/id/+/mon", [SAME, None, None, SAME]),
            ("iot-2/app/+/mon", [SAME, None, None, SAME]),
            ("$SYS/clients/+/mon", [SAME, None, None, SAME]),
            ("$SYS/#", [SAME, None, None, None]),
            ("$SYS/broker/+", [SAME, None, None, SAME]),
            ("iot-2/#", [SAME, None, None, SAME]),
            ("iot-2/evt/+/fmt/+", [SAME, None, None, SAME]),
            ("#", [SAME, None, None, None]),
            ("+/#", [SAME, None, None, None]),
            ("plain/topic", [SAME, None, None, None]),
        ];
        let expect = |topic: &str, e: Option<&str>| match e {
            Some("=") => Ok(topic.to_owned()),
            Some(t) => Ok(t.to_owned()),
            None => Err(NotAuthorized),
        };
        for (topic, row) in publish {
            for (identity, e) in identities.iter().zip(row) {
                let got = identity
                    .publish_topic(&(*topic).into())
                    .map(|t| t.to_string());
                assert_eq!(got, expect(topic, *e), "{identity:?} publishes {topic}");
            }
        }
        for (filter, row) in subscribe {
            for (identity, e) in identities.iter().zip(row) {
                let got = identity.subscribe_filter(filter);
                assert_eq!(got, expect(filter, *e), "{identity:?} subscribes {filter}");
            }
        }
    }
}
