//! The scheduling loop: one task owns all state, fed by the pod and node watches and by the
//! results of bindings, so decisions need no locks and each one sees every earlier one.
//!
//! * State is incremental: each node carries the total its pods request; a pod event adjusts one
//!   node. Nothing is re-listed per pod.
//! * A decision is "assumed" at once (the pod counts on its node before the binding is written),
//!   so the next pod sees it; bindings run concurrently in the background. A failed binding undoes
//!   the assumption and the pod is retried; the assumption ends when the watch shows the pod bound.
//! * A pod that fits nowhere is marked unschedulable (a `FailedScheduling` Event and the
//!   `PodScheduled=False/Unschedulable` condition, written once per distinct message) and tried
//!   again with backoff when a node appears or changes in a way that matters, when an assigned pod
//!   goes away, or after [`RETRY_UNSCHEDULABLE`] anyway.
//! * Like upstream, the search stops after enough feasible nodes (at least 100, a share of the
//!   cluster that shrinks as it grows) and starts where the previous search stopped, which keeps
//!   per-pod cost flat on big clusters and spreads equal-scored pods.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use keel_api::client::{ApiClient, ListParams, Patch, WatchEventKind, WriteOptions};
use keel_api::registry::ResourceType;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::filter::{fit_error_message, NodeInfo, PodInfo, Reasons};
use crate::interpod::Constraints;
use crate::Options;

/// How long an unschedulable pod waits at most before it is tried again without any event.
pub const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(30);
/// Pods per page when listing (see [`Input::Page`]).
const LIST_PAGE: u64 = 500;
/// `FailedScheduling` Events and `PodScheduled` conditions written at once (after a restart
/// with thousands of pending pods, unbounded, each write's working set added up to gigabytes).
const STATUS_WRITES: usize = 16;
const MIN_FEASIBLE_NODES: usize = 100;
const COMPONENT: &str = "default-scheduler";

pub(crate) type PodKey = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Pod,
    Node,
}

pub(crate) enum Input {
    /// The whole current state of a kind (first list, or re-list after a gap).
    Reset(Kind, Vec<Value>),
    /// One page of a pod (re-)list (`first`: a new list begins); [`Input::Listed`] ends it.
    /// Pods come in pages so that a list of many pods never exists as `Value`s all at once: the
    /// lister holds a permit per page in flight (released when the page is handled).
    Page {
        first: bool,
        pods: Vec<Value>,
        permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// The pod (re-)list is complete: pods it did not show are gone.
    Listed,
    Event(Kind, WatchEventKind, Value),
    Bound(PodKey, String, BindResult),
}

#[derive(Debug)]
pub(crate) enum BindResult {
    Bound,
    /// Someone else bound it, or it is gone: nothing to do.
    Moot,
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// In the active queue.
    Active,
    /// Waiting for its backoff to pass.
    Backoff,
    /// Waiting for the cluster to change.
    Unschedulable,
}

struct Pending {
    /// What bindings and Events need of the pod (not the whole object: with thousands of
    /// pending pods, a `Value` each was most of the server's memory).
    pod: PodRef,
    info: PodInfo,
    attempts: u32,
    last_message: Option<String>,
    not_before: Instant,
    since: Instant,
    wait: Wait,
}

pub(crate) struct Scheduler {
    client: Arc<dyn ApiClient>,
    pods_rt: &'static ResourceType,
    events_rt: &'static ResourceType,
    opts: Options,
    nodes: NodeTable,
    next_start: usize,
    /// Pods counted on a node (bound or assumed), with what they request.
    assigned: HashMap<PodKey, (String, PodInfo)>,
    /// Pods whose binding is in flight or not yet seen by the watch.
    assumed: HashMap<PodKey, String>,
    pending: HashMap<PodKey, Pending>,
    active: VecDeque<PodKey>,
    /// Placed pods with required anti-affinity (every attempt must respect them).
    anti_pods: usize,
    /// The cluster changed: unschedulable pods get another chance at the next tick.
    flush: bool,
    synced_pods: bool,
    synced_nodes: bool,
    binds: Arc<Semaphore>,
    /// Permits for the writes that mark pods unschedulable.
    status_writes: Arc<Semaphore>,
    /// The keys of the pod list in progress.
    relist: std::collections::HashSet<PodKey>,
    tx: mpsc::UnboundedSender<Input>,
    /// Counters for logs and benchmarks.
    pub(crate) scheduled: u64,
}

/// The nodes in a vector (the search walks it without hashing names), indexed by name.
/// Placeholders (`known == false`) hold the totals of pods on nodes not seen (yet, or any more).
#[derive(Default)]
struct NodeTable {
    slots: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// How many slots are real nodes.
    known: usize,
}

impl NodeTable {
    /// The node's slot, a placeholder if it is new.
    fn entry(&mut self, name: &str) -> &mut NodeInfo {
        let i = match self.index.get(name) {
            Some(i) => *i,
            None => {
                self.slots.push(NodeInfo::placeholder(name));
                self.index.insert(name.to_string(), self.slots.len() - 1);
                self.slots.len() - 1
            }
        };
        &mut self.slots[i]
    }

