//! Label and field selectors: parsed once, matched against many objects.
//!
//! The server filters every list and every watch event through these, so both selector types are
//! compiled up front into small matchers (no string work per object beyond looking up the
//! labels or fields themselves).
//!
//! * [`LabelSelector`] follows `k8s.io/apimachinery/pkg/labels`: the string grammar of `-l`
//!   (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`, `a<1`) with upstream's
//!   error texts, the structured `metav1.LabelSelector` of workload specs (`matchLabels`,
//!   `matchExpressions`), and the plain map of Service and ReplicationController selectors.
//! * [`FieldSelector`] follows `k8s.io/apimachinery/pkg/fields` for the grammar (`=`, `==`, `!=`,
//!   comma = AND, `\` escapes) and the per-kind field sets the apiserver registers
//!   (`pkg/apis/*/v1/conversion.go` + each registry's `ToSelectableFields`). A field the kind does
//!   not support is rejected at parse time, with upstream's message, so matching never fails.
//!   Missing fields read as the empty string, as upstream's `fields.Set` does, which is what makes
//!   `involvedObject.namespace=` match events of cluster-scoped objects.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Value};

use crate::registry::ResourceType;
use crate::status::ApiError;
use crate::validation::names;

/// A selector that could not be parsed; the text is upstream's and is what the apiserver puts
/// into the 400 `BadRequest` it answers with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(String);

impl SelectorError {
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl From<SelectorError> for ApiError {
    fn from(e: SelectorError) -> Self {
        ApiError::bad_request(e.0)
    }
}

// ------------------------------------------------------------------------------------------------
// Label selectors

/// What one requirement demands of a label. `=`/`==` are `In` with one value, `!=` is `NotIn`
/// with one value, as upstream matches them.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    /// How the operator was written, for `Display` (`=`, `==`, `!=`, ` in `, …).
    spelling: &'static str,
}

impl Requirement {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let value = labels.and_then(|l| l.get(&self.key)).and_then(Value::as_str);
        match (&self.op, value) {
            (Op::In(vals), Some(v)) => vals.iter().any(|x| x == v),
            (Op::In(_), None) => false,
            (Op::NotIn(vals), Some(v)) => !vals.iter().any(|x| x == v),
            (Op::NotIn(_), None) => true,
            (Op::Exists, v) => v.is_some(),
            (Op::DoesNotExist, v) => v.is_none(),
            (Op::GreaterThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|x| x > *n),
            (Op::LessThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|x| x < *n),
            (Op::GreaterThan(_) | Op::LessThan(_), None) => false,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Op::Exists => write!(f, "{}", self.key),
            Op::DoesNotExist => write!(f, "!{}", self.key),
            Op::GreaterThan(n) => write!(f, "{}>{n}", self.key),
            Op::LessThan(n) => write!(f, "{}<{n}", self.key),
            Op::In(vals) | Op::NotIn(vals) => {
                let mut sorted = vals.clone();
                sorted.sort();
                let joined = sorted.join(",");
                if self.spelling.trim() == "in" || self.spelling.trim() == "notin" {
                    write!(f, "{}{}({joined})", self.key, self.spelling)
                } else {
                    write!(f, "{}{}{joined}", self.key, self.spelling)
                }
            }
        }
    }
}

/// A compiled label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    matcher: LabelMatcher,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelMatcher {
    /// Matches no object (a `null` structured selector).
    Nothing,
    /// Matches objects satisfying every requirement (none = everything).
    All(Vec<Requirement>),
}

impl Default for LabelSelector {
    fn default() -> Self {
        Self::everything()
    }
}

impl LabelSelector {
    /// The selector that matches every object (an empty `-l`, an empty `{}` selector).
    pub fn everything() -> Self {
        LabelSelector {
            matcher: LabelMatcher::All(Vec::new()),
        }
    }

    /// The selector that matches no object (a missing structured selector).
    pub fn nothing() -> Self {
        LabelSelector {
            matcher: LabelMatcher::Nothing,
        }
    }

