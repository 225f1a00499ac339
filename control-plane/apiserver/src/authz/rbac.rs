//! RBAC as upstream's `rbac` authorizer evaluates it, as pure functions over an in-memory
//! [`Index`] of the four `rbac.authorization.k8s.io/v1` kinds.
//!
//! A request is allowed when some ClusterRoleBinding, or some RoleBinding in the request's
//! namespace, names the user (by name, by group, or as a service account) and refers to a role
//! with a rule that covers the request's verb, API group, resource (`pods/log` for a
//! subresource, `*` and `*/log` wildcards), and name (`resourceNames`), or the request's
//! non-resource path (`nonResourceURLs`, with a trailing `*` as a prefix). There are no deny
//! rules. A ClusterRole with an `aggregationRule` holds the union of the rules of the
//! ClusterRoles its selectors match, as upstream's aggregation controller makes it.

use std::collections::{BTreeMap, HashMap, HashSet};

use keel_api::selector::LabelSelector;
use keel_auth::UserInfo;
use serde_json::{json, Value};

/// The attributes of one request (or of one access review), as upstream's authorizer sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub user: UserInfo,
    pub verb: String,
    /// `false` for non-resource paths (`/version`, `/api`, `/healthz`, …).
    pub resource_request: bool,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The URL path (what non-resource rules match).
    pub path: String,
}

/// One rule of a Role or ClusterRole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

impl PolicyRule {
    pub fn from_json(v: &Value) -> PolicyRule {
        PolicyRule {
            verbs: strings(v.get("verbs")),
            api_groups: strings(v.get("apiGroups")),
            resources: strings(v.get("resources")),
            resource_names: strings(v.get("resourceNames")),
            non_resource_urls: strings(v.get("nonResourceURLs")),
        }
    }

    /// Whether this rule allows the request (upstream's `RuleAllows`).
    pub fn allows(&self, a: &Attributes) -> bool {
        if a.resource_request {
            let combined = if a.subresource.is_empty() {
                a.resource.clone()
            } else {
                format!("{}/{}", a.resource, a.subresource)
            };
            verb_matches(self, &a.verb)
                && api_group_matches(self, &a.api_group)
                && resource_matches(self, &combined, &a.subresource)
                && resource_name_matches(self, &a.name)
        } else {
            verb_matches(self, &a.verb) && non_resource_url_matches(self, &a.path)
        }
    }

    /// The rule as a `PolicyRule` object (omitting empty lists, as upstream serializes it).
    pub fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("verbs".into(), json!(self.verbs));
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() {
                o.insert(k.into(), json!(v));
            }
        }
        Value::Object(o)
    }
}

fn verb_matches(r: &PolicyRule, verb: &str) -> bool {
    r.verbs.iter().any(|v| v == "*" || v == verb)
}

fn api_group_matches(r: &PolicyRule, group: &str) -> bool {
    r.api_groups.iter().any(|g| g == "*" || g == group)
}

fn resource_matches(r: &PolicyRule, combined: &str, subresource: &str) -> bool {
    r.resources.iter().any(|res| {
        // `*` matches resources only, `*/log` every resource's log subresource.
        (res == "*")
            || res == combined
            || (!subresource.is_empty()
                && res.len() == subresource.len() + 2
                && res.starts_with("*/")
                && res.ends_with(subresource))
    })
}

fn resource_name_matches(r: &PolicyRule, name: &str) -> bool {
    r.resource_names.is_empty() || r.resource_names.iter().any(|n| n == name)
}

fn non_resource_url_matches(r: &PolicyRule, path: &str) -> bool {
    r.non_resource_urls
        .iter()
        .any(|u| u == "*" || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*'))))
}

/// One subject of a binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

impl Subject {
    /// Upstream's `appliesToUser`. `binding_ns` is the namespace of a RoleBinding, which a
    /// ServiceAccount subject without a namespace defaults to.
    pub fn applies_to(&self, user: &UserInfo, binding_ns: &str) -> bool {
        match self.kind.as_str() {
            "User" => user.name == self.name,
            "Group" => user.groups.contains(&self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_ns
                } else {
                    &self.namespace
                };
                !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", self.name)
            }
            _ => false,
        }
    }

    /// How upstream names a subject in its reasons: `User "jane"`, `ServiceAccount "sa/ns"`.
    fn describe(&self, binding_ns: &str) -> String {
        if self.kind == "ServiceAccount" {
            let ns = if self.namespace.is_empty() {
                binding_ns
            } else {
                &self.namespace
            };
            format!("{} \"{}/{ns}\"", self.kind, self.name)
        } else {
            format!("{} {:?}", self.kind, self.name)
        }
    }
}