    fn get(&self, name: &str) -> Option<&NodeInfo> {
        self.slots.get(*self.index.get(name)?)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut NodeInfo> {
        let i = *self.index.get(name)?;
        self.slots.get_mut(i)
    }

    fn remove(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else { return };
        self.slots.swap_remove(i);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
    }
}

/// The few fields of a pending pod that binding and Events use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodRef {
    uid: Option<String>,
    resource_version: Option<String>,
}

impl PodRef {
    fn of(pod: &Value) -> PodRef {
        let s = |p: &str| pod.pointer(p).and_then(Value::as_str).map(str::to_string);
        PodRef {
            uid: s("/metadata/uid"),
            resource_version: s("/metadata/resourceVersion"),
        }
    }

    /// The pod as an Event's `involvedObject` is built from (kind, apiVersion, metadata).
    fn involved(&self, key: &PodKey) -> Value {
        let mut meta = json!({"name": key.1});
        if !key.0.is_empty() {
            meta["namespace"] = json!(key.0);
        }
        if let Some(uid) = &self.uid {
            meta["uid"] = json!(uid);
        }
        if let Some(rv) = &self.resource_version {
            meta["resourceVersion"] = json!(rv);
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta})
    }
}

fn key_of(obj: &Value) -> PodKey {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    (s("/metadata/namespace"), s("/metadata/name"))
}

fn backoff(attempts: u32) -> Duration {
    Duration::from_millis((1000u64 << attempts.min(4).saturating_sub(1)).min(10_000))
}

impl Scheduler {
    pub(crate) fn new(
        client: Arc<dyn ApiClient>,
        pods_rt: &'static ResourceType,
        events_rt: &'static ResourceType,
        opts: Options,
        tx: mpsc::UnboundedSender<Input>,
    ) -> Self {
        let binds = Arc::new(Semaphore::new(opts.bind_concurrency.max(1)));
        Scheduler {
            client,
            pods_rt,
            events_rt,
            opts,
            nodes: NodeTable::default(),
            next_start: 0,
            assigned: HashMap::new(),
            assumed: HashMap::new(),
            pending: HashMap::new(),
            active: VecDeque::new(),
            anti_pods: 0,
            flush: false,
            synced_pods: false,
            synced_nodes: false,
            binds,
            status_writes: Arc::new(Semaphore::new(STATUS_WRITES)),
            relist: Default::default(),
            tx,
            scheduled: 0,
        }
    }