    /// Parses the string form (`labelSelector=` query parameter, `kubectl -l`).
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut reqs = Parser::new(selector).parse()?;
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            matcher: LabelMatcher::All(reqs),
        })
    }

    /// The equality selector of a plain map (Service `spec.selector`, RC `spec.selector`).
    /// An empty map selects everything, as upstream's `SelectorFromSet`.
    pub fn from_map(map: &Map<String, Value>) -> Self {
        let mut reqs: Vec<Requirement> = map
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Op::In(vec![v.as_str().unwrap_or_default().to_string()]),
                spelling: "=",
            })
            .collect();
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector {
            matcher: LabelMatcher::All(reqs),
        }
    }

    /// The structured `metav1.LabelSelector` (`matchLabels` + `matchExpressions`), as
    /// `LabelSelectorAsSelector` converts it: `None`/`null` selects nothing, `{}` everything.
    pub fn from_json(selector: Option<&Value>) -> Result<Self, SelectorError> {
        let sel = match selector {
            None | Some(Value::Null) => return Ok(Self::nothing()),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(SelectorError(format!(
                    "invalid label selector: expected an object, got {other}"
                )))
            }
        };
        let mut reqs = Vec::new();
        if let Some(Value::Object(ml)) = sel.get("matchLabels") {
            for (k, v) in ml {
                let value = v.as_str().unwrap_or_default().to_string();
                reqs.push(new_requirement(k, "=", vec![value])?);
            }
        }
        if let Some(Value::Array(exprs)) = sel.get("matchExpressions") {
            for e in exprs {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
                let op = e.get("operator").and_then(Value::as_str).unwrap_or_default();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|v| v.as_str().unwrap_or_default().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                let spelling = match op {
                    "In" => " in ",
                    "NotIn" => " notin ",
                    "Exists" => "exists",
                    "DoesNotExist" => "!",
                    _ => {
                        return Err(SelectorError(format!(
                            "{op:?} is not a valid label selector operator"
                        )))
                    }
                };
                reqs.push(new_requirement(key, spelling, values)?);
            }
        }
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            matcher: LabelMatcher::All(reqs),
        })
    }

    /// True for the selector that selects everything.
    pub fn is_everything(&self) -> bool {
        matches!(&self.matcher, LabelMatcher::All(r) if r.is_empty())
    }

    /// Whether a label map (`metadata.labels`, possibly absent) satisfies the selector.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        match &self.matcher {
            LabelMatcher::Nothing => false,
            LabelMatcher::All(reqs) => reqs.iter().all(|r| r.matches(labels)),
        }
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(
            object
                .get("metadata")
                .and_then(|m| m.get("labels"))
                .and_then(Value::as_object),
        )
    }
}

/// The canonical string form (`a=b,c in (x,y)`), as upstream's `Selector.String()`.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.matcher {
            LabelMatcher::Nothing => Ok(()),
            LabelMatcher::All(reqs) => {
                for (i, r) in reqs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
        }
    }
}

/// How field errors render a `[]string` value (`[]string{"a", "b"}`).
fn go_string_slice(vals: &[String]) -> String {
    let inner = vals
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[]string{{{inner}}}")
}

