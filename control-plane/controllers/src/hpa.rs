//! HorizontalPodAutoscalers (`autoscaling/v2`; v1 objects are stored as v2), with upstream's
//! algorithm (`pkg/controller/podautoscaler`):
//!
//! * every [`SYNC_PERIOD`] each HPA reads its target's replicas and selector (Deployment,
//!   ReplicaSet, StatefulSet, ReplicationController), the pods it selects, and their usage from
//!   the resource metrics ([`MetricsSource`], what `metrics.k8s.io` serves);
//! * per `Resource` (or `ContainerResource`) metric, the replica count is
//!   `ceil(current usage / target × ready pods)`, unless within a 10 % tolerance; pods being
//!   deleted or failed are ignored, pending and (for CPU) freshly started pods whose usage
//!   predates their readiness are set aside, and pods without metrics count as 100 % of their
//!   request when scaling down and as 0 when scaling up, exactly as [`calculate`] documents;
//!   the largest proposal of all metrics wins;
//! * the proposal is then stabilized and rate-limited ([`normalize`]): with `behavior`, the
//!   scale-up/scale-down stabilization windows over past recommendations and the scaling
//!   policies over past scale events; without it, the cluster-wide downscale stabilization
//!   window (`--horizontal-pod-autoscaler-downscale-stabilization`, 5 minutes) and at most
//!   doubling (or 4 replicas) per step; always within `minReplicas..=maxReplicas`;
//! * a change is written as the target's `spec.replicas` (what its `scale` subresource
//!   writes), with a `SuccessfulRescale` event, and the status tells the rest: current and
//!   desired replicas, current metrics (what `kubectl get hpa` shows as `cpu: 250%/50%`), the
//!   `AbleToScale`, `ScalingActive` and `ScalingLimited` conditions with upstream's reasons, and
//!   `lastScaleTime`.
//!
//! Recommendations and scale events live in memory, as upstream keeps them: a restarted control
//! plane starts its stabilization windows afresh.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_api::client::{ApiClient, Patch, WriteOptions};
use keel_api::metrics::{quantity_milli, MetricsSource, PodUsage};
use keel_api::registry::{self, ResourceType};
use keel_api::selector::LabelSelector;
use serde_json::{json, Value};

use crate::events::{self, NORMAL, WARNING};
use crate::runner::{Action, Error, ObjectRef};
use crate::Kinds;

/// How often each HPA is evaluated (`--horizontal-pod-autoscaler-sync-period`).
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// Usage within this ratio of the target changes nothing (`--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;
/// The default scale-down stabilization window, cluster-wide.
pub const DEFAULT_DOWNSCALE_STABILIZATION: Duration = Duration::from_secs(300);
/// For CPU, how long after start a pod's readiness decides whether its usage counts.
pub const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// After the initialization period, a pod that turned unready this soon after start counts
/// as not yet ready.
pub const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);

const COMPONENT: &str = "horizontal-pod-autoscaler";

// ---- the replica calculation --------------------------------------------------------------

/// One pod as the calculation sees it; times are Unix milliseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodSample {
    pub name: String,
    /// `status.phase`.
    pub phase: String,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The `Ready` condition: its status and last transition; `None` if the pod has none.
    pub ready: Option<(bool, i64)>,
    pub start: Option<i64>,
    /// The sum of the containers' requests of the resource, in thousandths.
    pub request_milli: i128,
    /// A container without a request of the resource, if any.
    pub missing_request: Option<String>,
    /// Usage (thousandths), when the metrics have it.
    pub usage: Option<Usage>,
}

/// A pod's usage: the value, the end of its window and the window's length (milliseconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub milli: i128,
    pub timestamp: i64,
    pub window: i64,
}

/// What a metric aims at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Percent of the pods' requests.
    Utilization(i32),
    /// Average per pod, thousandths.
    AverageValue(i128),
}

/// A proposal for one metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    /// Current utilization in percent of requests (utilization targets only).
    pub utilization: Option<i32>,
    /// Current average usage per pod, thousandths.
    pub average_milli: i128,
}

/// Why no proposal could be made, in upstream's words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalcError {
    #[error("no pods returned by selector while calculating replica count")]
    NoPods,
    #[error("did not receive metrics for targeted pods (pods might be unready)")]
    NoReadyMetrics,
    #[error("missing request for {resource} in container {container} of Pod {pod}")]
    MissingRequest {
        resource: String,
        container: String,
        pod: String,
    },
    #[error("no metrics returned matched known pods")]
    NoMatchingRequests,
}

