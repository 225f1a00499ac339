//! Authorization of HTTP requests: upstream's RBAC authorizer, plus impersonation.
//!
//! After authentication, every HTTP request is turned into upstream's request attributes
//! ([`request_attributes`], a port of `RequestInfoFactory`: verb, API group, resource,
//! subresource, namespace, name, or a non-resource path), impersonation headers are checked and
//! applied ([`Authorizer::impersonate`]), and the result is authorized: `system:masters` always,
//! anyone else if a Role/ClusterRole bound to them allows it ([`rbac`]). A denial is a 403 with
//! upstream's exact text ([`forbidden`]).
//!
//! The RBAC objects are kept in an in-memory [`rbac::Index`], loaded at start and then kept
//! current by watches of the four kinds through [`Objects`], so a request costs a walk of the
//! applicable bindings, never a store read. The bootstrap policy ([`policy`]) is created at
//! start. Writes of roles and bindings are also held to upstream's escalation rules
//! ([`escalation`]). Only HTTP requests are authorized: the in-process client (controllers, scheduler,
//! node gate) is the control plane itself.

pub mod escalation;
pub mod policy;
pub mod rbac;

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use http::{HeaderMap, Method};
use keel_api::client::{ListParams, WatchEventKind};
use keel_api::registry::{self, ResourceType};
use keel_api::status::{ApiError, ApiResult, Details};
use keel_auth::UserInfo;
use serde_json::Value;

pub use rbac::{Attributes, Index, PolicyRule};

use crate::objects::Objects;

/// The superuser group: always allowed, whatever the policy says.
pub const GROUP_MASTERS: &str = "system:masters";
const GROUP_AUTHENTICATED: &str = "system:authenticated";
const GROUP_UNAUTHENTICATED: &str = "system:unauthenticated";
const ANONYMOUS: &str = "system:anonymous";
const SA_PREFIX: &str = "system:serviceaccount:";

/// The four RBAC kinds, in the order they are loaded.
const KINDS: [&str; 4] = ["clusterroles", "clusterrolebindings", "roles", "rolebindings"];

/// An authorization decision and upstream's reason for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `RBAC: allowed by …` when allowed; empty, or `RBAC: <errors>`, when not.
    pub reason: String,
}

/// The RBAC authorizer over a live index of the RBAC objects.
#[derive(Default)]
pub struct Authorizer {
    index: RwLock<Arc<Index>>,
}

impl Authorizer {
    /// Creates the bootstrap policy where missing, loads the RBAC objects and follows their
    /// changes for as long as the authorizer lives.
    pub async fn start(objects: Arc<Objects>) -> Arc<Authorizer> {
        if let Err(e) = policy::ensure(&objects).await {
            tracing::error!(error = %e, "creating the bootstrap RBAC policy");
        }
        let authz = Arc::new(Authorizer::default());
        let revisions = match authz.reload(&objects).await {
            Ok(r) => {
                aggregate(&authz.index(), &objects).await;
                Some(r)
            }
            Err(e) => {
                tracing::error!(error = %e, "loading the RBAC policy");
                None
            }
        };
        tokio::spawn(follow(Arc::downgrade(&authz), objects, revisions));
        authz
    }

    /// An authorizer over a fixed index (tests).
    pub fn with_index(index: Index) -> Authorizer {
        Authorizer {
            index: RwLock::new(Arc::new(index)),
        }
    }

