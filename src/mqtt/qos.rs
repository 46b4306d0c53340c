//! The QoS 1 and 2 state of one connection, without a socket: messages in
//! flight towards the client, the queue behind them, packet-id
//! allocation, and the QoS 2 packet ids received from the client.
//!
//! Each event (a delivery, an acknowledgement) changes the state and tells
//! the connection, through a `send` callback, which packets to write. It
//! never reads a clock other than the messages' own expiry, and never
//! touches the network, so the transitions are tested here, table-driven.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    num::NonZeroU16,
};

use rmqtt_codec::types::QoS;

use super::{
    Delivery,
    session::{Carried, Inflight},
};

/// A packet the connection is to write.
#[derive(Debug)]
pub(super) enum Out {
    /// `packet_id` is `None` for QoS 0; `dup` on a resend after reconnect.
    Publish {
        delivery: Delivery,
        packet_id: Option<NonZeroU16>,
        dup: bool,
    },
    /// Answer to a PUBREC; `known` false: not in flight (v5 0x92).
    PubRel { packet_id: NonZeroU16, known: bool },
    /// Answer to a PUBREL; `known` false: never received (v5 0x92).
    PubComp { packet_id: NonZeroU16, known: bool },
}

/// What happened to a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivered {
    /// Sent now, or queued behind the in-flight window.
    Accepted,
    /// Expired before it could be sent: nothing to do.
    Expired,
    /// The queue was full: dropped.
    Dropped,
}

/// What an incoming QoS 2 PUBLISH is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Incoming {
    /// First time seen: route it.
    Fresh,
    /// A resend of one not yet released: acknowledge, do not route again.
    Duplicate,
    /// More unreleased QoS 2 messages than the broker's Receive Maximum
    /// (v5 0x93).
    OverReceiveMaximum,
}

/// The QoS state of one connection. Most connected clients have nothing
/// in flight most of the time: the window is then absent (16 bytes of the
/// connection's task instead of 88), made on the first QoS 1/2 message and
/// given back by [`QosState::release_if_empty`] once the connection is
/// quiet.
#[derive(Debug, Default)]
pub(super) struct QosState {
    window: Option<Box<Window>>,
    /// The client's Receive Maximum, at most the broker's in-flight limit
    /// (the window holds at least 1).
    max_inflight: u16,
}

#[derive(Debug)]
struct Window {
    /// QoS 1/2 messages sent and not yet acknowledged, by packet id.
    inflight: BTreeMap<u16, Inflight>,
    /// Deliveries waiting for a free in-flight slot.
    pending: VecDeque<Delivery>,
    /// QoS 2 packet ids received and not yet released by the client.
    incoming_qos2: BTreeSet<NonZeroU16>,
    /// The window: the client's Receive Maximum, at most the broker's
    /// in-flight limit.
    max_inflight: u16,
    next_packet_id: u16,
    /// Messages of `inflight` carried from an earlier connection and not
    /// yet sent again (marked `unsent`): they wait for the window like the
    /// queue does, so a client resuming with a lower Receive Maximum is
    /// never sent more than it allows.
    unsent: u16,
}

impl Window {
    fn new(max_inflight: u16) -> Self {
        Window {
            inflight: BTreeMap::new(),
            pending: VecDeque::new(),
            incoming_qos2: BTreeSet::new(),
            max_inflight: max_inflight.max(1),
            next_packet_id: 1,
            unsent: 0,
        }
    }

    /// Resumes what an earlier connection of the session left: messages
    /// in flight are sent again with DUP (MQTT-4.4.0-1), released ones as
    /// PUBREL, then the queue fills the window. Only as many as the window
    /// holds go at once; the rest follow as acknowledgements free it.
    fn resume(carried: Carried, max_inflight: u16, send: &mut impl FnMut(Out)) -> Self {
        let Carried {
            inflight,
            queue,
            incoming_qos2,
        } = carried;
        let mut state = Window {
            pending: queue,
            incoming_qos2,
            ..Window::new(max_inflight)
        };
        for mut f in inflight {
            f.unsent = true;
            state.unsent += 1;
            state.inflight.insert(f.packet_id.get(), f);
        }
        state.send_pending(send);
        state
    }

