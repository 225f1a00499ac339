//! The bootstrap policy: the default ClusterRoles and ClusterRoleBindings every cluster has, as
//! upstream's `bootstrappolicy` defines them, so that a fresh cluster works under RBAC.
//!
//! `cluster-admin` for `system:masters`; discovery, public info and self reviews for every
//! authenticated user; the user-facing `admin`, `edit` and `view` (aggregated from the
//! `system:aggregate-to-*` roles, so added roles can extend them); `system:node` for nodes and
//! `system:node-bootstrapper` for bootstrap tokens (which may ask for node certificates); and
//! upstream's component roles people bind to (`system:auth-delegator`, `system:monitoring`,
//! `system:heapster`, `system:kube-dns`, `system:node-proxier`, metrics-server's
//! `system:aggregated-metrics-reader`).
//! Created at start when missing, never overwritten: an operator's change to a default sticks,
//! as with upstream's `rbac.authorization.kubernetes.io/autoupdate: "false"`.

use keel_api::registry;
use keel_api::status::{ApiError, ApiResult};
use serde_json::{json, Value};

use crate::objects::{Objects, WriteCtx};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

fn meta(name: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in extra_labels {
        labels.insert((*k).into(), json!(v));
    }
    json!({
        "name": name,
        "labels": labels,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta(name, labels),
        "rules": rules,
    })
}

fn aggregated(name: &str, labels: &[(&str, &str)], selector_label: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta(name, labels),
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {selector_label: "true"}}]},
        "rules": [],
    })
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g}))
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta(name, &[]),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