    /// The current index (cheap: a shared snapshot).
    pub fn index(&self) -> Arc<Index> {
        match self.index.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Index)) {
        let mut guard = match self.index.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(Arc::make_mut(&mut guard));
    }

    /// Lists the four kinds and replaces the index; returns each list's resource version.
    async fn reload(&self, objects: &Objects) -> ApiResult<Vec<(&'static ResourceType, u64)>> {
        let mut index = Index::default();
        let mut revisions = Vec::new();
        for plural in KINDS {
            let rt = rbac_type(plural)?;
            let list = objects.list(rt, None, &ListParams::default()).await?;
            index.replace_kind(rt.kind, &list.items, list.resource_version);
            revisions.push((rt, list.resource_version));
        }
        self.update(|ix| *ix = index);
        Ok(revisions)
    }

    /// Called after a successful write through the API: if it wrote one of the four RBAC kinds,
    /// re-reads that kind, so that the next request already sees the write (read-your-writes for
    /// the policy; the watch alone is only eventually consistent). Policy writes are rare, so
    /// this list is cheap; authorization itself never lists.
    pub async fn written(&self, objects: &Objects, method: &Method, path: &str) {
        if *method == Method::GET || !path.contains("/rbac.authorization.k8s.io/") {
            return;
        }
        let a = request_attributes(&UserInfo::default(), method, path, &[]);
        let Some(rt) = KINDS
            .iter()
            .find(|k| **k == a.resource)
            .and_then(|k| rbac_type(k).ok())
        else {
            return;
        };
        match objects.list(rt, None, &ListParams::default()).await {
            Ok(list) => {
                self.update(|ix| ix.replace_kind(rt.kind, &list.items, list.resource_version));
                if rt.kind == "ClusterRole" {
                    aggregate(&self.index(), objects).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, kind = rt.kind, "re-reading the RBAC policy"),
        }
    }

    /// Upstream's decision for `a`: `system:masters` always, else RBAC.
    pub fn authorize(&self, a: &Attributes) -> Decision {
        if a.user.groups.iter().any(|g| g == GROUP_MASTERS) {
            return Decision {
                allowed: true,
                reason: String::new(),
            };
        }
        match self.index().authorize(a) {
            Ok(reason) => Decision {
                allowed: true,
                reason,
            },
            Err(reason) => Decision {
                allowed: false,
                reason,
            },
        }
    }

    /// Authorizes `a`, answering upstream's 403 if it is not allowed.
    pub fn check(&self, a: &Attributes) -> ApiResult<()> {
        let d = self.authorize(a);
        if d.allowed {
            Ok(())
        } else {
            Err(forbidden(a, &d.reason))
        }
    }

    /// The rules `user` has in `namespace` (SelfSubjectRulesReview): resource and non-resource
    /// rules, plus the evaluation errors met.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<PolicyRule>, Vec<String>) {
        let (mut rules, errors) = self.index().rules_for(user, namespace);
        if user.groups.iter().any(|g| g == GROUP_MASTERS) {
            let all = |v: &str| vec![v.to_string()];
            rules.insert(
                0,
                PolicyRule {
                    verbs: all("*"),
                    non_resource_urls: all("*"),
                    ..Default::default()
                },
            );
            rules.insert(
                0,
                PolicyRule {
                    verbs: all("*"),
                    api_groups: all("*"),
                    resources: all("*"),
                    ..Default::default()
                },
            );
        }
        (rules, errors)
    }

    /// Applies impersonation headers (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-*`): each
    /// one must be allowed to `requester` (verb `impersonate` on users, groups, serviceaccounts,
    /// `authentication.k8s.io` uids and userextras); the result is the impersonated user, with
    /// `system:authenticated` (and a service account's groups) added as upstream does. Without
    /// such headers, the requester is returned unchanged.
    pub fn impersonate(&self, requester: UserInfo, headers: &HeaderMap) -> ApiResult<UserInfo> {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
                .collect()
        };
        let user = values("impersonate-user").into_iter().next();
        let groups = values("impersonate-group");
        let uid = values("impersonate-uid").into_iter().next();
        let mut extras: Vec<(String, String)> = Vec::new();
        for (name, value) in headers {
            if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
                if let Ok(v) = value.to_str() {
                    extras.push((percent_decode(key).to_lowercase(), v.trim().to_string()));
                }
            }
        }
        let Some(username) = user else {
            if !groups.is_empty() || uid.is_some() || !extras.is_empty() {
                return Err(ApiError::internal(
                    "requested impersonation of groups, extra or uid without impersonating a user",
                ));
            }
            return Ok(requester);
        };
        let acting = |group: &str, resource: &str, sub: &str, ns: &str, name: &str| Attributes {
            user: requester.clone(),
            verb: "impersonate".into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        };
        let mut new_groups = groups.clone();
        match username.strip_prefix(SA_PREFIX).and_then(|r| r.split_once(':')) {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() => {
                self.check(&acting("", "serviceaccounts", "", ns, sa))?;
                if groups.is_empty() {
                    new_groups = vec![
                        "system:serviceaccounts".into(),
                        format!("system:serviceaccounts:{ns}"),
                    ];
                }
            }
            _ => self.check(&acting("", "users", "", "", &username))?,
        }
        for g in &groups {
            self.check(&acting("", "groups", "", "", g))?;
        }
        for (key, value) in &extras {
            self.check(&acting("authentication.k8s.io", "userextras", key, "", value))?;
        }
        if let Some(uid) = &uid {
            self.check(&acting("authentication.k8s.io", "uids", "", "", uid))?;
        }
        if username != ANONYMOUS {
            if !new_groups
                .iter()
                .any(|g| g == GROUP_AUTHENTICATED || g == GROUP_UNAUTHENTICATED)
            {
                new_groups.push(GROUP_AUTHENTICATED.into());
            }
        } else if !new_groups.iter().any(|g| g == GROUP_UNAUTHENTICATED) {
            new_groups.push(GROUP_UNAUTHENTICATED.into());
        }
        Ok(UserInfo {
            name: username,
            uid: uid.unwrap_or_default(),
            groups: new_groups,
        })
    }

    /// The hook of the HTTP layer: impersonation, then authorization of the request. Returns
    /// the user the request acts as.
    pub fn admit(
        &self,
        user: UserInfo,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        headers: &HeaderMap,
    ) -> ApiResult<UserInfo> {
        let user = self.impersonate(user, headers)?;
        let mut a = request_attributes(&user, method, path, query);
        // As upstream since 1.31: a websocket (GET) upgrade to exec, attach or portforward is
        // authorized as the `create` that the same stream over a POST needs.
        let streams = matches!(a.subresource.as_str(), "exec" | "attach" | "portforward");
        if a.verb == "get" && a.resource == "pods" && streams && is_upgrade(headers) {
            a.verb = "create".into();
        }
        self.check(&a)?;
        Ok(user)
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        && headers.contains_key(http::header::UPGRADE)
}