    /// Runs until the input channel closes.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        let mut next_tick = Instant::now();
        loop {
            let busy = self.synced_pods && self.synced_nodes && !self.active.is_empty();
            if busy {
                // Take whatever arrived without waiting.
                while let Ok(input) = rx.try_recv() {
                    self.handle(input);
                }
            } else {
                tokio::select! {
                    input = rx.recv() => match input {
                        Some(input) => self.handle(input),
                        None => return,
                    },
                    _ = tokio::time::sleep_until(next_tick) => {}
                }
                while let Ok(input) = rx.try_recv() {
                    self.handle(input);
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + Duration::from_millis(100);
            }
            if self.synced_pods && self.synced_nodes {
                for _ in 0..256 {
                    let Some(key) = self.active.pop_front() else { break };
                    self.schedule_one(key).await;
                }
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Reset(Kind::Node, items) => {
                let seen: std::collections::HashSet<String> = items
                    .iter()
                    .filter_map(|n| {
                        n.pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .collect();
                let gone: Vec<String> = self
                    .nodes
                    .slots
                    .iter()
                    .filter(|i| i.known && !seen.contains(&i.name))
                    .map(|i| i.name.clone())
                    .collect();
                for n in gone {
                    self.remove_node(&n);
                }
                for n in &items {
                    self.upsert_node(n);
                }
                self.synced_nodes = true;
                self.flush_unschedulable();
            }
            Input::Page { first, pods, permit } => {
                if first {
                    self.relist.clear();
                }
                self.relist.extend(pods.iter().map(key_of));
                for p in pods {
                    self.on_pod(p);
                }
                drop(permit);
            }
            Input::Listed => {
                let seen = std::mem::take(&mut self.relist);
                let gone: Vec<PodKey> = self
                    .assigned
                    .keys()
                    .chain(self.pending.keys())
                    .filter(|k| !seen.contains(*k) && !self.assumed.contains_key(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    self.forget_pod(&k);
                }
                self.synced_pods = true;
            }
            Input::Reset(Kind::Pod, items) => {
                let seen: std::collections::HashSet<PodKey> = items.iter().map(key_of).collect();
                let gone: Vec<PodKey> = self
                    .assigned
                    .keys()
                    .chain(self.pending.keys())
                    .filter(|k| !seen.contains(*k) && !self.assumed.contains_key(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    self.forget_pod(&k);
                }
                for p in items {
                    self.on_pod(p);
                }
                self.synced_pods = true;
            }
            Input::Event(Kind::Node, WatchEventKind::Deleted, n) => {
                if let Some(name) = n.pointer("/metadata/name").and_then(Value::as_str) {
                    self.remove_node(name);
                }
            }
            Input::Event(Kind::Node, WatchEventKind::Added | WatchEventKind::Modified, n) => {
                if self.upsert_node(&n) {
                    self.flush_unschedulable();
                }
            }
            Input::Event(Kind::Pod, WatchEventKind::Deleted, p) => {
                let key = key_of(&p);
                self.assumed.remove(&key);
                self.forget_pod(&key);
            }
            Input::Event(Kind::Pod, WatchEventKind::Added | WatchEventKind::Modified, p) => self.on_pod(p),
            Input::Event(_, _, _) => {}
            Input::Bound(key, node, result) => self.on_bound(key, node, result),
        }
    }

    /// Adds or refreshes a node; true if something that matters to scheduling changed.
    fn upsert_node(&mut self, n: &Value) -> bool {
        let Some(name) = n.pointer("/metadata/name").and_then(Value::as_str) else {
            return false;
        };
        let info = self.nodes.entry(name);
        let was_known = info.known;
        let before = info.signature();
        info.set_node(n);
        let changed = info.signature() != before;
        if !was_known {
            self.nodes.known += 1;
            return true;
        }
        changed
    }

    fn remove_node(&mut self, name: &str) {
        let Some(info) = self.nodes.get_mut(name) else {
            return;
        };
        if !info.known {
            return;
        }
        info.known = false;
        let empty = info.requested.pods <= 0;
        self.nodes.known -= 1;
        // A gone node's totals stay while pods are still counted there.
        if empty {
            self.nodes.remove(name);
        }
    }

    fn forget_pod(&mut self, key: &PodKey) {
        if let Some((node, info)) = self.assigned.remove(key) {
            self.uncount(&node, &info);
            self.flush_unschedulable();
        }
        self.pending.remove(key);
    }

    fn count(&mut self, node: &str, info: &PodInfo) {
        if info
            .affinity
            .as_ref()
            .is_some_and(|a| !a.anti_required.is_empty())
        {
            self.anti_pods += 1;
        }
        self.nodes.entry(node).add_pod(info);
    }

    fn uncount(&mut self, node: &str, info: &PodInfo) {
        if info
            .affinity
            .as_ref()
            .is_some_and(|a| !a.anti_required.is_empty())
        {
            self.anti_pods = self.anti_pods.saturating_sub(1);
        }
        if let Some(n) = self.nodes.get_mut(node) {
            n.remove_pod(info);
            if !n.known && n.requested.pods <= 0 {
                self.nodes.remove(node);
            }
        }
    }

    fn on_pod(&mut self, pod: Value) {
        let key = key_of(&pod);
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let terminal = matches!(
            pod.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        if !node.is_empty() {
            self.pending.remove(&key);
            self.assumed.remove(&key);
            if terminal {
                self.forget_pod(&key);
                return;
            }
            match self.assigned.get(&key) {
                Some((n, _)) if *n == node => {}
                Some(_) => {
                    if let Some((old, info)) = self.assigned.remove(&key) {
                        self.uncount(&old, &info);
                    }
                    let info = PodInfo::new(&pod);
                    self.count(&node, &info);
                    self.assigned.insert(key, (node, info));
                }
                None => {
                    let info = PodInfo::new(&pod);
                    self.count(&node, &info);
                    self.assigned.insert(key, (node, info));
                }
            }
            return;
        }
        if self.assumed.contains_key(&key) {
            // Our binding is in flight; the watch has not caught up yet.
            return;
        }
        let ours = pod
            .pointer("/spec/schedulerName")
            .and_then(Value::as_str)
            .unwrap_or(COMPONENT)
            == self.opts.scheduler_name;
        let gated = pod
            .pointer("/spec/schedulingGates")
            .and_then(Value::as_array)
            .is_some_and(|g| !g.is_empty());
        let deleting = pod
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null());
        if !ours || gated || deleting || terminal {
            self.pending.remove(&key);
            return;
        }
        match self.pending.get_mut(&key) {
            Some(p) => {
                p.info = PodInfo::new(&pod);
                p.pod = PodRef::of(&pod);
            }
            None => {
                let now = Instant::now();
                self.pending.insert(
                    key.clone(),
                    Pending {
                        info: PodInfo::new(&pod),
                        pod: PodRef::of(&pod),
                        attempts: 0,
                        last_message: None,
                        not_before: now,
                        since: now,
                        wait: Wait::Active,
                    },
                );
                self.active.push_back(key);
            }
        }
    }

    fn on_bound(&mut self, key: PodKey, node: String, result: BindResult) {
        match result {
            BindResult::Bound => {
                self.scheduled += 1;
            }
            BindResult::Moot => {
                if self.assumed.get(&key) == Some(&node) {
                    self.assumed.remove(&key);
                    if let Some((n, info)) = self.assigned.remove(&key) {
                        self.uncount(&n, &info);
                    }
                }
            }
            BindResult::Failed(message) => {
                tracing::warn!(pod = %format!("{}/{}", key.0, key.1), node, error = message, "binding failed; retrying");
                self.assumed.remove(&key);
                if let Some((n, info)) = self.assigned.remove(&key) {
                    self.uncount(&n, &info);
                    let now = Instant::now();
                    if let Some(p) = self.pending.get_mut(&key) {
                        p.attempts += 1;
                        p.not_before = now + backoff(p.attempts);
                        p.wait = Wait::Backoff;
                    }
                }
            }
        }
    }

    /// Every unschedulable pod gets another chance (after its backoff).
    /// (Done at the next tick, so that a burst of changes costs one pass over the pending pods.)
    fn flush_unschedulable(&mut self) {
        self.flush = true;
    }

    fn tick(&mut self, now: Instant) {
        let flush = std::mem::take(&mut self.flush);
        let mut due = Vec::new();
        for (k, p) in self.pending.iter_mut() {
            if flush && p.wait == Wait::Unschedulable {
                p.wait = Wait::Backoff;
            }
            let retry = match p.wait {
                Wait::Backoff => p.not_before <= now,
                Wait::Unschedulable => now.duration_since(p.since) >= RETRY_UNSCHEDULABLE,
                Wait::Active => false,
            };
            if retry {
                p.wait = Wait::Active;
                due.push(k.clone());
            }
        }
        due.sort();
        self.active.extend(due);
    }

    /// How many feasible nodes are enough (upstream's adaptive percentage, at least 100).
    fn feasible_wanted(&self, n: usize) -> usize {
        if n <= MIN_FEASIBLE_NODES {
            return n;
        }
        let pct = (50usize.saturating_sub(n / 125)).max(5);
        (n * pct / 100).max(MIN_FEASIBLE_NODES)
    }

    async fn schedule_one(&mut self, key: PodKey) {
        let Some(p) = self.pending.get(&key) else { return };
        if p.wait != Wait::Active {
            return;
        }
        let constraints = (p.info.affinity.is_some() || self.anti_pods > 0).then(|| {
            let placed = self.assigned.values().filter_map(|(node, info)| {
                let labels = &self.nodes.get(node)?.labels;
                Some((&*info.identity, info.affinity.as_deref(), labels))
            });
            Constraints::build(&p.info.identity, p.info.affinity.as_deref(), placed)
        });
        let slots = &self.nodes.slots;
        let n = slots.len();
        let known = self.nodes.known;
        let wanted = self.feasible_wanted(known);
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(wanted.min(n));
        let mut reasons: HashMap<crate::filter::Reason<'_>, usize> = HashMap::new();
        let start = if n == 0 { 0 } else { self.next_start % n };
        let mut visited = 0;
        for i in 0..n {
            let node = &slots[(start + i) % n];
            visited += 1;
            if !node.known {
                continue;
            }
            let fits = node.fits(&p.info).and_then(|()| match &constraints {
                Some(c) => c.check(&node.labels).map_err(|v| Reasons::one(v.into())),
                None => Ok(()),
            });
            match fits {
                Ok(()) => {
                    feasible.push(node);
                    if feasible.len() >= wanted {
                        break;
                    }
                }
                Err(rs) => {
                    for r in rs.iter() {
                        *reasons.entry(r).or_insert(0) += 1;
                    }
                }
            }
        }
        if n > 0 {
            self.next_start = (start + visited) % n;
        }
        if feasible.is_empty() {
            let message = if known == 0 {
                "no nodes available to schedule pods".to_string()
            } else {
                fit_error_message(known, &reasons)
            };
            self.unschedulable(key, message);
            return;
        }
        let best = pick(&feasible, &p.info, constraints.as_ref()).name.clone();
        let info = p.info.clone();
        let uid = p.pod.uid.clone();
        let pod = p.pod.involved(&key);
        self.count(&best, &info);
        self.assigned.insert(key.clone(), (best.clone(), info));
        self.assumed.insert(key.clone(), best.clone());
        if let Some(p) = self.pending.get_mut(&key) {
            p.wait = Wait::Backoff;
            p.not_before = Instant::now() + Duration::from_secs(3600);
        }
        let Ok(permit) = self.binds.clone().acquire_owned().await else {
            return;
        };
        let client = self.client.clone();
        let pods_rt = self.pods_rt;
        let events_rt = self.events_rt;
        let tx = self.tx.clone();
        let record = self.opts.record_scheduled_events;
        tokio::spawn(async move {
            let result = bind(client.as_ref(), pods_rt, &key, &best, uid).await;
            drop(permit);
            if record && matches!(result, BindResult::Bound) {
                let message = format!("Successfully assigned {}/{} to {best}", key.0, key.1);
                keel_controllers::events::record(
                    client.as_ref(),
                    events_rt,
                    COMPONENT,
                    &pod,
                    "Normal",
                    "Scheduled",
                    &message,
                )
                .await;
            }
            let _ = tx.send(Input::Bound(key, best, result));
        });
    }

    fn unschedulable(&mut self, key: PodKey, message: String) {
        let Some(p) = self.pending.get_mut(&key) else {
            return;
        };
        let now = Instant::now();
        p.attempts += 1;
        p.not_before = now + backoff(p.attempts);
        p.since = now;
        p.wait = Wait::Unschedulable;
        if p.last_message.as_deref() == Some(message.as_str()) {
            return;
        }
        tracing::debug!(pod = %format!("{}/{}", key.0, key.1), message, "unschedulable");
        p.last_message = Some(message.clone());
        let client = self.client.clone();
        let pods_rt = self.pods_rt;
        let events_rt = self.events_rt;
        let pod = p.pod.involved(&key);
        let permits = self.status_writes.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            keel_controllers::events::record(
                client.as_ref(),
                events_rt,
                COMPONENT,
                &pod,
                "Warning",
                "FailedScheduling",
                &message,
            )
            .await;
            let patch = json!({"status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": keel_api::time::now_rfc3339(),
            }]}});
            if let Err(e) = client
                .patch(
                    pods_rt,
                    Some(key.0.clone()),
                    key.1.clone(),
                    Patch::Strategic(patch),
                    Some("status".into()),
                    WriteOptions::default(),
                )
                .await
            {
                tracing::debug!(pod = key.1, error = %e, "could not set PodScheduled=False");
            }
        });
    }
}

