//! One watch per resource type, shared by every controller.
//!
//! Five controllers follow pods; without sharing, the API server would decode and filter every
//! pod event five times over. [`Informers`] keeps one watch per type and fans its events out over
//! a broadcast channel to each subscribed controller.
//!
//! Subscribe everything first, then [`Informers::start`]: a watch begins with the current state
//! as `ADDED` events, which only the subscribers present at that moment see. A watch that ends
//! resumes from the last version seen; on `410 Expired` or an error it starts over from the
//! current state. A subscriber that falls behind the channel is told (`Lagged`) and resyncs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use keel_api::client::{ApiClient, ListParams, WatchEvent, WatchEventKind};
use keel_api::registry::ResourceType;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Events as subscribers receive them.
pub type Shared = Arc<WatchEvent>;

/// Events a subscriber may fall behind by before it is told to resync. Each kind's channel
/// preallocates this many slots (~32 bytes each), so it is kept modest: feeds only map events to
/// keys, and a lagging one just re-queues its keys.
const CHANNEL: usize = 8_192;
/// Events queued (not yet seen by every subscriber) before the watch waits for them. A watch
/// that starts from the current state replays every object at once; without this, thousands of
/// pods sat decoded in the channel (and a slow subscriber lagged and resynced).
const HIGH_WATER: usize = 256;

pub struct Informers {
    client: Arc<dyn ApiClient>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    feeds: HashMap<String, (&'static ResourceType, broadcast::Sender<Shared>)>,
    tasks: Vec<JoinHandle<()>>,
    started: bool,
}

impl Informers {
    pub fn new(client: Arc<dyn ApiClient>) -> Arc<Self> {
        Arc::new(Informers {
            client,
            state: Mutex::new(State::default()),
        })
    }

    pub fn client(&self) -> &Arc<dyn ApiClient> {
        &self.client
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The events of `rt` from [`Informers::start`] on.
    pub fn subscribe(&self, rt: &'static ResourceType) -> broadcast::Receiver<Shared> {
        let mut s = self.lock();
        let key = rt.key_prefix();
        if let Some((_, tx)) = s.feeds.get(&key) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(CHANNEL);
        if s.started {
            let task = tokio::spawn(follow(self.client.clone(), rt, tx.clone()));
            s.tasks.push(task);
        }
        s.feeds.insert(key, (rt, tx));
        rx
    }

    /// Starts the watches (once).
    pub fn start(&self) {
        let mut s = self.lock();
        if s.started {
            return;
        }
        s.started = true;
        let feeds: Vec<(&'static ResourceType, broadcast::Sender<Shared>)> =
            s.feeds.values().map(|(rt, tx)| (*rt, tx.clone())).collect();
        for (rt, tx) in feeds {
            let task = tokio::spawn(follow(self.client.clone(), rt, tx));
            s.tasks.push(task);
        }
    }
}

impl Drop for Informers {
    fn drop(&mut self) {
        for t in self.lock().tasks.drain(..) {
            t.abort();
        }
    }
}

fn backoff_delay(failures: u32) -> Duration {
    let ms = 50u64.saturating_mul(1u64 << failures.min(10));
    Duration::from_millis(ms.min(30_000))
}

/// Follows one kind forever.
async fn follow(client: Arc<dyn ApiClient>, rt: &'static ResourceType, tx: broadcast::Sender<Shared>) {
    let mut version: Option<String> = None;
    let mut failures = 0u32;
    let mut stalled = false;
    loop {
        let params = ListParams {
            resource_version: version.clone(),
            allow_bookmarks: true,
            ..Default::default()
        };
        let mut stream = match client.watch(rt, None, params).await {
            Ok(s) => s,
            Err(e) => {
                if e.code == 410 {
                    version = None;
                } else {
                    failures += 1;
                    tracing::warn!(kind = rt.kind, error = %e, "watch failed");
                    tokio::time::sleep(backoff_delay(failures)).await;
                }
                continue;
            }
        };
        while let Some(item) = stream.next().await {
            let ev = match item {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::debug!(kind = rt.kind, error = %e, "watch ended with an error; starting over");
                    version = None;
                    break;
                }
            };
            failures = 0;
            if ev.kind == WatchEventKind::Error {
                tracing::debug!(kind = rt.kind, status = %ev.object, "watch error event; starting over");
                version = None;
                break;
            }
            if let Some(rv) = ev
                .object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                version = Some(rv.to_string());
            }
            if ev.kind == WatchEventKind::Bookmark {
                continue;
            }
            wait_for_room(&tx, &mut stalled).await;
            // No subscriber is not an error: they may come later (and then resync).
            let _ = tx.send(Arc::new(ev));
        }
    }
}

/// Waits until the subscribers have caught up to below [`HIGH_WATER`] queued events. They only
/// map events to keys, so this is short; it keeps a burst from piling up decoded objects. A
/// subscriber that reads nothing for a second does not hold the others up: the watch stops
/// waiting (`stalled`) until the queue is below the mark again, and that subscriber will lag.
async fn wait_for_room(tx: &broadcast::Sender<Shared>, stalled: &mut bool) {
    if *stalled {
        *stalled = tx.len() >= HIGH_WATER;
        return;
    }
    let give_up = tokio::time::Instant::now() + Duration::from_secs(1);
    while tx.len() >= HIGH_WATER {
        if tokio::time::Instant::now() >= give_up {
            *stalled = true;
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_watch_waits_while_subscribers_are_behind() {
        let (tx, mut rx) = broadcast::channel::<Shared>(CHANNEL);
        let ev: Shared = Arc::new(WatchEvent {
            kind: WatchEventKind::Added,
            object: Value::Null,
        });
        for _ in 0..HIGH_WATER {
            let _ = tx.send(ev.clone());
        }
        // A subscriber that reads: the wait ends once it has caught up below the mark.
        let reader = tokio::spawn(async move {
            for _ in 0..HIGH_WATER {
                let _ = rx.recv().await;
            }
            rx
        });
        let mut stalled = false;
        wait_for_room(&tx, &mut stalled).await;
        assert!(tx.len() < HIGH_WATER && !stalled);
        let rx = reader.await.expect("reader");
        // A subscriber that reads nothing holds the watch up for a second at most.
        for _ in 0..HIGH_WATER {
            let _ = tx.send(ev.clone());
        }
        let started = tokio::time::Instant::now();
        wait_for_room(&tx, &mut stalled).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(900), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert!(stalled);
        // Once stalled, the watch does not wait again while that subscriber stays behind...
        let started = tokio::time::Instant::now();
        wait_for_room(&tx, &mut stalled).await;
        assert!(started.elapsed() < Duration::from_millis(500) && stalled);
        // ...and waits again once the queue has drained below the mark.
        drop(rx);
        wait_for_room(&tx, &mut stalled).await;
        assert!(!stalled);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff_delay(1) < backoff_delay(2));
        assert_eq!(backoff_delay(40), Duration::from_secs(30));
    }
}
