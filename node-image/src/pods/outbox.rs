//! What the pods have to tell the control plane, waiting for the session to send it.
//!
//! Statuses are level-triggered: only the latest status of each pod is kept, marked dirty
//! until sent, and everything is marked dirty again when a new session starts, so a status lost
//! with a broken stream is sent again. Events are best effort: a bounded queue whose oldest
//! entries are dropped when the control plane is away for long.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

use keel_proto::node_message::Msg;
use keel_proto::{NodeEvent, PodStatusReport};
use tokio::sync::Notify;

const MAX_EVENTS: usize = 256;

#[derive(Default)]
struct Inner {
    statuses: BTreeMap<String, PodStatusReport>,
    dirty: BTreeSet<String>,
    events: VecDeque<NodeEvent>,
}

#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl Outbox {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Option<T> {
        // A poisoned lock means a panic elsewhere; the data is still usable.
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        Some(f(&mut g))
    }

    /// Records a pod's status; it is sent if it differs from the last one recorded.
    pub fn status(&self, report: PodStatusReport) {
        let changed = self
            .with(|i| {
                if i.statuses.get(&report.uid) == Some(&report) {
                    return false;
                }
                i.dirty.insert(report.uid.clone());
                i.statuses.insert(report.uid.clone(), report);
                true
            })
            .unwrap_or(false);
        if changed {
            self.notify.notify_one();
        }
    }

    pub fn event(&self, e: NodeEvent) {
        self.with(|i| {
            if i.events.len() >= MAX_EVENTS {
                i.events.pop_front();
            }
            i.events.push_back(e);
        });
        self.notify.notify_one();
    }

    /// The pod is gone from the node and from the desired set: nothing more to say about it.
    pub fn forget(&self, uid: &str) {
        self.with(|i| {
            i.statuses.remove(uid);
            i.dirty.remove(uid);
        });
    }

    /// A new session: every known status is sent again.
    pub fn resend_all(&self) {
        self.with(|i| {
            let all: Vec<String> = i.statuses.keys().cloned().collect();
            i.dirty.extend(all);
        });
        self.notify.notify_one();
    }

    /// Waits until there is something to send and takes it.
    pub async fn next_batch(&self) -> Vec<Msg> {
        loop {
            let batch = self
                .with(|i| {
                    let mut out: Vec<Msg> = Vec::new();
                    for uid in std::mem::take(&mut i.dirty) {
                        if let Some(r) = i.statuses.get(&uid) {
                            out.push(Msg::PodStatus(r.clone()));
                        }
                    }
                    out.extend(i.events.drain(..).map(Msg::Event));
                    out
                })
                .unwrap_or_default();
            if !batch.is_empty() {
                return batch;
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report(uid: &str, phase: &str) -> PodStatusReport {
        PodStatusReport {
            namespace: "default".into(),
            name: uid.into(),
            uid: uid.into(),
            status_json: phase.as_bytes().to_vec(),
            gone: false,
        }
    }

    #[tokio::test]
    async fn latest_status_wins_and_is_resent_on_a_new_session() {
        let o = Outbox::default();
        o.status(report("a", "Pending"));
        o.status(report("a", "Running"));
        o.status(report("b", "Running"));
        o.event(NodeEvent::default());
        let batch = tokio::time::timeout(Duration::from_secs(5), o.next_batch())
            .await
            .unwrap();
        assert_eq!(batch.len(), 3);
        match &batch[0] {
            Msg::PodStatus(r) => assert_eq!(r.status_json, b"Running"),
            other => panic!("{other:?}"),
        }
        // Same status again: nothing to send.
        o.status(report("b", "Running"));
        assert!(tokio::time::timeout(Duration::from_millis(50), o.next_batch())
            .await
            .is_err());
        o.forget("a");
        o.resend_all();
        let batch = tokio::time::timeout(Duration::from_secs(5), o.next_batch())
            .await
            .unwrap();
        assert_eq!(batch.len(), 1);
    }
}