/// The best of the feasible nodes: least allocated (weight 1), fewest replicas of the same
/// controller (2), preferred affinity (2), fewest untolerated `PreferNoSchedule` taints (3).
fn pick<'a>(feasible: &[&'a NodeInfo], pod: &PodInfo, constraints: Option<&Constraints>) -> &'a NodeInfo {
    let inter: Vec<i64> = feasible
        .iter()
        .map(|n| constraints.map_or(0, |c| c.score(&n.labels)))
        .collect();
    let (lo, hi) = (
        inter.iter().copied().min().unwrap_or(0),
        inter.iter().copied().max().unwrap_or(0),
    );
    let counts: Vec<i64> = feasible
        .iter()
        .map(|n| n.replicas_of(pod.owner.as_ref()))
        .collect();
    let max_count = counts.iter().copied().max().unwrap_or(0);
    let weights: Vec<i64> = feasible.iter().map(|n| n.preferred_weight(pod)).collect();
    let max_weight = weights.iter().copied().max().unwrap_or(0);
    let prefs: Vec<i64> = feasible.iter().map(|n| n.intolerable_preferences(pod)).collect();
    let max_pref = prefs.iter().copied().max().unwrap_or(0);
    let mut best = 0;
    let mut best_score = i64::MIN;
    for (i, node) in feasible.iter().enumerate() {
        let spread = if max_count == 0 {
            100
        } else {
            100 * (max_count - counts[i]) / max_count
        };
        let affinity = if max_weight == 0 {
            0
        } else {
            100 * weights[i] / max_weight
        };
        let taints = if max_pref == 0 {
            100
        } else {
            100 * (max_pref - prefs[i]) / max_pref
        };
        let pods_affinity = if hi == lo {
            0
        } else {
            100 * (inter[i] - lo) / (hi - lo)
        };
        let score = node.least_allocated(pod) + 2 * spread + 2 * affinity + 3 * taints + 2 * pods_affinity;
        if score > best_score {
            best_score = score;
            best = i;
        }
    }
    feasible[best]
}

