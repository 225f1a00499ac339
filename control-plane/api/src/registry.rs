//! The resource types the server serves: one static table, the single source of truth for
//! routing, discovery, OpenAPI paths and storage keys.
//!
//! Adding a kind is adding a row here (plus its Table printer and, where upstream has them,
//! defaults and validation). The order of rows is the order of discovery: groups appear in the
//! order of their first row, resources inside a version alphabetically, as upstream sorts them.

/// What a client may do with a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbs {
    /// Stored objects: create, delete, deletecollection, get, list, patch, update, watch.
    Crud,
    /// Virtual resources that only answer a POST (reviews, bindings).
    CreateOnly,
    /// Computed resources (metrics): get and list.
    ReadOnly,
}

impl Verbs {
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Verbs::Crud => &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            Verbs::CreateOnly => &["create"],
            Verbs::ReadOnly => &["get", "list"],
        }
    }
}

/// A subresource such as `status` or `scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subresource {
    pub name: &'static str,
    /// The group, version and kind of the subresource's body; empty group and version mean "the
    /// parent's" (aggregated discovery says so with empty strings).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

/// One resource in one group version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub verbs: Verbs,
    pub subresources: &'static [Subresource],
    /// The version objects are stored in, when several versions serve one resource
    /// (autoscaling/v1 and v2 horizontalpodautoscalers are stored as v2).
    pub storage_version: &'static str,
}

impl ResourceType {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, or `pods` for the core group: how upstream names a resource in messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The store key prefix of all objects of this resource (shared by all its versions).
    pub fn key_prefix(&self) -> String {
        let group = if self.group.is_empty() { "core" } else { self.group };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// The prefix of all objects of one namespace (or all, for `None`).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }

    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    pub fn is_stored(&self) -> bool {
        self.verbs == Verbs::Crud
    }
}

const GPU: &[&str] = &["get", "patch", "update"];
const CREATE: &[&str] = &["create"];
const GET: &[&str] = &["get"];

const fn status(_kind: &'static str) -> Subresource {
    Subresource {
        name: "status",
        group: "",
        version: "",
        kind: _kind,
        verbs: GPU,
    }
}
const SCALE: Subresource = Subresource {
    name: "scale",
    group: "autoscaling",
    version: "v1",
    kind: "Scale",
    verbs: GPU,
};

const fn crud(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced,
        short_names: &[],
        categories: &[],
        verbs: Verbs::Crud,
        subresources: &[],
        storage_version: version,
    }
}

const fn with(
    mut r: ResourceType,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [Subresource],
) -> ResourceType {
    r.short_names = short_names;
    r.categories = categories;
    r.subresources = subresources;
    r
}

const fn verbs(mut r: ResourceType, v: Verbs) -> ResourceType {
    r.verbs = v;
    r
}

const fn stored_as(mut r: ResourceType, version: &'static str) -> ResourceType {
    r.storage_version = version;
    r
}

const ALL: &[&str] = &["all"];

