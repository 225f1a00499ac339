//! Server-side Tables (`meta.k8s.io/v1` `Table`): what `kubectl get` prints.
//!
//! kubectl asks for `application/json;as=Table;v=v1;g=meta.k8s.io` and prints the cells it gets
//! back verbatim, so the column sets and the cell logic here are ports of upstream v1.32
//! `pkg/printers/internalversion/printers.go`: one row function per kind, reading the object's
//! JSON. Like the real apiserver, the rows always carry the `-o wide` cells too (priority-1
//! columns); kubectl hides those unless asked.
//!
//! Kinds without an upstream printer (roles, cluster roles, limit ranges) get the apiserver's
//! default table, `NAME` and `CREATED AT`; [`age_table`] is the `NAME AGE` table custom resources
//! without printer columns get.
//!
//! The column definitions live in `columns.rs`, generated from the vendored v1.32 OpenAPI
//! descriptions by `fixtures/gen_table_columns.py`. Row functions take the current time as an
//! argument so fixtures (`fixtures/tables/*.json`) can pin ages.

mod columns;
mod core;
mod metrics;
mod other;
mod workloads;

use jiff::Timestamp;
use serde_json::{json, Map, Value};

use crate::registry::ResourceType;
use crate::selector::LabelSelector;

/// One column of a Table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    /// `string`, `integer`, `boolean`, `date`.
    pub kind: &'static str,
    /// `name` for the column kubectl treats as the object name, else empty.
    pub format: &'static str,
    /// 0 = always shown, 1 = only with `-o wide`.
    pub priority: u8,
    pub description: &'static str,
}

/// The list metadata a Table carries over from the list it was made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListMeta {
    pub resource_version: String,
    /// The continue token of a paginated list (empty = last page).
    pub continue_token: String,
    pub remaining_item_count: Option<i64>,
}

/// What each row's `object` holds (`includeObject` query parameter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` with the object's metadata (the default, what kubectl needs for
    /// `-A`, `--show-labels` and `-L`).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter (`None`, `Metadata`, `Object`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "None" => Some(IncludeObject::None),
            "Metadata" | "" => Some(IncludeObject::Metadata),
            "Object" => Some(IncludeObject::Object),
            _ => None,
        }
    }
}

/// How to render a Table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableOptions {
    pub include_object: IncludeObject,
    /// Leave out `columnDefinitions` (`tableOptions.noHeaders`, used on watch events after the
    /// first).
    pub no_headers: bool,
}

/// The row function of a printer: the cells of one object, wide cells included.
type RowFn = fn(&Printer, &Value) -> Vec<Value>;

/// Time-dependent formatting for the rows of one Table.
pub(crate) struct Printer {
    now: Timestamp,
}

impl Printer {
    /// `translateTimestampSince`: the age of a timestamp, `<unknown>` when unset or unreadable.
    fn since(&self, ts: Option<&str>) -> String {
        match ts.and_then(crate::time::parse) {
            Some(t) => human(self.seconds_since(t)),
            None => "<unknown>".into(),
        }
    }

    /// Whole seconds from `t` to now, truncated toward zero as Go's `int(d.Seconds())`.
    fn seconds_since(&self, t: Timestamp) -> i64 {
        let nanos = self.now.as_nanosecond() - t.as_nanosecond();
        i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX)
    }

    /// The age of the object (`metadata.creationTimestamp`).
    fn age(&self, obj: &Value) -> String {
        self.since(str_opt(obj, "/metadata/creationTimestamp"))
    }
}

/// `duration.HumanDuration`, including its `<invalid>` for times in the future.
fn human(seconds: i64) -> String {
    if seconds < -1 {
        "<invalid>".into()
    } else {
        crate::time::human_duration(seconds.max(0))
    }
}

