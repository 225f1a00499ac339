//! Inter-pod affinity and anti-affinity: where a pod may go given the pods already placed.
//!
//! Terms are compiled once per pod ([`PodAffinity`]). For one scheduling attempt,
//! [`Constraints::build`] walks the placed pods once and reduces them to sets of topology values
//! (`zone=a`, `kubernetes.io/hostname=n1`): where the required affinity terms are satisfied,
//! where the pod's anti-affinity forbids it, where placed pods' own required anti-affinity
//! forbids it (upstream checks that direction too), and per-value counts for the preferred
//! terms. Checking a node is then a few set lookups. Pods without terms, in a cluster where no
//! placed pod has required anti-affinity, skip all of this.
//!
//! As upstream: a term's namespaces default to the pod's own; a required affinity term that no
//! placed pod satisfies is waived if the pod matches it itself (the first pod of a group);
//! `namespaceSelector` is not supported (treated as absent).

use std::collections::{HashMap, HashSet};

use keel_api::selector::LabelSelector;
use serde_json::{Map, Value};

/// Who a pod is, for other pods' selectors.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub namespace: String,
    pub labels: Map<String, Value>,
}

impl Identity {
    pub fn of(pod: &Value) -> Identity {
        Identity {
            namespace: pod
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            labels: pod
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PodTerm {
    selector: LabelSelector,
    /// Empty: the owning pod's namespace.
    namespaces: Vec<String>,
    pub topology_key: String,
    weight: i64,
}

impl PodTerm {
    fn parse(term: &Value, weight: i64) -> Option<PodTerm> {
        Some(PodTerm {
            selector: LabelSelector::from_json(term.get("labelSelector")).ok()?,
            namespaces: term
                .get("namespaces")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default(),
            topology_key: term.get("topologyKey")?.as_str()?.to_string(),
            weight,
        })
    }

    /// Whether `other` is selected by this term of a pod in `owner_ns`.
    fn selects(&self, owner_ns: &str, other: &Identity) -> bool {
        let ns_ok = if self.namespaces.is_empty() {
            other.namespace == owner_ns
        } else {
            self.namespaces.contains(&other.namespace)
        };
        ns_ok && self.selector.matches(Some(&other.labels))
    }
}

/// A pod's inter-pod terms.
#[derive(Clone, Debug, Default)]
pub struct PodAffinity {
    pub required: Vec<PodTerm>,
    pub anti_required: Vec<PodTerm>,
    pub preferred: Vec<PodTerm>,
    pub anti_preferred: Vec<PodTerm>,
}

fn terms(v: Option<&Value>, required: bool) -> Vec<PodTerm> {
    let Some(list) = v.and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|t| {
            if required {
                PodTerm::parse(t, 1)
            } else {
                PodTerm::parse(
                    t.get("podAffinityTerm")?,
                    t.get("weight").and_then(Value::as_i64).unwrap_or(1),
                )
            }
        })
        .collect()
}

impl PodAffinity {
    /// The pod's terms, if it has any.
    pub fn parse(pod: &Value) -> Option<PodAffinity> {
        let aff = pod.pointer("/spec/affinity")?;
        let a = aff.get("podAffinity");
        let anti = aff.get("podAntiAffinity");
        let req = "requiredDuringSchedulingIgnoredDuringExecution";
        let pref = "preferredDuringSchedulingIgnoredDuringExecution";
        let out = PodAffinity {
            required: terms(a.and_then(|a| a.get(req)), true),
            anti_required: terms(anti.and_then(|a| a.get(req)), true),
            preferred: terms(a.and_then(|a| a.get(pref)), false),
            anti_preferred: terms(anti.and_then(|a| a.get(pref)), false),
        };
        let empty = out.required.is_empty()
            && out.anti_required.is_empty()
            && out.preferred.is_empty()
            && out.anti_preferred.is_empty();
        (!empty).then_some(out)
    }
}

/// Why a node fails the inter-pod rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    Affinity,
    AntiAffinity,
    ExistingAntiAffinity,
}

/// The placed pods reduced to what one pod's attempt needs.
#[derive(Debug, Default)]
pub struct Constraints {
    /// Per required affinity term: the topology values with a matching pod (`None`: waived).
    affinity: Vec<(String, Option<HashSet<String>>)>,
    /// Forbidden (topology key, value) pairs from the pod's anti-affinity.
    anti: HashSet<(String, String)>,
    /// Forbidden pairs from placed pods' required anti-affinity.
    existing_anti: HashSet<(String, String)>,
    /// Preferred terms: (key, value) → summed weight (negative for anti-affinity).
    preferred: HashMap<(String, String), i64>,
}

impl Constraints {
    /// `placed` yields each placed pod's identity, terms and its node's labels.
    pub fn build<'a>(
        me: &Identity,
        mine: Option<&PodAffinity>,
        placed: impl Iterator<Item = (&'a Identity, Option<&'a PodAffinity>, &'a HashMap<String, String>)>,
    ) -> Constraints {
        let empty = PodAffinity::default();
        let mine = mine.unwrap_or(&empty);
        let mut c = Constraints {
            affinity: mine
                .required
                .iter()
                .map(|t| (t.topology_key.clone(), Some(HashSet::new())))
                .collect(),
            ..Default::default()
        };
        for (other, theirs, labels) in placed {
            for (i, t) in mine.required.iter().enumerate() {
                if let (true, Some(v)) = (t.selects(&me.namespace, other), labels.get(&t.topology_key)) {
                    if let Some(set) = c.affinity[i].1.as_mut() {
                        set.insert(v.clone());
                    }
                }
            }
            for t in &mine.anti_required {
                if let (true, Some(v)) = (t.selects(&me.namespace, other), labels.get(&t.topology_key)) {
                    c.anti.insert((t.topology_key.clone(), v.clone()));
                }
            }
            for (t, sign) in mine
                .preferred
                .iter()
                .map(|t| (t, 1))
                .chain(mine.anti_preferred.iter().map(|t| (t, -1)))
            {
                if let (true, Some(v)) = (t.selects(&me.namespace, other), labels.get(&t.topology_key)) {
                    *c.preferred
                        .entry((t.topology_key.clone(), v.clone()))
                        .or_insert(0) += sign * t.weight;
                }
            }
            if let Some(theirs) = theirs {
                for t in &theirs.anti_required {
                    if let (true, Some(v)) = (t.selects(&other.namespace, me), labels.get(&t.topology_key)) {
                        c.existing_anti.insert((t.topology_key.clone(), v.clone()));
                    }
                }
            }
        }
        // A group's first pod: no placed pod matches, but the pod matches its own term.
        for (i, t) in mine.required.iter().enumerate() {
            let none = c.affinity[i].1.as_ref().is_some_and(HashSet::is_empty);
            if none && t.selects(&me.namespace, me) {
                c.affinity[i].1 = None;
            }
        }
        c
    }