/// A RoleBinding or ClusterRoleBinding, reduced to what the authorizer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    /// Empty for a ClusterRoleBinding.
    pub namespace: String,
    /// `Role` or `ClusterRole`.
    pub role_kind: String,
    pub role_name: String,
    pub subjects: Vec<Subject>,
}

impl Binding {
    pub fn from_json(v: &Value) -> Binding {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
        let subjects = v
            .get("subjects")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|s| {
                        let f = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                        Subject {
                            kind: f("kind"),
                            name: f("name"),
                            namespace: f("namespace"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Binding {
            name: s("/metadata/name"),
            namespace: s("/metadata/namespace"),
            role_kind: s("/roleRef/kind"),
            role_name: s("/roleRef/name"),
            subjects,
        }
    }

    fn describe(&self) -> String {
        if self.namespace.is_empty() {
            format!("ClusterRoleBinding {:?}", self.name)
        } else {
            format!("RoleBinding \"{}/{}\"", self.name, self.namespace)
        }
    }
}

/// A ClusterRole: its own rules, labels, and aggregation selectors (if aggregated).
#[derive(Clone, Debug, Default)]
pub struct ClusterRole {
    pub rules: Vec<PolicyRule>,
    pub labels: serde_json::Map<String, Value>,
    pub aggregation: Option<Vec<LabelSelector>>,
}

impl ClusterRole {
    pub fn from_json(v: &Value) -> ClusterRole {
        let aggregation = v
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array)
            .map(|sels| {
                sels.iter()
                    // A selector that does not parse selects nothing.
                    .map(|s| LabelSelector::from_json(Some(s)).unwrap_or_else(|_| LabelSelector::nothing()))
                    .collect()
            });
        ClusterRole {
            rules: rules_of(v),
            labels: v
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            aggregation,
        }
    }
}

pub fn rules_of(v: &Value) -> Vec<PolicyRule> {
    v.get("rules")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(PolicyRule::from_json).collect())
        .unwrap_or_default()
}

/// The four RBAC kinds, indexed for evaluation.
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// (namespace, name) → rules.
    pub roles: HashMap<(String, String), Vec<PolicyRule>>,
    pub cluster_roles: HashMap<String, ClusterRole>,
    /// namespace → name → binding.
    pub role_bindings: HashMap<String, BTreeMap<String, Binding>>,
    pub cluster_role_bindings: BTreeMap<String, Binding>,
    /// ClusterRole name → its effective rules (aggregation resolved), recomputed whenever a
    /// ClusterRole changes so that a request only walks bindings.
    effective: HashMap<String, Vec<PolicyRule>>,
    /// Per kind, the store revision of the last full list: events at or below it are already
    /// reflected (and replaying them would step back in time).
    floors: HashMap<String, u64>,
}

/// What a visit of the applicable rules found.
pub enum Visit<'a> {
    /// A rule of the role bound by this binding through this subject.
    Rule(&'a Binding, &'a Subject, &'a PolicyRule),
    /// A binding that applies but whose role is missing (upstream's evaluation error).
    Missing(String),
}

impl Index {
    /// Adds or replaces one object of the four kinds.
    pub fn upsert(&mut self, kind: &str, obj: &Value) {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match kind {
            "Role" => {
                self.roles.insert((ns, name), rules_of(obj));
            }
            "ClusterRole" => {
                self.cluster_roles.insert(name, ClusterRole::from_json(obj));
                self.resolve();
            }
            "RoleBinding" => {
                self.role_bindings
                    .entry(ns)
                    .or_default()
                    .insert(name, Binding::from_json(obj));
            }
            "ClusterRoleBinding" => {
                self.cluster_role_bindings.insert(name, Binding::from_json(obj));
            }
            _ => {}
        }
    }

