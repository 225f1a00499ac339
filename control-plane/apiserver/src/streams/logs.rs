//! `GET pods/{name}/log`: the container's log as `text/plain`, streamed while `follow=true`.

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use keel_api::status::{ApiError, ApiResult};
use keel_api::streams::{Down, LogOptions, StreamOp};
use serde_json::Value;

use super::{container_of, container_status, pods, target, StreamRequest};
use crate::http::Body;
use crate::Objects;

fn int_option(r: &StreamRequest<'_>, name: &str) -> ApiResult<Option<i64>> {
    match r.q(name) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid value for {name}: {v:?} is not an integer"))),
    }
}

fn invalid(field: &str, value: i64, detail: &str) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("PodLogOptions \"\" is invalid: {field}: Invalid value: {value}: {detail}"),
    )
}

/// The options of the query, with `sinceSeconds`/`sinceTime` made absolute.
pub(crate) fn options(r: &StreamRequest<'_>) -> ApiResult<LogOptions> {
    let tail_lines = int_option(r, "tailLines")?;
    if let Some(t) = tail_lines.filter(|t| *t < 0) {
        return Err(invalid("tailLines", t, "must be greater than or equal to 0"));
    }
    let limit_bytes = int_option(r, "limitBytes")?;
    if let Some(l) = limit_bytes.filter(|l| *l < 1) {
        return Err(invalid("limitBytes", l, "must be greater than 0"));
    }
    let since_seconds = int_option(r, "sinceSeconds")?;
    let since_time = r.q("sinceTime").filter(|s| !s.is_empty());
    if since_seconds.is_some() && since_time.is_some() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PodLogOptions \"\" is invalid: : Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified",
        ));
    }
    let now = jiff::Timestamp::now().as_nanosecond() as i64;
    let since_unix_nanos = match (since_seconds, since_time) {
        (Some(s), _) => {
            if s < 1 {
                return Err(invalid("sinceSeconds", s, "must be greater than 0"));
            }
            Some(now.saturating_sub(s.saturating_mul(1_000_000_000)))
        }
        (None, Some(t)) => {
            let ts = keel_api::time::parse(t)
                .ok_or_else(|| ApiError::bad_request(format!("invalid value for sinceTime: {t:?}")))?;
            Some(ts.as_nanosecond() as i64)
        }
        (None, None) => None,
    };
    Ok(LogOptions {
        follow: r.flag("follow"),
        previous: r.flag("previous"),
        tail_lines,
        since_unix_nanos,
        timestamps: r.flag("timestamps"),
        limit_bytes,
    })
}

/// The kubelet's `validateContainerLogStatus`: is there a run of the container to read?
fn check_state(pod: &Value, name: &str, container: &str, previous: bool) -> ApiResult<()> {
    let waiting_to_start = |reason: &str| {
        let reason = match reason {
            "ErrImagePull" => "image can't be pulled",
            "ImagePullBackOff" => "trying and failing to pull image",
            r => r,
        };
        ApiError::bad_request(format!(
            "container {container:?} in pod {name:?} is waiting to start: {reason}"
        ))
    };
    let Some(status) = container_status(pod, container) else {
        if previous {
            return Err(ApiError::bad_request(format!(
                "previous terminated container {container:?} in pod {name:?} not found"
            )));
        }
        return Err(waiting_to_start("ContainerCreating"));
    };
    let state = status.get("state");
    let last_terminated = status.pointer("/lastState/terminated").is_some();
    if previous {
        if !last_terminated {
            return Err(ApiError::bad_request(format!(
                "previous terminated container {container:?} in pod {name:?} not found"
            )));
        }
        return Ok(());
    }
    if state.and_then(|s| s.get("running")).is_some() || state.and_then(|s| s.get("terminated")).is_some() {
        return Ok(());
    }
    if last_terminated {
        return Ok(());
    }
    let reason = state
        .and_then(|s| s.pointer("/waiting/reason"))
        .and_then(Value::as_str)
        .unwrap_or("ContainerCreating");
    Err(waiting_to_start(reason))
}

fn waiting(pod: &Value, container: &str) -> bool {
    container_status(pod, container)
        .and_then(|s| s.pointer("/state/waiting"))
        .is_some()
}

pub(crate) async fn get(
    objects: &Objects,
    ns: &str,
    name: &str,
    r: &StreamRequest<'_>,
) -> ApiResult<Response<Body>> {
    let pod = objects.get(pods()?, Some(ns), name).await?;
    let container = container_of(&pod, name, r.q("container"))?;
    let mut opts = options(r)?;
    let target = target(&pod, ns, name, container.clone())?;
    check_state(&pod, name, &container, opts.previous)?;
    // The node numbers runs; "previous" is the run before the newest, except while the
    // container waits to be restarted: then the newest run is the last terminated one.
    if opts.previous && waiting(&pod, &container) {
        opts.previous = false;
    }
    let mut stream = r.streams()?.open(target, StreamOp::Logs(opts)).await?;
    // The first message decides between an error Status and a 200.
    let first = match stream.down.next().await {
        Some(Down::End(end)) => {
            if let Some(e) = end.error {
                return Err(e);
            }
            None
        }
        Some(Down::Data(_, data)) => Some(data),
        Some(Down::Close(_)) | None => None,
    };
    let up = stream.up;
    let rest = stream.down.filter_map(move |d| {
        // Holding `up` keeps the node's stream open until the client goes away.
        let _keep = &up;
        async move {
            match d {
                Down::Data(_, data) => Some(data),
                Down::End(e) => {
                    if let Some(e) = e.error {
                        tracing::debug!(error = %e, "log stream ended with an error");
                    }
                    None
                }
                Down::Close(_) => None,
            }
        }
    });
    let body = futures::stream::iter(first)
        .chain(rest)
        .map(|d| Ok::<_, std::io::Error>(Frame::data(Bytes::from(d))));
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(body)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn states_as_the_kubelet_reports_them() {
        let pod = |status: Value| json!({"status": {"containerStatuses": [status]}});
        let waiting = pod(json!({"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}));
        let e = check_state(&waiting, "p", "c", false).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "container \"c\" in pod \"p\" is waiting to start: ContainerCreating"
        );
        let crash = pod(
            json!({"name": "c", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1}}}),
        );
        assert!(check_state(&crash, "p", "c", false).is_ok());
        assert!(check_state(&crash, "p", "c", true).is_ok());
        let running = pod(json!({"name": "c", "state": {"running": {}}}));
        assert!(check_state(&running, "p", "c", false).is_ok());
        assert_eq!(
            check_state(&running, "p", "c", true).unwrap_err().message,
            "previous terminated container \"c\" in pod \"p\" not found"
        );
    }
}