    pub fn check(&self, labels: &HashMap<String, String>) -> Result<(), Violation> {
        for (key, values) in &self.affinity {
            if let Some(values) = values {
                if !labels.get(key).is_some_and(|v| values.contains(v)) {
                    return Err(Violation::Affinity);
                }
            }
        }
        let hit = |set: &HashSet<(String, String)>| set.iter().any(|(k, v)| labels.get(k) == Some(v));
        if hit(&self.anti) {
            return Err(Violation::AntiAffinity);
        }
        if hit(&self.existing_anti) {
            return Err(Violation::ExistingAntiAffinity);
        }
        Ok(())
    }

    /// The preferred terms' weight for a node (may be negative).
    pub fn score(&self, labels: &HashMap<String, String>) -> i64 {
        self.preferred
            .iter()
            .filter(|((k, v), _)| labels.get(k) == Some(v))
            .map(|(_, w)| *w)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(app: &str, affinity: Value) -> (Identity, Option<PodAffinity>) {
        let p =
            json!({"metadata": {"namespace": "ns", "labels": {"app": app}}, "spec": {"affinity": affinity}});
        (Identity::of(&p), PodAffinity::parse(&p))
    }

    fn node(zone: &str, host: &str) -> HashMap<String, String> {
        HashMap::from([
            ("zone".to_string(), zone.to_string()),
            ("kubernetes.io/hostname".to_string(), host.to_string()),
        ])
    }

    #[test]
    fn required_affinity_anti_affinity_and_existing_anti_affinity() {
        let (cache, cache_aff) = pod(
            "cache",
            json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "noisy"}}, "topologyKey": "kubernetes.io/hostname"}]}}),
        );
        let n1 = node("a", "n1");
        let n2 = node("b", "n2");
        let placed = [(&cache, cache_aff.as_ref(), &n1)];

        // Affinity to the cache's zone.
        let (web, web_aff) = pod(
            "web",
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}),
        );
        let c = Constraints::build(&web, web_aff.as_ref(), placed.iter().copied());
        assert_eq!(c.check(&n1), Ok(()));
        assert_eq!(c.check(&n2), Err(Violation::Affinity));

        // Anti-affinity to the cache's host.
        let (lone, lone_aff) = pod(
            "lone",
            json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]}}),
        );
        let c = Constraints::build(&lone, lone_aff.as_ref(), placed.iter().copied());
        assert_eq!(c.check(&n1), Err(Violation::AntiAffinity));
        assert_eq!(c.check(&n2), Ok(()));

        // The cache repels noisy pods from its host.
        let (noisy, _) = pod("noisy", json!({}));
        let c = Constraints::build(&noisy, None, placed.iter().copied());
        assert_eq!(c.check(&n1), Err(Violation::ExistingAntiAffinity));
        assert_eq!(c.check(&n2), Ok(()));
    }

    #[test]
    fn the_first_pod_of_a_group_may_go_anywhere() {
        let (first, aff) = pod(
            "db",
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}),
        );
        let c = Constraints::build(&first, aff.as_ref(), std::iter::empty());
        assert_eq!(c.check(&node("a", "n1")), Ok(()));
    }

    #[test]
    fn preferred_terms_weigh_domains() {
        let (cache, _) = pod("cache", json!({}));
        let n1 = node("a", "n1");
        let (web, aff) = pod(
            "web",
            json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 80, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}}]}}),
        );
        let c = Constraints::build(&web, aff.as_ref(), [(&cache, None, &n1)].into_iter());
        assert_eq!(c.score(&node("a", "n9")), 80);
        assert_eq!(c.score(&node("b", "n2")), 0);
    }
}