/// The printer of a resource: its columns and row function.
fn printer_of(rt: &ResourceType) -> (&'static [Column], RowFn) {
    use columns as c;
    match (rt.group, rt.kind) {
        ("", "Pod") => (c::POD, core::pod),
        ("", "Node") => (c::NODE, core::node),
        ("", "Service") => (c::SERVICE, core::service),
        ("", "Endpoints") => (c::ENDPOINTS, core::endpoints),
        ("", "Namespace") => (c::NAMESPACE, core::namespace),
        ("", "ConfigMap") => (c::CONFIG_MAP, core::config_map),
        ("", "Secret") => (c::SECRET, core::secret),
        ("", "ServiceAccount") => (c::SERVICE_ACCOUNT, core::service_account),
        ("", "Event") => (c::EVENT, core::event),
        ("", "PersistentVolume") => (c::PERSISTENT_VOLUME, core::persistent_volume),
        ("", "PersistentVolumeClaim") => (c::PERSISTENT_VOLUME_CLAIM, core::persistent_volume_claim),
        ("", "ReplicationController") => (c::REPLICATION_CONTROLLER, workloads::replication_controller),
        ("", "ResourceQuota") => (c::RESOURCE_QUOTA, core::resource_quota),
        ("", "ComponentStatus") => (c::COMPONENT_STATUS, core::component_status),
        ("apps", "Deployment") => (c::DEPLOYMENT, workloads::deployment),
        ("apps", "ReplicaSet") => (c::REPLICA_SET, workloads::replica_set),
        ("apps", "StatefulSet") => (c::STATEFUL_SET, workloads::stateful_set),
        ("apps", "DaemonSet") => (c::DAEMON_SET, workloads::daemon_set),
        ("apps", "ControllerRevision") => (c::CONTROLLER_REVISION, workloads::controller_revision),
        ("batch", "Job") => (c::JOB, workloads::job),
        ("batch", "CronJob") => (c::CRON_JOB, workloads::cron_job),
        ("autoscaling", "HorizontalPodAutoscaler") => {
            (c::HORIZONTAL_POD_AUTOSCALER, workloads::horizontal_pod_autoscaler)
        }
        ("policy", "PodDisruptionBudget") => (c::POD_DISRUPTION_BUDGET, workloads::pod_disruption_budget),
        ("coordination.k8s.io", "Lease") => (c::LEASE, other::lease),
        ("rbac.authorization.k8s.io", "RoleBinding") => (c::ROLE_BINDING, other::role_binding),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => (c::CLUSTER_ROLE_BINDING, other::role_binding),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            (c::CERTIFICATE_SIGNING_REQUEST, other::certificate_signing_request)
        }
        ("discovery.k8s.io", "EndpointSlice") => (c::ENDPOINT_SLICE, other::endpoint_slice),
        ("networking.k8s.io", "Ingress") => (c::INGRESS, other::ingress),
        ("networking.k8s.io", "IngressClass") => (c::INGRESS_CLASS, other::ingress_class),
        ("networking.k8s.io", "NetworkPolicy") => (c::NETWORK_POLICY, other::network_policy),
        ("storage.k8s.io", "StorageClass") => (c::STORAGE_CLASS, other::storage_class),
        ("metrics.k8s.io", "NodeMetrics") => (metrics::METRICS, metrics::node_metrics),
        ("metrics.k8s.io", "PodMetrics") => (metrics::METRICS, metrics::pod_metrics),
        _ => (c::DEFAULT, default_row),
    }
}

/// The apiserver's default table row: name and creation time as RFC 3339.
fn default_row(_: &Printer, obj: &Value) -> Vec<Value> {
    vec![
        json!(str_of(obj, "/metadata/name")),
        json!(str_of(obj, "/metadata/creationTimestamp")),
    ]
}

/// The columns a resource's Table has.
pub fn columns(rt: &ResourceType) -> &'static [Column] {
    printer_of(rt).0
}

/// The Table of a list (or of one object, with a one-element slice), with the default options.
pub fn table(rt: &ResourceType, objects: &[Value], list_meta: &ListMeta) -> Value {
    table_with(rt, objects, list_meta, TableOptions::default())
}

/// The Table of a list with explicit options.
pub fn table_with(
    rt: &ResourceType,
    objects: &[Value],
    list_meta: &ListMeta,
    options: TableOptions,
) -> Value {
    table_at(rt, objects, list_meta, options, Timestamp::now())
}

/// The Table as of a given time (ages are computed against `now`).
pub fn table_at(
    rt: &ResourceType,
    objects: &[Value],
    list_meta: &ListMeta,
    options: TableOptions,
    now: Timestamp,
) -> Value {
    let (cols, row) = printer_of(rt);
    let printer = Printer { now };
    build(cols, objects, list_meta, options, |o| {
        row_value(rt, row, &printer, o)
    })
}

/// A row without its `object`: the cells, and the conditions of pods.
fn row_value(rt: &ResourceType, row: RowFn, printer: &Printer, o: &Value) -> Value {
    let mut r = json!({"cells": row(printer, o)});
    if rt.kind == "Pod" && rt.group.is_empty() {
        if let Some(c) = core::pod_row_conditions(o) {
            r["conditions"] = c;
        }
    }
    r
}

/// A Table written as JSON a row at a time, the same document [`table_with`] gives: for lists
/// of thousands of objects, each object can be decoded, turned into its row and dropped, instead
/// of holding every object (and a copy of each one's metadata) as one `Value`.
pub struct TableWriter {
    rt: &'static ResourceType,
    cols: &'static [Column],
    row: RowFn,
    printer: Printer,
    options: TableOptions,
    rows: Vec<u8>,
    count: usize,
}

impl TableWriter {
    pub fn new(rt: &'static ResourceType, options: TableOptions) -> Self {
        let (cols, row) = printer_of(rt);
        TableWriter {
            rt,
            cols,
            row,
            printer: Printer {
                now: Timestamp::now(),
            },
            options,
            rows: Vec::new(),
            count: 0,
        }
    }

    /// Ages relative to `now` instead of the current time.
    pub fn at(mut self, now: Timestamp) -> Self {
        self.printer = Printer { now };
        self
    }