    /// Replaces every object of one kind with a list taken at store revision `revision`; a list
    /// older than what the index already reflects is ignored.
    pub fn replace_kind(&mut self, kind: &str, items: &[Value], revision: u64) {
        if self.floors.get(kind).is_some_and(|f| revision < *f) {
            return;
        }
        match kind {
            "Role" => self.roles.clear(),
            "ClusterRole" => self.cluster_roles.clear(),
            "RoleBinding" => self.role_bindings.clear(),
            "ClusterRoleBinding" => self.cluster_role_bindings.clear(),
            _ => return,
        }
        for item in items {
            self.upsert(kind, item);
        }
        if kind == "ClusterRole" {
            self.resolve();
        }
        self.floors.insert(kind.to_string(), revision);
    }

    /// Whether a watch event of `kind` at store revision `revision` is already reflected.
    pub fn has_seen(&self, kind: &str, revision: u64) -> bool {
        self.floors.get(kind).is_some_and(|f| revision <= *f)
    }

    pub fn remove(&mut self, kind: &str, obj: &Value) {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        match kind {
            "Role" => {
                self.roles.remove(&(ns.to_string(), name.to_string()));
            }
            "ClusterRole" => {
                self.cluster_roles.remove(name);
                self.resolve();
            }
            "RoleBinding" => {
                if let Some(m) = self.role_bindings.get_mut(ns) {
                    m.remove(name);
                }
            }
            "ClusterRoleBinding" => {
                self.cluster_role_bindings.remove(name);
            }
            _ => {}
        }
    }

