//! The broker's `$SYS/broker/...` statistics, named and formatted as
//! Mosquitto publishes them, so that dashboards made for Mosquitto read
//! them too: retained QoS 0 messages, published at start and then every
//! `--sys-interval`. Clients may not publish under `$SYS`; applications
//! (auth mode) and everyone (open mode) may subscribe.
//!
//! Messages and bytes count every MQTT packet, as Mosquitto's do. The load
//! figures are per-minute rates smoothed over 1, 5 and 15 minutes the way
//! Mosquitto smooths them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rmqtt_codec::types::QoS;
use tokio::task::JoinHandle;

use super::{Broker, Message};

/// The smoothing windows of the load figures, in minutes.
const WINDOWS: [(f64, &str); 3] = [(1.0, "1min"), (5.0, "5min"), (15.0, "15min")];

/// The counters behind the load figures, in the order of [`LOADS`].
const LOADS: [&str; 4] = [
    "messages/received",
    "messages/sent",
    "bytes/received",
    "bytes/sent",
];

/// What one pass remembers for the next: the counters and their smoothed
/// rates.
struct Loads {
    at: Instant,
    counts: [u64; 4],
    /// Per counter, per window.
    rates: [[f64; 3]; 4],
}

impl Broker {
    /// Publishes the statistics now and every `interval` until the broker
    /// stops; nothing when `interval` is zero.
    pub fn spawn_sys_statistics(&self, interval: Duration) -> Option<JoinHandle<()>> {
        if interval.is_zero() {
            return None;
        }
        let broker = self.clone();
        Some(tokio::spawn(async move {
            let started = Instant::now();
            let mut loads = Loads {
                at: started,
                counts: broker.counts(),
                rates: [[0.0; 3]; 4],
            };
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = broker.inner.stop.cancelled() => return,
                }
                broker.publish_sys_statistics(started, &mut loads);
            }
        }))
    }

    /// Messages received, sent, bytes received, sent.
    fn counts(&self) -> [u64; 4] {
        let m = self.metrics();
        [
            m.mqtt_received_messages.get(),
            m.mqtt_sent_messages.get(),
            m.mqtt_received_bytes.get(),
            m.mqtt_sent_bytes.get(),
        ]
    }

    fn publish_sys_statistics(&self, started: Instant, loads: &mut Loads) {
        let (connected, announced, total) = {
            let sessions = crate::lock::lock(&self.inner.sessions);
            let total = sessions.len();
            // Announced: connected clients' `$SYS/clients/{id}/mon` Connect
            // messages, retained but kept by their sessions (see `monitor`).
            let (connected, announced) =
                sessions
                    .values()
                    .fold((0, 0), |(connected, announced), session| {
                        let (online, announcing) = session.presence();
                        (
                            connected + usize::from(online),
                            announced + usize::from(announcing),
                        )
                    });
            (connected, announced, total)
        };
        let retained = crate::lock::read(&self.inner.retained).len() + announced;
        let subscriptions = crate::lock::read(&self.inner.subscriptions).len();
        let counts = self.counts();
        let mut values: Vec<(String, String)> = vec![
            (
                "version".into(),
                format!("connstate version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "uptime".into(),
                format!("{} seconds", started.elapsed().as_secs()),
            ),
            ("clients/connected".into(), connected.to_string()),
            (
                "clients/disconnected".into(),
                (total - connected).to_string(),
            ),
            ("clients/total".into(), total.to_string()),
            ("retained messages/count".into(), retained.to_string()),
            ("subscriptions/count".into(), subscriptions.to_string()),
        ];
        for (name, count) in LOADS.iter().zip(counts) {
            values.push(((*name).into(), count.to_string()));
        }
        // Mosquitto's smoothing: the rate per minute since the last pass,
        // moved towards by 1 - exp(-elapsed / window) per window. The first
        // pass, right at start, has no rate yet and says 0.00.
        let elapsed = loads.at.elapsed().as_secs_f64();
        for (i, name) in LOADS.iter().enumerate() {
            let rate = counts[i].saturating_sub(loads.counts[i]) as f64 * 60.0 / elapsed.max(1.0);
            for (j, (minutes, window)) in WINDOWS.iter().enumerate() {
                if elapsed >= 1.0 {
                    let keep = (-elapsed / (60.0 * minutes)).exp();
                    loads.rates[i][j] = rate + keep * (loads.rates[i][j] - rate);
                }
                let smoothed = loads.rates[i][j];
                values.push((format!("load/{name}/{window}"), format!("{smoothed:.2}")));
            }
        }
        if elapsed >= 1.0 {
            loads.at = Instant::now();
            loads.counts = counts;
        }
        for (name, value) in values {
            self.publish(Message {
                topic: format!("$SYS/broker/{name}").into(),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: None,
                publisher: None,
                received: Instant::now(),
            });
        }
    }
}
