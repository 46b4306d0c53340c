//! Sessions: what a client id keeps between connections (subscriptions,
//! queued and unacknowledged messages), takeover, and expiry.
//!
//! Lock order: the sessions map, then a session's state, then the
//! subscription tree. Routing collects its targets from the tree and
//! releases it before it locks any session.

use super::monitor::Announced;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    num::NonZeroU16,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    Broker, BrokerOptions, Delivery, Due, Interest, Outbound, SubOptions, Subscriber,
    expiry::{Fired, Timer},
    topic::{Share, SubscriptionTree},
};
use crate::domain::{ClientId, DisconnectCause};
use rmqtt_codec::types::QoS;

/// Session expiry meaning "never" (MQTT 3 persistent sessions, v5
/// 0xFFFFFFFF).
pub const NEVER: u32 = u32::MAX;

/// A QoS 1 or 2 message sent to the client and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: NonZeroU16,
    pub delivery: Delivery,
    /// QoS 2: PUBREC received, PUBREL sent.
    pub released: bool,
    /// Carried from an earlier connection and not yet sent again on this
    /// one (it waits for a free slot of the window).
    pub unsent: bool,
}

/// What one connection of a session hands back when it ends, and gets
/// when it resumes.
#[derive(Debug, Default)]
pub struct Carried {
    pub inflight: Vec<Inflight>,
    pub queue: VecDeque<Delivery>,
    /// QoS 2 packet ids received and not yet released by the client.
    pub incoming_qos2: BTreeSet<NonZeroU16>,
}

impl Carried {
    pub(super) fn is_empty(&self) -> bool {
        self.inflight.is_empty() && self.queue.is_empty() && self.incoming_qos2.is_empty()
    }
}

/// A session's [`Carried`] while no connection holds it: boxed, and
/// nothing at all while empty, which it is while a client is connected:
/// 72 bytes less in every connected client's session.
#[derive(Default)]
struct Parked(Option<Box<Carried>>);

impl Parked {
    fn of(carried: Carried) -> Parked {
        Parked((!carried.is_empty()).then(|| Box::new(carried)))
    }

    fn queued(&self) -> usize {
        self.0.as_ref().map_or(0, |c| c.queue.len())
    }

    /// Messages queued and in flight.
    fn held(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |c| c.queue.len() + c.inflight.len())
    }

    fn push(&mut self, delivery: Delivery) {
        self.0
            .get_or_insert_with(Default::default)
            .queue
            .push_back(delivery);
    }

    fn take(&mut self) -> Carried {
        self.0.take().map(|c| *c).unwrap_or_default()
    }
}

pub struct Session {
    pub client_id: Arc<str>,
    state: Mutex<State>,
    /// Set by the connection while its in-flight window is full: a shared
    /// subscription then gives the next message to another member.
    busy: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    online: Option<Online>,
    /// A B-tree rather than a hash map: 24 bytes of every session instead
    /// of 48, and a client subscribes to few filters.
    subscriptions: BTreeMap<String, SubOptions>,
    carried: Parked,
    expiry_secs: u32,
    /// Grows with every connection; timers of an older one do nothing.
    generation: u64,
    /// Credentials of the current connection (user name), for revocation.
    username: String,
    /// On a cluster node: the cluster's bucket holds a will of this
    /// session's (its connection's, or one waiting for its delay).
    will_held: bool,
    /// On a cluster node: the cluster's bucket of sessions has a record of
    /// this one, held here.
    record_held: bool,
}

struct Online {
    connection_id: u64,
    /// Also says when the connection has handed its state back
    /// ([`Mailbox::finished`]).
    mailbox: Arc<Mailbox>,
    /// Its `$SYS/clients/{id}/mon` Connect message, once published and
    /// until its Disconnect (see `monitor`).
    announced: Option<Announced>,
}