    /// The effective rules of a ClusterRole: its own, or for an aggregated one the union of the
    /// rules of the ClusterRoles its selectors match (recursively, each role once).
    pub fn cluster_role_rules(&self, name: &str) -> Option<Vec<PolicyRule>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        self.collect_cluster_role(name, &mut seen, &mut out)?;
        Some(out)
    }

    fn collect_cluster_role(
        &self,
        name: &str,
        seen: &mut HashSet<String>,
        out: &mut Vec<PolicyRule>,
    ) -> Option<()> {
        let role = self.cluster_roles.get(name)?;
        if !seen.insert(name.to_string()) {
            return Some(());
        }
        match &role.aggregation {
            None => {
                for r in &role.rules {
                    if !out.contains(r) {
                        out.push(r.clone());
                    }
                }
            }
            Some(selectors) => {
                let mut names: Vec<&String> = self
                    .cluster_roles
                    .iter()
                    .filter(|(n, other)| {
                        n.as_str() != name && selectors.iter().any(|s| s.matches(Some(&other.labels)))
                    })
                    .map(|(n, _)| n)
                    .collect();
                names.sort();
                for n in names {
                    self.collect_cluster_role(n, seen, out);
                }
            }
        }
        Some(())
    }

    /// Recomputes the effective rules of every ClusterRole.
    fn resolve(&mut self) {
        let effective = self
            .cluster_roles
            .keys()
            .filter_map(|n| Some((n.clone(), self.cluster_role_rules(n)?)))
            .collect();
        self.effective = effective;
    }

    fn role_rules(&self, b: &Binding) -> Option<&[PolicyRule]> {
        match b.role_kind.as_str() {
            "ClusterRole" => self.effective.get(&b.role_name).map(Vec::as_slice),
            "Role" if !b.namespace.is_empty() => self
                .roles
                .get(&(b.namespace.clone(), b.role_name.clone()))
                .map(Vec::as_slice),
            _ => None,
        }
    }

    fn missing(b: &Binding) -> String {
        if b.role_kind == "Role" {
            format!("role.rbac.authorization.k8s.io {:?} not found", b.role_name)
        } else {
            format!(
                "clusterrole.rbac.authorization.k8s.io {:?} not found",
                b.role_name
            )
        }
    }

    /// Visits the rules that apply to `user` in `namespace` (cluster bindings first, then the
    /// namespace's bindings, as upstream), until `visit` returns `false`.
    pub fn visit_rules(&self, user: &UserInfo, namespace: &str, mut visit: impl FnMut(Visit<'_>) -> bool) {
        let namespaced = if namespace.is_empty() {
            None
        } else {
            self.role_bindings.get(namespace)
        };
        let bindings = self
            .cluster_role_bindings
            .values()
            .chain(namespaced.into_iter().flat_map(|m| m.values()));
        for b in bindings {
            let Some(subject) = b.subjects.iter().find(|s| s.applies_to(user, &b.namespace)) else {
                continue;
            };
            match self.role_rules(b) {
                None => {
                    if !visit(Visit::Missing(Self::missing(b))) {
                        return;
                    }
                }
                Some(rules) => {
                    for r in rules {
                        if !visit(Visit::Rule(b, subject, r)) {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Upstream's RBAC decision: `Ok(reason)` if allowed, `Err(reason)` (empty, or `RBAC: …`
    /// listing the missing roles met on the way) if not.
    pub fn authorize(&self, a: &Attributes) -> Result<String, String> {
        let mut allowed = None;
        let mut errors = Vec::new();
        self.visit_rules(&a.user, &a.namespace, |v| match v {
            Visit::Rule(b, s, r) => {
                if r.allows(a) {
                    let role_kind = if b.role_kind == "Role" {
                        "Role"
                    } else {
                        "ClusterRole"
                    };
                    allowed = Some(format!(
                        "RBAC: allowed by {} of {role_kind} {:?} to {}",
                        b.describe(),
                        b.role_name,
                        s.describe(&b.namespace)
                    ));
                    false
                } else {
                    true
                }
            }
            Visit::Missing(e) => {
                errors.push(e);
                true
            }
        });
        match allowed {
            Some(reason) => Ok(reason),
            None if errors.is_empty() => Err(String::new()),
            None if errors.len() == 1 => Err(format!("RBAC: {}", errors[0])),
            None => Err(format!("RBAC: [{}]", errors.join(", "))),
        }
    }

    /// The rules that apply to `user` in `namespace` (SelfSubjectRulesReview), and the errors
    /// met (missing roles).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<PolicyRule>, Vec<String>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        self.visit_rules(user, namespace, |v| {
            match v {
                Visit::Rule(_, _, r) => rules.push(r.clone()),
                Visit::Missing(e) => errors.push(e),
            }
            true
        });
        (rules, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::authenticated(name, "", groups.iter().map(|g| g.to_string()).collect())
    }

    fn attrs(
        user: UserInfo,
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            user,
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            api_version: "v1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    fn index(objects: &[(&str, Value)]) -> Index {
        let mut ix = Index::default();
        for (k, o) in objects {
            ix.upsert(k, o);
        }
        ix
    }

    fn rule(v: Value) -> PolicyRule {
        PolicyRule::from_json(&v)
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_names() {
        let r = rule(json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}));
        let jane = user("jane", &[]);
        assert!(r.allows(&attrs(jane.clone(), "get", "", "pods", "", "default", "x")));
        assert!(r.allows(&attrs(jane.clone(), "get", "", "pods", "log", "default", "x")));
        assert!(!r.allows(&attrs(jane.clone(), "create", "", "pods", "exec", "default", "x")));
        assert!(!r.allows(&attrs(jane.clone(), "delete", "", "pods", "", "default", "x")));
        assert!(!r.allows(&attrs(jane.clone(), "get", "apps", "pods", "", "default", "x")));
        assert!(!r.allows(&attrs(jane.clone(), "get", "", "pods", "status", "default", "x")));

        let named = rule(
            json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["my-configmap"], "verbs": ["update", "get"]}),
        );
        assert!(named.allows(&attrs(
            jane.clone(),
            "update",
            "",
            "configmaps",
            "",
            "default",
            "my-configmap"
        )));
        assert!(!named.allows(&attrs(
            jane.clone(),
            "update",
            "",
            "configmaps",
            "",
            "default",
            "other"
        )));
        assert!(!named.allows(&attrs(jane.clone(), "get", "", "configmaps", "", "default", "")));

        let star = rule(json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}));
        assert!(star.allows(&attrs(
            jane.clone(),
            "deletecollection",
            "apps",
            "deployments",
            "",
            "",
            ""
        )));
        // As upstream, `*` matches subresources too.
        assert!(star.allows(&attrs(jane.clone(), "get", "", "pods", "log", "x", "p")));
        let any_log = rule(json!({"apiGroups": [""], "resources": ["*/log"], "verbs": ["get"]}));
        assert!(any_log.allows(&attrs(jane.clone(), "get", "", "pods", "log", "x", "p")));
        assert!(!any_log.allows(&attrs(jane.clone(), "get", "", "pods", "", "x", "p")));
    }

    #[test]
    fn non_resource_rules_match_paths_and_prefixes() {
        let r = rule(json!({"nonResourceURLs": ["/api", "/api/*", "/version"], "verbs": ["get"]}));
        let a = |path: &str, verb: &str| Attributes {
            user: user("u", &[]),
            verb: verb.into(),
            path: path.into(),
            ..Default::default()
        };
        assert!(r.allows(&a("/api", "get")));
        assert!(r.allows(&a("/api/v1", "get")));
        assert!(r.allows(&a("/version", "get")));
        assert!(!r.allows(&a("/version", "post")));
        assert!(!r.allows(&a("/apis", "get")));
        assert!(!r.allows(&a("/healthz", "get")));
    }

    #[test]
    fn subjects_match_users_groups_and_service_accounts() {
        let s = |kind: &str, name: &str, ns: &str| Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: ns.into(),
        };
        let jane = user("jane", &["manager"]);
        assert!(s("User", "jane", "").applies_to(&jane, ""));
        assert!(!s("User", "bob", "").applies_to(&jane, ""));
        assert!(s("Group", "manager", "").applies_to(&jane, ""));
        assert!(s("Group", "system:authenticated", "").applies_to(&jane, ""));
        let sa = user(
            "system:serviceaccount:kube-system:heapster",
            &["system:serviceaccounts"],
        );
        assert!(s("ServiceAccount", "heapster", "kube-system").applies_to(&sa, ""));
        assert!(s("ServiceAccount", "heapster", "").applies_to(&sa, "kube-system"));
        assert!(!s("ServiceAccount", "heapster", "").applies_to(&sa, "default"));
        assert!(s("Group", "system:serviceaccounts", "").applies_to(&sa, ""));
    }

    fn seed_index() -> Index {
        index(&[
            (
                "Role",
                json!({"metadata": {"namespace": "default", "name": "pod-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "watch", "list"]}]}),
            ),
            (
                "RoleBinding",
                json!({"metadata": {"namespace": "default", "name": "read-pods"}, "subjects": [{"kind": "User", "name": "jane"}], "roleRef": {"kind": "Role", "name": "pod-reader"}}),
            ),
            (
                "ClusterRole",
                json!({"metadata": {"name": "secret-reader"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "watch", "list"]}]}),
            ),
            (
                "RoleBinding",
                json!({"metadata": {"namespace": "development", "name": "read-secrets"}, "subjects": [{"kind": "User", "name": "dave"}], "roleRef": {"kind": "ClusterRole", "name": "secret-reader"}}),
            ),
            (
                "ClusterRoleBinding",
                json!({"metadata": {"name": "read-secrets-global"}, "subjects": [{"kind": "Group", "name": "manager"}], "roleRef": {"kind": "ClusterRole", "name": "secret-reader"}}),
            ),
        ])
    }

    #[test]
    fn role_bindings_grant_only_in_their_namespace() {
        let ix = seed_index();
        let jane = user("jane", &[]);
        assert!(ix
            .authorize(&attrs(jane.clone(), "list", "", "pods", "", "default", ""))
            .is_ok());
        assert_eq!(
            ix.authorize(&attrs(jane.clone(), "list", "", "pods", "", "kube-system", "")),
            Err(String::new())
        );
        assert!(ix
            .authorize(&attrs(jane.clone(), "list", "", "pods", "", "", ""))
            .is_err());
        let dave = user("dave", &[]);
        assert!(ix
            .authorize(&attrs(dave.clone(), "get", "", "secrets", "", "development", "s"))
            .is_ok());
        assert!(ix
            .authorize(&attrs(dave.clone(), "get", "", "secrets", "", "default", "s"))
            .is_err());
    }

    #[test]
    fn cluster_role_bindings_grant_everywhere_to_groups() {
        let ix = seed_index();
        let m = user("someone", &["manager"]);
        assert_eq!(
            ix.authorize(&attrs(m.clone(), "list", "", "secrets", "", "", "")),
            Ok(r#"RBAC: allowed by ClusterRoleBinding "read-secrets-global" of ClusterRole "secret-reader" to Group "manager""#.into())
        );
        assert!(ix
            .authorize(&attrs(m.clone(), "get", "", "secrets", "", "x", "s"))
            .is_ok());
        assert!(ix
            .authorize(&attrs(user("someone", &[]), "list", "", "secrets", "", "", ""))
            .is_err());
        assert!(ix
            .authorize(&attrs(m, "delete", "", "secrets", "", "x", "s"))
            .is_err());
    }

    #[test]
    fn missing_roles_are_reported_and_removal_revokes() {
        let mut ix = seed_index();
        ix.upsert("ClusterRoleBinding", &json!({"metadata": {"name": "heapster"}, "subjects": [{"kind": "ServiceAccount", "name": "heapster", "namespace": "kube-system"}], "roleRef": {"kind": "ClusterRole", "name": "system:heapster"}}));
        let sa = user("system:serviceaccount:kube-system:heapster", &[]);
        assert_eq!(
            ix.authorize(&attrs(sa, "list", "", "pods", "", "", "")),
            Err(r#"RBAC: clusterrole.rbac.authorization.k8s.io "system:heapster" not found"#.into())
        );
        let jane = user("jane", &[]);
        ix.remove(
            "RoleBinding",
            &json!({"metadata": {"namespace": "default", "name": "read-pods"}}),
        );
        assert!(ix
            .authorize(&attrs(jane, "list", "", "pods", "", "default", ""))
            .is_err());
    }

    #[test]
    fn fresh_lists_replace_a_kind_and_older_events_are_ignored() {
        let mut ix = seed_index();
        let jane = user("jane", &[]);
        // A list at revision 10 without jane's binding replaces the RoleBindings.
        let dave = json!({"metadata": {"namespace": "development", "name": "read-secrets", "resourceVersion": "9"}, "subjects": [{"kind": "User", "name": "dave"}], "roleRef": {"kind": "ClusterRole", "name": "secret-reader"}});
        ix.replace_kind("RoleBinding", std::slice::from_ref(&dave), 10);
        assert!(ix
            .authorize(&attrs(jane.clone(), "list", "", "pods", "", "default", ""))
            .is_err());
        assert!(ix.has_seen("RoleBinding", 10));
        assert!(!ix.has_seen("RoleBinding", 11));
        assert!(!ix.has_seen("Role", 1));
        // An older list does not step back.
        ix.replace_kind("RoleBinding", &[], 5);
        assert!(ix
            .authorize(&attrs(
                user("dave", &[]),
                "get",
                "",
                "secrets",
                "",
                "development",
                "s"
            ))
            .is_ok());
    }

    #[test]
    fn aggregated_cluster_roles_hold_the_selected_rules() {
        let ix = index(&[
            (
                "ClusterRole",
                json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg/view": "true"}}]}}),
            ),
            (
                "ClusterRole",
                json!({"metadata": {"name": "edit", "labels": {"agg/view": "true"}}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg/edit": "true"}}]}}),
            ),
            (
                "ClusterRole",
                json!({"metadata": {"name": "pods", "labels": {"agg/edit": "true"}}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
            ),
            (
                "ClusterRole",
                json!({"metadata": {"name": "cms", "labels": {"agg/view": "true"}}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
            ),
            (
                "ClusterRoleBinding",
                json!({"metadata": {"name": "b"}, "subjects": [{"kind": "User", "name": "u"}], "roleRef": {"kind": "ClusterRole", "name": "view"}}),
            ),
        ]);
        let rules = ix.cluster_role_rules("view").unwrap_or_default();
        assert_eq!(rules.len(), 2);
        let u = user("u", &[]);
        assert!(ix
            .authorize(&attrs(u.clone(), "get", "", "pods", "", "x", "p"))
            .is_ok());
        assert!(ix
            .authorize(&attrs(u.clone(), "get", "", "configmaps", "", "x", "p"))
            .is_ok());
        assert!(ix
            .authorize(&attrs(u, "get", "", "secrets", "", "x", "p"))
            .is_err());
    }

    #[test]
    fn rules_for_lists_what_applies_in_the_namespace() {
        let ix = seed_index();
        let (rules, errors) = ix.rules_for(&user("jane", &[]), "default");
        assert!(errors.is_empty());
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].resources, vec!["pods".to_string()]);
        assert!(ix.rules_for(&user("jane", &[]), "kube-system").0.is_empty());
    }
}