/// Upstream's `NewRequirement`: checks the key, the operator's value count and every value, and
/// aggregates the problems as `field.ErrorList.ToAggregate()` prints them.
fn new_requirement(
    key: &str,
    spelling: &'static str,
    values: Vec<String>,
) -> Result<Requirement, SelectorError> {
    let mut errs: Vec<String> = Vec::new();
    let key_errs = names::is_qualified_name(key);
    if !key_errs.is_empty() {
        errs.push(format!("key: Invalid value: {key:?}: {}", key_errs.join("; ")));
    }
    let op = match spelling {
        " in " | " notin " => {
            if values.is_empty() {
                errs.push(format!(
                    "values: Invalid value: {}: for 'in', 'notin' operators, values set can't be empty",
                    go_string_slice(&values)
                ));
            }
            if spelling == " in " {
                Op::In(values.clone())
            } else {
                Op::NotIn(values.clone())
            }
        }
        "=" | "==" | "!=" => {
            if values.len() != 1 {
                errs.push(format!(
                    "values: Invalid value: {}: exact-match compatibility requires one single value",
                    go_string_slice(&values)
                ));
            }
            if spelling == "!=" {
                Op::NotIn(values.clone())
            } else {
                Op::In(values.clone())
            }
        }
        "exists" | "!" => {
            if !values.is_empty() {
                errs.push(format!(
                    "values: Invalid value: {}: values set must be empty for exists and does not exist",
                    go_string_slice(&values)
                ));
            }
            if spelling == "!" {
                Op::DoesNotExist
            } else {
                Op::Exists
            }
        }
        _ => {
            // `>` and `<`
            if values.len() != 1 {
                errs.push(format!(
                    "values: Invalid value: {}: for 'Gt', 'Lt' operators, exactly one value is required",
                    go_string_slice(&values)
                ));
            }
            let mut n = 0;
            for (i, v) in values.iter().enumerate() {
                match v.parse::<i64>() {
                    Ok(x) => n = x,
                    Err(_) => errs.push(format!(
                        "values[{i}]: Invalid value: {v:?}: for 'Gt', 'Lt' operators, the value must be an integer"
                    )),
                }
            }
            if spelling == ">" {
                Op::GreaterThan(n)
            } else {
                Op::LessThan(n)
            }
        }
    };
    for (i, v) in values.iter().enumerate() {
        let v_errs = names::is_valid_label_value(v);
        if !v_errs.is_empty() {
            errs.push(format!(
                "values[{i}][{key}]: Invalid value: {v:?}: {}",
                v_errs.join("; ")
            ));
        }
    }
    match errs.len() {
        0 => Ok(Requirement {
            key: key.to_string(),
            op,
            spelling: match spelling {
                "exists" => "",
                other => other,
            },
        }),
        1 => Err(SelectorError(errs.remove(0))),
        _ => Err(SelectorError(format!("[{}]", errs.join(", ")))),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Error,
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn keyword(s: &str) -> Option<Tok> {
    Some(match s {
        ")" => Tok::ClosedPar,
        "," => Tok::Comma,
        "!" => Tok::DoesNotExist,
        "==" => Tok::DoubleEquals,
        "=" => Tok::Equals,
        ">" => Tok::GreaterThan,
        "in" => Tok::In,
        "<" => Tok::LessThan,
        "!=" => Tok::NotEquals,
        "notin" => Tok::NotIn,
        "(" => Tok::OpenPar,
        _ => return None,
    })
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Splits the selector into tokens exactly as upstream's lexer does (longest operator match,
/// `in`/`notin` recognised as words).
fn lex(s: &str) -> Vec<(Tok, String)> {
    let b = s.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        while pos < b.len() && is_space(b[pos]) {
            pos += 1;
        }
        if pos >= b.len() {
            out.push((Tok::End, String::new()));
            return out;
        }
        if is_special(b[pos]) {
            let start = pos;
            let mut last: Option<(Tok, usize)> = None;
            while pos < b.len() && is_special(b[pos]) {
                let cand = &s[start..=pos];
                if let Some(t) = keyword(cand) {
                    last = Some((t, pos + 1));
                    pos += 1;
                } else if last.is_some() {
                    break;
                } else {
                    pos += 1;
                }
            }
            match last {
                Some((t, end)) => {
                    pos = end;
                    out.push((t, s[start..end].to_string()));
                }
                None => out.push((
                    Tok::Error,
                    format!("error expected: keyword found '{}'", &s[start..pos]),
                )),
            }
        } else {
            let start = pos;
            while pos < b.len() && !is_special(b[pos]) && !is_space(b[pos]) {
                pos += 1;
            }
            let word = &s[start..pos];
            let tok = keyword(word).unwrap_or(Tok::Identifier);
            out.push((tok, word.to_string()));
        }
    }
}

/// Whether `in`/`notin` are read as operators (after a key) or as plain values.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    KeyAndOperator,
    Values,
}

struct Parser {
    items: Vec<(Tok, String)>,
    pos: usize,
}

impl Parser {
    fn new(s: &str) -> Self {
        Parser {
            items: lex(s),
            pos: 0,
        }
    }

    fn item(&self, at: usize, ctx: Ctx) -> (Tok, String) {
        // The lexer always ends with `End`; reading past it keeps returning `End`.
        let (t, l) = self.items.get(at).cloned().unwrap_or((Tok::End, String::new()));
        match (ctx, t) {
            (Ctx::Values, Tok::In | Tok::NotIn) => (Tok::Identifier, l),
            _ => (t, l),
        }
    }

    fn lookahead(&self, ctx: Ctx) -> (Tok, String) {
        self.item(self.pos, ctx)
    }

    fn consume(&mut self, ctx: Ctx) -> (Tok, String) {
        let r = self.item(self.pos, ctx);
        self.pos += 1;
        r
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Ctx::Values);
            match tok {
                Tok::Identifier | Tok::DoesNotExist => {
                    let r = self
                        .parse_requirement()
                        .map_err(|e| SelectorError(format!("unable to parse requirement: {}", e.0)))?;
                    reqs.push(r);
                    let (t, l) = self.consume(Ctx::Values);
                    match t {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.lookahead(Ctx::Values);
                            if t2 != Tok::Identifier && t2 != Tok::DoesNotExist {
                                return Err(SelectorError(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(SelectorError(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )))
                        }
                    }
                }
                Tok::End => return Ok(reqs),
                _ => {
                    return Err(SelectorError(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )))
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let mut negated = false;
        let (mut tok, mut lit) = self.consume(Ctx::Values);
        if tok == Tok::DoesNotExist {
            negated = true;
            (tok, lit) = self.consume(Ctx::Values);
        }
        if tok != Tok::Identifier {
            return Err(SelectorError(format!("found '{lit}', expected: identifier")));
        }
        let key_errs = names::is_qualified_name(&lit);
        if !key_errs.is_empty() {
            return Err(SelectorError(format!(
                "<nil>: Invalid value: {lit:?}: {}",
                key_errs.join("; ")
            )));
        }
        let (next, _) = self.lookahead(Ctx::Values);
        if negated || next == Tok::End || next == Tok::Comma {
            if negated {
                return new_requirement(&lit, "!", Vec::new());
            }
            if next == Tok::End || next == Tok::Comma {
                return new_requirement(&lit, "exists", Vec::new());
            }
        }
        let (op_tok, op_lit) = self.consume(Ctx::KeyAndOperator);
        let spelling: &'static str = match op_tok {
            Tok::In => " in ",
            Tok::NotIn => " notin ",
            Tok::Equals => "=",
            Tok::DoubleEquals => "==",
            Tok::NotEquals => "!=",
            Tok::GreaterThan => ">",
            Tok::LessThan => "<",
            _ => {
                return Err(SelectorError(format!(
                    "found '{op_lit}', expected: in, notin, =, ==, !=, gt, lt"
                )))
            }
        };
        let values = match op_tok {
            Tok::In | Tok::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        new_requirement(&lit, spelling, values)
    }

    fn parse_values(&mut self) -> Result<Vec<String>, SelectorError> {
        let (tok, lit) = self.consume(Ctx::Values);
        if tok != Tok::OpenPar {
            return Err(SelectorError(format!("found '{lit}' expected: '('")));
        }
        let (tok, lit) = self.lookahead(Ctx::Values);
        match tok {
            Tok::Identifier | Tok::Comma => {
                let set = self.parse_identifiers_list()?;
                let (t, _) = self.consume(Ctx::Values);
                if t != Tok::ClosedPar {
                    return Err(SelectorError(format!("found '{lit}', expected: ')'")));
                }
                Ok(set)
            }
            Tok::ClosedPar => {
                self.consume(Ctx::Values);
                Ok(vec![String::new()])
            }
            _ => Err(SelectorError(format!(
                "found '{lit}', expected: ',', ')' or identifier"
            ))),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, SelectorError> {
        let mut set: Vec<String> = Vec::new();
        let insert = |set: &mut Vec<String>, v: String| {
            if !set.contains(&v) {
                set.push(v);
            }
        };
        loop {
            let (tok, lit) = self.consume(Ctx::Values);
            match tok {
                Tok::Identifier => {
                    insert(&mut set, lit);
                    let (t2, l2) = self.lookahead(Ctx::Values);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosedPar => break,
                        _ => return Err(SelectorError(format!("found '{l2}', expected: ',' or ')'"))),
                    }
                }
                Tok::Comma => {
                    if set.is_empty() {
                        insert(&mut set, String::new());
                    }
                    let (t2, _) = self.lookahead(Ctx::Values);
                    if t2 == Tok::ClosedPar {
                        insert(&mut set, String::new());
                        break;
                    }
                    if t2 == Tok::Comma {
                        insert(&mut set, String::new());
                    }
                }
                _ => {
                    return Err(SelectorError(format!(
                        "found '{lit}', expected: ',', or identifier"
                    )))
                }
            }
        }
        set.sort();
        Ok(set)
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, SelectorError> {
        let (tok, _) = self.lookahead(Ctx::Values);
        if tok == Tok::End || tok == Tok::Comma {
            return Ok(vec![String::new()]);
        }
        let (tok, lit) = self.consume(Ctx::Values);
        if tok == Tok::Identifier {
            Ok(vec![lit])
        } else {
            Err(SelectorError(format!("found '{lit}', expected: identifier")))
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Field selectors

/// Reads one selectable field of an object; missing fields read as `""`.
type Extract = for<'a> fn(&'a Value) -> Cow<'a, str>;

/// One selectable field of a kind.
struct FieldDef {
    label: &'static str,
    extract: Extract,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Cow<'a, str> {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return Cow::Borrowed(""),
        }
    }
    match cur {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

fn bool_at<'a>(v: &'a Value, path: &[&str]) -> Cow<'a, str> {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return Cow::Borrowed("false"),
        }
    }
    Cow::Borrowed(if cur.as_bool().unwrap_or(false) {
        "true"
    } else {
        "false"
    })
}

fn int_at<'a>(v: &'a Value, path: &[&str]) -> Cow<'a, str> {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return Cow::Borrowed("0"),
        }
    }
    Cow::Owned(cur.as_i64().unwrap_or(0).to_string())
}