fn rbac_type(plural: &str) -> ApiResult<&'static ResourceType> {
    registry::find("rbac.authorization.k8s.io", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("no rbac.authorization.k8s.io/v1 {plural}")))
}

/// Follows changes of the RBAC objects into the index; relists and rewatches after any break.
async fn follow(
    authz: Weak<Authorizer>,
    objects: Arc<Objects>,
    mut revisions: Option<Vec<(&'static ResourceType, u64)>>,
) {
    loop {
        let current = match revisions.take() {
            Some(r) => r,
            None => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(a) = authz.upgrade() else { return };
                match a.reload(&objects).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "reloading the RBAC policy");
                        continue;
                    }
                }
            }
        };
        let mut streams = Vec::new();
        for (rt, rv) in current {
            let params = ListParams {
                resource_version: Some(rv.to_string()),
                ..Default::default()
            };
            match objects.watch(rt, None, &params).await {
                Ok(s) => streams.push(s.map(move |ev| (rt, ev)).boxed()),
                Err(e) => {
                    tracing::warn!(error = %e, kind = rt.kind, "watching the RBAC policy");
                    break;
                }
            }
        }
        if streams.len() == KINDS.len() {
            let mut events = futures::stream::select_all(streams);
            while let Some((rt, ev)) = events.next().await {
                let Some(a) = authz.upgrade() else { return };
                match ev {
                    Ok(ev) => {
                        let rev = ev
                            .object
                            .pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(u64::MAX);
                        match ev.kind {
                            WatchEventKind::Added | WatchEventKind::Modified => a.update(|ix| {
                                if !ix.has_seen(rt.kind, rev) {
                                    ix.upsert(rt.kind, &ev.object)
                                }
                            }),
                            WatchEventKind::Deleted => a.update(|ix| {
                                if !ix.has_seen(rt.kind, rev) {
                                    ix.remove(rt.kind, &ev.object)
                                }
                            }),
                            WatchEventKind::Bookmark | WatchEventKind::Error => continue,
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "the RBAC watch ended; relisting");
                        break;
                    }
                }
                if rt.kind == "ClusterRole" {
                    aggregate(&a.index(), &objects).await;
                }
            }
        }
        if authz.strong_count() == 0 {
            return;
        }
    }
}

