//! The broker's one expiry queue: when a detached session expires and when
//! a delayed will is due (MQTT 5 §3.1.2.5, §3.1.3.2.2).
//!
//! One task owns a [`DelayQueue`] (a timer wheel); the rest of the broker
//! reaches it through an unbounded channel, so scheduling never blocks
//! and may be done under a session's lock. At most one timer of each
//! [`Timer`] kind is pending per client id: scheduling again replaces it.
//!
//! A timer belongs to one connection of its client, named by the
//! session's generation. A new connection of the client cancels every
//! timer of older generations; it sends the cancel under the session's
//! lock, after the generation grew, and the timers of older connections
//! are scheduled under that lock too, so the cancel follows every one of
//! them in the channel and none of them fires. What fires is handed to
//! the broker with its generation, which the broker checks once more.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_util::{
    sync::CancellationToken,
    time::{DelayQueue, delay_queue},
};

/// What a timer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Timer {
    /// A detached session is discarded.
    SessionExpiry,
    /// A delayed will is published.
    Will,
}

/// A timer that came due.
#[derive(Debug)]
pub(crate) struct Fired<T> {
    pub client_id: Arc<str>,
    pub timer: Timer,
    /// The session generation (connection) it was scheduled for.
    pub generation: u64,
    pub item: T,
}

enum Command<T> {
    Schedule {
        client_id: Arc<str>,
        timer: Timer,
        generation: u64,
        after: Duration,
        item: T,
    },
    /// Cancels the timers of `client_id` scheduled for a generation older
    /// than `before`.
    Cancel { client_id: Arc<str>, before: u64 },
}

/// The handle the broker schedules through (cheap to clone).
pub(crate) struct ExpiryQueue<T> {
    tx: mpsc::UnboundedSender<Command<T>>,
}

impl<T> Clone for ExpiryQueue<T> {
    fn clone(&self) -> Self {
        ExpiryQueue {
            tx: self.tx.clone(),
        }
    }
}

/// The task side: runs the timers until the broker stops.
pub(crate) struct Expiries<T> {
    rx: mpsc::UnboundedReceiver<Command<T>>,
    queue: DelayQueue<Fired<T>>,
    /// The pending timer of each client id and kind, with its generation.
    pending: HashMap<(Arc<str>, Timer), (u64, delay_queue::Key)>,
}

impl<T> ExpiryQueue<T> {
    pub fn new() -> (ExpiryQueue<T>, Expiries<T>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let expiries = Expiries {
            rx,
            queue: DelayQueue::new(),
            pending: HashMap::new(),
        };
        (ExpiryQueue { tx }, expiries)
    }

    /// Fires `item` after `after`, replacing the pending `timer` of
    /// `client_id`, if any.
    pub fn schedule(
        &self,
        client_id: &Arc<str>,
        timer: Timer,
        generation: u64,
        after: Duration,
        item: T,
    ) {
        // The receiver lives until the broker stops; after that nothing is
        // due any more.
        let _ = self.tx.send(Command::Schedule {
            client_id: client_id.clone(),
            timer,
            generation,
            after,
            item,
        });
    }

    /// Cancels every timer of `client_id` scheduled for a generation
    /// older than `before` (a new connection of generation `before` came).
    pub fn cancel(&self, client_id: &Arc<str>, before: u64) {
        let _ = self.tx.send(Command::Cancel {
            client_id: client_id.clone(),
            before,
        });
    }
}