/// A connection's inbox: deliveries and commands from the rest of the
/// broker. Unlike a channel it allocates nothing while empty, which keeps
/// 100,000s of idle connections cheap; and its one receiver waits through
/// a waker kept here, so that the wait is a few bytes of the connection's
/// task rather than a notification future of its own.
#[derive(Default)]
pub struct Mailbox {
    queue: Mutex<Queue>,
    closed: std::sync::atomic::AtomicBool,
    /// Set once the connection has handed its session back: a connection
    /// taking the session over waits for it. Here rather than in a token of
    /// its own, which would be another allocation per connection.
    finished: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// The receiver's, while it waits for an item.
    waker: Option<std::task::Waker>,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        crate::lock::lock(&self.queue)
    }

    /// Queues `item`, unless the mailbox is closed or holds `limit`
    /// deliveries already (commands always get in).
    pub(super) fn send(&self, item: Outbound, limit: usize) -> Result<(), Outbound> {
        let mut queue = self.lock();
        if self.closed.load(Ordering::Relaxed)
            || (matches!(item, Outbound::Deliver(_)) && queue.items.len() >= limit)
        {
            return Err(item);
        }
        queue.items.push_back(item);
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Waits for work and moves up to `max` items into `out`. Cancel-safe.
    /// For the one receiver, the connection: a second one would take the
    /// first one's place.
    pub fn recv<'a>(
        &'a self,
        out: &'a mut Vec<Outbound>,
        max: usize,
    ) -> impl Future<Output = ()> + Send + 'a {
        std::future::poll_fn(move |cx| {
            let mut queue = self.lock();
            if queue.items.is_empty() {
                // Kept until a send takes it; a dropped wait leaves at
                // most one spurious wake-up behind.
                if !queue
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    queue.waker = Some(cx.waker().clone());
                }
                return std::task::Poll::Pending;
            }
            let n = queue.items.len().min(max);
            out.extend(queue.items.drain(..n));
            if queue.items.is_empty() && queue.items.capacity() > 1024 {
                queue.items.shrink_to_fit();
            }
            std::task::Poll::Ready(())
        })
    }

    /// Says that the connection has handed its session back, and wakes
    /// whoever waits on `finishes` (the broker's, shared by every mailbox).
    pub fn finish(&self, finishes: &Notify) {
        self.finished.store(true, Ordering::Release);
        finishes.notify_waiters();
    }

    /// Returns once the connection has handed its session back; `finishes`
    /// is the one [`Mailbox::finish`] wakes. Another connection's finish
    /// wakes it too, and it waits again.
    pub async fn finished(&self, finishes: &Notify) {
        loop {
            let notified = finishes.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a finish in between
            // wakes it.
            notified.as_mut().enable();
            if self.finished.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Closes the mailbox and returns the deliveries still in it (for the
    /// session to keep); a pending close request has nothing left to do.
    pub fn close(&self) -> Vec<Delivery> {
        let mut queue = self.lock();
        self.closed.store(true, Ordering::Relaxed);
        // A waker holds the connection's task: let it go with the task.
        queue.waker = None;
        queue
            .items
            .drain(..)
            .filter_map(|item| match item {
                Outbound::Deliver(d) => Some(d),
                Outbound::Close(_) => None,
            })
            .collect()
    }
}

/// A session taken out of this broker for another node.
pub struct Released {
    pub expiry_secs: u32,
    pub subscriptions: Vec<(String, SubOptions)>,
    pub carried: Carried,
}

/// The attached end of a session, held by its connection.
pub struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    pub carried: Carried,
    pub generation: u64,
}

impl Session {
    fn new(client_id: Arc<str>) -> Session {
        Session {
            client_id,
            state: Mutex::default(),
            busy: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock::lock(&self.state)
    }

    /// Hands `delivery` to the connection, or queues it while offline.
    /// Returns false when the message had to be dropped.
    pub fn deliver(&self, delivery: Delivery, options: &BrokerOptions) -> bool {
        let mut state = self.lock();
        let mut delivery = delivery;
        if let Some(online) = &state.online {
            // A client that does not read loses what it cannot take, as on
            // Mosquitto; the broker never waits for it.
            match online
                .mailbox
                .send(Outbound::Deliver(delivery), options.outbound_buffer)
            {
                Ok(()) => return true,
                // The connection is ending: keep it with the session.
                Err(Outbound::Deliver(d)) if online.mailbox.closed.load(Ordering::Relaxed) => {
                    delivery = d
                }
                Err(_) => return false,
            }
        }
        if delivery.qos == QoS::AtMostOnce {
            // Offline sessions keep QoS 1 and 2 only (as Mosquitto does).
            return true;
        }
        if state.carried.queued() < options.max_queued_messages {
            state.carried.push(delivery);
            return true;
        }
        false
    }

    /// Asks the connection to close for `cause`; false when offline.
    pub fn close(&self, cause: DisconnectCause) -> bool {
        let state = self.lock();
        match &state.online {
            Some(online) => online.mailbox.send(Outbound::Close(cause), 0).is_ok(),
            None => false,
        }
    }

    /// Whether a connection is online and `matches` its client id and user.
    pub fn online_matches(&self, matches: impl Fn(&ClientId, &str) -> bool) -> bool {
        let state = self.lock();
        state.online.is_some()
            && ClientId::new(&*self.client_id).is_ok_and(|id| matches(&id, &state.username))
    }

    pub fn subscribe(&self, filter: &str, options: SubOptions) -> bool {
        self.lock()
            .subscriptions
            .insert(filter.to_owned(), options)
            .is_none()
    }

    pub fn unsubscribe(&self, filter: &str) -> bool {
        self.lock().subscriptions.remove(filter).is_some()
    }

    pub fn set_expiry(&self, secs: u32) {
        self.lock().expiry_secs = secs;
    }

    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    pub fn is_online(&self) -> bool {
        self.lock().online.is_some()
    }

    /// Keeps what connection `connection_id`'s `$SYS/clients/{id}/mon`
    /// Connect message is made of, if it is the one online.
    pub(crate) fn announce(&self, connection_id: u64, fields: Announced) {
        let mut state = self.lock();
        if let Some(online) = state.online.as_mut()
            && online.connection_id == connection_id
        {
            online.announced = Some(fields);
        }
    }

    /// Forgets it again (the connection is ending).
    pub(crate) fn unannounce(&self, connection_id: u64) {
        let mut state = self.lock();
        if let Some(online) = state.online.as_mut()
            && online.connection_id == connection_id
        {
            online.announced = None;
        }
    }

    /// The Connect message's fields and the user name, while announced.
    pub(crate) fn announced(&self) -> Option<(Announced, String)> {
        let state = self.lock();
        let fields = state.online.as_ref()?.announced?;
        Some((fields, state.username.clone()))
    }

    /// Whether a connection is online, and whether its `$SYS` Connect is
    /// announced: one look for the broker statistics.
    pub(crate) fn presence(&self) -> (bool, bool) {
        let state = self.lock();
        let online = state.online.as_ref();
        (
            online.is_some(),
            online.is_some_and(|o| o.announced.is_some()),
        )
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Calls `f` with the session's expiry, subscriptions and whether the
    /// cluster has a record of it (which `f` may change).
    pub fn with_record<R>(
        &self,
        f: impl FnOnce(u32, &BTreeMap<String, SubOptions>, &mut bool) -> R,
    ) -> R {
        let mut state = self.lock();
        let state = &mut *state;
        f(
            state.expiry_secs,
            &state.subscriptions,
            &mut state.record_held,
        )
    }

    /// The mailbox of the connection attached now.
    pub fn online_mailbox(&self) -> Option<Arc<Mailbox>> {
        let state = self.lock();
        state.online.as_ref().map(|o| o.mailbox.clone())
    }

    /// Sets whether the cluster's bucket holds a will of this session's;
    /// returns whether it did.
    pub fn set_will_held(&self, held: bool) -> bool {
        std::mem::replace(&mut self.lock().will_held, held)
    }
}

type Tree = SubscriptionTree<Arc<str>, Subscriber>;

/// Makes `session` a member of the group `key` of `filter` (or updates its
/// options); true when that started the group.
fn join(
    tree: &mut Tree,
    filter: &str,
    key: Arc<str>,
    session: &Arc<Session>,
    options: SubOptions,
) -> bool {
    let (mut members, next, started) = match tree.remove(filter, &key) {
        Some(Subscriber::Shared { members, next }) => (members, next, false),
        _ => (Vec::new(), AtomicUsize::new(0), true),
    };
    members.retain(|(s, _)| s.client_id != session.client_id);
    members.push((session.clone(), options));
    tree.insert(filter, key, Subscriber::Shared { members, next });
    started
}

/// Takes `client_id` out of the group `key` of `filter`; the last member
/// out ends the group (and true is returned).
fn leave(tree: &mut Tree, filter: &str, key: Arc<str>, client_id: &Arc<str>) -> bool {
    if let Some(Subscriber::Shared { mut members, next }) = tree.remove(filter, &key) {
        members.retain(|(s, _)| s.client_id != *client_id);
        if members.is_empty() {
            return true;
        }
        tree.insert(filter, key, Subscriber::Shared { members, next });
    }
    false
}

/// The interest a group at `filter` holds in other nodes' messages.
fn group_interest(filter: &str, key: Arc<str>) -> Interest {
    Interest::Group {
        filter: Arc::from(filter),
        key,
    }
}

/// The session of `client_id` in `sessions`, a new one if it has none.
fn session_of(
    sessions: &mut HashMap<Arc<str>, Arc<Session>>,
    client_id: &Arc<str>,
) -> Arc<Session> {
    sessions
        .entry(client_id.clone())
        .or_insert_with(|| Arc::new(Session::new(client_id.clone())))
        .clone()
}

impl Broker {
    /// Attaches a new connection to the session of `client_id`, taking
    /// over a connection still attached (it is sent `Close(taken over)`
    /// and has up to five seconds to hand its state back).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn attach(
        &self,
        client_id: &Arc<str>,
        connection_id: u64,
        clean_start: bool,
        expiry_secs: u32,
        username: &str,
        by: &str,
        mailbox: Arc<Mailbox>,
    ) -> Attached {
        // On a cluster node the session may be on another node.
        self.fetch_session(client_id, clean_start).await;
        for _ in 0..3 {
            let Some(session) = self.session(client_id) else {
                break;
            };
            let Some(old_mailbox) = session.online_mailbox() else {
                break;
            };
            let _ = old_mailbox.send(
                Outbound::Close(DisconnectCause::SessionTakenOver { by: by.to_owned() }),
                0,
            );
            if tokio::time::timeout(
                Duration::from_secs(5),
                old_mailbox.finished(&self.inner.finishes),
            )
            .await
            .is_err()
            {
                tracing::warn!(client_id = %client_id, "taken-over connection did not close in time");
            }
        }
        let (attached, dropped_filters) = {
            let mut sessions = crate::lock::lock(&self.inner.sessions);
            let session = session_of(&mut sessions, client_id);
            let mut state = session.lock();
            if let Some(old) = state.online.take() {
                // Lost a race with another new connection: the newest wins.
                let _ = old.mailbox.send(
                    Outbound::Close(DisconnectCause::SessionTakenOver { by: by.to_owned() }),
                    0,
                );
            }
            let existed =
                !state.subscriptions.is_empty() || state.carried.held() > 0 || state.generation > 0;
            let mut dropped_filters = Vec::new();
            if clean_start {
                dropped_filters.extend(std::mem::take(&mut state.subscriptions).into_keys());
                state.carried = Parked::default();
            }
            state.generation += 1;
            // Under the session's lock, after the generation grew: the cancel
            // follows every timer an older connection scheduled.
            self.inner.expiries.cancel(client_id, state.generation);
            state.expiry_secs = expiry_secs;
            state.username = username.to_owned();
            state.online = Some(Online {
                connection_id,
                mailbox,
                announced: None,
            });
            let attached = Attached {
                session: session.clone(),
                session_present: existed && !clean_start,
                carried: state.carried.take(),
                generation: state.generation,
            };
            (attached, dropped_filters)
        };
        self.drop_subscriptions(client_id, &dropped_filters);
        self.save_attached_session(&attached.session).await;
        attached
    }

    /// Detaches connection `connection_id` from `session`, keeping what it
    /// carried when the session outlives it. Returns the session's expiry.
    pub(crate) fn detach(
        &self,
        session: &Arc<Session>,
        connection_id: u64,
        mut carried: Carried,
        leftovers: Vec<Delivery>,
    ) -> u32 {
        let (expiry, generation, queued) = {
            let mut state = session.lock();
            if state
                .online
                .as_ref()
                .is_none_or(|o| o.connection_id != connection_id)
            {
                return state.expiry_secs;
            }
            state.online = None;
            if state.expiry_secs > 0 {
                // What the connection held, what was still on its way to
                // it, then what arrived while it was closing.
                let limit = self.inner.options.max_queued_messages;
                let arrived_late = state.carried.take().queue;
                for d in leftovers.into_iter().chain(arrived_late) {
                    if d.qos != QoS::AtMostOnce && carried.queue.len() < limit {
                        carried.queue.push_back(d);
                    }
                }
                state.carried = Parked::of(carried);
            }
            if !matches!(state.expiry_secs, 0 | NEVER) {
                self.inner.expiries.schedule(
                    &session.client_id,
                    Timer::SessionExpiry,
                    state.generation,
                    Duration::from_secs(u64::from(state.expiry_secs)),
                    Due::Session(session.clone()),
                );
            }
            let queued = state.carried.held();
            (state.expiry_secs, state.generation, queued)
        };
        if expiry == 0 {
            self.discard_if_idle(session, generation);
        } else {
            self.save_session(session, Some(u32::try_from(queued).unwrap_or(u32::MAX)));
        }
        expiry
    }

    /// Publishes `will` of `session`'s connection `generation` after
    /// `delay`, unless a connection of the client comes first
    /// (MQTT-3.1.3-9); a client already back gets no will.
    pub(crate) fn schedule_will(
        &self,
        session: &Arc<Session>,
        generation: u64,
        will: super::PendingWill,
        delay: Duration,
    ) {
        let state = session.lock();
        if state.generation == generation && state.online.is_none() {
            self.inner.expiries.schedule(
                &session.client_id,
                Timer::Will,
                generation,
                delay,
                Due::Will(Some(session.clone()), Box::new(will)),
            );
        }
    }

    /// A timer of the expiry queue came due.
    pub(crate) fn expired(&self, fired: Fired<Due>) {
        match fired.item {
            Due::Session(session) => self.discard_if_idle(&session, fired.generation),
            Due::Will(session, will) => {
                let current = session
                    .as_ref()
                    .is_none_or(|s| s.generation() == fired.generation);
                if !current {
                    return;
                }
                if !self.came_back(&will) {
                    self.publish(will.message);
                }
                if let Some(session) = session {
                    self.will_done(&session);
                }
            }
        }
    }

    /// Ends `session` if no connection came back since `generation`.
    fn discard_if_idle(&self, session: &Arc<Session>, generation: u64) {
        let filters: Vec<String> = {
            let mut sessions = crate::lock::lock(&self.inner.sessions);
            let mut state = session.lock();
            if state.online.is_some() || state.generation != generation {
                return;
            }
            if sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.client_id);
            }
            state.carried = Parked::default();
            std::mem::take(&mut state.subscriptions)
                .into_keys()
                .collect()
        };
        self.drop_subscriptions(&session.client_id, &filters);
        self.forget_session(session);
    }

    /// Takes `session` out of this broker for another node, unless a
    /// connection is attached: its expiry, subscriptions and what it
    /// carried. Its timers here are cancelled; its record in the cluster
    /// becomes the other node's.
    pub(crate) fn release_session(&self, session: &Arc<Session>) -> Option<Released> {
        let (expiry, subscriptions, carried) = {
            let mut sessions = crate::lock::lock(&self.inner.sessions);
            let mut state = session.lock();
            if state.online.is_some() {
                return None;
            }
            if sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.client_id);
            }
            state.generation += 1;
            self.inner
                .expiries
                .cancel(&session.client_id, state.generation);
            state.record_held = false;
            let subscriptions: Vec<(String, SubOptions)> = std::mem::take(&mut state.subscriptions)
                .into_iter()
                .collect();
            (state.expiry_secs, subscriptions, state.carried.take())
        };
        let filters: Vec<String> = subscriptions.iter().map(|(f, _)| f.clone()).collect();
        self.drop_subscriptions(&session.client_id, &filters);
        Some(Released {
            expiry_secs: expiry,
            subscriptions,
            carried,
        })
    }

    /// Makes a session handed over by another node the session of
    /// `client_id` here, unless a connection is attached to one already.
    pub(crate) fn adopt_session(
        &self,
        client_id: &Arc<str>,
        expiry_secs: u32,
        carried: Carried,
    ) -> Option<Arc<Session>> {
        let mut sessions = crate::lock::lock(&self.inner.sessions);
        let session = session_of(&mut sessions, client_id);
        let mut state = session.lock();
        if state.online.is_some() {
            return None;
        }
        state.expiry_secs = expiry_secs;
        state.carried = Parked::of(carried);
        // It existed: the CONNACK says so.
        state.generation = state.generation.max(1);
        drop(state);
        Some(session)
    }

    /// Removes the subscriptions `filters` of `client_id` (as its session
    /// keeps them: a shared subscription as `$share/{group}/{filter}`),
    /// leaving the groups it was a member of.
    fn drop_subscriptions(&self, client_id: &Arc<str>, filters: &[String]) {
        if filters.is_empty() {
            return;
        }
        let group = super::shared_group(client_id);
        let mut tree = crate::lock::write(&self.inner.subscriptions);
        for filter in filters {
            if let Share::Group { group, filter } = Share::parse(filter) {
                let key = super::share_key(group);
                if leave(&mut tree, filter, key.clone(), client_id) {
                    self.interest(group_interest(filter, key), false);
                }
                continue;
            }
            match &group {
                None => {
                    if tree.remove(filter, client_id).is_some() {
                        self.interest(Interest::Plain(Arc::from(filter.as_str())), false);
                    }
                }
                Some(group) => {
                    if leave(&mut tree, filter, group.clone(), client_id) {
                        self.interest(group_interest(filter, group.clone()), false);
                    }
                }
            }
        }
    }

    /// Adds or replaces a subscription (`$share/{group}/{filter}` for a
    /// shared one); true when it is new. On a cluster node, also the token
    /// cancelled once the other nodes' messages for it are subscribed.
    pub(crate) fn add_subscription(
        &self,
        session: &Arc<Session>,
        filter: &str,
        options: SubOptions,
    ) -> (bool, Option<CancellationToken>) {
        let new = session.subscribe(filter, options);
        self.save_session(session, None);
        let mut tree = crate::lock::write(&self.inner.subscriptions);
        if let Share::Group { group, filter } = Share::parse(filter) {
            let key = super::share_key(group);
            let started = join(&mut tree, filter, key.clone(), session, options);
            let ready = started
                .then(|| self.interest(group_interest(filter, key), true))
                .flatten();
            return (new, ready);
        }
        let ready = match super::shared_group(&session.client_id) {
            None => {
                let one = Subscriber::One {
                    session: session.clone(),
                    options,
                };
                let added = tree
                    .insert(filter, session.client_id.clone(), one)
                    .is_none();
                added
                    .then(|| self.interest(Interest::Plain(Arc::from(filter)), true))
                    .flatten()
            }
            Some(group) => {
                let started = join(&mut tree, filter, group.clone(), session, options);
                started
                    .then(|| self.interest(group_interest(filter, group), true))
                    .flatten()
            }
        };
        (new, ready)
    }

    pub(crate) fn remove_subscription(&self, session: &Arc<Session>, filter: &str) -> bool {
        let existed = session.unsubscribe(filter);
        self.drop_subscriptions(&session.client_id, &[filter.to_owned()]);
        if existed {
            self.save_session(session, None);
        }
        existed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::testing;
    use tokio::time::{Instant, sleep};

    /// Connects `client_id` as connection `connection_id` with session
    /// expiry `expiry_secs`, without clean start.
    async fn connect(
        broker: &Broker,
        client_id: &str,
        connection_id: u64,
        expiry: u32,
    ) -> Attached {
        broker
            .attach(
                &Arc::from(client_id),
                connection_id,
                false,
                expiry,
                "",
                "test",
                Arc::new(Mailbox::default()),
            )
            .await
    }

    fn disconnect(broker: &Broker, attached: &Attached, connection_id: u64) -> u32 {
        broker.detach(
            &attached.session,
            connection_id,
            Carried::default(),
            Vec::new(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_detached_session_expires_after_its_interval_unless_the_client_comes_back() {
        let (broker, _dir) = testing::broker(BrokerOptions::default());
        let t0 = Instant::now();
        let first = connect(&broker, "c", 1, 10).await;
        disconnect(&broker, &first, 1);
        // Back after 5 s, gone again after 6 s: its expiry counts from then.
        sleep(Duration::from_secs(5)).await;
        let second = connect(&broker, "c", 2, 10).await;
        assert!(second.session_present);
        sleep(Duration::from_secs(1)).await;
        disconnect(&broker, &second, 2);
        // The first connection's expiry (at 10 s) does not end the session.
        sleep_until(t0, Duration::from_millis(15_999)).await;
        assert!(broker.session("c").is_some(), "expired early");
        sleep_until(t0, Duration::from_secs(16)).await;
        tokio::task::yield_now().await;
        assert!(broker.session("c").is_none(), "not expired at 16 s");
        let third = connect(&broker, "c", 3, 10).await;
        assert!(!third.session_present);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_zero_ends_at_once_and_never_keeps_forever() {
        let (broker, _dir) = testing::broker(BrokerOptions::default());
        let now = connect(&broker, "zero", 1, 0).await;
        disconnect(&broker, &now, 1);
        assert!(broker.session("zero").is_none());
        // MQTT 3 clean session = 0 and v5 0xFFFFFFFF.
        let kept = connect(&broker, "never", 1, NEVER).await;
        disconnect(&broker, &kept, 1);
        sleep(Duration::from_secs(10 * 365 * 86400)).await;
        assert!(broker.session("never").is_some());
        assert!(connect(&broker, "never", 2, NEVER).await.session_present);
    }

    /// A connection taking a session over waits until the old one has
    /// finished, whether it finished before the wait began or during it,
    /// and another connection's finish does not end the wait.
    #[tokio::test]
    async fn waiting_for_a_finished_connection_ends_when_it_finishes() {
        let finishes = Arc::new(Notify::new());
        let done = Mailbox::default();
        done.finish(&finishes);
        tokio::time::timeout(Duration::from_secs(1), done.finished(&finishes))
            .await
            .expect("finished before the wait");

        let mailbox = Arc::new(Mailbox::default());
        let waiter = tokio::spawn({
            let (mailbox, finishes) = (mailbox.clone(), finishes.clone());
            async move { mailbox.finished(&finishes).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "nothing finished yet");
        Mailbox::default().finish(&finishes);
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "another connection finished, not this one"
        );
        mailbox.finish(&finishes);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken by the finish")
            .unwrap();
    }

    /// A bug that panics in one connection while it holds the session
    /// table, its session and the subscription tree leaves them poisoned;
    /// later connects, takeovers and routing go on.
    #[tokio::test(start_paused = true)]
    async fn a_panic_under_the_broker_locks_does_not_stop_later_connects() {
        let (broker, _dir) = testing::broker(BrokerOptions::default());
        let mailbox = testing::subscriber(&broker, "t").await;
        let first = connect(&broker, "c", 1, NEVER).await;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _sessions = broker.inner.sessions.lock().unwrap();
            let _state = first.session.state.lock().unwrap();
            let _tree = broker.inner.subscriptions.write().unwrap();
            panic!("a bug in one connection");
        }));
        assert!(panicked.is_err());
        assert!(broker.inner.sessions.is_poisoned());
        assert!(first.session.state.is_poisoned());
        assert!(broker.inner.subscriptions.is_poisoned());

        // The poisoned client's connection goes and comes back.
        disconnect(&broker, &first, 1);
        let again = connect(&broker, "c", 2, NEVER).await;
        assert!(again.session_present);
        assert!(
            broker
                .add_subscription(&again.session, "u", sub_options())
                .0
        );
        // Another client connects, and messages are routed.
        let other = connect(&broker, "other", 1, 0).await;
        assert!(!other.session_present);
        let sent = broker.publish(crate::mqtt::Message {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"hello"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
            publisher: None,
            received: std::time::Instant::now(),
        });
        assert_eq!(sent, 1);
        let mut out = Vec::new();
        mailbox.recv(&mut out, 1).await;
        assert!(matches!(&out[..], [Outbound::Deliver(d)] if &*d.message.topic == "t"));
    }

    fn sub_options() -> SubOptions {
        SubOptions {
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            id: None,
            one_copy: false,
        }
    }

    async fn sleep_until(t0: Instant, at: Duration) {
        tokio::time::sleep_until(t0 + at).await;
    }
}