/// The clusterrole-aggregation controller's work: writes each aggregated ClusterRole's effective
/// rules (the union of the rules of the ClusterRoles it selects) into its `rules`, so that what
/// `kubectl get` and `describe` show is what it grants. A write comes back as a watch event and
/// finds nothing left to do.
async fn aggregate(index: &Index, objects: &Objects) {
    let Ok(rt) = rbac_type("clusterroles") else {
        return;
    };
    for (name, role) in &index.cluster_roles {
        if role.aggregation.is_none() {
            continue;
        }
        let want = index.cluster_role_rules(name).unwrap_or_default();
        if want == role.rules {
            continue;
        }
        let rules = Value::Array(want.iter().map(PolicyRule::to_json).collect());
        let written = objects
            .modify(rt, None, name, |obj| {
                if let Some(o) = obj.as_object_mut() {
                    o.insert("rules".into(), rules.clone());
                }
                Ok(())
            })
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, clusterrole = %name, "aggregating a ClusterRole");
        }
    }
}

/// The attributes of an HTTP request, as upstream's `RequestInfoFactory` derives them: paths
/// under `/api/{version}/…` and `/apis/{group}/{version}/…` are resource requests (verb from the
/// method, `list`/`watch` for collection GETs, `deletecollection` for collection DELETEs, the
/// name from a `metadata.name=` field selector), anything else a non-resource request whose
/// verb is the lower-cased method.
pub fn request_attributes(
    user: &UserInfo,
    method: &Method,
    path: &str,
    query: &[(String, String)],
) -> Attributes {
    let mut a = Attributes {
        user: user.clone(),
        verb: method.as_str().to_lowercase(),
        path: path.to_string(),
        ..Default::default()
    };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if parts.len() < 3 {
        return a;
    }
    let mut rest: &[&str] = match parts[0] {
        "api" => &parts[1..],
        "apis" if parts.len() >= 4 => {
            a.api_group = parts[1].to_string();
            &parts[2..]
        }
        _ => return a,
    };
    a.resource_request = true;
    a.api_version = rest[0].to_string();
    rest = &rest[1..];
    let mut verb_from_path = false;
    if matches!(rest.first(), Some(&("proxy" | "watch"))) && rest.len() >= 2 {
        a.verb = rest[0].to_string();
        rest = &rest[1..];
        verb_from_path = true;
    }
    if !verb_from_path {
        a.verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        }
        .to_string();
    }
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        a.namespace = rest[1].to_string();
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    if rest.len() >= 3 && a.verb != "proxy" {
        a.subresource = rest[2].to_string();
    }
    if rest.len() >= 2 {
        a.name = rest[1].to_string();
    }
    if let Some(r) = rest.first() {
        a.resource = r.to_string();
    }
    if a.name.is_empty() && a.verb == "get" {
        let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        a.verb = if matches!(q("watch"), Some("1" | "t" | "T" | "true" | "TRUE" | "True")) {
            "watch"
        } else {
            "list"
        }
        .to_string();
        if let Some(name) = q("fieldSelector").and_then(exact_name) {
            a.name = name;
        }
    }
    if a.name.is_empty() && a.verb == "delete" {
        a.verb = "deletecollection".into();
    }
    a
}

/// The name a field selector pins (`metadata.name=x` or `metadata.name==x`), if it does.
fn exact_name(selector: &str) -> Option<String> {
    let mut found = None;
    for term in selector.split(',') {
        let term = term.trim();
        let value = term
            .strip_prefix("metadata.name==")
            .or_else(|| term.strip_prefix("metadata.name="));
        if let Some(v) = value {
            found = Some(v.to_string());
        }
    }
    found.filter(|n| !n.is_empty() && !n.contains('/') && n != "." && n != "..")
}