macro_rules! field {
    ($label:literal, str $($p:literal).+) => {
        FieldDef { label: $label, extract: |v| str_at(v, &[$($p),+]) }
    };
    ($label:literal, bool $($p:literal).+) => {
        FieldDef { label: $label, extract: |v| bool_at(v, &[$($p),+]) }
    };
    ($label:literal, int $($p:literal).+) => {
        FieldDef { label: $label, extract: |v| int_at(v, &[$($p),+]) }
    };
}

const NAME: FieldDef = field!("metadata.name", str "metadata"."name");
const NAMESPACE: FieldDef = field!("metadata.namespace", str "metadata"."namespace");

fn pod_ip(v: &Value) -> Cow<'_, str> {
    match v
        .pointer("/status/podIPs/0/ip")
        .and_then(Value::as_str)
        .or_else(|| v.pointer("/status/podIP").and_then(Value::as_str))
    {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Borrowed(""),
    }
}

fn event_source(v: &Value) -> Cow<'_, str> {
    let comp = str_at(v, &["source", "component"]);
    if comp.is_empty() {
        str_at(v, &["reportingComponent"])
    } else {
        comp
    }
}

static POD_FIELDS: &[FieldDef] = &[
    NAME,
    NAMESPACE,
    field!("spec.nodeName", str "spec"."nodeName"),
    field!("spec.restartPolicy", str "spec"."restartPolicy"),
    field!("spec.schedulerName", str "spec"."schedulerName"),
    field!("spec.serviceAccountName", str "spec"."serviceAccountName"),
    field!("spec.hostNetwork", bool "spec"."hostNetwork"),
    field!("status.phase", str "status"."phase"),
    FieldDef {
        label: "status.podIP",
        extract: pod_ip,
    },
    field!("status.nominatedNodeName", str "status"."nominatedNodeName"),
];