impl<T> Expiries<T> {
    /// Hands every timer that comes due to `on_due`, until `stop` (timers
    /// still pending then never fire) or until every handle is gone.
    pub async fn run(mut self, stop: CancellationToken, mut on_due: impl FnMut(Fired<T>)) {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                command = self.rx.recv() => match command {
                    Some(command) => self.apply(command),
                    None => return,
                },
                Some(expired) = std::future::poll_fn(|cx| self.queue.poll_expired(cx)),
                    if !self.queue.is_empty() =>
                {
                    let fired = expired.into_inner();
                    self.pending.remove(&(fired.client_id.clone(), fired.timer));
                    on_due(fired);
                }
            }
        }
    }

    fn apply(&mut self, command: Command<T>) {
        match command {
            Command::Schedule {
                client_id,
                timer,
                generation,
                after,
                item,
            } => {
                let slot = (client_id.clone(), timer);
                if let Some((_, old)) = self.pending.remove(&slot) {
                    self.queue.remove(&old);
                }
                let fired = Fired {
                    client_id,
                    timer,
                    generation,
                    item,
                };
                let key = self.queue.insert(fired, after);
                self.pending.insert(slot, (generation, key));
            }
            Command::Cancel { client_id, before } => {
                for timer in [Timer::SessionExpiry, Timer::Will] {
                    let slot = (client_id.clone(), timer);
                    if let Some(&(generation, key)) = self.pending.get(&slot)
                        && generation < before
                    {
                        self.pending.remove(&slot);
                        self.queue.remove(&key);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Instant, timeout};

    /// A queue whose fired timers arrive on a channel, run on the paused
    /// clock.
    fn start() -> (
        ExpiryQueue<&'static str>,
        mpsc::UnboundedReceiver<Fired<&'static str>>,
        CancellationToken,
    ) {
        let (queue, expiries) = ExpiryQueue::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(expiries.run(stop.clone(), move |fired| {
            let _ = tx.send(fired);
        }));
        (queue, rx, stop)
    }

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_after_its_delay_and_not_before() {
        let (queue, mut fired, _stop) = start();
        let t0 = Instant::now();
        queue.schedule(&id("c"), Timer::SessionExpiry, 1, secs(10), "session");
        queue.schedule(&id("c"), Timer::Will, 1, secs(4), "will");
        // Nothing in the first four seconds.
        assert!(timeout(secs(4) - ms(1), fired.recv()).await.is_err());
        let will = fired.recv().await.unwrap();
        assert_eq!(
            (will.timer, will.item, will.generation),
            (Timer::Will, "will", 1)
        );
        assert_eq!(t0.elapsed(), secs(4));
        let expiry = fired.recv().await.unwrap();
        assert_eq!(&*expiry.client_id, "c");
        assert_eq!(
            (expiry.timer, expiry.item),
            (Timer::SessionExpiry, "session")
        );
        assert_eq!(t0.elapsed(), secs(10));
        assert!(timeout(secs(3600), fired.recv()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_generation_cancels_the_older_timers_only() {
        let (queue, mut fired, _stop) = start();
        let t0 = Instant::now();
        queue.schedule(&id("a"), Timer::SessionExpiry, 3, secs(10), "a expiry");
        queue.schedule(&id("a"), Timer::Will, 3, secs(5), "a will");
        queue.schedule(&id("b"), Timer::SessionExpiry, 7, secs(10), "b expiry");
        // a's connection 4 came back: both of a's timers go.
        queue.cancel(&id("a"), 4);
        // A cancel that names b's own generation (not newer) keeps it.
        queue.cancel(&id("b"), 7);
        let only = fired.recv().await.unwrap();
        assert_eq!(only.item, "b expiry");
        assert_eq!(t0.elapsed(), secs(10));
        assert!(timeout(secs(3600), fired.recv()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn scheduling_again_replaces_the_pending_timer() {
        let (queue, mut fired, _stop) = start();
        let t0 = Instant::now();
        queue.schedule(&id("c"), Timer::SessionExpiry, 1, secs(10), "first");
        tokio::time::sleep(secs(2)).await;
        queue.schedule(&id("c"), Timer::SessionExpiry, 2, secs(30), "second");
        let only = fired.recv().await.unwrap();
        assert_eq!((only.item, only.generation), ("second", 2));
        assert_eq!(t0.elapsed(), secs(32));
        assert!(timeout(secs(3600), fired.recv()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_fires_after_stop() {
        let (queue, mut fired, stop) = start();
        queue.schedule(&id("c"), Timer::Will, 1, secs(1), "will");
        stop.cancel();
        // The task ended: the channel closes without a timer firing.
        assert!(fired.recv().await.is_none());
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}
