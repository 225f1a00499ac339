//! Timestamps as Kubernetes writes them, and ages as kubectl prints them.

use jiff::Timestamp;

/// Now, RFC 3339 with second precision and `Z`, as `metav1.Time` serialises.
pub fn now_rfc3339() -> String {
    format_rfc3339(Timestamp::now())
}

pub fn format_rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now with microseconds (`metav1.MicroTime`, used by Leases and events.k8s.io).
pub fn now_rfc3339_micros() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

pub fn parse(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok()
}

/// Seconds elapsed since an RFC 3339 timestamp (0 if it is in the future or unreadable).
pub fn seconds_since(s: &str) -> i64 {
    match parse(s) {
        Some(t) => (Timestamp::now().as_second() - t.as_second()).max(0),
        None => 0,
    }
}

/// kubectl's `duration.HumanDuration`: `0s`…`2m`, `5m30s`, `3h`, `2d3h`, `5y`…
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rem = s % 60;
        return if rem == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rem}s")
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let rem = (s % 3600) / 60;
        return if rem == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rem}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        let d = h / 24;
        let rem = h % 24;
        return if rem == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rem}h")
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let y = h / (24 * 365);
        let d = (h / 24) % 365;
        return if d == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{d}d")
        };
    }
    format!("{}y", h / (24 * 365))
}

/// The age column of a Table row, from `metadata.creationTimestamp`.
pub fn age(creation_timestamp: Option<&str>) -> String {
    match creation_timestamp {
        Some(ts) if parse(ts).is_some() => human_duration(seconds_since(ts)),
        _ => "<unknown>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::human_duration as h;

    #[test]
    fn human_durations_match_kubectl() {
        assert_eq!(h(5), "5s");
        assert_eq!(h(119), "119s");
        assert_eq!(h(150), "2m30s");
        assert_eq!(h(600), "10m");
        assert_eq!(h(3 * 3600 + 60), "3h1m");
        assert_eq!(h(10 * 3600), "10h");
        assert_eq!(h(3 * 86400 + 3600), "3d1h");
        assert_eq!(h(30 * 86400), "30d");
    }
}