    /// Appends the row of `obj`.
    pub fn push(&mut self, obj: &Value) {
        if self.count > 0 {
            self.rows.push(b',');
        }
        self.count += 1;
        let r = row_value(self.rt, self.row, &self.printer, obj);
        // Serializing a Value into a Vec cannot fail. The row is an object: its closing brace
        // is taken off to add `object` as the last key.
        let _ = serde_json::to_writer(&mut self.rows, &r);
        match self.options.include_object {
            IncludeObject::None => {}
            IncludeObject::Metadata => {
                self.rows.pop();
                self.rows.extend_from_slice(
                    br#","object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#,
                );
                match obj.get("metadata") {
                    Some(meta) => {
                        let _ = serde_json::to_writer(&mut self.rows, meta);
                    }
                    None => self.rows.extend_from_slice(b"{}"),
                }
                self.rows.extend_from_slice(b"}}");
            }
            IncludeObject::Object => {
                self.rows.pop();
                self.rows.extend_from_slice(br#","object":"#);
                let _ = serde_json::to_writer(&mut self.rows, obj);
                self.rows.push(b'}');
            }
        }
    }

    /// How many rows were pushed.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The whole Table document.
    pub fn finish(self, list_meta: &ListMeta) -> Vec<u8> {
        let mut head = build(self.cols, &[], list_meta, self.options, |_| Value::Null);
        if let Some(t) = head.as_object_mut() {
            t.remove("rows");
        }
        let mut out = serde_json::to_vec(&head).unwrap_or_default();
        // `head` is an object: replace its closing brace with the rows.
        out.pop();
        out.extend_from_slice(b",\"rows\":[");
        out.extend_from_slice(&self.rows);
        out.extend_from_slice(b"]}");
        out
    }
}

/// The `NAME AGE` Table of kinds without a printer of their own (custom resources without
/// `additionalPrinterColumns`).
pub fn age_table(objects: &[Value], list_meta: &ListMeta, options: TableOptions) -> Value {
    const COLS: &[Column] = &[
        Column {
            name: "Name",
            kind: "string",
            format: "name",
            priority: 0,
            description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        },
        Column {
            name: "Age",
            kind: "date",
            format: "",
            priority: 0,
            description: "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
        },
    ];
    let printer = Printer {
        now: Timestamp::now(),
    };
    build(
        COLS,
        objects,
        list_meta,
        options,
        |o| json!({"cells": [str_of(o, "/metadata/name"), printer.age(o)]}),
    )
}

fn build(
    cols: &[Column],
    objects: &[Value],
    list_meta: &ListMeta,
    options: TableOptions,
    mut row: impl FnMut(&Value) -> Value,
) -> Value {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(list_meta.resource_version));
    if !list_meta.continue_token.is_empty() {
        meta.insert("continue".into(), json!(list_meta.continue_token));
    }
    if let Some(n) = list_meta.remaining_item_count {
        meta.insert("remainingItemCount".into(), json!(n));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut r = row(o);
            match options.include_object {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    r["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    });
                }
                IncludeObject::Object => r["object"] = o.clone(),
            }
            r
        })
        .collect();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
    });
    if !options.no_headers {
        t["columnDefinitions"] = cols
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.kind,
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect();
    }
    t["rows"] = Value::Array(rows);
    t
}

// ------------------------------------------------------------------------------------------------
// Small readers shared by the row functions. Objects come from clients; every reader tolerates
// missing or mistyped fields the way Go's zero values do.

fn str_opt<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn str_of<'a>(v: &'a Value, ptr: &str) -> &'a str {
    str_opt(v, ptr).unwrap_or("")
}

fn int_of(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

/// `labels.FormatLabels`: `a=b,c=d` sorted by key, `<none>` when empty.
fn format_labels(map: Option<&Value>) -> String {
    let Some(m) = map.and_then(Value::as_object) else {
        return "<none>".into();
    };
    if m.is_empty() {
        return "<none>".into();
    }
    let mut pairs: Vec<(&String, &str)> = m.iter().map(|(k, v)| (k, v.as_str().unwrap_or(""))).collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `metav1.FormatLabelSelector`: the selector string, `<none>` when it selects everything or
/// nothing, `<error>` when it does not parse.
fn format_label_selector(sel: Option<&Value>) -> String {
    match LabelSelector::from_json(sel) {
        Ok(s) => or_none(&s.to_string()),
        Err(_) => "<error>".into(),
    }
}

/// `layoutContainerCells`: container names and images, comma-separated.
fn layout_containers(containers: &[Value]) -> (String, String) {
    let names = containers
        .iter()
        .map(|c| str_of(c, "/name"))
        .collect::<Vec<_>>()
        .join(",");
    let images = containers
        .iter()
        .map(|c| str_of(c, "/image"))
        .collect::<Vec<_>>()
        .join(",");
    (names, images)
}

/// `a,b,c + 2 more...` (or `<unset>` for an empty list), as upstream's `listWithMoreString`.
fn list_with_more(list: &[String], more: bool, count: usize, max: usize) -> String {
    let ret = list.join(",");
    if more {
        return format!("{ret} + {} more...", count - max);
    }
    if ret.is_empty() {
        "<unset>".into()
    } else {
        ret
    }
}

#[cfg(test)]
mod tests;