    /// Everything still owed, handed back to the session.
    fn into_carried(self) -> Carried {
        Carried {
            inflight: self.inflight.into_values().collect(),
            queue: self.pending,
            incoming_qos2: self.incoming_qos2,
        }
    }

    /// Sends `d` now (QoS 0, or a free in-flight slot) or queues it, up to
    /// `max_queued` messages.
    fn deliver(&mut self, d: Delivery, max_queued: usize, send: &mut impl FnMut(Out)) -> Delivered {
        if d.qos == QoS::AtMostOnce {
            return send_now(d, send);
        }
        if d.message.is_expired() {
            return Delivered::Expired;
        }
        if self.window_open() && self.pending.is_empty() && self.unsent == 0 {
            self.send_inflight(d, send);
        } else if self.pending.len() < max_queued {
            self.pending.push_back(d);
        } else {
            return Delivered::Dropped;
        }
        Delivered::Accepted
    }

    /// PUBACK: a QoS 1 message is done.
    fn puback(&mut self, packet_id: NonZeroU16, send: &mut impl FnMut(Out)) {
        if self
            .inflight
            .get(&packet_id.get())
            .is_some_and(|f| f.delivery.qos == QoS::AtLeastOnce)
        {
            self.forget(packet_id);
            self.send_pending(send);
        }
    }

    /// PUBREC: a QoS 2 message was received; it is released. A PUBREC for
    /// a packet id not in flight at QoS 2 is answered "packet identifier
    /// not found" (MQTT 5 4.3.3).
    fn pubrec(&mut self, packet_id: NonZeroU16, send: &mut impl FnMut(Out)) {
        let known = match self.inflight.get_mut(&packet_id.get()) {
            Some(f) if f.delivery.qos == QoS::ExactlyOnce => {
                f.released = true;
                if std::mem::take(&mut f.unsent) {
                    // Answered now: no longer waiting to be sent again.
                    self.unsent -= 1;
                }
                true
            }
            _ => false,
        };
        send(Out::PubRel { packet_id, known });
    }

    /// PUBCOMP: a QoS 2 message is done.
    fn pubcomp(&mut self, packet_id: NonZeroU16, send: &mut impl FnMut(Out)) {
        if self.inflight.contains_key(&packet_id.get()) {
            self.forget(packet_id);
            self.send_pending(send);
        }
    }

    /// An incoming QoS 2 PUBLISH with `packet_id`; `receive_max` is the
    /// broker's Receive Maximum.
    fn incoming_qos2(&mut self, packet_id: NonZeroU16, receive_max: u16) -> Incoming {
        if self.incoming_qos2.contains(&packet_id) {
            return Incoming::Duplicate;
        }
        if self.incoming_qos2.len() >= usize::from(receive_max) {
            return Incoming::OverReceiveMaximum;
        }
        self.incoming_qos2.insert(packet_id);
        Incoming::Fresh
    }

    /// PUBREL: the client released a QoS 2 message it sent.
    fn pubrel(&mut self, packet_id: NonZeroU16, send: &mut impl FnMut(Out)) {
        let known = self.incoming_qos2.remove(&packet_id);
        send(Out::PubComp { packet_id, known });
    }

    /// Nothing in flight, queued or unreleased.
    fn is_empty(&self) -> bool {
        self.inflight.is_empty() && self.pending.is_empty() && self.incoming_qos2.is_empty()
    }

    /// Whether the window is full (or messages wait for it): a shared
    /// subscription should give its next message to another member.
    fn is_full(&self) -> bool {
        !self.window_open() || !self.pending.is_empty() || self.unsent > 0
    }

    /// Messages sent on this connection and not yet acknowledged.
    fn outstanding(&self) -> usize {
        self.inflight.len() - usize::from(self.unsent)
    }

    fn window_open(&self) -> bool {
        self.outstanding() < usize::from(self.max_inflight)
    }

    fn forget(&mut self, packet_id: NonZeroU16) {
        if self
            .inflight
            .remove(&packet_id.get())
            .is_some_and(|f| f.unsent)
        {
            self.unsent -= 1;
        }
    }

