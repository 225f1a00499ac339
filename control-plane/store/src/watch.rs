//! Watch fan-out: delivering each committed event to every interested watcher without letting a
//! slow watcher hold anyone up.
//!
//! Every watcher has a bounded channel. The single writer of a backend publishes each committed
//! batch with [`Watchers::publish`], which only ever `try_send`s: a watcher whose buffer is full is
//! removed on the spot and its stream ends with [`StoreError::WatchLagged`] once it has drained
//! what it had (what etcd and the Kubernetes watch cache do with slow watchers). Events are cheap
//! to clone (reference-counted key and value), so a thousand watchers of one prefix share one copy
//! of each payload.
//!
//! A new watcher is registered *before* its history replay is read, and its stream drops any live
//! event at or below the last revision it delivered. So an event committed while the watch is being
//! set up is delivered exactly once, from the replay or from the channel, with no lock held across
//! both.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::{Event, Result, StoreError};

struct Slot {
    id: u64,
    prefix: Box<str>,
    tx: mpsc::Sender<Event>,
    lagged: Arc<AtomicBool>,
}

/// The set of live watchers of one store.
pub(crate) struct Watchers {
    slots: Mutex<Vec<Slot>>,
    buffer: usize,
    /// Set (under the `slots` lock) when the store shuts down: new watchers end at once.
    closed: AtomicBool,
    next_id: AtomicU64,
}

impl Watchers {
    /// `buffer`: how many undelivered events a watcher may have before it is terminated.
    pub(crate) fn new(buffer: usize) -> Self {
        Watchers {
            slots: Mutex::new(Vec::new()),
            buffer: buffer.max(1),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
        }
    }

    /// Registers a watcher of `prefix`; live events start flowing into the returned receiver.
    /// The watcher is removed when the stream made from it is dropped.
    pub(crate) fn register(self: &Arc<Self>, prefix: &str) -> Registration {
        let (tx, rx) = mpsc::channel(self.buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.lock();
        // After shutdown the sender is dropped right here, so the stream ends after its replay.
        if !self.closed.load(Ordering::Acquire) {
            slots.push(Slot {
                id,
                prefix: prefix.into(),
                tx,
                lagged: lagged.clone(),
            });
        }
        drop(slots);
        Registration {
            rx,
            lagged,
            owner: Arc::downgrade(self),
            id,
        }
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|slot| slot.id != id);
    }

    /// Delivers `events` (in revision order) to every matching watcher.
    pub(crate) fn publish(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut slots = self.lock();
        slots.retain(|slot| {
            for event in events.iter().filter(|e| e.key().starts_with(&*slot.prefix)) {
                match slot.tx.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        slot.lagged.store(true, Ordering::Release);
                        tracing::debug!(prefix = %slot.prefix, "terminating a watcher that fell behind");
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            // Drop watchers whose stream is gone even if this batch did not concern them.
            !slot.tx.is_closed()
        });
    }

    /// Ends every watch stream (the store is shutting down).
    pub(crate) fn close_all(&self) {
        let mut slots = self.lock();
        self.closed.store(true, Ordering::Release);
        slots.clear();
    }

    /// How many watchers are registered.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // A panic while holding this lock cannot leave the Vec inconsistent; keep serving.
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The receiving half of a registered watcher.
pub(crate) struct Registration {
    rx: mpsc::Receiver<Event>,
    lagged: Arc<AtomicBool>,
    owner: Weak<Watchers>,
    id: u64,
}

impl Registration {
    /// Turns the registration into the stream handed to the client: `replay` (the retained
    /// history after `after_revision`, in order) first, then live events.
    pub(crate) fn into_stream(self, replay: Vec<Event>, after_revision: u64) -> WatchEvents {
        WatchEvents {
            replay: replay.into(),
            rx: self.rx,
            lagged: self.lagged,
            last_revision: after_revision,
            finished: false,
            owner: self.owner,
            id: self.id,
        }
    }
}

/// A watch stream backed by a [`Registration`].
pub(crate) struct WatchEvents {
    replay: VecDeque<Event>,
    rx: mpsc::Receiver<Event>,
    lagged: Arc<AtomicBool>,
    last_revision: u64,
    finished: bool,
    owner: Weak<Watchers>,
    id: u64,
}

impl Drop for WatchEvents {
    fn drop(&mut self) {
        if let Some(watchers) = self.owner.upgrade() {
            watchers.remove(self.id);
        }
    }
}

impl Stream for WatchEvents {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        while let Some(event) = this.replay.pop_front() {
            if event.revision() > this.last_revision {
                this.last_revision = event.revision();
                return Poll::Ready(Some(Ok(event)));
            }
        }
        loop {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(event)) => {
                    if event.revision() > this.last_revision {
                        this.last_revision = event.revision();
                        return Poll::Ready(Some(Ok(event)));
                    }
                }
                Poll::Ready(None) => {
                    this.finished = true;
                    if this.lagged.load(Ordering::Acquire) {
                        return Poll::Ready(Some(Err(StoreError::WatchLagged {
                            last_revision: this.last_revision,
                        })));
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
