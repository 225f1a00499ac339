//! The pods a node should run, pushed down its session as level-triggered snapshots.
//!
//! On connect, and after every change to a pod bound to the node (`spec.nodeName`), the node
//! gets the *whole* set again as a `DesiredPods`, versioned by the newest store revision the
//! gate has seen. Deltas would be smaller, but a snapshot can never be misapplied: a node that
//! missed anything (a reconnect, a dropped message) is right again with the next one.
//!
//! One [`PodIndex`] per gate lists and watches pods, ConfigMaps and Secrets once and keeps the
//! bound pods grouped by node; each session's [`feed`] is woken only by changes to its own
//! node's pods (or to what they reference), at most every [`MIN_INTERVAL`], which also
//! coalesces bursts (a Deployment scaling up). Pods travel without `status`, `resourceVersion`
//! and `managedFields` (the node computes the status itself), so a node's own status reports
//! do not send its set again.
//!
//! Each pod travels with what it references (ConfigMaps and Secrets from volumes, env,
//! envFrom, projected volumes and imagePullSecrets), resolved here so the node never reads the
//! API: an extra top-level field [`RESOLVED_FIELD`] of the pod JSON holds
//! `{"configMaps": {NAME: {KEY: VALUE}}, "secrets": {…}}`, values as text (Secret data
//! decoded), objects that do not exist left out. Changes to ConfigMaps and Secrets
//! wake the loop too; a snapshot is sent only when its content differs from the last one.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use keel_api::client::{ListParams, WatchEventKind};
use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::{ControlMessage, DesiredPods};

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::gate::{feed_snapshots, stopped, Gate};
use crate::session::Outbound;

/// The top-level field of a pod's JSON that carries its resolved references.
pub(crate) const RESOLVED_FIELD: &str = "keelResolved";

/// The shortest time between two lists for one node.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// How long to wait after a failed list or watch.
const RETRY: Duration = Duration::from_secs(1);

/// The ConfigMaps and Secrets a pod references, by name (all in the pod's namespace).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct References {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

pub(crate) fn references(pod: &Value) -> References {
    let mut r = References::default();
    let spec = &pod["spec"];
    let name = |v: &Value, ptr: &str| v.pointer(ptr).and_then(Value::as_str).map(str::to_string);
    let items = |v: &Value, key: &str| v.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    for vol in items(spec, "volumes") {
        r.config_maps.extend(name(&vol, "/configMap/name"));
        r.secrets.extend(name(&vol, "/secret/secretName"));
        for src in vol
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            r.config_maps.extend(name(src, "/configMap/name"));
            r.secrets.extend(name(src, "/secret/name"));
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in items(spec, list) {
            for e in items(&c, "env") {
                r.config_maps.extend(name(&e, "/valueFrom/configMapKeyRef/name"));
                r.secrets.extend(name(&e, "/valueFrom/secretKeyRef/name"));
            }
            for e in items(&c, "envFrom") {
                r.config_maps.extend(name(&e, "/configMapRef/name"));
                r.secrets.extend(name(&e, "/secretRef/name"));
            }
        }
    }
    for s in items(spec, "imagePullSecrets") {
        r.secrets.extend(name(&s, "/name"));
    }
    r
}

