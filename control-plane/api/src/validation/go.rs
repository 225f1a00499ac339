//! Values rendered the way Go's `field.Error` prints them inside messages.
//!
//! `field.Invalid(path, value, detail)` prints strings with `%q`, numbers and booleans bare,
//! and everything else with `%#v` (after dereferencing pointers), so a label map reads
//! `map[string]string{"app":"web"}` and a selector `v1.LabelSelector{MatchLabels:…}`.

use serde_json::Value;

/// A scalar as `field.Error` prints it; compound values as compact JSON.
pub fn value(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        Value::Null => "null".into(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Object(m) if m.values().all(Value::is_string) => string_map(Some(v)),
        Value::Array(a) if a.iter().all(Value::is_string) => string_slice(a),
        other => other.to_string(),
    }
}

/// Go's `%q`: double quotes with Go escapes (close enough to Rust's for printable text).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `map[string]string{"a":"b", "c":"d"}` (keys sorted, as `%#v` prints maps), or
/// `map[string]string(nil)` when absent.
pub fn string_map(v: Option<&Value>) -> String {
    let Some(m) = v.and_then(Value::as_object) else {
        return "map[string]string(nil)".into();
    };
    let mut pairs: Vec<(&String, String)> = m
        .iter()
        .map(|(k, v)| (k, quote(v.as_str().unwrap_or(""))))
        .collect();
    pairs.sort();
    let inner = pairs
        .iter()
        .map(|(k, v)| format!("{}:{v}", quote(k)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("map[string]string{{{inner}}}")
}

/// `[]string{"a", "b"}`.
pub fn string_slice(a: &[Value]) -> String {
    let inner = a
        .iter()
        .map(|v| quote(v.as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[]string{{{inner}}}")
}

/// A `metav1.LabelSelector` as `%#v` prints it.
pub fn label_selector(sel: &Value) -> String {
    let labels = string_map(sel.get("matchLabels").filter(|v| !v.is_null()));
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(list) => {
            let items = list
                .iter()
                .map(|e| {
                    let values = match e.get("values").and_then(Value::as_array) {
                        Some(v) => string_slice(v),
                        None => "[]string(nil)".into(),
                    };
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{values}}}",
                        quote(e.get("key").and_then(Value::as_str).unwrap_or("")),
                        quote(e.get("operator").and_then(Value::as_str).unwrap_or(""))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("[]v1.LabelSelectorRequirement{{{items}}}")
        }
    };
    format!("v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:{exprs}}}")
}

/// An `IntOrString` as its `String()` prints it (`25%`, `1`), unquoted.
pub fn int_or_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_like_go() {
        assert_eq!(
            string_map(Some(&json!({"b": "2", "a": "1"}))),
            r#"map[string]string{"a":"1", "b":"2"}"#
        );
        assert_eq!(string_map(None), "map[string]string(nil)");
        assert_eq!(
            label_selector(&json!({"matchLabels": {"app": "nginx2"}})),
            r#"v1.LabelSelector{MatchLabels:map[string]string{"app":"nginx2"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"#
        );
        assert_eq!(
            label_selector(&json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"]}]})),
            r#"v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement{v1.LabelSelectorRequirement{Key:"a", Operator:"In", Values:[]string{"x"}}}}"#
        );
        assert_eq!(value(&json!("a\"b")), r#""a\"b""#);
        assert_eq!(value(&json!(3333)), "3333");
    }
}