/// Upstream's `groupPods`: (ready with metrics, unready, missing metrics); ignored pods are
/// dropped.
fn group(pods: &[PodSample], cpu: bool, now: i64) -> (Vec<&PodSample>, Vec<&PodSample>, Vec<&PodSample>) {
    let (mut ready, mut unready, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    let init = CPU_INITIALIZATION_PERIOD.as_millis() as i64;
    let delay = INITIAL_READINESS_DELAY.as_millis() as i64;
    for p in pods {
        if p.deleting || p.phase == "Failed" {
            continue;
        }
        if p.phase == "Pending" {
            unready.push(p);
            continue;
        }
        let Some(usage) = p.usage else {
            missing.push(p);
            continue;
        };
        if cpu {
            let not_ready = match (p.ready, p.start) {
                (Some((status, transition)), Some(start)) => {
                    if start + init > now {
                        !status || usage.timestamp < transition + usage.window
                    } else {
                        !status && start + delay > transition
                    }
                }
                _ => true,
            };
            if not_ready {
                unready.push(p);
                continue;
            }
        }
        ready.push(p);
    }
    (ready, unready, missing)
}

/// Upstream's `GetResourceReplicas` (utilization) and `calcPlainMetricReplicas` (average
/// value): the replica count one metric proposes for `current` replicas.
pub fn calculate(
    current: i32,
    pods: &[PodSample],
    resource: &str,
    target: Target,
    now: i64,
) -> Result<Proposal, CalcError> {
    if pods.is_empty() {
        return Err(CalcError::NoPods);
    }
    let (ready, unready, missing) = group(pods, resource == "cpu", now);
    if matches!(target, Target::Utilization(_)) {
        if let Some(p) = pods.iter().find(|p| p.missing_request.is_some()) {
            return Err(CalcError::MissingRequest {
                resource: resource.to_string(),
                container: p.missing_request.clone().unwrap_or_default(),
                pod: p.name.clone(),
            });
        }
    }
    if ready.is_empty() {
        return Err(CalcError::NoReadyMetrics);
    }
    let requests: HashMap<&str, i128> = pods.iter().map(|p| (p.name.as_str(), p.request_milli)).collect();
    let mut metrics: BTreeMap<&str, i128> = ready
        .iter()
        .filter_map(|p| Some((p.name.as_str(), p.usage?.milli)))
        .collect();
    // (ratio, utilization, raw average) of a set of pod metrics.
    let ratio = |m: &BTreeMap<&str, i128>| -> Result<(f64, Option<i32>, i128), CalcError> {
        match target {
            Target::Utilization(t) => {
                let (mut used, mut requested, mut n) = (0i128, 0i128, 0i128);
                for (name, v) in m {
                    if let Some(r) = requests.get(name) {
                        used += v;
                        requested += r;
                        n += 1;
                    }
                }
                if requested == 0 {
                    return Err(CalcError::NoMatchingRequests);
                }
                let utilization = (used * 100 / requested) as i32;
                Ok((
                    f64::from(utilization) / f64::from(t.max(1)),
                    Some(utilization),
                    used / n,
                ))
            }
            Target::AverageValue(t) => {
                let n = m.len().max(1) as i128;
                let avg = m.values().sum::<i128>() / n;
                Ok((
                    m.values().sum::<i128>() as f64 / n as f64 / (t.max(1) as f64),
                    None,
                    avg,
                ))
            }
        }
    };
    let within = |r: f64| (1.0 - r).abs() <= TOLERANCE;
    let (usage_ratio, utilization, average_milli) = ratio(&metrics)?;
    let proposal = |replicas: i32| Proposal {
        replicas,
        utilization,
        average_milli,
    };
    let scale_up_with_unready = !unready.is_empty() && usage_ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if within(usage_ratio) {
            return Ok(proposal(current));
        }
        return Ok(proposal((usage_ratio * ready.len() as f64).ceil() as i32));
    }
    if usage_ratio < 1.0 {
        for p in &missing {
            let fallback = match target {
                Target::Utilization(t) => p.request_milli * i128::from(t.max(100)) / 100,
                Target::AverageValue(t) => t,
            };
            metrics.insert(p.name.as_str(), fallback);
        }
    } else if usage_ratio > 1.0 {
        for p in &missing {
            metrics.insert(p.name.as_str(), 0);
        }
    }
    if scale_up_with_unready {
        for p in &unready {
            metrics.insert(p.name.as_str(), 0);
        }
    }
    let (new_ratio, _, _) = ratio(&metrics)?;
    if within(new_ratio) || (usage_ratio < 1.0 && new_ratio > 1.0) || (usage_ratio > 1.0 && new_ratio < 1.0) {
        return Ok(proposal(current));
    }
    let replicas = (new_ratio * metrics.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

// ---- stabilization and rate limits ----------------------------------------------------------

/// Which policy's result applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

/// One scaling policy: `Pods` or `Percent` within `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub percent: bool,
    pub value: i32,
    pub period: Duration,
}

/// `behavior.scaleUp` or `behavior.scaleDown`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub window: Duration,
    pub select: Select,
    pub policies: Vec<Policy>,
}

/// `spec.behavior`, with upstream's defaults for what is unset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behavior {
    pub up: Rules,
    pub down: Rules,
}

impl Behavior {
    /// The behavior of an HPA spec; `None` without `spec.behavior`. An unset scale-down window
    /// is the cluster's `downscale` window.
    pub fn of(spec: &Value, downscale: Duration) -> Option<Behavior> {
        let b = spec.get("behavior").filter(|b| b.is_object())?;
        let rules = |r: Option<&Value>, window: Duration, policies: Vec<Policy>| -> Rules {
            let r = r.filter(|r| r.is_object());
            let window = r
                .and_then(|r| r.get("stabilizationWindowSeconds"))
                .and_then(Value::as_u64)
                .map_or(window, Duration::from_secs);
            let select = match r.and_then(|r| r.get("selectPolicy")).and_then(Value::as_str) {
                Some("Min") => Select::Min,
                Some("Disabled") => Select::Disabled,
                _ => Select::Max,
            };
            let given: Option<Vec<Policy>> = r
                .and_then(|r| r.get("policies"))
                .and_then(Value::as_array)
                .filter(|p| !p.is_empty())
                .map(|ps| {
                    ps.iter()
                        .map(|p| Policy {
                            percent: p.get("type").and_then(Value::as_str) == Some("Percent"),
                            value: p.get("value").and_then(Value::as_i64).unwrap_or(0) as i32,
                            period: Duration::from_secs(
                                p.get("periodSeconds").and_then(Value::as_u64).unwrap_or(15),
                            ),
                        })
                        .collect()
                });
            Rules {
                window,
                select,
                policies: given.unwrap_or(policies),
            }
        };
        let secs = Duration::from_secs;
        Some(Behavior {
            up: rules(
                b.get("scaleUp"),
                Duration::ZERO,
                vec![
                    Policy {
                        percent: false,
                        value: 4,
                        period: secs(15),
                    },
                    Policy {
                        percent: true,
                        value: 100,
                        period: secs(15),
                    },
                ],
            ),
            down: rules(
                b.get("scaleDown"),
                downscale,
                vec![Policy {
                    percent: true,
                    value: 100,
                    period: secs(15),
                }],
            ),
        })
    }
}

/// What one HPA remembers between passes.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Unstabilized recommendations.
    recommendations: Vec<(Instant, i32)>,
    /// Replicas added (up) or removed (down) by each rescale.
    up_events: Vec<(Instant, i32)>,
    down_events: Vec<(Instant, i32)>,
    /// When the HPA was last evaluated, at which generation.
    last_sync: Option<(Instant, i64)>,
}

