//! URL paths of the Kubernetes REST API, parsed into a [`Route`].
//!
//! The grammar is small and regular, so it is parsed by hand rather than with a router: that
//! keeps the one ambiguity upstream has (`/api/v1/namespaces/{name}/status` is the namespace's
//! subresource, `/api/v1/namespaces/{ns}/pods` a namespaced collection) in one visible place.

use keel_api::registry::{self, ResourceType};

/// Where a request goes.
#[derive(Debug, PartialEq)]
pub enum Route {
    Version,
    Health(&'static str),
    /// `/api` (core) or `/apis` (all other groups).
    DiscoveryRoot {
        core: bool,
    },
    /// `/apis/{group}`.
    DiscoveryGroup {
        group: String,
    },
    /// `/api/v1` or `/apis/{group}/{version}`.
    DiscoveryGroupVersion {
        group: String,
        version: String,
    },
    OpenApiV3Index,
    /// `/openapi/v2`: kubectl's fallback for kinds the v3 documents do not describe.
    OpenApiV2,
    OpenApiV3Document {
        group: String,
        version: String,
    },
    /// A resource collection, object or subresource.
    Resource(ResourcePath),
    /// `/apis/metrics.k8s.io/v1beta1/...`: computed node and pod metrics.
    Metrics {
        namespace: Option<String>,
        plural: String,
        name: Option<String>,
    },
    NotFound,
}

/// A path to a collection (`name` is `None`), an object, or an object's subresource.
#[derive(Debug, PartialEq)]
pub struct ResourcePath {
    pub rt: &'static ResourceType,
    /// `Some` for paths under `/namespaces/{ns}/`; `None` for cluster-scoped resources and
    /// all-namespace lists.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

pub fn parse(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz"] | ["healthz", ..] => Route::Health("healthz"),
        ["livez"] | ["livez", ..] => Route::Health("livez"),
        ["readyz"] | ["readyz", ..] => Route::Health("readyz"),
        ["api"] => Route::DiscoveryRoot { core: true },
        ["apis"] => Route::DiscoveryRoot { core: false },
        ["openapi", "v3"] => Route::OpenApiV3Index,
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3", "api", v] => Route::OpenApiV3Document {
            group: String::new(),
            version: v.to_string(),
        },
        ["openapi", "v3", "apis", g, v] => Route::OpenApiV3Document {
            group: g.to_string(),
            version: v.to_string(),
        },
        ["api", v] => Route::DiscoveryGroupVersion {
            group: String::new(),
            version: v.to_string(),
        },
        ["apis", g] => Route::DiscoveryGroup { group: g.to_string() },
        ["apis", "metrics.k8s.io", "v1beta1", rest @ ..] if !rest.is_empty() => metrics(rest),
        ["apis", g, v] => Route::DiscoveryGroupVersion {
            group: g.to_string(),
            version: v.to_string(),
        },
        ["api", v, rest @ ..] => resource("", v, rest),
        ["apis", g, v, rest @ ..] => resource(g, v, rest),
        _ => Route::NotFound,
    }
}

fn metrics(rest: &[&str]) -> Route {
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        _ => (None, rest),
    };
    match rest {
        [plural] => Route::Metrics {
            namespace,
            plural: plural.to_string(),
            name: None,
        },
        [plural, name] => Route::Metrics {
            namespace,
            plural: plural.to_string(),
            name: Some(name.to_string()),
        },
        _ => Route::NotFound,
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Route {
    let found = |plural: &str| registry::find(group, version, plural);
    let path = |rt, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Route::Resource(ResourcePath {
            rt,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
        })
    };
    match rest {
        // The namespace object itself and its subresources.
        ["namespaces", name] if group.is_empty() => match found("namespaces") {
            Some(rt) => path(rt, None, Some(name), None),
            None => Route::NotFound,
        },
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            match found("namespaces") {
                Some(rt) => path(rt, None, Some(name), Some(sub)),
                None => Route::NotFound,
            }
        }
        ["namespaces", ns, plural, tail @ ..] => match found(plural) {
            Some(rt) if rt.namespaced => match tail {
                [] => path(rt, Some(ns), None, None),
                [name] => path(rt, Some(ns), Some(name), None),
                [name, sub] => path(rt, Some(ns), Some(name), Some(sub)),
                // proxy subresources carry a path after them
                [name, sub, ..] if *sub == "proxy" => path(rt, Some(ns), Some(name), Some(sub)),
                _ => Route::NotFound,
            },
            _ => Route::NotFound,
        },
        [plural, tail @ ..] => match found(plural) {
            Some(rt) => match tail {
                [] => path(rt, None, None, None),
                [name] if !rt.namespaced => path(rt, None, Some(name), None),
                [name, sub] if !rt.namespaced => path(rt, None, Some(name), Some(sub)),
                [name, sub, ..] if !rt.namespaced && *sub == "proxy" => path(rt, None, Some(name), Some(sub)),
                _ => Route::NotFound,
            },
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(p: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        match parse(p) {
            Route::Resource(r) => (r.rt.plural.to_string(), r.namespace, r.name, r.subresource),
            other => panic!("{p}: {other:?}"),
        }
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            res("/api/v1/namespaces/default/pods"),
            ("pods".into(), Some("default".into()), None, None)
        );
        assert_eq!(res("/api/v1/pods"), ("pods".into(), None, None, None));
        assert_eq!(
            res("/api/v1/namespaces/kube-system"),
            ("namespaces".into(), None, Some("kube-system".into()), None)
        );
        assert_eq!(
            res("/api/v1/namespaces/x/finalize"),
            (
                "namespaces".into(),
                None,
                Some("x".into()),
                Some("finalize".into())
            )
        );
        assert_eq!(
            res("/apis/apps/v1/namespaces/d/deployments/web/scale"),
            (
                "deployments".into(),
                Some("d".into()),
                Some("web".into()),
                Some("scale".into())
            )
        );
        assert_eq!(
            res("/api/v1/nodes/n1/status"),
            ("nodes".into(), None, Some("n1".into()), Some("status".into()))
        );
        assert_eq!(parse("/api/v1/pods/x"), Route::NotFound);
        assert_eq!(parse("/apis/nope/v1/things"), Route::NotFound);
        assert_eq!(parse("/api"), Route::DiscoveryRoot { core: true });
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1beta1"),
            Route::DiscoveryGroupVersion {
                group: "metrics.k8s.io".into(),
                version: "v1beta1".into()
            }
        );
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1beta1/namespaces/d/pods/p"),
            Route::Metrics {
                namespace: Some("d".into()),
                plural: "pods".into(),
                name: Some("p".into())
            }
        );
        assert_eq!(
            parse("/openapi/v3/apis/apps/v1"),
            Route::OpenApiV3Document {
                group: "apps".into(),
                version: "v1".into()
            }
        );
    }
}
