//! Which objects with a pod selector (Services, PodDisruptionBudgets) select which pods, kept
//! from the watches. A pod event maps to the objects that select the pod now *or* selected it
//! when it was last seen, so a relabelled pod also requeues the objects it just left.

use std::collections::HashMap;
use std::sync::Mutex;

use keel_api::selector::LabelSelector;
use serde_json::Value;

use crate::runner::ObjectRef;

#[derive(Default)]
pub struct SelectorIndex {
    selectors: Mutex<HashMap<ObjectRef, LabelSelector>>,
    /// The objects each pod was mapped to when last seen.
    pods: Mutex<HashMap<ObjectRef, Vec<ObjectRef>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SelectorIndex {
    /// Remembers `key`'s selector, or forgets it (`None`: deleted, terminating, no selector).
    pub fn set(&self, key: &ObjectRef, selector: Option<LabelSelector>) {
        let mut selectors = lock(&self.selectors);
        match selector {
            Some(s) => {
                selectors.insert(key.clone(), s);
            }
            None => {
                selectors.remove(key);
            }
        }
    }

    /// The objects of the pod's namespace selecting `pod` now or when it was last seen.
    pub fn selecting(&self, pod: &Value) -> Vec<ObjectRef> {
        let Some(key) = ObjectRef::from_object(pod) else {
            return Vec::new();
        };
        let now: Vec<ObjectRef> = lock(&self.selectors)
            .iter()
            .filter(|(o, sel)| o.namespace == key.namespace && sel.matches_object(pod))
            .map(|(o, _)| o.clone())
            .collect();
        let mut all = now.clone();
        let mut pods = lock(&self.pods);
        if let Some(before) = pods.get(&key) {
            for o in before {
                if !all.contains(o) {
                    all.push(o.clone());
                }
            }
        }
        if now.is_empty() {
            pods.remove(&key);
        } else {
            pods.insert(key, now);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"namespace": "default", "name": "p", "labels": labels}})
    }

    #[test]
    fn a_relabelled_pod_maps_to_the_objects_it_left() {
        let index = SelectorIndex::default();
        let web =
            ObjectRef::from_object(&json!({"metadata": {"namespace": "default", "name": "web"}})).unwrap();
        let other =
            ObjectRef::from_object(&json!({"metadata": {"namespace": "other", "name": "web"}})).unwrap();
        let sel = |app: &str| Some(LabelSelector::from_map(json!({"app": app}).as_object().unwrap()));
        index.set(&web, sel("web"));
        index.set(&other, sel("web"));
        assert_eq!(index.selecting(&pod(json!({"app": "web"}))), vec![web.clone()]);
        // Relabelled: no longer selected, but the Service it left still hears of it, once.
        assert_eq!(index.selecting(&pod(json!({"app": "db"}))), vec![web.clone()]);
        assert!(index.selecting(&pod(json!({"app": "db"}))).is_empty());
        index.set(&web, None);
        assert!(index.selecting(&pod(json!({"app": "web"}))).is_empty());
    }
}