/// A condition: (status, reason, message).
pub type Cond = (bool, &'static str, String);

/// The result of [`normalize`].
#[derive(Clone, Debug, PartialEq)]
pub struct Normalized {
    pub replicas: i32,
    /// `AbleToScale` (always True here: stabilized or ready for a new scale).
    pub able: Cond,
    /// `ScalingLimited`.
    pub limited: Cond,
}

fn within(now: Instant, at: Instant, window: Duration) -> bool {
    now.saturating_duration_since(at) < window
}

fn change_in_period(events: &[(Instant, i32)], period: Duration, now: Instant) -> i32 {
    events
        .iter()
        .filter(|(at, _)| within(now, *at, period))
        .map(|(_, n)| n)
        .sum()
}

fn scale_up_limit(current: i32, events: &[(Instant, i32)], rules: &Rules, now: Instant) -> i32 {
    if rules.select == Select::Disabled {
        return current;
    }
    let mut result = if rules.select == Select::Min {
        i32::MAX
    } else {
        i32::MIN
    };
    for p in &rules.policies {
        let start = current - change_in_period(events, p.period, now);
        let proposed = if p.percent {
            (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
        } else {
            start.saturating_add(p.value)
        };
        result = if rules.select == Select::Min {
            result.min(proposed)
        } else {
            result.max(proposed)
        };
    }
    result.max(current)
}

fn scale_down_limit(current: i32, events: &[(Instant, i32)], rules: &Rules, now: Instant) -> i32 {
    if rules.select == Select::Disabled {
        return current;
    }
    // For scaling down, the smallest change ("Min") is the largest count.
    let mut result = if rules.select == Select::Min {
        i32::MIN
    } else {
        i32::MAX
    };
    for p in &rules.policies {
        let start = current + change_in_period(events, p.period, now);
        let proposed = if p.percent {
            (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32
        } else {
            start - p.value
        };
        result = if rules.select == Select::Min {
            result.max(proposed)
        } else {
            result.min(proposed)
        };
    }
    result.min(current)
}

fn stabilized_msg(desired: i32, current: i32) -> (&'static str, String) {
    if desired >= current {
        (
            "ScaleUpStabilized",
            "recent recommendations were lower than current one, applying the lowest recent recommendation"
                .into(),
        )
    } else {
        (
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation"
                .into(),
        )
    }
}

fn ready_for_new_scale() -> Cond {
    (
        true,
        "ReadyForNewScale",
        "recommended size matches current size".into(),
    )
}

const WITHIN_RANGE: (&str, &str) = (
    "DesiredWithinRange",
    "the desired count is within the acceptable range",
);

/// Upstream's `normalizeDesiredReplicas` (no behavior) and
/// `normalizeDesiredReplicasWithBehaviors`: stabilizes `desired` over the recommendations of
/// the windows and limits the rate; records `desired` as a recommendation.
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    h: &mut History,
    behavior: Option<&Behavior>,
    downscale: Duration,
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    now: Instant,
) -> Normalized {
    let (up_window, down_window) = match behavior {
        Some(b) => (b.up.window, b.down.window),
        None => (Duration::ZERO, downscale),
    };
    let mut up_rec = desired;
    let mut down_rec = desired;
    for (at, r) in &h.recommendations {
        if within(now, *at, up_window) {
            up_rec = up_rec.min(*r);
        }
        if within(now, *at, down_window) {
            down_rec = down_rec.max(*r);
        }
    }
    let keep = up_window.max(down_window);
    h.recommendations.retain(|(at, _)| within(now, *at, keep));
    h.recommendations.push((now, desired));
    let stabilized = match behavior {
        Some(_) => current.max(up_rec).min(down_rec),
        // Without behavior only scale-down is stabilized.
        None => down_rec,
    };
    let able = if stabilized != desired {
        let (reason, message) = match behavior {
            Some(_) => stabilized_msg(desired, current),
            None => stabilized_msg(-1, 0),
        };
        (true, reason, message)
    } else {
        ready_for_new_scale()
    };
    let (replicas, reason, message): (i32, &'static str, String) = match behavior {
        None => {
            let up_limit = (2 * current).max(4);
            let (max_allowed, reason, message) = if max > up_limit {
                (
                    up_limit,
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                (
                    max,
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                )
            };
            if stabilized < min {
                (
                    min,
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count".into(),
                )
            } else if stabilized > max_allowed {
                (max_allowed, reason, message.into())
            } else {
                (stabilized, WITHIN_RANGE.0, WITHIN_RANGE.1.into())
            }
        }
        Some(b) => {
            if stabilized > current {
                let limit = scale_up_limit(current, &h.up_events, &b.up, now).max(current);
                let (max_allowed, reason, message) = if max > limit {
                    (
                        limit,
                        "ScaleUpLimit",
                        "the desired replica count is increasing faster than the maximum scale rate",
                    )
                } else {
                    (
                        max,
                        "TooManyReplicas",
                        "the desired replica count is more than the maximum replica count",
                    )
                };
                if stabilized > max_allowed {
                    (max_allowed, reason, message.into())
                } else {
                    (stabilized, WITHIN_RANGE.0, WITHIN_RANGE.1.into())
                }
            } else if stabilized < current {
                let limit = scale_down_limit(current, &h.down_events, &b.down, now).min(current);
                let (min_allowed, reason, message) = if min < limit {
                    (
                        limit,
                        "ScaleDownLimit",
                        "the desired replica count is decreasing faster than the maximum scale rate",
                    )
                } else {
                    (
                        min,
                        "TooFewReplicas",
                        "the desired replica count is less than the minimum replica count",
                    )
                };
                if stabilized < min_allowed {
                    (min_allowed, reason, message.into())
                } else {
                    (stabilized, WITHIN_RANGE.0, WITHIN_RANGE.1.into())
                }
            } else {
                (stabilized, WITHIN_RANGE.0, WITHIN_RANGE.1.into())
            }
        }
    };
    Normalized {
        replicas,
        able,
        limited: (replicas != stabilized, reason, message),
    }
}

/// Records a rescale for the policies' periods (only HPAs with a behavior have policies).
pub fn record_scale(h: &mut History, behavior: Option<&Behavior>, from: i32, to: i32, now: Instant) {
    let Some(b) = behavior else {
        return;
    };
    let longest = |r: &Rules| r.policies.iter().map(|p| p.period).max().unwrap_or_default();
    let (up, down) = (longest(&b.up), longest(&b.down));
    h.up_events.retain(|(at, _)| within(now, *at, up));
    h.down_events.retain(|(at, _)| within(now, *at, down));
    if to > from {
        h.up_events.push((now, to - from));
    } else if to < from {
        h.down_events.push((now, from - to));
    }
}

// ---- the controller ---------------------------------------------------------------------------

/// The HPA controller's context.
pub struct Autoscaler {
    pub client: Arc<dyn ApiClient>,
    pub kinds: Kinds,
    pub hpas: &'static ResourceType,
    pub metrics: Option<Arc<dyn MetricsSource>>,
    /// The scale-down stabilization window of HPAs that do not set one.
    pub downscale_stabilization: Duration,
    history: Mutex<HashMap<ObjectRef, History>>,
}

impl Autoscaler {
    pub fn new(
        client: Arc<dyn ApiClient>,
        metrics: Option<Arc<dyn MetricsSource>>,
        downscale_stabilization: Duration,
    ) -> Result<Autoscaler, Error> {
        Ok(Autoscaler {
            client,
            kinds: Kinds::resolve()?,
            hpas: registry::find("autoscaling", "v2", "horizontalpodautoscalers")
                .ok_or(Error::MissingResource("horizontalpodautoscalers"))?,
            metrics,
            downscale_stabilization,
            history: Mutex::default(),
        })
    }

    fn with_history<T>(&self, key: &ObjectRef, f: impl FnOnce(&mut History) -> T) -> T {
        let mut all = match self.history.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        f(all.entry(key.clone()).or_default())
    }

    /// Forgets a deleted HPA's history.
    pub fn forget(&self, key: &ObjectRef) {
        if let Ok(mut all) = self.history.lock() {
            all.remove(key);
        }
    }

    async fn event(&self, hpa: &Value, type_: &str, reason: &str, message: &str) {
        events::record(
            self.client.as_ref(),
            self.kinds.events,
            COMPONENT,
            hpa,
            type_,
            reason,
            message,
        )
        .await;
    }
}

/// The cleanup for deleted HPAs.
pub fn cleanup() -> crate::runner::Cleanup<Autoscaler> {
    Arc::new(|key, a: Arc<Autoscaler>| {
        Box::pin(async move {
            a.forget(&key);
            Ok(Action::Done)
        })
    })
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn millis_of(rfc3339: &str) -> Option<i64> {
    keel_api::time::parse(rfc3339).map(|t| t.as_millisecond())
}

/// A quantity in thousandths as upstream prints a `MilliQuantity` (`125m`, `2`, `52428800`).
pub fn milli_quantity(milli: i128) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let mut v = milli / 1000;
    if v == 0 {
        return "0".into();
    }
    let mut suffix = "";
    for s in ["k", "M", "G", "T", "P", "E"] {
        if v % 1000 != 0 {
            break;
        }
        v /= 1000;
        suffix = s;
    }
    format!("{v}{suffix}")
}

/// The resource type a `scaleTargetRef` names.
fn target_rt(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    registry::find_kind(group, version, kind).or_else(|| {
        registry::RESOURCES
            .iter()
            .find(|r| r.group == group && r.kind == kind)
    })
}

/// A pod's request of `resource`, summed over its containers (or just `container`).
fn requests(pod: &Value, resource: &str, container: Option<&str>) -> (i128, Option<String>) {
    let mut total = 0i128;
    let mut missing = None;
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_at(c, "/name");
        if container.is_some_and(|want| want != name) {
            continue;
        }
        match c
            .pointer(&format!("/resources/requests/{resource}"))
            .and_then(|q| match q {
                Value::String(s) => quantity_milli(s),
                Value::Number(n) => n.as_f64().map(|f| (f * 1000.0).ceil() as i128),
                _ => None,
            }) {
            Some(q) => total += q,
            None => {
                if missing.is_none() {
                    missing = Some(name.to_string());
                }
            }
        }
    }
    (total, missing)
}

/// A pod's usage of `resource` in thousandths (all containers, or one).
fn usage_of(u: &PodUsage, resource: &str, container: Option<&str>) -> Option<Usage> {
    let mut milli = 0i128;
    let mut any = false;
    for c in &u.containers {
        if container.is_some_and(|want| want != c.name) {
            continue;
        }
        any = true;
        milli += match resource {
            // Nanocores to millicores, rounded up as MilliValue does.
            "cpu" => (i128::from(c.usage.cpu_nanocores) + 999_999) / 1_000_000,
            "memory" => i128::from(c.usage.memory_bytes) * 1000,
            _ => return None,
        };
    }
    any.then_some(Usage {
        milli,
        timestamp: u.timestamp_unix_millis,
        window: u.window_millis as i64,
    })
}

fn pod_sample(pod: &Value, usage: Option<&PodUsage>, resource: &str, container: Option<&str>) -> PodSample {
    let ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/type") == "Ready"))
        .map(|c| {
            (
                str_at(c, "/status") == "True",
                millis_of(str_at(c, "/lastTransitionTime")).unwrap_or(0),
            )
        });
    let (request_milli, missing_request) = requests(pod, resource, container);
    PodSample {
        name: str_at(pod, "/metadata/name").to_string(),
        phase: str_at(pod, "/status/phase").to_string(),
        deleting: pod
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|d| !d.is_null()),
        ready,
        start: millis_of(str_at(pod, "/status/startTime")),
        request_milli,
        missing_request,
        usage: usage.and_then(|u| usage_of(u, resource, container)),
    }
}

/// One metric of the spec, evaluated.
struct Evaluated {
    replicas: i32,
    /// `cpu resource utilization (percentage of request)`.
    name: String,
    status: Value,
}

fn metric_name(resource: &str, utilization: bool, container: Option<&str>) -> String {
    let what = match container {
        Some(_) => format!("{resource} container resource"),
        None => format!("{resource} resource"),
    };
    if utilization {
        format!("{what} utilization (percentage of request)")
    } else {
        what
    }
}

fn evaluate(
    metric: &Value,
    current: i32,
    pods: &[&Value],
    usage: &HashMap<String, PodUsage>,
    now: i64,
) -> Result<Evaluated, String> {
    let kind = str_at(metric, "/type");
    let (source, container) = match kind {
        "Resource" => ("resource", None),
        "ContainerResource" => (
            "containerResource",
            Some(str_at(metric, "/containerResource/container")),
        ),
        other => return Err(format!("unsupported metric source type \"{other}\"")),
    };
    let resource = str_at(metric, &format!("/{source}/name")).to_string();
    let target_spec = metric
        .pointer(&format!("/{source}/target"))
        .cloned()
        .unwrap_or(Value::Null);
    let target = match str_at(&target_spec, "/type") {
        "Utilization" => Target::Utilization(
            target_spec
                .get("averageUtilization")
                .and_then(Value::as_i64)
                .unwrap_or(0) as i32,
        ),
        "AverageValue" => Target::AverageValue(
            target_spec
                .get("averageValue")
                .and_then(|q| {
                    q.as_str()
                        .map(str::to_string)
                        .or_else(|| q.as_i64().map(|n| n.to_string()))
                })
                .and_then(|q| quantity_milli(&q))
                .unwrap_or(0),
        ),
        other => {
            return Err(format!(
                "invalid resource metric source: unsupported target type \"{other}\""
            ))
        }
    };
    let samples: Vec<PodSample> = pods
        .iter()
        .map(|p| {
            let uid = str_at(p, "/metadata/uid");
            pod_sample(p, usage.get(uid), &resource, container)
        })
        .collect();
    let no_metrics = !samples.is_empty() && samples.iter().all(|s| s.usage.is_none());
    let what = if matches!(target, Target::Utilization(_)) {
        format!("failed to get {resource} utilization")
    } else {
        format!("failed to get {resource} usage")
    };
    if no_metrics {
        return Err(format!(
            "{what}: unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        ));
    }
    let proposal =
        calculate(current, &samples, &resource, target, now).map_err(|e| format!("{what}: {e}"))?;
    let mut current_status = json!({"averageValue": milli_quantity(proposal.average_milli)});
    if let Some(u) = proposal.utilization {
        current_status["averageUtilization"] = json!(u);
    }
    let mut body = json!({"name": resource, "current": current_status});
    if let Some(c) = container {
        body["container"] = json!(c);
    }
    Ok(Evaluated {
        replicas: proposal.replicas,
        name: metric_name(&resource, matches!(target, Target::Utilization(_)), container),
        status: json!({"type": kind, source: body}),
    })
}

/// Sets a condition, keeping `lastTransitionTime` when the status did not change.
fn set_condition(conds: &mut Vec<Value>, type_: &str, c: &Cond) {
    let status = if c.0 { "True" } else { "False" };
    let now = keel_api::time::now_rfc3339();
    let transition = conds
        .iter()
        .find(|x| str_at(x, "/type") == type_ && str_at(x, "/status") == status)
        .and_then(|x| x.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    let new = json!({"type": type_, "status": status, "lastTransitionTime": transition,
                     "reason": c.1, "message": c.2});
    match conds.iter_mut().find(|x| str_at(x, "/type") == type_) {
        Some(x) => *x = new,
        None => conds.push(new),
    }
}

/// One pass over one HPA.
pub async fn reconcile(hpa: Arc<Value>, a: Arc<Autoscaler>) -> Result<Action, Error> {
    let Some(key) = ObjectRef::from_object(&hpa) else {
        return Ok(Action::Done);
    };
    let ns = key.namespace.clone().unwrap_or_default();
    let generation = hpa
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let now = Instant::now();
    // Status writes come back as events: evaluate at most once per period per generation.
    let wait = a.with_history(&key, |h| match h.last_sync {
        Some((at, g)) if g == generation && now.saturating_duration_since(at) < SYNC_PERIOD => {
            Some(SYNC_PERIOD - now.saturating_duration_since(at))
        }
        _ => {
            h.last_sync = Some((now, generation));
            None
        }
    });
    if let Some(wait) = wait {
        return Ok(Action::RequeueAfter(wait));
    }

    let spec = hpa.get("spec").cloned().unwrap_or(Value::Null);
    let mut conds: Vec<Value> = hpa
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1) as i32;
    let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(1) as i32;
    let target_kind = str_at(&spec, "/scaleTargetRef/kind").to_string();
    let target_name = str_at(&spec, "/scaleTargetRef/name").to_string();
    let target_api = str_at(&spec, "/scaleTargetRef/apiVersion").to_string();

    let target = match target_rt(&target_api, &target_kind) {
        Some(rt) => a
            .client
            .get(rt, Some(ns.clone()), target_name.clone())
            .await
            .map(|t| (rt, t))
            .map_err(|e| e.message),
        None => Err(format!(
            "no matches for kind \"{target_kind}\" in group \"{}\"",
            target_api.split_once('/').map_or("", |(g, _)| g)
        )),
    };
    let (target_rt, target) = match target {
        Ok(t) => t,
        Err(e) => {
            let message = format!("the HPA controller was unable to get the target's current scale: {e}");
            set_condition(
                &mut conds,
                "AbleToScale",
                &(false, "FailedGetScale", message.clone()),
            );
            a.event(&hpa, WARNING, "FailedGetScale", &e).await;
            write_status(&a, &hpa, json!({"conditions": conds})).await?;
            return Ok(Action::RequeueAfter(SYNC_PERIOD));
        }
    };
    let current = target
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1) as i32;
    set_condition(
        &mut conds,
        "AbleToScale",
        &(
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
        ),
    );

    let mut desired = 0;
    let mut reason = String::new();
    let mut rescale = true;
    let mut current_metrics: Vec<Value> = Vec::new();
    if current == 0 && min != 0 {
        rescale = false;
        set_condition(
            &mut conds,
            "ScalingActive",
            &(
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
            ),
        );
    } else if current > max {
        reason = "Current number of replicas above Spec.MaxReplicas".into();
        desired = max;
    } else if current < min {
        reason = "Current number of replicas below Spec.MinReplicas".into();
        desired = min;
    } else {
        let selector = match target_rt.kind {
            "ReplicationController" => target
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(LabelSelector::from_map)
                .ok_or_else(|| "the target has no selector".to_string()),
            _ => LabelSelector::from_json(target.pointer("/spec/selector"))
                .map_err(|e| e.message().to_string()),
        };
        let listed = a
            .client
            .list(a.kinds.pods, Some(ns.clone()), Default::default())
            .await?;
        let usage: HashMap<String, PodUsage> = a
            .metrics
            .as_ref()
            .map(|m| m.pods(Some(&ns)))
            .unwrap_or_default()
            .into_iter()
            .map(|u| (u.uid.clone(), u))
            .collect();
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let metrics = spec
            .get("metrics")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut best: Option<(i32, String)> = None;
        let mut first_error: Option<(&'static str, String)> = None;
        let mut invalid = 0;
        match &selector {
            Err(e) => first_error = Some(("InvalidSelector", e.clone())),
            Ok(sel) => {
                let pods: Vec<&Value> = listed
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|p| sel.matches_object(p))
                    .collect();
                for m in &metrics {
                    match evaluate(m, current, &pods, &usage, now_ms) {
                        Ok(e) => {
                            current_metrics.push(e.status);
                            if best.as_ref().is_none_or(|(r, _)| e.replicas > *r) {
                                best = Some((e.replicas, e.name));
                            }
                        }
                        Err(msg) => {
                            invalid += 1;
                            let kind = str_at(m, "/type");
                            let reason = if kind == "Resource" || kind == "ContainerResource" {
                                "FailedGetResourceMetric"
                            } else {
                                "InvalidMetricSourceType"
                            };
                            a.event(&hpa, WARNING, reason, &msg).await;
                            if first_error.is_none() {
                                first_error = Some((reason, msg));
                            }
                        }
                    }
                }
            }
        }
        // As upstream: any invalid metric blocks scaling down; all invalid blocks everything.
        let all_invalid = best.is_none();
        if let Some((reason, msg)) = &first_error {
            if all_invalid {
                let message = format!("the HPA was unable to compute the replica count: {msg}");
                set_condition(&mut conds, "ScalingActive", &(false, reason, message));
                let total = metrics.len().max(1);
                a.event(
                    &hpa,
                    WARNING,
                    "FailedComputeMetricsReplicas",
                    &format!("invalid metrics ({invalid} invalid out of {total}), first error is: {msg}"),
                )
                .await;
                write_status(
                    &a,
                    &hpa,
                    json!({"currentReplicas": current, "desiredReplicas": current,
                           "currentMetrics": current_metrics, "conditions": conds,
                           "observedGeneration": generation}),
                )
                .await?;
                return Ok(Action::RequeueAfter(SYNC_PERIOD));
            }
        }
        let (mut proposed, name) = best.unwrap_or((current, String::new()));
        if first_error.is_some() && proposed < current {
            proposed = current;
        }
        set_condition(
            &mut conds,
            "ScalingActive",
            &(
                true,
                "ValidMetricFound",
                format!("the HPA was able to successfully calculate a replica count from {name}"),
            ),
        );
        if proposed > current {
            reason = format!("{name} above target");
        } else if proposed < current {
            reason = "All metrics below target".into();
        }
        let behavior = Behavior::of(&spec, a.downscale_stabilization);
        let n = a.with_history(&key, |h| {
            normalize(
                h,
                behavior.as_ref(),
                a.downscale_stabilization,
                current,
                proposed,
                min,
                max,
                now,
            )
        });
        set_condition(&mut conds, "AbleToScale", &n.able);
        set_condition(&mut conds, "ScalingLimited", &n.limited);
        desired = n.replicas;
        rescale = desired != current;
    }

    let mut status = json!({
        "currentReplicas": current,
        "desiredReplicas": desired,
        "currentMetrics": current_metrics,
        "observedGeneration": generation,
    });
    if let Some(t) = hpa.pointer("/status/lastScaleTime").filter(|t| !t.is_null()) {
        status["lastScaleTime"] = t.clone();
    }
    if rescale {
        let patch = Patch::Merge(json!({"spec": {"replicas": desired}}));
        match a
            .client
            .patch(
                target_rt,
                Some(ns.clone()),
                target_name.clone(),
                patch,
                None,
                WriteOptions::default(),
            )
            .await
        {
            Ok(_) => {
                set_condition(
                    &mut conds,
                    "AbleToScale",
                    &(
                        true,
                        "SucceededRescale",
                        format!("the HPA controller was able to update the target scale to {desired}"),
                    ),
                );
                a.event(
                    &hpa,
                    NORMAL,
                    "SuccessfulRescale",
                    &format!("New size: {desired}; reason: {reason}"),
                )
                .await;
                let behavior = Behavior::of(&spec, a.downscale_stabilization);
                a.with_history(&key, |h| {
                    record_scale(h, behavior.as_ref(), current, desired, now)
                });
                status["lastScaleTime"] = json!(keel_api::time::now_rfc3339());
                tracing::info!(hpa = %key, from = current, to = desired, %reason, "rescaled");
            }
            Err(e) => {
                a.event(
                    &hpa,
                    WARNING,
                    "FailedRescale",
                    &format!("New size: {desired}; reason: {reason}; error: {}", e.message),
                )
                .await;
                set_condition(
                    &mut conds,
                    "AbleToScale",
                    &(
                        false,
                        "FailedUpdateScale",
                        format!(
                            "the HPA controller was unable to update the target scale: {}",
                            e.message
                        ),
                    ),
                );
                status["desiredReplicas"] = hpa
                    .pointer("/status/desiredReplicas")
                    .cloned()
                    .unwrap_or(json!(current));
            }
        }
    }
    status["conditions"] = json!(conds);
    write_status(&a, &hpa, status).await?;
    Ok(Action::RequeueAfter(SYNC_PERIOD))
}

/// Writes the status if it changed.
async fn write_status(a: &Autoscaler, hpa: &Value, status: Value) -> Result<(), Error> {
    let mut merged = hpa.get("status").cloned().unwrap_or(json!({}));
    if let (Some(m), Some(s)) = (merged.as_object_mut(), status.as_object()) {
        for (k, v) in s {
            m.insert(k.clone(), v.clone());
        }
    }
    if hpa.get("status") == Some(&merged) {
        return Ok(());
    }
    let name = str_at(hpa, "/metadata/name").to_string();
    let ns = str_at(hpa, "/metadata/namespace").to_string();
    match a
        .client
        .patch(
            a.hpas,
            Some(ns),
            name,
            Patch::Merge(json!({"status": merged})),
            Some("status".into()),
            WriteOptions::default(),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::Api(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const MIN: i64 = 60_000;

    /// A running pod, Ready since long before `NOW`, started 10 minutes ago.
    fn pod(name: &str, request: i128, usage: Option<i128>) -> PodSample {
        PodSample {
            name: name.into(),
            phase: "Running".into(),
            deleting: false,
            ready: Some((true, NOW - 9 * MIN)),
            start: Some(NOW - 10 * MIN),
            request_milli: request,
            missing_request: None,
            usage: usage.map(|m| Usage {
                milli: m,
                timestamp: NOW,
                window: 10_000,
            }),
        }
    }

    #[test]
    fn replica_calculation_follows_upstream() {
        let util = Target::Utilization(50);
        struct Case {
            what: &'static str,
            current: i32,
            pods: Vec<PodSample>,
            target: Target,
            resource: &'static str,
            want: Result<(i32, Option<i32>), CalcError>,
        }
        let fresh = |mut p: PodSample, ready_ago: i64, sample_end_ago: i64| {
            p.start = Some(NOW - 60_000);
            p.ready = Some((true, NOW - ready_ago));
            if let Some(u) = p.usage.as_mut() {
                u.timestamp = NOW - sample_end_ago;
            }
            p
        };
        let cases = vec![
            Case {
                what: "burning 4x the target: 1 -> 4",
                current: 1,
                pods: vec![pod("a", 50, Some(100))],
                target: util,
                resource: "cpu",
                want: Ok((4, Some(200))),
            },
            Case {
                what: "within tolerance: unchanged",
                current: 2,
                pods: vec![pod("a", 100, Some(52)), pod("b", 100, Some(53))],
                target: util,
                resource: "cpu",
                want: Ok((2, Some(52))),
            },
            Case {
                what: "idle: 3 -> 1",
                current: 3,
                pods: vec![
                    pod("a", 50, Some(1)),
                    pod("b", 50, Some(0)),
                    pod("c", 50, Some(2)),
                ],
                target: util,
                resource: "cpu",
                want: Ok((1, Some(2))),
            },
            Case {
                what: "a pod without metrics counts as 100% of its request when scaling down",
                current: 2,
                pods: vec![pod("a", 100, Some(10)), pod("b", 100, None)],
                target: util,
                resource: "cpu",
                // (10 + 100) / 200 = 55% / 50% → within tolerance → unchanged
                want: Ok((2, Some(10))),
            },
            Case {
                what: "a pod without metrics counts as 0 when scaling up",
                current: 2,
                pods: vec![pod("a", 100, Some(200)), pod("b", 100, None)],
                target: util,
                resource: "cpu",
                // 200 / 200 = 100% / 50% = 2 → ceil(2 * 2) = 4
                want: Ok((4, Some(200))),
            },
            Case {
                what: "pending pods count as 0 when scaling up",
                current: 2,
                pods: vec![
                    pod("a", 100, Some(300)),
                    PodSample {
                        phase: "Pending".into(),
                        ..pod("b", 100, None)
                    },
                ],
                target: util,
                resource: "cpu",
                // 300 / 200 = 150% / 50% = 3 → ceil(3 * 2) = 6
                want: Ok((6, Some(300))),
            },
            Case {
                what: "deleting and failed pods are ignored",
                current: 1,
                pods: vec![
                    pod("a", 100, Some(100)),
                    PodSample {
                        deleting: true,
                        ..pod("b", 100, Some(0))
                    },
                    PodSample {
                        phase: "Failed".into(),
                        ..pod("c", 100, Some(0))
                    },
                ],
                target: util,
                resource: "cpu",
                want: Ok((2, Some(100))),
            },
            Case {
                what: "cpu of a fresh pod whose sample predates its readiness is set aside",
                current: 2,
                pods: vec![pod("a", 100, Some(100)), fresh(pod("b", 100, Some(0)), 5_000, 0)],
                target: util,
                resource: "cpu",
                // only a: 100% / 50% → scale up with b unready at 0: (100+0)/200 = 50% → within → 2
                want: Ok((2, Some(100))),
            },
            Case {
                what: "cpu of a fresh pod sampled a window after readiness counts",
                current: 2,
                pods: vec![
                    pod("a", 100, Some(100)),
                    fresh(pod("b", 100, Some(100)), 30_000, 0),
                ],
                target: util,
                resource: "cpu",
                want: Ok((4, Some(100))),
            },
            Case {
                what: "memory ignores readiness",
                current: 1,
                pods: vec![PodSample {
                    ready: Some((false, NOW)),
                    ..pod("a", 100, Some(200))
                }],
                target: util,
                resource: "memory",
                want: Ok((4, Some(200))),
            },
            Case {
                what: "average value",
                current: 2,
                pods: vec![pod("a", 0, Some(300)), pod("b", 0, Some(100))],
                target: Target::AverageValue(100),
                resource: "cpu",
                want: Ok((4, None)),
            },
            Case {
                what: "no pods",
                current: 1,
                pods: vec![],
                target: util,
                resource: "cpu",
                want: Err(CalcError::NoPods),
            },
            Case {
                what: "only unready pods",
                current: 1,
                pods: vec![PodSample {
                    ready: Some((false, NOW)),
                    start: Some(NOW - 1000),
                    ..pod("a", 100, Some(10))
                }],
                target: util,
                resource: "cpu",
                want: Err(CalcError::NoReadyMetrics),
            },
            Case {
                what: "a container without a request",
                current: 1,
                pods: vec![PodSample {
                    missing_request: Some("app".into()),
                    ..pod("a", 0, Some(10))
                }],
                target: util,
                resource: "cpu",
                want: Err(CalcError::MissingRequest {
                    resource: "cpu".into(),
                    container: "app".into(),
                    pod: "a".into(),
                }),
            },
        ];
        for c in cases {
            let got =
                calculate(c.current, &c.pods, c.resource, c.target, NOW).map(|p| (p.replicas, p.utilization));
            assert_eq!(got, c.want, "{}", c.what);
        }
        assert_eq!(
            CalcError::MissingRequest {
                resource: "cpu".into(),
                container: "burn".into(),
                pod: "burn-1".into()
            }
            .to_string(),
            "missing request for cpu in container burn of Pod burn-1"
        );
    }

    fn rules(window: u64, select: Select, policies: &[(bool, i32, u64)]) -> Rules {
        Rules {
            window: Duration::from_secs(window),
            select,
            policies: policies
                .iter()
                .map(|&(percent, value, period)| Policy {
                    percent,
                    value,
                    period: Duration::from_secs(period),
                })
                .collect(),
        }
    }

    #[test]
    fn behavior_defaults_and_overrides() {
        let down = Duration::from_secs(300);
        assert_eq!(Behavior::of(&json!({}), down), None);
        let b = Behavior::of(&json!({"behavior": {}}), down).expect("behavior");
        assert_eq!(b.up, rules(0, Select::Max, &[(false, 4, 15), (true, 100, 15)]));
        assert_eq!(b.down, rules(300, Select::Max, &[(true, 100, 15)]));
        let b = Behavior::of(
            &json!({"behavior": {"scaleDown": {"stabilizationWindowSeconds": 10, "selectPolicy": "Min",
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}}),
            down,
        )
        .expect("behavior");
        assert_eq!(b.down, rules(10, Select::Min, &[(false, 1, 60)]));
    }

    #[test]
    fn normalization_stabilizes_and_limits() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let down = s(300);

        // Without behavior: scale-down waits for the window; scale-up at most max(2x, 4).
        let mut h = History::default();
        let n = normalize(&mut h, None, down, 1, 10, 1, 20, t0);
        assert_eq!(n.replicas, 4);
        assert_eq!(
            n.limited,
            (
                true,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate".into()
            )
        );
        let n = normalize(&mut h, None, down, 4, 2, 1, 20, t0 + s(15));
        // The highest recommendation of the window (10), at most doubled from 4.
        assert_eq!((n.replicas, n.limited.1), (8, "ScaleUpLimit"));
        assert_eq!(n.able.1, "ScaleDownStabilized");
        let n = normalize(&mut h, None, down, 4, 2, 1, 20, t0 + s(301));
        assert_eq!(
            n.replicas, 2,
            "the 10 left the window; the 2 at +15 s is the highest"
        );
        assert_eq!(n.able, ready_for_new_scale());
        assert!(!n.limited.0);
        let n = normalize(&mut h, None, down, 2, 30, 1, 3, t0 + s(302));
        assert_eq!(n.replicas, 3);
        assert_eq!(n.limited.1, "TooManyReplicas");
        let mut h = History::default();
        let n = normalize(&mut h, None, down, 2, 0, 1, 3, t0);
        assert_eq!((n.replicas, n.limited.1), (1, "TooFewReplicas"));

        // With behavior: default scale-up allows +4 pods or +100% per 15 s, whichever is more.
        let b = Behavior::of(
            &json!({"behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}),
            down,
        )
        .expect("behavior");
        let mut h = History::default();
        let n = normalize(&mut h, Some(&b), down, 1, 10, 1, 100, t0);
        assert_eq!((n.replicas, n.limited.1), (5, "ScaleUpLimit"));
        record_scale(&mut h, Some(&b), 1, 5, t0);
        let n = normalize(&mut h, Some(&b), down, 5, 20, 1, 100, t0 + s(5));
        assert_eq!(
            n.replicas, 5,
            "the period's budget (from 1: max(1+4, 2)) is spent"
        );
        let n = normalize(&mut h, Some(&b), down, 5, 20, 1, 100, t0 + s(16));
        assert_eq!(n.replicas, 10, "a new period: 5 + max(4, 100%)");
        // Scale-down stabilization over 60 s.
        let n = normalize(&mut h, Some(&b), down, 10, 2, 1, 100, t0 + s(30));
        assert_eq!((n.replicas, n.able.1), (10, "ScaleDownStabilized"));
        let n = normalize(&mut h, Some(&b), down, 10, 2, 1, 100, t0 + s(80));
        assert_eq!(n.replicas, 2);
        assert_eq!(n.able, ready_for_new_scale());

        // A scale-down policy of 1 pod per minute; Disabled stops scaling down.
        let b = Behavior::of(
            &json!({"behavior": {"scaleDown": {"stabilizationWindowSeconds": 0,
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}}),
            down,
        )
        .expect("behavior");
        let mut h = History::default();
        let n = normalize(&mut h, Some(&b), down, 5, 1, 1, 10, t0);
        assert_eq!((n.replicas, n.limited.1), (4, "ScaleDownLimit"));
        record_scale(&mut h, Some(&b), 5, 4, t0);
        let n = normalize(&mut h, Some(&b), down, 4, 1, 1, 10, t0 + s(30));
        assert_eq!(n.replicas, 4);
        let n = normalize(&mut h, Some(&b), down, 4, 1, 1, 10, t0 + s(61));
        assert_eq!(n.replicas, 3);
        let b = Behavior::of(
            &json!({"behavior": {"scaleDown": {"selectPolicy": "Disabled"}}}),
            down,
        )
        .expect("behavior");
        let n = normalize(&mut History::default(), Some(&b), down, 4, 1, 1, 10, t0);
        assert_eq!(n.replicas, 4);
    }

    #[test]
    fn quantities_and_names() {
        assert_eq!(milli_quantity(125), "125m");
        assert_eq!(milli_quantity(2000), "2");
        assert_eq!(milli_quantity(0), "0");
        assert_eq!(milli_quantity(52_428_800_000), "52428800");
        assert_eq!(milli_quantity(1_000_000_000), "1M");
        assert_eq!(
            metric_name("cpu", true, None),
            "cpu resource utilization (percentage of request)"
        );
        assert_eq!(metric_name("memory", false, None), "memory resource");
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "0.1"}}}]}});
        assert_eq!(requests(&pod, "cpu", None), (150, None));
        assert_eq!(requests(&pod, "cpu", Some("b")), (100, None));
        assert_eq!(
            requests(&pod, "memory", None),
            (64 * 1024 * 1024 * 1000, Some("b".into()))
        );
    }
}