/// Binds a pod through the `pods/binding` subresource, as kube-scheduler does. The Binding names
/// the pod's uid, so a pod deleted and created again under the same name is not bound by
/// mistake; a pod someone else bound meanwhile is refused (409) and left where it is.
pub(crate) async fn bind(
    client: &dyn ApiClient,
    pods_rt: &'static ResourceType,
    key: &PodKey,
    node: &str,
    uid: Option<String>,
) -> BindResult {
    let ns = Some(key.0.clone()).filter(|s| !s.is_empty());
    let mut binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": key.1, "namespace": key.0},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    if let Some(uid) = &uid {
        binding["metadata"]["uid"] = json!(uid);
    }
    match client
        .create_subresource(pods_rt, ns.clone(), key.1.clone(), "binding".into(), binding)
        .await
    {
        Ok(_) => BindResult::Bound,
        Err(e) if e.code == 404 => BindResult::Moot,
        Err(e) if e.code == 409 => match client.get(pods_rt, ns, key.1.clone()).await {
            Ok(pod) => {
                let bound = !pod
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty();
                let other =
                    uid.is_some() && pod.pointer("/metadata/uid").and_then(Value::as_str) != uid.as_deref();
                if bound || other || pod.pointer("/metadata/deletionTimestamp").is_some() {
                    BindResult::Moot
                } else {
                    BindResult::Failed(e.message)
                }
            }
            Err(e) if e.code == 404 => BindResult::Moot,
            Err(e) => BindResult::Failed(e.message),
        },
        Err(e) => BindResult::Failed(e.message),
    }
}