/// The `KEY: VALUE` text map of a ConfigMap (`data`, plus `binaryData` decoded) or a Secret
/// (`data` decoded, `stringData` as is).
pub(crate) fn text_data(obj: &Value) -> Map<String, Value> {
    let decode = |v: &Value| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .unwrap_or_default();
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    let mut out = Map::new();
    let is_secret = obj["kind"] == "Secret";
    if let Some(m) = obj.get("binaryData").and_then(Value::as_object) {
        out.extend(m.iter().map(|(k, v)| (k.clone(), decode(v))));
    }
    if let Some(m) = obj.get("data").and_then(Value::as_object) {
        out.extend(
            m.iter()
                .map(|(k, v)| (k.clone(), if is_secret { decode(v) } else { v.clone() })),
        );
    }
    if let Some(m) = obj.get("stringData").and_then(Value::as_object) {
        out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// The fields of a pod that never travel to its node: the node computes the status itself, and
/// a snapshot must not change (and be sent again) just because the status or the version did.
const NOT_FOR_THE_NODE: [&str; 3] = ["/status", "/metadata/resourceVersion", "/metadata/managedFields"];

/// The field that carries what a rebooted node needs of the status it reported before (its
/// state was in memory): see [`status_summary`].
pub(crate) const STATUS_FIELD: &str = "keelStatus";

/// `{"restarts": {CONTAINER: N}, "phase": …}`: the restart count of every container that
/// restarted, and the phase once it is terminal — so a rebooted node goes on counting restarts
/// and does not run finished pods again. It changes only when a container restarts or the pod
/// finishes, so status reports still do not resend the set.
pub(crate) fn status_summary(pod: &Value) -> Option<Value> {
    let mut restarts = Map::new();
    for c in pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let n = c["restartCount"].as_u64().unwrap_or(0);
        if let (Some(name), true) = (c["name"].as_str(), n > 0) {
            restarts.insert(name.to_string(), Value::from(n));
        }
    }
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .filter(|p| *p == "Succeeded" || *p == "Failed");
    if restarts.is_empty() && phase.is_none() {
        return None;
    }
    let mut out = Map::new();
    out.insert("restarts".into(), Value::Object(restarts));
    if let Some(p) = phase {
        out.insert("phase".into(), Value::from(p));
    }
    Some(Value::Object(out))
}

/// One bound pod as the index keeps it: its JSON for the node (compact bytes, without the
/// fields of [`NOT_FOR_THE_NODE`]) and what it references.
struct IndexedPod {
    node: String,
    namespace: String,
    json: Arc<Vec<u8>>,
    refs: References,
}

/// What the index knows, behind one lock.
#[derive(Default)]
struct IndexState {
    /// The newest store revision seen by any of the three watches.
    revision: u64,
    /// Whether pods, ConfigMaps and Secrets have each been listed once.
    listed: [bool; 3],
    /// Bound pods by `namespace/name`.
    pods: HashMap<String, IndexedPod>,
    /// `namespace/name` of the pods bound to each node, sorted.
    by_node: HashMap<String, BTreeSet<String>>,
    /// The text data of each ConfigMap and Secret, by (namespace, name).
    config_maps: HashMap<(String, String), Value>,
    secrets: HashMap<(String, String), Value>,
    /// Each subscribed node's change counter.
    signals: HashMap<String, watch::Sender<u64>>,
}

impl IndexState {
    fn ready(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    fn signal(&self, node: &str) {
        if let Some(s) = self.signals.get(node) {
            s.send_modify(|n| *n += 1);
        }
    }

    fn signal_all(&self) {
        for s in self.signals.values() {
            s.send_modify(|n| *n += 1);
        }
    }

    /// Signals the nodes of pods in `ns` that reference `name` (a ConfigMap if `config_map`).
    fn signal_referrers(&self, ns: &str, name: &str, config_map: bool) {
        let mut nodes = BTreeSet::new();
        for p in self.pods.values() {
            let refs = if config_map {
                &p.refs.config_maps
            } else {
                &p.refs.secrets
            };
            if p.namespace == ns && refs.contains(name) {
                nodes.insert(p.node.as_str());
            }
        }
        for n in nodes {
            self.signal(n);
        }
    }

    fn remove_pod(&mut self, key: &str) {
        if let Some(old) = self.pods.remove(key) {
            if let Some(set) = self.by_node.get_mut(&old.node) {
                set.remove(key);
                if set.is_empty() {
                    self.by_node.remove(&old.node);
                }
            }
            self.signal(&old.node);
        }
    }

    fn upsert_pod(&mut self, mut pod: Value) {
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let key = format!("{ns}/{name}");
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let Some(node) = node else {
            self.remove_pod(&key);
            return;
        };
        let summary = status_summary(&pod);
        for ptr in NOT_FOR_THE_NODE {
            let (parent, field) = ptr.rsplit_once('/').unwrap_or(("", ptr));
            let holder = if parent.is_empty() {
                Some(&mut pod)
            } else {
                pod.pointer_mut(parent)
            };
            if let Some(Value::Object(m)) = holder {
                m.remove(field);
            }
        }
        if let (Some(summary), Some(m)) = (summary, pod.as_object_mut()) {
            m.insert(STATUS_FIELD.into(), summary);
        }
        let refs = references(&pod);
        let json = Arc::new(serde_json::to_vec(&pod).unwrap_or_default());
        if let Some(old) = self.pods.get(&key) {
            if old.node == node && *old.json == *json {
                return; // only the status or the version changed: nothing for the node
            }
            if old.node != node {
                self.remove_pod(&key);
            }
        }
        self.by_node.entry(node.clone()).or_default().insert(key.clone());
        self.signal(&node);
        self.pods.insert(
            key,
            IndexedPod {
                node,
                namespace: ns,
                json,
                refs,
            },
        );
    }

    /// The pods of `node` with their references resolved, as the node gets them.
    fn snapshot(&self, node: &str) -> Vec<Vec<u8>> {
        let Some(keys) = self.by_node.get(node) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(p) = self.pods.get(key) else { continue };
            let pick = |names: &BTreeSet<String>, from: &HashMap<(String, String), Value>| {
                let mut m = Map::new();
                for n in names {
                    if let Some(data) = from.get(&(p.namespace.clone(), n.clone())) {
                        m.insert(n.clone(), data.clone());
                    }
                }
                Value::Object(m)
            };
            let resolved = json!({
                "configMaps": pick(&p.refs.config_maps, &self.config_maps),
                "secrets": pick(&p.refs.secrets, &self.secrets),
            });
            // `{…}` + `,"keelResolved":{…}}`: the pod's bytes are not parsed again.
            let mut bytes = Vec::with_capacity(p.json.len() + 64);
            match p.json.strip_suffix(b"}") {
                Some(head) if head.len() > 1 => {
                    bytes.extend_from_slice(head);
                    bytes.extend_from_slice(format!(",\"{RESOLVED_FIELD}\":").as_bytes());
                    bytes.extend_from_slice(resolved.to_string().as_bytes());
                    bytes.push(b'}');
                }
                _ => bytes.extend_from_slice(json!({ RESOLVED_FIELD: resolved }).to_string().as_bytes()),
            }
            out.push(bytes);
        }
        out
    }
}

/// Every pod bound to a node, grouped by node, and the ConfigMaps and Secrets they may
/// reference: one list and watch of each kind for the whole gate, started by the first feed.
/// (Each session listing and watching pods itself made every pod write cost one decode per
/// connected node, and every change a list of all pods per node.)
#[derive(Default)]
pub(crate) struct PodIndex {
    started: std::sync::OnceLock<()>,
    state: Arc<Mutex<IndexState>>,
}

fn lock(m: &Mutex<IndexState>) -> std::sync::MutexGuard<'_, IndexState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which of the three kinds a follower keeps.
#[derive(Clone, Copy)]
enum Kind {
    Pods = 0,
    ConfigMaps = 1,
    Secrets = 2,
}

impl PodIndex {
    fn start(&self, gate: &Gate) {
        self.started.get_or_init(|| {
            for (kind, rt) in [
                (Kind::Pods, gate.kinds.pods),
                (Kind::ConfigMaps, gate.kinds.configmaps),
                (Kind::Secrets, gate.kinds.secrets),
            ] {
                tokio::spawn(follow(
                    gate.client.clone(),
                    rt,
                    kind,
                    self.state.clone(),
                    gate.shutdown.clone(),
                ));
            }
        });
    }

    fn subscribe(&self, node: &str) -> watch::Receiver<u64> {
        let mut st = lock(&self.state);
        st.signals
            .entry(node.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// The node's snapshot and the index's revision, once every kind has been listed.
    fn snapshot(&self, node: &str) -> Option<(u64, Vec<Vec<u8>>)> {
        let st = lock(&self.state);
        st.ready().then(|| (st.revision, st.snapshot(node)))
    }
}

fn revision_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ns_name(obj: &Value) -> (String, String) {
    let s = |ptr: &str| {
        obj.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

/// Applies one object of `kind` (`deleted`: it is gone).
fn apply(st: &mut IndexState, kind: Kind, obj: Value, deleted: bool) {
    st.revision = st.revision.max(revision_of(&obj));
    match kind {
        Kind::Pods => {
            if deleted {
                let (ns, name) = ns_name(&obj);
                st.remove_pod(&format!("{ns}/{name}"));
            } else {
                st.upsert_pod(obj);
            }
        }
        Kind::ConfigMaps | Kind::Secrets => {
            let key = ns_name(&obj);
            let data = (!deleted).then(|| Value::Object(text_data(&obj)));
            let is_cm = matches!(kind, Kind::ConfigMaps);
            let map = if is_cm {
                &mut st.config_maps
            } else {
                &mut st.secrets
            };
            let changed = match data {
                Some(d) => map.insert(key.clone(), d.clone()).as_ref() != Some(&d),
                None => map.remove(&key).is_some(),
            };
            if changed {
                st.signal_referrers(&key.0, &key.1, is_cm);
            }
        }
    }
}

/// Keeps one kind of the index: list, then watch from the list's version; lists again when the
/// watch ends or fails.
async fn follow(
    client: Arc<dyn keel_api::client::ApiClient>,
    rt: &'static keel_api::registry::ResourceType,
    kind: Kind,
    state: Arc<Mutex<IndexState>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let list = tokio::select! {
            l = client.list(rt, None, ListParams::default()) => l,
            _ = stopped(&mut shutdown) => return,
        };
        let list = match list {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(kind = rt.kind, error = %e, "node gate: listing for the pod feed failed");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = stopped(&mut shutdown) => return,
                }
            }
        };
        let version = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_string();
        {
            // A re-list (after a watch fell behind) changes only what changed: unchanged pods
            // wake no node, so a thousand nodes do not all get their sets again.
            let mut st = lock(&state);
            let items = match list {
                Value::Object(mut m) => match m.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            let listed: std::collections::HashSet<(String, String)> = items.iter().map(ns_name).collect();
            match kind {
                Kind::Pods => {
                    let gone: Vec<String> = st
                        .pods
                        .keys()
                        .filter(|k| {
                            let (ns, name) = k.split_once('/').unwrap_or_default();
                            !listed.contains(&(ns.to_string(), name.to_string()))
                        })
                        .cloned()
                        .collect();
                    for k in gone {
                        st.remove_pod(&k);
                    }
                }
                Kind::ConfigMaps | Kind::Secrets => {
                    let is_cm = matches!(kind, Kind::ConfigMaps);
                    let map = if is_cm { &st.config_maps } else { &st.secrets };
                    let gone: Vec<(String, String)> =
                        map.keys().filter(|k| !listed.contains(*k)).cloned().collect();
                    for k in gone {
                        let obj = json!({"metadata": {"namespace": k.0, "name": k.1}});
                        apply(&mut st, kind, obj, true);
                    }
                }
            }
            for obj in items {
                apply(&mut st, kind, obj, false);
            }
            st.revision = st.revision.max(version.parse().unwrap_or(0));
            let first = !st.listed[kind as usize];
            st.listed[kind as usize] = true;
            if first {
                st.signal_all();
            }
        }
        let params = ListParams {
            resource_version: Some(version),
            allow_bookmarks: true,
            ..Default::default()
        };
        let mut events = match client.watch(rt, None, params).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(kind = rt.kind, error = %e, "node gate: watching for the pod feed failed");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = stopped(&mut shutdown) => return,
                }
            }
        };
        loop {
            let ev = tokio::select! {
                ev = events.next() => ev,
                _ = stopped(&mut shutdown) => return,
            };
            match ev {
                Some(Ok(e)) => match e.kind {
                    WatchEventKind::Added | WatchEventKind::Modified => {
                        apply(&mut lock(&state), kind, e.object, false)
                    }
                    WatchEventKind::Deleted => apply(&mut lock(&state), kind, e.object, true),
                    WatchEventKind::Bookmark => {
                        let mut st = lock(&state);
                        st.revision = st.revision.max(revision_of(&e.object));
                    }
                    WatchEventKind::Error => {
                        tracing::warn!(
                            kind = rt.kind,
                            "node gate: the pod feed's watch ended ({}); listing again",
                            e.object
                        );
                        break;
                    }
                },
                Some(Err(e)) => {
                    tracing::warn!(kind = rt.kind, error = %e, "node gate: the pod feed's watch fell behind; listing again");
                    break;
                }
                None => break,
            }
        }
    }
}