const AGG_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const AGG_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const AGG_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![url_rule(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![url_rule(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        aggregated("admin", &[], AGG_ADMIN),
        aggregated("edit", &[(AGG_ADMIN, "true")], AGG_EDIT),
        aggregated("view", &[(AGG_EDIT, "true")], AGG_VIEW),
        cluster_role(
            "system:aggregate-to-admin",
            &[(AGG_ADMIN, "true")],
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                rule(
                    READ_WRITE,
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(AGG_EDIT, "true")],
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                ),
                rule(&["create"], &[""], &["pods/eviction"]),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
                rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
                rule(WRITE, &["networking.k8s.io"], &["ingresses", "networkpolicies"]),
                rule(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[(AGG_VIEW, "true")],
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                rule(
                    READ,
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                rule(READ, &[""], &["namespaces"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(
                    READ,
                    &["autoscaling"],
                    &["horizontalpodautoscalers", "horizontalpodautoscalers/status"],
                ),
                rule(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                rule(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
            ],
        ),
        // What metrics-server ships, for the metrics.k8s.io API keel serves itself.
        cluster_role(
            "system:aggregated-metrics-reader",
            &[(AGG_VIEW, "true"), (AGG_EDIT, "true"), (AGG_ADMIN, "true")],
            vec![rule(READ, &["metrics.k8s.io"], &["pods", "nodes"])],
        ),
        cluster_role(
            "system:node",
            &[],
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews", "subjectaccessreviews"],
                ),
                rule(READ, &[""], &["services"]),
                rule(&["create", "delete", "get", "list", "watch"], &[""], &["nodes"]),
                rule(&["patch", "update"], &[""], &["nodes/status"]),
                rule(&["patch", "update"], &[""], &["nodes"]),
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(READ, &[""], &["pods"]),
                rule(&["create", "delete"], &[""], &["pods"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(&["create"], &[""], &["pods/eviction"]),
                rule(&["get"], &[""], &["configmaps", "secrets"]),
                rule(&["get"], &[""], &["persistentvolumeclaims", "persistentvolumes"]),
                rule(&["get"], &[""], &["endpoints"]),
                rule(
                    &["create", "get", "list", "watch"],
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
                rule(
                    &["create", "delete", "get", "patch", "update"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
                rule(
                    &["get"],
                    &["storage.k8s.io"],
                    &["volumeattachments", "csidrivers"],
                ),
                rule(&["get", "list", "watch"], &["node.k8s.io"], &["runtimeclasses"]),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
            ],
        ),
        cluster_role(
            "system:node-bootstrapper",
            &[],
            vec![rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![url_rule(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        cluster_role(
            "system:heapster",
            &[],
            vec![
                rule(READ, &[""], &["events", "namespaces", "nodes", "pods"]),
                rule(READ, &["extensions"], &["deployments"]),
            ],
        ),
        cluster_role(
            "system:kube-dns",
            &[],
            vec![rule(&["list", "watch"], &[""], &["endpoints", "services"])],
        ),
        cluster_role(
            "system:node-proxier",
            &[],
            vec![
                rule(&["list", "watch"], &[""], &["endpoints", "services"]),
                rule(&["get", "list", "watch"], &[""], &["nodes"]),
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(&["list", "watch"], &["discovery.k8s.io"], &["endpointslices"]),
            ],
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
            ],
        ),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding("system:discovery", "system:discovery", &["system:authenticated"]),
        binding(
            "system:basic-user",
            "system:basic-user",
            &["system:authenticated"],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        binding("system:monitoring", "system:monitoring", &["system:monitoring"]),
        binding("system:node", "system:node", &["system:nodes"]),
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            &["system:bootstrappers"],
        ),
    ]
}

/// Creates what is missing of the bootstrap policy (idempotent; run at every start).
pub async fn ensure(objects: &Objects) -> ApiResult<()> {
    let find = |plural: &str| {
        registry::find("rbac.authorization.k8s.io", "v1", plural)
            .ok_or_else(|| ApiError::internal(format!("no {plural}")))
    };
    let roles = find("clusterroles")?;
    let bindings = find("clusterrolebindings")?;
    let wanted = cluster_roles()
        .into_iter()
        .map(|o| (roles, o))
        .chain(cluster_role_bindings().into_iter().map(|o| (bindings, o)));
    for (rt, obj) in wanted {
        let name = crate::objects::object_name(&obj).to_string();
        match objects.get(rt, None, &name).await {
            Ok(_) => {}
            Err(e) if e.code == 404 => match objects.create(rt, None, obj, &mut WriteCtx::default()).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::rbac::{Attributes, Index};
    use keel_auth::UserInfo;

    fn index() -> Index {
        let mut ix = Index::default();
        for r in cluster_roles() {
            ix.upsert("ClusterRole", &r);
        }
        for b in cluster_role_bindings() {
            ix.upsert("ClusterRoleBinding", &b);
        }
        ix
    }

    fn res(user: &UserInfo, verb: &str, group: &str, resource: &str, ns: &str) -> Attributes {
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            namespace: ns.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_authenticated_user_may_discover_and_ask_about_itself() {
        let ix = index();
        let jane = UserInfo::authenticated("jane", "", vec![]);
        for path in ["/api", "/apis/apps/v1", "/openapi/v3", "/version", "/healthz"] {
            let a = Attributes {
                user: jane.clone(),
                verb: "get".into(),
                path: path.into(),
                ..Default::default()
            };
            assert!(ix.authorize(&a).is_ok(), "{path}");
        }
        let ssar = res(
            &jane,
            "create",
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            "",
        );
        assert!(ix.authorize(&ssar).is_ok());
        assert!(ix.authorize(&res(&jane, "list", "", "pods", "default")).is_err());
    }

    #[test]
    fn admin_edit_and_view_aggregate() {
        let mut ix = index();
        for (name, role) in [("a", "admin"), ("e", "edit"), ("v", "view")] {
            ix.upsert(
                "RoleBinding",
                &json!({"metadata": {"namespace": "team", "name": name}, "subjects": [{"kind": "User", "name": name}], "roleRef": {"kind": "ClusterRole", "name": role}}),
            );
        }
        let u = |n: &str| UserInfo::authenticated(n, "", vec![]);
        assert!(ix
            .authorize(&res(&u("v"), "list", "apps", "deployments", "team"))
            .is_ok());
        assert!(ix.authorize(&res(&u("v"), "get", "", "secrets", "team")).is_err());
        assert!(ix
            .authorize(&res(&u("v"), "list", "metrics.k8s.io", "pods", "team"))
            .is_ok());
        assert!(ix.authorize(&res(&u("e"), "get", "", "secrets", "team")).is_ok());
        assert!(ix
            .authorize(&res(&u("e"), "list", "apps", "deployments", "team"))
            .is_ok());
        assert!(ix
            .authorize(&res(
                &u("e"),
                "create",
                "rbac.authorization.k8s.io",
                "roles",
                "team"
            ))
            .is_err());
        assert!(ix
            .authorize(&res(
                &u("a"),
                "create",
                "rbac.authorization.k8s.io",
                "roles",
                "team"
            ))
            .is_ok());
        assert!(ix.authorize(&res(&u("a"), "delete", "", "pods", "team")).is_ok());
        assert!(ix
            .authorize(&res(&u("a"), "delete", "", "pods", "other"))
            .is_err());
    }

    #[test]
    fn bootstrap_tokens_may_ask_for_certificates() {
        let ix = index();
        let token =
            UserInfo::authenticated("system:bootstrap:abcdef", "", vec!["system:bootstrappers".into()]);
        let a = res(
            &token,
            "create",
            "certificates.k8s.io",
            "certificatesigningrequests",
            "",
        );
        assert!(ix.authorize(&a).is_ok());
        assert!(ix.authorize(&res(&token, "list", "", "secrets", "")).is_err());
    }
}