/// Lists one kind page by page: pods as [`Input::Page`]s and [`Input::Listed`], nodes as one
/// [`Input::Reset`]. Returns the list's version, or `None` if it failed (after a backoff) or the
/// scheduler is gone.
async fn list_all(
    client: &dyn ApiClient,
    rt: &'static ResourceType,
    kind: Kind,
    tx: &mpsc::UnboundedSender<Input>,
    failures: &mut u32,
) -> Option<Option<String>> {
    let mut version = None;
    let mut token: Option<String> = None;
    let mut nodes = Vec::new();
    // Two pages in flight at most: the next is read while the scheduler takes in the last.
    let in_flight = Arc::new(Semaphore::new(2));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return None;
        };
        let params = ListParams {
            limit: Some(LIST_PAGE),
            continue_token: token.clone(),
            ..Default::default()
        };
        let mut page = match client.list(rt, None, params).await {
            Ok(l) => l,
            Err(e) => {
                *failures += 1;
                tracing::warn!(kind = rt.kind, error = %e, "list failed");
                tokio::time::sleep(Duration::from_millis(100 * u64::from((*failures).min(50)))).await;
                return None;
            }
        };
        let first = token.is_none();
        if first {
            version = page
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        token = page
            .pointer("/metadata/continue")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        let items = match page.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        let sent = match kind {
            Kind::Pod => tx
                .send(Input::Page {
                    first,
                    pods: items,
                    permit,
                })
                .is_ok(),
            Kind::Node => {
                nodes.extend(items);
                true
            }
        };
        if !sent {
            return None;
        }
        if token.is_none() {
            break;
        }
    }
    let end = match kind {
        Kind::Pod => Input::Listed,
        Kind::Node => Input::Reset(Kind::Node, nodes),
    };
    tx.send(end).ok()?;
    Some(version)
}