/// Feeds `out` until it closes or the gate shuts down: the node's snapshot on connect (once
/// the index has listed everything), then again after changes, at most every [`MIN_INTERVAL`]
/// and only when it differs from the last one sent.
pub(crate) async fn feed(gate: Arc<Gate>, node: String, out: Outbound) {
    let mut shutdown = gate.shutdown.clone();
    let index = &gate.pod_index;
    index.start(&gate);
    let changes = index.subscribe(&node);
    feed_snapshots(
        changes,
        &out,
        &mut shutdown,
        MIN_INTERVAL,
        || index.snapshot(&node),
        |version, content: &Vec<Vec<u8>>| {
            tracing::debug!(node = %node, pods = content.len(), version, "sending desired pods");
            ControlMessage {
                msg: Some(ControlMsg::Pods(DesiredPods {
                    version,
                    pods_json: content.clone(),
                })),
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_kind_of_reference() {
        let pod = json!({"spec": {
            "volumes": [
                {"name": "a", "configMap": {"name": "cm-vol"}},
                {"name": "b", "secret": {"secretName": "s-vol"}},
                {"name": "c", "projected": {"sources": [{"configMap": {"name": "cm-proj"}}, {"secret": {"name": "s-proj"}}]}},
                {"name": "d", "emptyDir": {}}
            ],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "cm-envfrom"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}},
                {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}},
                {"name": "Z", "value": "plain"}
            ], "envFrom": [{"secretRef": {"name": "s-envfrom"}}]}],
            "imagePullSecrets": [{"name": "regcred"}]
        }});
        let r = references(&pod);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(r.config_maps, set(&["cm-envfrom", "cm-env", "cm-proj", "cm-vol"]));
        assert_eq!(
            r.secrets,
            set(&["regcred", "s-env", "s-envfrom", "s-proj", "s-vol"])
        );
        assert_eq!(references(&json!({})), References::default());
    }

    #[test]
    fn a_rebooted_node_learns_restart_counts_and_terminal_phases() {
        let pod = |phase: &str, restarts: u64| {
            json!({"status": {"phase": phase, "containerStatuses": [
                {"name": "a", "restartCount": restarts, "ready": true},
                {"name": "b", "restartCount": 0}
            ]}})
        };
        assert_eq!(status_summary(&pod("Running", 0)), None);
        assert_eq!(
            status_summary(&pod("Running", 2)),
            Some(json!({"restarts": {"a": 2}}))
        );
        assert_eq!(
            status_summary(&pod("Succeeded", 0)),
            Some(json!({"restarts": {}, "phase": "Succeeded"}))
        );
        assert_eq!(status_summary(&json!({})), None);
    }

    #[test]
    fn the_index_groups_pods_by_node_and_ignores_status_changes() {
        let mut st = IndexState {
            listed: [true; 3],
            ..Default::default()
        };
        st.signals.insert("n1".into(), watch::channel(0).0);
        let mut rx = st.signals["n1"].subscribe();
        let pod = |node: &str, phase: &str, rv: &str| {
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "a", "namespace": "ns", "resourceVersion": rv, "managedFields": [{}]},
                "spec": {"nodeName": node, "volumes": [{"name": "v", "configMap": {"name": "cm"}}]},
                "status": {"phase": phase}})
        };
        apply(&mut st, Kind::Pods, pod("n1", "Pending", "5"), false);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        // The node's own status report comes back as a change of status only: no new snapshot.
        apply(&mut st, Kind::Pods, pod("n1", "Running", "6"), false);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(st.revision, 6);

        // A referenced ConfigMap appears: the node hears of it, resolved into the pod.
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "ns", "resourceVersion": "7"}, "data": {"k": "v"}});
        apply(&mut st, Kind::ConfigMaps, cm, false);
        assert!(rx.has_changed().unwrap());
        let snap = st.snapshot("n1");
        assert_eq!(snap.len(), 1);
        let sent: Value = serde_json::from_slice(&snap[0]).unwrap();
        assert_eq!(sent["metadata"]["name"], "a");
        assert_eq!(sent[RESOLVED_FIELD]["configMaps"]["cm"], json!({"k": "v"}));
        assert!(sent.get("status").is_none() && sent["metadata"].get("resourceVersion").is_none());
        assert!(sent["metadata"].get("managedFields").is_none());

        // Moved to another node (or deleted): gone from this one's set.
        rx.borrow_and_update();
        apply(&mut st, Kind::Pods, pod("n2", "Running", "8"), false);
        assert!(rx.has_changed().unwrap());
        assert!(st.snapshot("n1").is_empty());
        assert_eq!(st.snapshot("n2").len(), 1);
        apply(&mut st, Kind::Pods, pod("n2", "Running", "9"), true);
        assert!(st.snapshot("n2").is_empty() && st.pods.is_empty() && st.by_node.is_empty());
    }

    #[test]
    fn data_becomes_text() {
        let cm = json!({"kind": "ConfigMap", "data": {"a": "1"}, "binaryData": {"b": "aGk="}});
        assert_eq!(Value::Object(text_data(&cm)), json!({"a": "1", "b": "hi"}));
        let secret = json!({"kind": "Secret", "data": {"password": "czNjcmV0"}});
        assert_eq!(Value::Object(text_data(&secret)), json!({"password": "s3cret"}));
    }
}