static EVENT_FIELDS: &[FieldDef] = &[
    NAME,
    NAMESPACE,
    field!("involvedObject.kind", str "involvedObject"."kind"),
    field!("involvedObject.namespace", str "involvedObject"."namespace"),
    field!("involvedObject.name", str "involvedObject"."name"),
    field!("involvedObject.uid", str "involvedObject"."uid"),
    field!("involvedObject.apiVersion", str "involvedObject"."apiVersion"),
    field!("involvedObject.resourceVersion", str "involvedObject"."resourceVersion"),
    field!("involvedObject.fieldPath", str "involvedObject"."fieldPath"),
    field!("reason", str "reason"),
    field!("reportingComponent", str "reportingComponent"),
    FieldDef {
        label: "source",
        extract: event_source,
    },
    field!("type", str "type"),
];

static SECRET_FIELDS: &[FieldDef] = &[NAME, NAMESPACE, field!("type", str "type")];
static NODE_FIELDS: &[FieldDef] = &[NAME, field!("spec.unschedulable", bool "spec"."unschedulable")];
static NAMESPACE_FIELDS: &[FieldDef] = &[NAME, field!("status.phase", str "status"."phase")];
static JOB_FIELDS: &[FieldDef] = &[
    NAME,
    NAMESPACE,
    field!("status.successful", int "status"."successful"),
];
static REPLICAS_FIELDS: &[FieldDef] = &[
    NAME,
    NAMESPACE,
    field!("status.replicas", int "status"."replicas"),
];
static CSR_FIELDS: &[FieldDef] = &[NAME, field!("spec.signerName", str "spec"."signerName")];
static DEFAULT_FIELDS: &[FieldDef] = &[NAME, NAMESPACE];

/// The selectable fields of a resource, and whether upstream registers its own conversion
/// function for it (which decides the wording of the "unsupported" error).
fn fields_of(rt: &ResourceType) -> (&'static [FieldDef], bool) {
    match (rt.group, rt.kind) {
        ("", "Pod") => (POD_FIELDS, true),
        ("", "Event") => (EVENT_FIELDS, true),
        ("", "Secret") => (SECRET_FIELDS, true),
        ("", "Node") => (NODE_FIELDS, true),
        ("", "Namespace") => (NAMESPACE_FIELDS, true),
        ("", "ReplicationController") | ("apps", "ReplicaSet") => (REPLICAS_FIELDS, true),
        ("batch", "Job") => (JOB_FIELDS, true),
        ("certificates.k8s.io", "CertificateSigningRequest") => (CSR_FIELDS, true),
        _ => (DEFAULT_FIELDS, false),
    }
}