/// Every resource the server serves, in discovery order.
pub static RESOURCES: &[ResourceType] = &[
    // ---- core/v1 (alphabetical, as upstream lists them)
    verbs(
        with(
            crud(
                "",
                "v1",
                "ComponentStatus",
                "componentstatuses",
                "componentstatus",
                false,
            ),
            &["cs"],
            &[],
            &[],
        ),
        Verbs::ReadOnly,
    ),
    with(
        crud("", "v1", "ConfigMap", "configmaps", "configmap", true),
        &["cm"],
        &[],
        &[],
    ),
    with(
        crud("", "v1", "Endpoints", "endpoints", "endpoints", true),
        &["ep"],
        &[],
        &[],
    ),
    with(
        crud("", "v1", "Event", "events", "event", true),
        &["ev"],
        &[],
        &[],
    ),
    with(
        crud("", "v1", "LimitRange", "limitranges", "limitrange", true),
        &["limits"],
        &[],
        &[],
    ),
    with(
        crud("", "v1", "Namespace", "namespaces", "namespace", false),
        &["ns"],
        &[],
        &[
            Subresource {
                name: "finalize",
                group: "",
                version: "",
                kind: "Namespace",
                verbs: &["update"],
            },
            status("Namespace"),
        ],
    ),
    with(
        crud("", "v1", "Node", "nodes", "node", false),
        &["no"],
        &[],
        &[
            Subresource {
                name: "proxy",
                group: "",
                version: "",
                kind: "NodeProxyOptions",
                verbs: GET,
            },
            status("Node"),
        ],
    ),
    with(
        crud(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            "persistentvolumeclaim",
            true,
        ),
        &["pvc"],
        &[],
        &[status("PersistentVolumeClaim")],
    ),
    with(
        crud(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            "persistentvolume",
            false,
        ),
        &["pv"],
        &[],
        &[status("PersistentVolume")],
    ),
    with(
        crud("", "v1", "Pod", "pods", "pod", true),
        &["po"],
        ALL,
        &[
            Subresource {
                name: "attach",
                group: "",
                version: "",
                kind: "PodAttachOptions",
                verbs: &["create", "get"],
            },
            Subresource {
                name: "binding",
                group: "",
                version: "",
                kind: "Binding",
                verbs: CREATE,
            },
            Subresource {
                name: "ephemeralcontainers",
                group: "",
                version: "",
                kind: "Pod",
                verbs: GPU,
            },
            Subresource {
                name: "eviction",
                group: "policy",
                version: "v1",
                kind: "Eviction",
                verbs: CREATE,
            },
            Subresource {
                name: "attach",
                group: "",
                version: "",
                kind: "PodAttachOptions",
                verbs: &["create", "get"],
            },
            Subresource {
                name: "exec",
                group: "",
                version: "",
                kind: "PodExecOptions",
                verbs: &["create", "get"],
            },
            Subresource {
                name: "log",
                group: "",
                version: "",
                kind: "Pod",
                verbs: GET,
            },
            Subresource {
                name: "portforward",
                group: "",
                version: "",
                kind: "PodPortForwardOptions",
                verbs: &["create", "get"],
            },
            status("Pod"),
        ],
    ),
    with(
        crud(
            "",
            "v1",
            "ReplicationController",
            "replicationcontrollers",
            "replicationcontroller",
            true,
        ),
        &["rc"],
        ALL,
        &[SCALE, status("ReplicationController")],
    ),
    with(
        crud("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", true),
        &["quota"],
        &[],
        &[status("ResourceQuota")],
    ),
    crud("", "v1", "Secret", "secrets", "secret", true),
    with(
        crud(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            "serviceaccount",
            true,
        ),
        &["sa"],
        &[],
        &[Subresource {
            name: "token",
            group: "authentication.k8s.io",
            version: "v1",
            kind: "TokenRequest",
            verbs: CREATE,
        }],
    ),
    with(
        crud("", "v1", "Service", "services", "service", true),
        &["svc"],
        ALL,
        &[
            Subresource {
                name: "proxy",
                group: "",
                version: "",
                kind: "ServiceProxyOptions",
                verbs: GET,
            },
            status("Service"),
        ],
    ),
    // ---- apiextensions.k8s.io/v1 (stored so that clients that list CRDs work; custom resources
    // themselves are not served yet)
    with(
        crud(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            "customresourcedefinition",
            false,
        ),
        &["crd", "crds"],
        &["api-extensions"],
        &[status("CustomResourceDefinition")],
    ),
    // ---- apps/v1
    crud(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
    ),
    with(
        crud("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true),
        &["ds"],
        ALL,
        &[status("DaemonSet")],
    ),
    with(
        crud("apps", "v1", "Deployment", "deployments", "deployment", true),
        &["deploy"],
        ALL,
        &[SCALE, status("Deployment")],
    ),
    with(
        crud("apps", "v1", "ReplicaSet", "replicasets", "replicaset", true),
        &["rs"],
        ALL,
        &[SCALE, status("ReplicaSet")],
    ),
    with(
        crud("apps", "v1", "StatefulSet", "statefulsets", "statefulset", true),
        &["sts"],
        ALL,
        &[SCALE, status("StatefulSet")],
    ),
    // ---- authentication.k8s.io/v1
    verbs(
        crud(
            "authentication.k8s.io",
            "v1",
            "SelfSubjectReview",
            "selfsubjectreviews",
            "selfsubjectreview",
            false,
        ),
        Verbs::CreateOnly,
    ),
    verbs(
        crud(
            "authentication.k8s.io",
            "v1",
            "TokenReview",
            "tokenreviews",
            "tokenreview",
            false,
        ),
        Verbs::CreateOnly,
    ),
    // ---- authorization.k8s.io/v1
    verbs(
        crud(
            "authorization.k8s.io",
            "v1",
            "LocalSubjectAccessReview",
            "localsubjectaccessreviews",
            "localsubjectaccessreview",
            true,
        ),
        Verbs::CreateOnly,
    ),
    verbs(
        crud(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            "selfsubjectaccessreview",
            false,
        ),
        Verbs::CreateOnly,
    ),
    verbs(
        crud(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
            "selfsubjectrulesreview",
            false,
        ),
        Verbs::CreateOnly,
    ),
    verbs(
        crud(
            "authorization.k8s.io",
            "v1",
            "SubjectAccessReview",
            "subjectaccessreviews",
            "subjectaccessreview",
            false,
        ),
        Verbs::CreateOnly,
    ),
    // ---- autoscaling: v2 is preferred and the storage version
    with(
        crud(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            "horizontalpodautoscaler",
            true,
        ),
        &["hpa"],
        ALL,
        &[status("HorizontalPodAutoscaler")],
    ),
    stored_as(
        with(
            crud(
                "autoscaling",
                "v1",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
                "horizontalpodautoscaler",
                true,
            ),
            &["hpa"],
            ALL,
            &[status("HorizontalPodAutoscaler")],
        ),
        "v2",
    ),
    // ---- batch/v1
    with(
        crud("batch", "v1", "CronJob", "cronjobs", "cronjob", true),
        &["cj"],
        ALL,
        &[status("CronJob")],
    ),
    with(
        crud("batch", "v1", "Job", "jobs", "job", true),
        &[],
        ALL,
        &[status("Job")],
    ),
    // ---- certificates.k8s.io/v1
    with(
        crud(
            "certificates.k8s.io",
            "v1",
            "CertificateSigningRequest",
            "certificatesigningrequests",
            "certificatesigningrequest",
            false,
        ),
        &["csr"],
        &[],
        &[
            Subresource {
                name: "approval",
                group: "",
                version: "",
                kind: "CertificateSigningRequest",
                verbs: GPU,
            },
            status("CertificateSigningRequest"),
        ],
    ),
    // ---- coordination.k8s.io/v1
    crud("coordination.k8s.io", "v1", "Lease", "leases", "lease", true),
    // ---- discovery.k8s.io/v1
    crud(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
    ),
    // ---- networking.k8s.io/v1
    crud(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
        false,
    ),
    with(
        crud("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", true),
        &["ing"],
        &[],
        &[status("Ingress")],
    ),
    with(
        crud(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            "networkpolicy",
            true,
        ),
        &["netpol"],
        &[],
        &[],
    ),
    // ---- policy/v1
    with(
        crud(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            "poddisruptionbudget",
            true,
        ),
        &["pdb"],
        &[],
        &[status("PodDisruptionBudget")],
    ),
    // ---- rbac.authorization.k8s.io/v1
    crud(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
    ),
    crud(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
    ),
    crud(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
    ),
    crud("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", true),
    // ---- storage.k8s.io/v1
    with(
        crud(
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            "storageclass",
            false,
        ),
        &["sc"],
        &[],
        &[],
    ),
];

/// Looks up a resource by group, version and plural name (the URL form).
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Looks up a resource by group, version and kind (the object form).
pub fn find_kind(group: &str, version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// The group versions served, in discovery order, each with its preferred flag
/// (the first version listed for a group is preferred).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The resources of one group version, in the table's order.
pub fn resources_of<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceType> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// Splits `apps/v1` into (`apps`, `v1`) and `v1` into (``, `v1`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plural_and_kind_lookups_agree() {
        for r in RESOURCES {
            assert_eq!(find(r.group, r.version, r.plural), Some(r));
            assert_eq!(find_kind(r.group, r.version, r.kind), Some(r));
            assert_eq!(r.singular, r.kind.to_lowercase());
        }
    }

    #[test]
    fn keys_share_a_prefix_across_versions() {
        let v1 = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let v2 = find("autoscaling", "v2", "horizontalpodautoscalers").unwrap();
        assert_eq!(v1.key(Some("ns"), "a"), v2.key(Some("ns"), "a"));
        assert_eq!(
            find("", "v1", "nodes").unwrap().key(Some("x"), "n1"),
            "/registry/core/nodes/n1"
        );
    }

    #[test]
    fn scale_answers_with_autoscaling_v1() {
        let d = find("apps", "v1", "deployments").unwrap();
        let s = d.subresource("scale").unwrap();
        assert_eq!((s.group, s.version, s.kind), ("autoscaling", "v1", "Scale"));
    }
}