    fn send_pending(&mut self, send: &mut impl FnMut(Out)) {
        while self.window_open() {
            if self.unsent > 0
                && let Some(f) = self.inflight.values_mut().find(|f| f.unsent)
            {
                f.unsent = false;
                self.unsent -= 1;
                send(if f.released {
                    Out::PubRel {
                        packet_id: f.packet_id,
                        known: true,
                    }
                } else {
                    Out::Publish {
                        delivery: f.delivery.clone(),
                        packet_id: Some(f.packet_id),
                        dup: true,
                    }
                });
                continue;
            }
            let Some(d) = self.pending.pop_front() else {
                return;
            };
            if d.message.is_expired() {
                continue;
            }
            if d.qos == QoS::AtMostOnce {
                send(Out::Publish {
                    delivery: d,
                    packet_id: None,
                    dup: false,
                });
            } else {
                self.send_inflight(d, send);
            }
        }
    }

    fn send_inflight(&mut self, d: Delivery, send: &mut impl FnMut(Out)) {
        let Some(packet_id) = self.next_free_id() else {
            self.pending.push_front(d);
            return;
        };
        send(Out::Publish {
            delivery: d.clone(),
            packet_id: Some(packet_id),
            dup: false,
        });
        self.inflight.insert(
            packet_id.get(),
            Inflight {
                packet_id,
                delivery: d,
                released: false,
                unsent: false,
            },
        );
    }

    /// The next packet id not in flight, counting up from the last one and
    /// wrapping past 65,535 to 1.
    fn next_free_id(&mut self) -> Option<NonZeroU16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return NonZeroU16::new(id);
            }
        }
        None
    }
}

impl QosState {
    /// See [`Window::resume`]; nothing carried leaves the window absent.
    pub(super) fn resume(carried: Carried, max_inflight: u16, send: &mut impl FnMut(Out)) -> Self {
        QosState {
            window: (!carried.is_empty())
                .then(|| Box::new(Window::resume(carried, max_inflight, send))),
            max_inflight,
        }
    }

    /// The window, made on first use.
    fn window(&mut self) -> &mut Window {
        let max_inflight = self.max_inflight;
        self.window
            .get_or_insert_with(|| Box::new(Window::new(max_inflight)))
    }

    /// Gives the window back while nothing is in it (a quiet connection
    /// does this with its buffers). Packet ids count from 1 again, which
    /// is fine: none is in use.
    pub(super) fn release_if_empty(&mut self) {
        if self.window.as_ref().is_some_and(|w| w.is_empty()) {
            self.window = None;
        }
    }

    /// See [`Window::into_carried`].
    pub(super) fn into_carried(self) -> Carried {
        self.window.map(|w| w.into_carried()).unwrap_or_default()
    }

    /// See [`Window::deliver`]; QoS 0 needs no window.
    pub(super) fn deliver(
        &mut self,
        d: Delivery,
        max_queued: usize,
        send: &mut impl FnMut(Out),
    ) -> Delivered {
        if self.window.is_none() && d.qos == QoS::AtMostOnce {
            return send_now(d, send);
        }
        self.window().deliver(d, max_queued, send)
    }

    /// See [`Window::puback`].
    pub(super) fn puback(&mut self, packet_id: NonZeroU16, send: &mut impl FnMut(Out)) {
        if let Some(window) = &mut self.window {
            window.puback(packet_id, send);
        }
    }

    /// See [`Window::pubrec`].
    pub(super) fn pubrec(&mut self, packet_id: NonZeroU16, send: &mut impl FnMut(Out)) {
        match &mut self.window {
            Some(window) => window.pubrec(packet_id, send),
            None => send(Out::PubRel {
                packet_id,
                known: false,
            }),
        }
    }

    /// See [`Window::pubcomp`].
    pub(super) fn pubcomp(&mut self, packet_id: NonZeroU16, send: &mut impl FnMut(Out)) {
        if let Some(window) = &mut self.window {
            window.pubcomp(packet_id, send);
        }
    }

    /// See [`Window::incoming_qos2`].
    pub(super) fn incoming_qos2(&mut self, packet_id: NonZeroU16, receive_max: u16) -> Incoming {
        self.window().incoming_qos2(packet_id, receive_max)
    }