/// One `field=value` / `field!=value` term.
struct FieldTerm {
    def: &'static FieldDef,
    value: String,
    negated: bool,
}

/// A compiled field selector for one resource type.
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
    namespaced: bool,
}

impl fmt::Debug for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldSelector({self})")
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = if t.negated { "!=" } else { "=" };
            write!(f, "{}{op}{}", t.def.label, escape_value(&t.value))?;
        }
        Ok(())
    }
}

fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits on commas that are not escaped with `\`.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

/// Finds the first operator (`!=`, `==`, `=` tried in that order at each position).
fn split_term(term: &str) -> Option<(&str, &str, &str)> {
    for i in 0..term.len() {
        if !term.is_char_boundary(i) {
            continue;
        }
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], op, value));
            }
        }
    }
    None
}

fn unescape_value(v: &str) -> Result<String, SelectorError> {
    if !v.contains(['\\', ',', '=']) {
        return Ok(v.to_string());
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ ('\\' | ',' | '=')) => out.push(n),
                Some(n) => {
                    return Err(SelectorError(format!(
                        "invalid field selector: invalid escape sequence: \\{n}"
                    )))
                }
                None => {
                    return Err(SelectorError(
                        "invalid field selector: invalid escape sequence: \\".into(),
                    ))
                }
            },
            ',' | '=' => {
                return Err(SelectorError(format!(
                    "invalid field selector: unescaped character in value: {c}"
                )))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// The selector that matches everything.
    pub fn everything(rt: &ResourceType) -> Self {
        FieldSelector {
            terms: Vec::new(),
            namespaced: rt.namespaced,
        }
    }

    /// Parses a `fieldSelector=` for one resource type; unknown fields are errors.
    pub fn parse(rt: &ResourceType, selector: &str) -> Result<Self, SelectorError> {
        let (defs, custom) = fields_of(rt);
        let mut parts = split_terms(selector);
        parts.sort();
        let mut terms = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((lhs, op, rhs)) = split_term(part) else {
                return Err(SelectorError(format!(
                    "invalid selector: '{selector}'; can't understand '{part}'"
                )));
            };
            let value = unescape_value(rhs)?;
            // `spec.host` is the old name of `spec.nodeName` that upstream still accepts.
            let label = if rt.kind == "Pod" && rt.group.is_empty() && lhs == "spec.host" {
                "spec.nodeName"
            } else {
                lhs
            };
            let Some(def) = defs.iter().find(|d| d.label == label) else {
                return Err(SelectorError(if custom {
                    format!("field label not supported: {lhs}")
                } else {
                    format!(
                        "{lhs:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                    )
                }));
            };
            terms.push(FieldTerm {
                def,
                value,
                negated: op == "!=",
            });
        }
        Ok(FieldSelector {
            terms,
            namespaced: rt.namespaced,
        })
    }

    pub fn is_everything(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value the selector pins a field to with `=` (e.g. `metadata.name` for a
    /// single-object watch), so the server can narrow a list to one key.
    pub fn exact(&self, label: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| !t.negated && t.def.label == label)
            .map(|t| t.value.as_str())
    }

    /// Whether an object satisfies every term.
    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|t| {
            let actual = if t.def.label == "metadata.namespace" && !self.namespaced {
                Cow::Borrowed("")
            } else {
                (t.def.extract)(object)
            };
            (actual == t.value.as_str()) != t.negated
        })
    }
}

/// Both selectors of a list or watch request, parsed once.
#[derive(Debug)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    /// Parses the `labelSelector` and `fieldSelector` query parameters (absent = everything).
    /// The error converts into the 400 `BadRequest` the apiserver answers with.
    pub fn parse(
        rt: &ResourceType,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Self, SelectorError> {
        Ok(Selectors {
            labels: match label_selector {
                Some(s) => LabelSelector::parse(s)?,
                None => LabelSelector::everything(),
            },
            fields: match field_selector {
                Some(s) => FieldSelector::parse(rt, s)?,
                None => FieldSelector::everything(rt),
            },
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches_object(object) && self.fields.matches(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        LabelSelector::parse(s).unwrap_err().0
    }

    #[test]
    fn label_grammar_matches_as_upstream() {
        let l = labels(json!({"app": "web", "tier": "front", "n": "5"}));
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("app notin (web)", false),
            ("missing notin (web)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("n>4", true),
            ("n<5", false),
            ("missing>1", false),
            ("app in (in,notin,web)", true),
            ("  app  =  web  ", true),
            ("x in (,a)", false),
            ("app=", false),
        ];
        for (s, want) in cases {
            assert_eq!(sel(s).matches(Some(&l)), *want, "{s}");
        }
        assert!(sel("x=").matches(Some(&labels(json!({"x": ""})))));
        assert!(sel("!x").matches(None));
        assert!(!sel("x").matches(None));
    }

    #[test]
    fn label_errors_read_as_upstream() {
        assert_eq!(
            err("test-label=====name1"),
            "unable to parse requirement: found '==', expected: identifier"
        );
        assert_eq!(
            err("env IN (a)"),
            "unable to parse requirement: found 'IN', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(err("a=b c"), "found 'c', expected: ',' or 'end of string'");
        assert_eq!(err("a=b,"), "found '', expected: identifier after ','");
        assert_eq!(
            err("=b"),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("a in b"),
            "unable to parse requirement: found 'b' expected: '('"
        );
        assert_eq!(
            err("a in (b"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        let e = err("a=b!c");
        assert!(e.starts_with("found '!', expected"), "{e}");
        let e = err("x!=y@");
        assert!(
            e.starts_with("unable to parse requirement: values[0][x]: Invalid value: \"y@\": a valid label must be an empty string"),
            "{e}"
        );
        let e = err("bad!key=1");
        assert!(e.starts_with("unable to parse requirement"), "{e}");
        let e = err("Bad Key=1");
        assert!(e.contains("found 'Key'"), "{e}");
        let e = err("-x=1");
        assert!(
            e.starts_with(
                "unable to parse requirement: <nil>: Invalid value: \"-x\": name part must consist of"
            ),
            "{e}"
        );
        assert_eq!(
            err("n>a"),
            "unable to parse requirement: values[0]: Invalid value: \"a\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
    }

    #[test]
    fn canonical_string_is_sorted() {
        assert_eq!(sel("z=1,a in (y,x),!b,c").to_string(), "a in (x,y),!b,c,z=1");
    }

    #[test]
    fn structured_selectors() {
        let s = LabelSelector::from_json(Some(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "env", "operator": "Exists"},
                {"key": "zone", "operator": "NotIn", "values": ["b"]}
            ]
        })))
        .unwrap();
        assert!(s.matches(Some(&labels(
            json!({"app": "web", "tier": "edge", "env": "x", "zone": "a"})
        ))));
        assert!(!s.matches(Some(&labels(
            json!({"app": "web", "tier": "edge", "env": "x", "canary": "1"})
        ))));
        assert!(!s.matches(Some(&labels(json!({"app": "web", "tier": "edge"})))));
        assert!(LabelSelector::from_json(Some(&json!({})))
            .unwrap()
            .is_everything());
        assert!(!LabelSelector::from_json(None).unwrap().matches(None));
        let e = LabelSelector::from_json(Some(&json!({
            "matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]
        })))
        .unwrap_err();
        assert_eq!(e.0, "\"Equals\" is not a valid label selector operator");
        let e = LabelSelector::from_json(Some(&json!({
            "matchExpressions": [{"key": "a", "operator": "In"}]
        })))
        .unwrap_err();
        assert_eq!(
            e.0,
            "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty"
        );
        let m = labels(json!({"app": "web"}));
        assert!(LabelSelector::from_map(&m).matches(Some(&labels(json!({"app": "web", "x": "y"})))));
        assert!(!LabelSelector::from_map(&m).matches(None));
    }

    #[test]
    fn pod_field_selectors() {
        let pods = find("", "v1", "pods").unwrap();
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {"nodeName": "node1", "restartPolicy": "Always"},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.5"}]}
        });
        let m = |s: &str| FieldSelector::parse(pods, s).unwrap().matches(&pod);
        assert!(m("spec.nodeName=node1"));
        assert!(m("spec.host=node1"));
        assert!(m("status.phase!=Pending,metadata.namespace=default"));
        assert!(!m("status.phase!=Running"));
        assert!(m("spec.hostNetwork=false"));
        assert!(m("status.podIP=10.244.1.5"));
        assert!(m("status.nominatedNodeName="));
        assert!(m("metadata.name==web-1"));
        assert!(m(""));
        let e = FieldSelector::parse(pods, "spec.foo=bar").unwrap_err();
        assert_eq!(e.0, "field label not supported: spec.foo");
        let api: ApiError = e.into();
        assert_eq!((api.code, api.reason), (400, "BadRequest"));
        let fs = FieldSelector::parse(pods, "metadata.name=web-1").unwrap();
        assert_eq!(fs.exact("metadata.name"), Some("web-1"));
    }

    #[test]
    fn event_field_selectors_match_empty_values() {
        let events = find("", "v1", "events").unwrap();
        let ev = json!({
            "metadata": {"name": "n1.abc", "namespace": "default"},
            "involvedObject": {"kind": "Node", "name": "n1", "uid": "u1"},
            "reason": "NodeReady", "type": "Normal",
            "source": {"component": "kubelet"}
        });
        let fs = FieldSelector::parse(
            events,
            "involvedObject.name=n1,involvedObject.namespace=,involvedObject.kind=Node,involvedObject.uid=u1",
        )
        .unwrap();
        assert!(fs.matches(&ev));
        assert!(FieldSelector::parse(events, "source=kubelet,type!=Warning")
            .unwrap()
            .matches(&ev));
        assert!(!FieldSelector::parse(events, "involvedObject.namespace=default")
            .unwrap()
            .matches(&ev));
    }

    #[test]
    fn other_kinds_field_sets() {
        let nodes = find("", "v1", "nodes").unwrap();
        let node = json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": true}});
        assert!(FieldSelector::parse(nodes, "spec.unschedulable=true")
            .unwrap()
            .matches(&node));
        assert_eq!(
            FieldSelector::parse(nodes, "metadata.namespace=x").unwrap_err().0,
            "field label not supported: metadata.namespace"
        );
        let cms = find("", "v1", "configmaps").unwrap();
        assert_eq!(
            FieldSelector::parse(cms, "data.x=1").unwrap_err().0,
            "\"data.x\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        );
        let pvs = find("", "v1", "persistentvolumes").unwrap();
        let pv = json!({"metadata": {"name": "pv1"}});
        assert!(FieldSelector::parse(pvs, "metadata.namespace=")
            .unwrap()
            .matches(&pv));
        assert!(!FieldSelector::parse(pvs, "metadata.namespace=x")
            .unwrap()
            .matches(&pv));
        let jobs = find("batch", "v1", "jobs").unwrap();
        assert!(FieldSelector::parse(jobs, "status.successful=0")
            .unwrap()
            .matches(&json!({"metadata": {"name": "j"}})));
        let rs = find("apps", "v1", "replicasets").unwrap();
        assert!(FieldSelector::parse(rs, "status.replicas=3")
            .unwrap()
            .matches(&json!({"status": {"replicas": 3}})));
        let secrets = find("", "v1", "secrets").unwrap();
        assert!(FieldSelector::parse(secrets, "type=kubernetes.io/tls")
            .unwrap()
            .matches(&json!({"type": "kubernetes.io/tls"})));
        let csr = find("certificates.k8s.io", "v1", "certificatesigningrequests").unwrap();
        assert!(
            FieldSelector::parse(csr, "spec.signerName=kubernetes.io/kubelet-serving")
                .unwrap()
                .matches(&json!({"spec": {"signerName": "kubernetes.io/kubelet-serving"}}))
        );
    }

    #[test]
    fn field_grammar_and_escapes() {
        let cms = find("", "v1", "configmaps").unwrap();
        let e = FieldSelector::parse(cms, "metadata.name").unwrap_err();
        assert_eq!(
            e.0,
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        let e = FieldSelector::parse(cms, "metadata.name=a=b").unwrap_err();
        assert_eq!(e.0, "invalid field selector: unescaped character in value: =");
        let fs = FieldSelector::parse(cms, r"metadata.name=a\,b").unwrap();
        assert!(fs.matches(&json!({"metadata": {"name": "a,b"}})));
        assert_eq!(fs.to_string(), r"metadata.name=a\,b");
    }

    #[test]
    fn combined_selectors() {
        let pods = find("", "v1", "pods").unwrap();
        let s = Selectors::parse(pods, Some("app=web"), Some("status.phase=Running")).unwrap();
        assert!(s.matches(&json!({
            "metadata": {"name": "p", "labels": {"app": "web"}},
            "status": {"phase": "Running"}
        })));
        assert!(!s.matches(&json!({"metadata": {"name": "p"}, "status": {"phase": "Running"}})));
        let e: ApiError = Selectors::parse(pods, Some("a in b"), None).unwrap_err().into();
        assert_eq!(e.code, 400);
    }
}