/// Lists and then watches one kind forever, listing again whenever the watch cannot resume.
pub(crate) async fn follow(
    client: Arc<dyn ApiClient>,
    rt: &'static ResourceType,
    kind: Kind,
    tx: mpsc::UnboundedSender<Input>,
) {
    use futures::StreamExt;
    let mut failures = 0u32;
    loop {
        let Some(mut version) = list_all(client.as_ref(), rt, kind, &tx, &mut failures).await else {
            if tx.is_closed() {
                return;
            }
            continue;
        };
        // Follow from the list's version until the watch cannot resume.
        loop {
            let params = ListParams {
                resource_version: version.clone(),
                allow_bookmarks: true,
                ..Default::default()
            };
            let mut stream = match client.watch(rt, None, params).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(kind = rt.kind, error = %e, "watch failed; re-listing");
                    break;
                }
            };
            let mut resumable = true;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(ev) if ev.kind == WatchEventKind::Error => {
                        resumable = false;
                        break;
                    }
                    Ok(ev) => {
                        failures = 0;
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
                        if tx.send(Input::Event(kind, ev.kind, ev.object)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(kind = rt.kind, error = %e, "watch ended; re-listing");
                        resumable = false;
                        break;
                    }
                }
            }
            if !resumable {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_table_keeps_its_index_through_removals() {
        let mut t = NodeTable::default();
        for n in ["a", "b", "c"] {
            t.entry(n);
        }
        t.remove("a");
        assert_eq!(t.slots.len(), 2);
        for n in ["b", "c"] {
            let i = t.index[n];
            assert_eq!(t.slots[i].name, n);
        }
        assert!(t.get_mut("a").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pods_are_listed_in_pages_and_at_most_two_wait_for_the_scheduler() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = keel_store::embedded::EmbeddedStore::open(dir.path(), Default::default()).expect("store");
        let objects = Arc::new(keel_apiserver::Objects::new(
            Arc::new(store),
            Arc::new(keel_apiserver::Config::default()),
        ));
        keel_apiserver::bootstrap::ensure(&objects)
            .await
            .expect("bootstrap");
        let client: Arc<dyn ApiClient> = Arc::new(keel_apiserver::client::InProcessClient::new(objects));
        let pods = keel_api::registry::find("", "v1", "pods").expect("pods");
        for i in 0..1_100 {
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i:04}")},
                             "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
            client
                .create(pods, Some("default".into()), pod, WriteOptions::default())
                .await
                .expect("pod");
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let lister = tokio::spawn(async move {
            let mut failures = 0;
            list_all(client.as_ref(), pods, Kind::Pod, &tx, &mut failures).await
        });
        async fn page(
            rx: &mut mpsc::UnboundedReceiver<Input>,
        ) -> (bool, usize, tokio::sync::OwnedSemaphorePermit) {
            match rx.recv().await {
                Some(Input::Page { first, pods, permit }) => (first, pods.len(), permit),
                _ => panic!("expected a page"),
            }
        }
        let (first, n1, held1) = page(&mut rx).await;
        let (second, n2, held2) = page(&mut rx).await;
        assert_eq!((first, n1, second, n2), (true, 500, false, 500));
        // Both permits are held (the scheduler has not taken those pages in): no third page.
        let waited = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(
            waited.is_err(),
            "a third page was sent before the first two were handled"
        );
        drop((held1, held2));
        let (third, n3, _) = page(&mut rx).await;
        assert_eq!((third, n3), (false, 100));
        assert!(matches!(rx.recv().await, Some(Input::Listed)));
        let version = lister.await.expect("lister").expect("listed");
        assert!(version.is_some_and(|v| v.parse::<u64>().is_ok()));
    }

    #[test]
    fn backoff_doubles_to_eight_seconds() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(9), Duration::from_secs(8));
    }

    #[test]
    fn spread_prefers_nodes_without_replicas() {
        let mut a = NodeInfo::placeholder("a");
        let mut b = NodeInfo::placeholder("b");
        for n in [&mut a, &mut b] {
            n.set_node(&json!({"metadata": {"name": n.name.clone()}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi"},
                "conditions": [{"type": "Ready", "status": "True"}]}}));
        }
        let pod = PodInfo::new(
            &json!({"metadata": {"ownerReferences": [{"uid": "rs1", "controller": true}]}, "spec": {"containers": [{}]}}),
        );
        a.add_pod(&pod);
        assert_eq!(pick(&[&a, &b], &pod, None).name, "b");
        b.add_pod(&pod);
        b.add_pod(&pod);
        assert_eq!(pick(&[&a, &b], &pod, None).name, "a");
    }
}