/// Upstream's 403 for a denied request: `pods "x" is forbidden: User "jane" cannot get resource
/// "pods" in API group "" in the namespace "default"`, with the reason appended after `: `.
pub fn forbidden(a: &Attributes, reason: &str) -> ApiError {
    let what = if !a.resource_request {
        format!("User {:?} cannot {} path {:?}", a.user.name, a.verb, a.path)
    } else {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", a.namespace)
        };
        format!(
            "User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
            a.user.name, a.verb, a.api_group
        )
    };
    let err = if reason.is_empty() {
        what
    } else {
        format!("{what}: {reason}")
    };
    let (resource, group, name) = if a.resource_request {
        (a.resource.as_str(), a.api_group.as_str(), a.name.as_str())
    } else {
        ("", "", "")
    };
    let qualified = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    let message = if qualified.is_empty() {
        format!("forbidden: {err}")
    } else if name.is_empty() {
        format!("{qualified} is forbidden: {err}")
    } else {
        format!("{qualified} {name:?} is forbidden: {err}")
    };
    ApiError {
        code: 403,
        reason: "Forbidden",
        message,
        details: Some(Box::new(Details {
            name: name.to_string(),
            group: group.to_string(),
            kind: resource.to_string(),
            ..Default::default()
        })),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The attributes of an access review's `spec` (`resourceAttributes` or
/// `nonResourceAttributes`) for `user`.
pub fn review_attributes(user: UserInfo, spec: &Value) -> Option<Attributes> {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        return Some(Attributes {
            user,
            verb: s(r, "verb"),
            resource_request: true,
            api_group: s(r, "group"),
            api_version: s(r, "version"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            namespace: s(r, "namespace"),
            name: s(r, "name"),
            path: String::new(),
        });
    }
    let n = spec.get("nonResourceAttributes").filter(|v| v.is_object())?;
    Some(Attributes {
        user,
        verb: s(n, "verb"),
        path: s(n, "path"),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jane() -> UserInfo {
        UserInfo::authenticated("jane", "", vec![])
    }

    fn attrs(method: Method, path: &str, query: &[(&str, &str)]) -> Attributes {
        let q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        request_attributes(&jane(), &method, path, &q)
    }

    #[test]
    fn requests_map_to_upstream_attributes() {
        let a = attrs(Method::GET, "/api/v1/namespaces/kube-system/pods", &[]);
        assert!(a.resource_request);
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()),
            ("list", "pods", "kube-system")
        );
        let a = attrs(Method::GET, "/api/v1/pods", &[("watch", "true")]);
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("watch", ""));
        let a = attrs(
            Method::GET,
            "/api/v1/namespaces/d/pods",
            &[("fieldSelector", "metadata.name=web")],
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("list", "web"));
        let a = attrs(Method::GET, "/api/v1/namespaces/d/pods/web/log", &[]);
        assert_eq!(
            (a.verb.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("get", "web", "log")
        );
        let a = attrs(Method::DELETE, "/apis/apps/v1/namespaces/d/deployments", &[]);
        assert_eq!(
            (a.verb.as_str(), a.api_group.as_str()),
            ("deletecollection", "apps")
        );
        let a = attrs(
            Method::PATCH,
            "/apis/apps/v1/namespaces/d/deployments/web/scale",
            &[],
        );
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.subresource.as_str()),
            ("patch", "deployments", "scale")
        );
        // The namespace object: its name is its namespace.
        let a = attrs(Method::GET, "/api/v1/namespaces/team", &[]);
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.name.as_str(),
                a.namespace.as_str()
            ),
            ("get", "namespaces", "team", "team")
        );
        let a = attrs(Method::PUT, "/api/v1/namespaces/team/finalize", &[]);
        assert_eq!(
            (a.resource.as_str(), a.subresource.as_str()),
            ("namespaces", "finalize")
        );
        let a = attrs(Method::GET, "/api/v1/namespaces", &[]);
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("list", ""));
        let a = attrs(
            Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            &[],
        );
        assert_eq!(
            (a.verb.as_str(), a.api_group.as_str(), a.resource.as_str()),
            ("create", "rbac.authorization.k8s.io", "clusterroles")
        );
        for p in [
            "/api",
            "/api/v1",
            "/apis/apps/v1",
            "/version",
            "/openapi/v3/apis/apps/v1",
            "/healthz",
        ] {
            let a = attrs(Method::GET, p, &[]);
            assert!(!a.resource_request, "{p}");
            assert_eq!(a.verb, "get");
        }
    }

    #[test]
    fn forbidden_says_what_upstream_says() {
        let e = forbidden(
            &attrs(Method::GET, "/api/v1/namespaces/kube-system/pods", &[]),
            "",
        );
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            r#"pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "kube-system""#
        );
        assert_eq!(e.to_status()["details"], json!({"kind": "pods"}));
        let e = forbidden(
            &attrs(Method::DELETE, "/api/v1/namespaces/default/pods/x", &[]),
            "",
        );
        assert_eq!(
            e.message,
            r#"pods "x" is forbidden: User "jane" cannot delete resource "pods" in API group "" in the namespace "default""#
        );
        let e = forbidden(
            &attrs(Method::GET, "/api/v1/namespaces/default/pods/x/log", &[]),
            "",
        );
        assert_eq!(
            e.message,
            r#"pods "x" is forbidden: User "jane" cannot get resource "pods/log" in API group "" in the namespace "default""#
        );
        let e = forbidden(&attrs(Method::GET, "/apis/apps/v1/deployments", &[]), "");
        assert_eq!(
            e.message,
            r#"deployments.apps is forbidden: User "jane" cannot list resource "deployments" in API group "apps" at the cluster scope"#
        );
        assert_eq!(
            e.to_status()["details"],
            json!({"kind": "deployments", "group": "apps"})
        );
        let e = forbidden(&attrs(Method::GET, "/logs", &[]), "RBAC: x");
        assert_eq!(
            e.message,
            r#"forbidden: User "jane" cannot get path "/logs": RBAC: x"#
        );
    }

    fn index() -> Index {
        let mut ix = Index::default();
        for r in policy::cluster_roles() {
            ix.upsert("ClusterRole", &r);
        }
        for b in policy::cluster_role_bindings() {
            ix.upsert("ClusterRoleBinding", &b);
        }
        ix.upsert(
            "RoleBinding",
            &json!({"metadata": {"namespace": "default", "name": "b"}, "subjects": [{"kind": "User", "name": "jane"}], "roleRef": {"kind": "ClusterRole", "name": "view"}}),
        );
        ix
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                http::header::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                h.append(k, v);
            }
        }
        h
    }

    #[test]
    fn masters_are_allowed_and_may_impersonate() {
        let authz = Authorizer::with_index(index());
        let admin = UserInfo::authenticated("admin", "", vec![GROUP_MASTERS.into()]);
        let a = request_attributes(&admin, &Method::DELETE, "/api/v1/nodes", &[]);
        assert!(authz.authorize(&a).allowed);
        let as_jane = authz
            .impersonate(
                admin.clone(),
                &headers(&[("Impersonate-User", "jane"), ("Impersonate-Group", "devs")]),
            )
            .expect("impersonation");
        assert_eq!(as_jane.name, "jane");
        assert_eq!(
            as_jane.groups,
            vec!["devs".to_string(), GROUP_AUTHENTICATED.to_string()]
        );
        let sa = authz
            .impersonate(
                admin.clone(),
                &headers(&[("Impersonate-User", "system:serviceaccount:kube-system:x")]),
            )
            .expect("impersonation");
        assert_eq!(
            sa.groups,
            vec![
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
                GROUP_AUTHENTICATED
            ]
        );
        let same = authz
            .impersonate(admin.clone(), &HeaderMap::new())
            .expect("no headers");
        assert_eq!(same, admin);
    }

    #[test]
    fn others_may_not_impersonate_without_a_grant() {
        let authz = Authorizer::with_index(index());
        let err = authz
            .impersonate(jane(), &headers(&[("Impersonate-User", "bob")]))
            .expect_err("jane may not impersonate");
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            r#"users "bob" is forbidden: User "jane" cannot impersonate resource "users" in API group "" at the cluster scope"#
        );
        let err = authz
            .impersonate(jane(), &headers(&[("Impersonate-Group", "x")]))
            .expect_err("a group without a user");
        assert_eq!(err.code, 500);
    }

    #[test]
    fn admit_authorizes_the_impersonated_user() {
        let authz = Authorizer::with_index(index());
        let admin = UserInfo::authenticated("admin", "", vec![GROUP_MASTERS.into()]);
        let h = headers(&[("Impersonate-User", "jane")]);
        let ok = authz.admit(
            admin.clone(),
            &Method::GET,
            "/api/v1/namespaces/default/pods",
            &[],
            &h,
        );
        assert_eq!(ok.map(|u| u.name), Ok("jane".to_string()));
        let err = authz
            .admit(
                admin.clone(),
                &Method::GET,
                "/api/v1/namespaces/kube-system/pods",
                &[],
                &h,
            )
            .expect_err("jane may not list kube-system");
        assert!(err.message.contains(r#"User "jane" cannot list resource "pods""#));
        // A websocket exec is a create of pods/exec.
        let ws = headers(&[
            ("Impersonate-User", "jane"),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
        ]);
        let err = authz
            .admit(
                admin,
                &Method::GET,
                "/api/v1/namespaces/default/pods/p/exec",
                &[],
                &ws,
            )
            .expect_err("view may not exec");
        assert!(
            err.message.contains(r#"cannot create resource "pods/exec""#),
            "{}",
            err.message
        );
    }

    /// Objects over an embedded store in a fresh directory (removed when dropped).
    struct TempObjects {
        dir: std::path::PathBuf,
        objects: Arc<Objects>,
    }

    impl Drop for TempObjects {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn temp_objects(name: &str) -> TempObjects {
        let dir = std::env::temp_dir().join(format!("keel-authz-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = keel_store::embedded::EmbeddedStore::open(&dir, Default::default()).expect("store");
        let objects = Arc::new(Objects::new(Arc::new(store), Arc::new(crate::Config::default())));
        TempObjects { dir, objects }
    }

    #[tokio::test]
    async fn the_index_follows_the_store_and_bootstraps_the_policy() {
        let t = temp_objects("follow");
        crate::bootstrap::ensure(&t.objects).await.expect("namespaces");
        let authz = Authorizer::start(t.objects.clone()).await;
        let jane = UserInfo::authenticated("jane", "", vec![]);
        let list = request_attributes(&jane, &Method::GET, "/api/v1/namespaces/default/pods", &[]);
        assert!(!authz.authorize(&list).allowed);
        let discovery = request_attributes(&jane, &Method::GET, "/apis", &[]);
        assert!(
            authz.authorize(&discovery).allowed,
            "the bootstrap policy is loaded"
        );

        // A binding written behind the API's back (in process) arrives through the watch.
        let rb = rbac_type("rolebindings").expect("rolebindings");
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "jane-view", "namespace": "default"},
            "subjects": [{"kind": "User", "name": "jane"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        });
        let mut ctx = crate::objects::WriteCtx::default();
        t.objects
            .create(rb, Some("default"), binding, &mut ctx)
            .await
            .expect("create");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !authz.authorize(&list).allowed {
            assert!(std::time::Instant::now() < deadline, "the grant never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The aggregated view role was written back with its rules.
        let view = t
            .objects
            .get(rbac_type("clusterroles").expect("clusterroles"), None, "view")
            .await
            .expect("view");
        assert!(view["rules"].as_array().is_some_and(|r| !r.is_empty()), "{view}");

        t.objects
            .delete(rb, Some("default"), "jane-view", &serde_json::json!({}), &mut ctx)
            .await
            .expect("delete");
        while authz.authorize(&list).allowed {
            assert!(
                std::time::Instant::now() < deadline,
                "the revocation never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn review_specs_become_attributes() {
        let spec = json!({"resourceAttributes": {"namespace": "d", "verb": "get", "resource": "pods", "subresource": "log", "name": "p"}});
        let a = review_attributes(jane(), &spec).expect("attributes");
        assert_eq!(
            (a.resource.as_str(), a.subresource.as_str(), a.name.as_str()),
            ("pods", "log", "p")
        );
        let spec = json!({"nonResourceAttributes": {"path": "/api", "verb": "get"}});
        let a = review_attributes(jane(), &spec).expect("attributes");
        assert!(!a.resource_request);
        assert!(review_attributes(jane(), &json!({})).is_none());
    }
}