    /// See [`Window::pubrel`].
    pub(super) fn pubrel(&mut self, packet_id: NonZeroU16, send: &mut impl FnMut(Out)) {
        match &mut self.window {
            Some(window) => window.pubrel(packet_id, send),
            None => send(Out::PubComp {
                packet_id,
                known: false,
            }),
        }
    }

    /// See [`Window::is_full`].
    pub(super) fn is_full(&self) -> bool {
        self.window.as_ref().is_some_and(|w| w.is_full())
    }

    /// Messages in flight towards the client.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.window.as_ref().map_or(0, |w| w.outstanding())
    }
}

/// Sends a QoS 0 delivery at once, unless it expired.
fn send_now(d: Delivery, send: &mut impl FnMut(Out)) -> Delivered {
    if d.message.is_expired() {
        return Delivered::Expired;
    }
    send(Out::Publish {
        delivery: d,
        packet_id: None,
        dup: false,
    });
    Delivered::Accepted
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Instant};

    use super::*;
    use crate::mqtt::Message;

    fn delivery(qos: QoS, payload: &'static str) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: payload.into(),
                qos,
                retain: false,
                properties: None,
                publisher: None,
                received: Instant::now(),
            }),
            qos,
            retain: false,
            subscription_ids: Default::default(),
        }
    }

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    /// What a test sees written: `Pub(payload, packet id, dup)`,
    /// `Rel(id, known)`, `Comp(id, known)`.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Pub(&'static str, u16, bool),
        Rel(u16, bool),
        Comp(u16, bool),
    }

    fn seen(s: Out) -> Seen {
        match s {
            Out::Publish {
                delivery,
                packet_id,
                dup,
            } => {
                let payload: &'static str = match &delivery.message.payload[..] {
                    b"a" => "a",
                    b"b" => "b",
                    b"c" => "c",
                    _ => "?",
                };
                Seen::Pub(payload, packet_id.map_or(0, NonZeroU16::get), dup)
            }
            Out::PubRel { packet_id, known } => Seen::Rel(packet_id.get(), known),
            Out::PubComp { packet_id, known } => Seen::Comp(packet_id.get(), known),
        }
    }

    enum Step {
        Deliver(QoS, &'static str),
        PubAck(u16),
        PubRec(u16),
        PubComp(u16),
        PubRel(u16),
    }
    use Seen::*;
    use Step::*;

    const Q0: QoS = QoS::AtMostOnce;
    const Q1: QoS = QoS::AtLeastOnce;
    const Q2: QoS = QoS::ExactlyOnce;

    #[test]
    fn transitions() {
        // (what, window, steps, packets written, messages left in flight)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, u16, Vec<Step>, Vec<Seen>, usize)> = vec![
            (
                "QoS 0 takes no packet id",
                1,
                vec![Deliver(Q0, "a")],
                vec![Pub("a", 0, false)],
                0,
            ),
            (
                "QoS 1 in flight until PUBACK",
                5,
                vec![Deliver(Q1, "a")],
                vec![Pub("a", 1, false)],
                1,
            ),
            (
                "PUBACK ends QoS 1",
                5,
                vec![Deliver(Q1, "a"), PubAck(1)],
                vec![Pub("a", 1, false)],
                0,
            ),
            (
                "PUBACK of an unknown id changes nothing",
                5,
                vec![Deliver(Q1, "a"), PubAck(2)],
                vec![Pub("a", 1, false)],
                1,
            ),
            (
                "PUBACK does not end QoS 2",
                5,
                vec![Deliver(Q2, "a"), PubAck(1)],
                vec![Pub("a", 1, false)],
                1,
            ),
            (
                "QoS 2: PUBREC, PUBREL, PUBCOMP",
                5,
                vec![Deliver(Q2, "a"), PubRec(1), PubComp(1)],
                vec![Pub("a", 1, false), Rel(1, true)],
                0,
            ),
            (
                "PUBREC of an unknown id: PUBREL 0x92",
                5,
                vec![PubRec(7)],
                vec![Rel(7, false)],
                0,
            ),
            (
                "PUBREC of a QoS 1 id: PUBREL 0x92, still in flight",
                5,
                vec![Deliver(Q1, "a"), PubRec(1)],
                vec![Pub("a", 1, false), Rel(1, false)],
                1,
            ),
            (
                "a repeated PUBREC is answered again",
                5,
                vec![Deliver(Q2, "a"), PubRec(1), PubRec(1)],
                vec![Pub("a", 1, false), Rel(1, true), Rel(1, true)],
                1,
            ),
            (
                "a full window queues; an ack sends the next",
                1,
                vec![
                    Deliver(Q1, "a"),
                    Deliver(Q1, "b"),
                    Deliver(Q0, "c"),
                    PubAck(1),
                ],
                vec![Pub("a", 1, false), Pub("c", 0, false), Pub("b", 2, false)],
                1,
            ),
            (
                "QoS 0 is sent at once, even with the window full",
                1,
                vec![Deliver(Q1, "a"), Deliver(Q0, "b")],
                vec![Pub("a", 1, false), Pub("b", 0, false)],
                1,
            ),
            (
                "PUBCOMP frees the window",
                1,
                vec![Deliver(Q2, "a"), Deliver(Q2, "b"), PubRec(1), PubComp(1)],
                vec![Pub("a", 1, false), Rel(1, true), Pub("b", 2, false)],
                1,
            ),
            (
                "PUBREL of an unknown id: PUBCOMP 0x92",
                5,
                vec![PubRel(3)],
                vec![Comp(3, false)],
                0,
            ),
        ];
        for (what, window, steps, want, left) in cases {
            let mut out = Vec::new();
            let mut send = |s: Out| out.push(seen(s));
            let mut q = QosState::resume(Carried::default(), window, &mut send);
            for step in steps {
                match step {
                    Deliver(qos, p) => {
                        assert_eq!(
                            q.deliver(delivery(qos, p), 10, &mut send),
                            Delivered::Accepted,
                            "{what}"
                        );
                    }
                    PubAck(n) => q.puback(id(n), &mut send),
                    PubRec(n) => q.pubrec(id(n), &mut send),
                    PubComp(n) => q.pubcomp(id(n), &mut send),
                    PubRel(n) => q.pubrel(id(n), &mut send),
                }
            }
            assert_eq!(q.in_flight(), left, "{what}: in flight");
            assert_eq!(out, want, "{what}");
        }
    }

    #[test]
    fn a_full_queue_drops() {
        let mut send = |_: Out| {};
        let mut q = QosState::resume(Carried::default(), 1, &mut send);
        assert_eq!(
            q.deliver(delivery(Q1, "a"), 1, &mut send),
            Delivered::Accepted
        );
        assert_eq!(
            q.deliver(delivery(Q1, "b"), 1, &mut send),
            Delivered::Accepted
        );
        assert_eq!(
            q.deliver(delivery(Q1, "c"), 1, &mut send),
            Delivered::Dropped
        );
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut out = Vec::new();
        let mut send = |s: Out| out.push(seen(s));
        let mut q = QosState::resume(Carried::default(), 10, &mut send);
        q.window().next_packet_id = u16::MAX;
        q.deliver(delivery(Q1, "a"), 10, &mut send);
        q.deliver(delivery(Q1, "b"), 10, &mut send);
        q.window().next_packet_id = u16::MAX;
        q.deliver(delivery(Q1, "c"), 10, &mut send);
        assert_eq!(
            out,
            vec![
                Pub("a", u16::MAX, false),
                Pub("b", 1, false),
                Pub("c", 2, false)
            ],
            "65,535 wraps to 1; ids in flight are skipped"
        );
    }

    /// A connection with nothing in flight holds no window; one with
    /// something in it keeps it until all is acknowledged, and a released
    /// window answers as an empty one does.
    #[test]
    fn the_window_exists_only_while_something_is_in_it() {
        let mut out = Vec::new();
        let mut send = |s: Out| out.push(seen(s));
        let mut q = QosState::resume(Carried::default(), 10, &mut send);
        assert!(q.window.is_none(), "nothing carried, no window");
        q.deliver(delivery(QoS::AtMostOnce, "a"), 10, &mut send);
        assert!(q.window.is_none(), "QoS 0 needs no window");
        q.deliver(delivery(Q1, "b"), 10, &mut send);
        assert!(q.window.is_some());
        q.release_if_empty();
        assert_eq!(q.in_flight(), 1, "a window in use is kept");
        q.puback(id(1), &mut send);
        q.release_if_empty();
        assert!(q.window.is_none(), "an empty window is given back");
        q.pubrec(id(7), &mut send);
        q.pubrel(id(8), &mut send);
        q.puback(id(9), &mut send);
        assert!(q.window.is_none(), "acknowledgements alone make no window");
        assert!(!q.is_full());
        assert_eq!(q.incoming_qos2(id(3), 10), Incoming::Fresh);
        q.release_if_empty();
        assert!(q.window.is_some(), "an unreleased QoS 2 id keeps it");
        assert_eq!(q.incoming_qos2(id(3), 10), Incoming::Duplicate);
        assert_eq!(
            out,
            vec![
                Pub("a", 0, false),
                Pub("b", 1, false),
                Rel(7, false),
                Comp(8, false)
            ]
        );
    }

    #[test]
    fn resume_resends_with_dup_and_releases() {
        let carried = Carried {
            inflight: vec![
                Inflight {
                    packet_id: id(4),
                    delivery: delivery(Q1, "a"),
                    released: false,
                    unsent: false,
                },
                Inflight {
                    packet_id: id(5),
                    delivery: delivery(Q2, "b"),
                    released: true,
                    unsent: false,
                },
            ],
            queue: [delivery(Q1, "c")].into(),
            incoming_qos2: [id(9)].into(),
        };
        let mut out = Vec::new();
        let mut send = |s: Out| out.push(seen(s));
        let mut q = QosState::resume(carried, 3, &mut send);
        q.pubrel(id(9), &mut send);
        assert_eq!(
            out,
            vec![
                Pub("a", 4, true),
                Rel(5, true),
                Pub("c", 1, false),
                Comp(9, true)
            ]
        );
        let back = q.into_carried();
        assert_eq!(back.inflight.len(), 3);
        assert!(back.incoming_qos2.is_empty());
    }

    #[test]
    fn resume_with_a_smaller_window_resends_as_it_frees() {
        let carried = Carried {
            inflight: vec![
                Inflight {
                    packet_id: id(4),
                    delivery: delivery(Q1, "a"),
                    released: false,
                    unsent: false,
                },
                Inflight {
                    packet_id: id(5),
                    delivery: delivery(Q2, "b"),
                    released: true,
                    unsent: false,
                },
                Inflight {
                    packet_id: id(6),
                    delivery: delivery(Q2, "c"),
                    released: false,
                    unsent: false,
                },
            ],
            queue: [delivery(Q1, "a")].into(),
            incoming_qos2: Default::default(),
        };
        let mut out = Vec::new();
        let mut send = |s: Out| out.push(seen(s));
        let mut q = QosState::resume(carried, 1, &mut send);
        assert_eq!(q.in_flight(), 1);
        q.deliver(delivery(Q1, "b"), 10, &mut send);
        q.puback(id(4), &mut send);
        q.pubcomp(id(5), &mut send);
        q.pubrec(id(6), &mut send);
        q.pubcomp(id(6), &mut send);
        assert_eq!(
            out,
            vec![
                Pub("a", 4, true),
                Rel(5, true),
                Pub("c", 6, true),
                Rel(6, true),
                Pub("a", 1, false),
            ],
            "one at a time, carried ones first, then the queue"
        );
        assert_eq!(q.in_flight(), 1);
        assert_eq!(q.into_carried().inflight.len(), 1);
    }

    #[test]
    fn incoming_qos2_ids() {
        let mut send = |_: Out| {};
        let mut q = QosState::resume(Carried::default(), 1, &mut send);
        let table = [
            (1, Incoming::Fresh),
            (1, Incoming::Duplicate),
            (2, Incoming::Fresh),
            (3, Incoming::OverReceiveMaximum),
        ];
        for (n, want) in table {
            assert_eq!(q.incoming_qos2(id(n), 2), want, "packet id {n}");
        }
    }
}
