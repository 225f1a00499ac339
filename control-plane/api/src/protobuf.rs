//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) decoded into the
//! object's Kubernetes JSON.
//!
//! client-go's typed clients send protobuf for built-in kinds, with no JSON fallback, so without
//! this `kubectl create deployment|secret|…`, `create token`, `autoscale`, `certificate approve`
//! and `auth can-i|whoami` cannot work. A body is the magic `k8s\0` followed by a
//! `runtime.Unknown` envelope (`typeMeta` {apiVersion, kind}, `raw` = the object message,
//! `contentEncoding`, `contentType`); the object is a proto2 message of upstream's
//! `generated.proto`.
//!
//! One generic decoder walks the wire format, driven by a per-message field table
//! (`schemas/k8s-v1.32-protobuf-fields.json.gz`, made by `tools/gen_protobuf_fields.py` from the
//! `k8s-pb` crate's sources and upstream's Go struct tags): field number → JSON name, type,
//! repeated, and how Go's JSON encoder treats the field's zero value. That last bit matters:
//! gogo-protobuf writes every non-pointer field, even empty strings and zeros, while Go's JSON
//! omits them (`omitempty`). So a zero value is dropped unless the Go field is a pointer (present
//! on the wire means set: `replicas: 0` stays) or has no `omitempty` (`status.allowed: false`
//! stays). Empty non-pointer structs are dropped too (`status: {}`, a zero `creationTimestamp`);
//! empty pointer structs stay (`emptyDir: {}`).
//!
//! A handful of messages have custom JSON forms upstream and are decoded by hand: `Time`
//! (RFC 3339, seconds), `MicroTime` (6 fractional digits), `Duration` (Go duration string),
//! `Quantity` (its string), `IntOrString`, `RawExtension`/`FieldsV1`/apiextensions `JSON`
//! (embedded JSON, or a nested `k8s\0` body), `ExtraValue`/`Verbs` (string lists) and the three
//! apiextensions `JSONSchemaPropsOr*` unions. `bytes` fields become base64 strings, as Go's JSON
//! writes `[]byte`.
//!
//! Unknown field numbers are skipped, so bodies of newer clients still decode; unknown kinds are
//! `415 UnsupportedMediaType`; malformed bodies are `400 BadRequest` naming the field path.
//!
//! [`encode`] is the reverse (JSON → protobuf body), for answering clients that prefer protobuf.
//! Responses may stay JSON (every client accepts it); kubectl 1.32's typed clients were seen to
//! read `encode`'s output (created objects, access reviews, `whoami`, a CSR read, approved and
//! written back).

// ApiError is the crate's error type; callers return it as is.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Map, Number, Value};

use crate::status::{ApiError, ApiResult};

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The 4-byte prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// Nesting deeper than this is refused (JSONSchemaProps is recursive; bodies are untrusted).
const MAX_DEPTH: usize = 64;

static FIELDS_GZ: &[u8] = include_bytes!("../schemas/k8s-v1.32-protobuf-fields.json.gz");

/// Decodes a protobuf request body into the object's JSON, `apiVersion` and `kind` first (taken
/// from the envelope).
///
/// Errors: 400 `BadRequest` for a malformed body (the message names the field), 415
/// `UnsupportedMediaType` for a kind without a protobuf definition or a compressed payload.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let table = table()?;
    let payload = body.strip_prefix(MAGIC).ok_or_else(|| {
        ApiError::bad_request("protobuf body does not start with the Kubernetes magic number \"k8s\\x00\"")
    })?;
    decode_unknown(table, payload, 0)
}

/// Encodes an object's JSON as a protobuf body (`k8s\0` + envelope), the reverse of [`decode`].
///
/// Only fields present in the JSON are written (absent non-pointer fields read back as zero, as
/// upstream's decoder does), map entries sorted by key, in field-number order. Meant for
/// responses to clients that prefer protobuf; JSON remains acceptable to all of them.
///
/// Errors: 406 `NotAcceptable` for a kind without a protobuf definition, 500 for JSON that does
/// not fit its kind's schema (a server-side bug, since the server wrote the object).
pub fn encode(object: &Value) -> ApiResult<Vec<u8>> {
    let table = table()?;
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let message = table
        .message_of(api_version, kind)
        .ok_or_else(|| ApiError::not_acceptable(CONTENT_TYPE))?;
    let raw = Encoder { table }.message(message, object, 0).map_err(|e| {
        let e = e.into_api_error();
        ApiError::internal(format!(
            "encoding {api_version}, Kind={kind} as protobuf: {}",
            e.message
        ))
    })?;
    let mut type_meta = Vec::new();
    put_bytes(&mut type_meta, 1, api_version.as_bytes());
    put_bytes(&mut type_meta, 2, kind.as_bytes());
    let mut out = MAGIC.to_vec();
    put_bytes(&mut out, 1, &type_meta);
    put_bytes(&mut out, 2, &raw);
    put_bytes(&mut out, 3, b"");
    put_bytes(&mut out, 4, b"");
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The field table

#[derive(Debug)]
struct Table {
    kinds: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
    messages: Vec<Message>,
}

#[derive(Debug)]
struct Message {
    name: String,
    special: Option<Special>,
    /// In declaration order, which is the order Go's JSON writes them in.
    fields: Vec<Field>,
    /// (field number, index into `fields`), sorted by number.
    by_number: Vec<(u32, usize)>,
}

#[derive(Debug)]
struct Field {
    number: u32,
    json: String,
    ty: FieldType,
    repeated: bool,
    /// Go pointer: present on the wire means set, so zero values are kept.
    pointer: bool,
    /// Non-pointer without `omitempty`: Go's JSON writes the zero value.
    keep_zero: bool,
    /// Embedded struct whose fields Go's JSON writes into the parent object.
    inline: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scalar {
    String,
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Double,
    Float,
    Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueType {
    Scalar(Scalar),
    Message(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldType {
    Value(ValueType),
    /// `map<string, V>`.
    Map(ValueType),
}

/// Messages whose JSON form is not "an object of their fields".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    Time,
    MicroTime,
    Duration,
    Quantity,
    IntOrString,
    /// `raw` bytes holding JSON (RawExtension, FieldsV1, apiextensions JSON).
    RawJson,
    /// A named `[]string` (ExtraValue, Verbs): `repeated string items = 1`.
    StringList,
    SchemaOrArray,
    SchemaOrBool,
    SchemaOrStringArray,
}

fn special_of(name: &str) -> Option<Special> {
    const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.";
    const EXT: &str = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.";
    let short = name.rsplit('.').next().unwrap_or(name);
    if let Some(rest) = name.strip_prefix(META) {
        return match rest {
            "Time" => Some(Special::Time),
            "MicroTime" => Some(Special::MicroTime),
            "Duration" => Some(Special::Duration),
            "FieldsV1" => Some(Special::RawJson),
            "Verbs" => Some(Special::StringList),
            _ => None,
        };
    }
    if name.starts_with(EXT) {
        match short {
            "Json" | "JSON" => return Some(Special::RawJson),
            "JsonSchemaPropsOrArray" | "JSONSchemaPropsOrArray" => return Some(Special::SchemaOrArray),
            "JsonSchemaPropsOrBool" | "JSONSchemaPropsOrBool" => return Some(Special::SchemaOrBool),
            "JsonSchemaPropsOrStringArray" | "JSONSchemaPropsOrStringArray" => {
                return Some(Special::SchemaOrStringArray)
            }
            _ => {}
        }
    }
    match name {
        "k8s.io.apimachinery.pkg.api.resource.Quantity"
        | "k8s.io.apimachinery.pkg.api.resource.QuantityValue" => Some(Special::Quantity),
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => Some(Special::IntOrString),
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => Some(Special::RawJson),
        _ if name.starts_with("k8s.io.api.") && short == "ExtraValue" => Some(Special::StringList),
        _ => None,
    }
}

fn table() -> ApiResult<&'static Table> {
    static TABLE: OnceLock<Result<Table, String>> = OnceLock::new();
    TABLE
        .get_or_init(|| load_table(FIELDS_GZ))
        .as_ref()
        .map_err(|e| ApiError::internal(format!("protobuf field table: {e}")))
}

fn load_table(gz: &[u8]) -> Result<Table, String> {
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut text)
        .map_err(|e| format!("gunzip: {e}"))?;
    let doc: Value = serde_json::from_slice(&text).map_err(|e| format!("JSON: {e}"))?;
    let raw_messages = doc
        .get("messages")
        .and_then(Value::as_object)
        .ok_or("no \"messages\" object")?;
    let by_name: HashMap<String, usize> = raw_messages
        .keys()
        .enumerate()
        .map(|(i, k)| (k.clone(), i))
        .collect();
    let resolve = |ty: &str| -> Result<ValueType, String> {
        if let Some(name) = ty.strip_prefix("msg:") {
            return by_name
                .get(name)
                .map(|&i| ValueType::Message(i))
                .ok_or_else(|| format!("unknown message {name}"));
        }
        let scalar = match ty {
            "string" => Scalar::String,
            "bool" => Scalar::Bool,
            "int32" | "sint32" | "sfixed32" => Scalar::Int32,
            "int64" | "sint64" | "sfixed64" => Scalar::Int64,
            "uint32" | "fixed32" => Scalar::Uint32,
            "uint64" | "fixed64" => Scalar::Uint64,
            "double" => Scalar::Double,
            "float" => Scalar::Float,
            "bytes" => Scalar::Bytes,
            other => return Err(format!("unknown field type {other}")),
        };
        Ok(ValueType::Scalar(scalar))
    };
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (name, fields) in raw_messages {
        let rows = fields
            .as_array()
            .ok_or_else(|| format!("{name}: fields are not an array"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let bad = || format!("{name}: malformed field row {row}");
            let number = row.get(0).and_then(Value::as_u64).ok_or_else(bad)?;
            let json = row.get(1).and_then(Value::as_str).ok_or_else(bad)?;
            let ty = row.get(2).and_then(Value::as_str).ok_or_else(bad)?;
            let flags = row.get(3).and_then(Value::as_str).ok_or_else(bad)?;
            let ty = match ty.strip_prefix("map:") {
                Some(value) => FieldType::Map(resolve(value)?),
                None => FieldType::Value(resolve(ty)?),
            };
            out.push(Field {
                number: u32::try_from(number).map_err(|_| bad())?,
                json: json.to_string(),
                ty,
                repeated: flags.contains('r'),
                pointer: flags.contains('p'),
                keep_zero: flags.contains('k'),
                inline: flags.contains('i'),
            });
        }
        let mut by_number: Vec<(u32, usize)> = out.iter().enumerate().map(|(i, f)| (f.number, i)).collect();
        by_number.sort_unstable();
        messages.push(Message {
            name: name.clone(),
            special: special_of(name),
            fields: out,
            by_number,
        });
    }
    let mut kinds = HashMap::new();
    for (gvk, message) in doc
        .get("kinds")
        .and_then(Value::as_object)
        .ok_or("no \"kinds\" object")?
    {
        let message = message
            .as_str()
            .and_then(|m| by_name.get(m))
            .ok_or_else(|| format!("kind {gvk}: unknown message {message}"))?;
        kinds.insert(gvk.clone(), *message);
    }
    Ok(Table {
        kinds,
        by_name,
        messages,
    })
}

impl Table {
    /// The message of a kind; `meta.k8s.io/v1` kinds (DeleteOptions sent without a group of its
    /// own) resolve to meta/v1.
    fn message_of(&self, api_version: &str, kind: &str) -> Option<usize> {
        let (group, version) = crate::registry::split_api_version(api_version);
        if let Some(&m) = self.kinds.get(&format!("{group}/{version}/{kind}")) {
            return Some(m);
        }
        if group == "meta.k8s.io" && version == "v1" {
            return self
                .by_name
                .get(&format!("k8s.io.apimachinery.pkg.apis.meta.v1.{kind}"))
                .copied();
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Errors with a field path

/// A decoding failure: what went wrong and where (innermost field last once finished).
#[derive(Debug)]
struct Malformed {
    what: String,
    /// Collected while unwinding, so innermost first.
    path: Vec<String>,
}

impl Malformed {
    fn new(what: impl Into<String>) -> Self {
        Malformed {
            what: what.into(),
            path: Vec::new(),
        }
    }

    fn at(mut self, segment: impl Into<String>) -> Self {
        self.path.push(segment.into());
        self
    }

    fn into_api_error(self) -> ApiError {
        let mut path = String::new();
        for seg in self.path.iter().rev() {
            if !path.is_empty() && !seg.starts_with('[') {
                path.push('.');
            }
            path.push_str(seg);
        }
        if path.is_empty() {
            ApiError::bad_request(format!("malformed protobuf body: {}", self.what))
        } else {
            ApiError::bad_request(format!("malformed protobuf body at {path}: {}", self.what))
        }
    }
}

type Wire<T> = Result<T, Malformed>;

// ---------------------------------------------------------------------------------------------
// The wire format

#[derive(Clone, Copy, Debug)]
enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl WireValue<'_> {
    fn describe(&self) -> &'static str {
        match self {
            WireValue::Varint(_) => "a varint",
            WireValue::Fixed64(_) => "a 64-bit value",
            WireValue::Fixed32(_) => "a 32-bit value",
            WireValue::Bytes(_) => "a length-delimited value",
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn varint(&mut self) -> Wire<u64> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let (&byte, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| Malformed::new("truncated varint"))?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed::new("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Wire<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Malformed::new(format!(
                "length {n} runs past the end of the message ({} bytes left)",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next field's number and value, or `None` at the end.
    fn field(&mut self) -> Wire<Option<(u32, WireValue<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Malformed::new(format!("invalid field number {}", key >> 3)))?;
        let value = match key & 7 {
            0 => WireValue::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                WireValue::Fixed64(u64::from_le_bytes(
                    b.try_into()
                        .map_err(|_| Malformed::new("truncated 64-bit value"))?,
                ))
            }
            2 => {
                let len = self.varint()?;
                let len =
                    usize::try_from(len).map_err(|_| Malformed::new(format!("length {len} too large")))?;
                WireValue::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                WireValue::Fixed32(u32::from_le_bytes(
                    b.try_into()
                        .map_err(|_| Malformed::new("truncated 32-bit value"))?,
                ))
            }
            t => {
                return Err(Malformed::new(format!(
                    "unsupported wire type {t} (field {number})"
                )))
            }
        };
        Ok(Some((number, value)))
    }
}

/// All values of the fields of one message, by field number, in wire order.
fn split_fields(buf: &[u8]) -> Wire<Vec<(u32, WireValue<'_>)>> {
    let mut reader = Reader::new(buf);
    let mut out = Vec::new();
    while let Some(f) = reader.field()? {
        out.push(f);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Decoding

fn decode_unknown(table: &Table, payload: &[u8], depth: usize) -> ApiResult<Value> {
    let envelope = read_envelope(payload).map_err(|e| e.at("<envelope>").into_api_error())?;
    if envelope.api_version.is_empty() || envelope.kind.is_empty() {
        return Err(ApiError::bad_request(
            "protobuf body has no apiVersion or kind in its envelope (runtime.Unknown typeMeta)",
        ));
    }
    if !envelope.content_encoding.is_empty() {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "protobuf body with contentEncoding {:?} is not supported",
                envelope.content_encoding
            ),
        ));
    }
    let (api_version, kind) = (envelope.api_version, envelope.kind);
    let message = table.message_of(&api_version, &kind).ok_or_else(|| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "no protobuf definition known for {api_version}, Kind={kind}; send it as application/json"
            ),
        )
    })?;
    let decoder = Decoder { table };
    let object = decoder
        .message_at(message, envelope.raw, depth)
        .map_err(Malformed::into_api_error)?
        .value;
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    if let Value::Object(fields) = object {
        for (k, v) in fields {
            if k != "apiVersion" && k != "kind" {
                out.insert(k, v);
            }
        }
    }
    Ok(Value::Object(out))
}

/// `runtime.Unknown`: {1: typeMeta {1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding,
/// 4: contentType}.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
}

fn read_envelope(payload: &[u8]) -> Wire<Envelope<'_>> {
    let mut envelope = Envelope {
        api_version: String::new(),
        kind: String::new(),
        raw: &[],
        content_encoding: String::new(),
    };
    for (number, value) in split_fields(payload)? {
        match (number, value) {
            (1, WireValue::Bytes(type_meta)) => {
                for (number, value) in split_fields(type_meta).map_err(|e| e.at("typeMeta"))? {
                    match (number, value) {
                        (1, WireValue::Bytes(b)) => envelope.api_version = utf8(b)?,
                        (2, WireValue::Bytes(b)) => envelope.kind = utf8(b)?,
                        _ => {}
                    }
                }
            }
            (2, WireValue::Bytes(b)) => envelope.raw = b,
            (3, WireValue::Bytes(b)) => envelope.content_encoding = utf8(b)?,
            (4, WireValue::Bytes(_)) => {}
            (1..=4, other) => {
                return Err(Malformed::new(format!(
                    "field {number} is {}, expected a length-delimited value",
                    other.describe()
                )))
            }
            _ => {}
        }
    }
    Ok(envelope)
}

fn utf8(b: &[u8]) -> Wire<String> {
    String::from_utf8(b.to_vec()).map_err(|_| Malformed::new("string is not valid UTF-8"))
}

struct Decoder<'t> {
    table: &'t Table,
}

/// A decoded value and whether it is its type's zero value (which Go's JSON may omit).
struct Decoded {
    value: Value,
    zero: bool,
}

impl Decoder<'_> {
    fn message_at(&self, index: usize, buf: &[u8], depth: usize) -> Wire<Decoded> {
        if depth > MAX_DEPTH {
            return Err(Malformed::new(format!("nested deeper than {MAX_DEPTH} messages")));
        }
        let message = &self.table.messages[index];
        if let Some(special) = message.special {
            return self.special(special, message, buf, depth);
        }
        let wire = split_fields(buf)?;
        // Gather per field (in the table's order), then emit in that order.
        let mut values: Vec<Vec<WireValue<'_>>> = vec![Vec::new(); message.fields.len()];
        for (number, value) in wire {
            if let Ok(at) = message.by_number.binary_search_by_key(&number, |&(n, _)| n) {
                values[message.by_number[at].1].push(value);
            }
        }
        let mut out = Map::new();
        for (field, occurrences) in message.fields.iter().zip(values) {
            let Some(&last) = occurrences.last() else {
                continue;
            };
            if field.json == "-" {
                continue;
            }
            // Inlined fields add no path segment: their fields are the parent's in JSON.
            let segment = (!field.inline).then(|| field.json.clone());
            let result = (|| -> Wire<()> {
                match field.ty {
                    FieldType::Map(value_type) => {
                        let mut map = Map::new();
                        for entry in &occurrences {
                            let WireValue::Bytes(b) = entry else {
                                return Err(Malformed::new(format!("map entry is {}", entry.describe())));
                            };
                            let (k, v) = self.map_entry(value_type, b, depth)?;
                            map.insert(k, v);
                        }
                        out.insert(field.json.clone(), Value::Object(map));
                    }
                    FieldType::Value(vt) if field.repeated => {
                        let mut items = Vec::new();
                        for (i, occurrence) in occurrences.iter().enumerate() {
                            self.repeated_value(vt, *occurrence, depth, &mut items)
                                .map_err(|e| e.at(format!("[{i}]")))?;
                        }
                        out.insert(field.json.clone(), Value::Array(items));
                    }
                    FieldType::Value(vt) => {
                        let decoded = self.single_value(vt, last, depth)?;
                        if field.inline {
                            if let Value::Object(inner) = decoded.value {
                                out.extend(inner);
                            }
                        } else if !decoded.zero
                            || field.pointer
                            || (field.keep_zero && matches!(vt, ValueType::Scalar(_)))
                        {
                            out.insert(field.json.clone(), decoded.value);
                        }
                    }
                }
                Ok(())
            })();
            result.map_err(|e| match segment {
                Some(segment) => e.at(segment),
                None => e,
            })?;
        }
        let zero = out.is_empty();
        Ok(Decoded {
            value: Value::Object(out),
            zero,
        })
    }

    fn single_value(&self, vt: ValueType, value: WireValue<'_>, depth: usize) -> Wire<Decoded> {
        match vt {
            ValueType::Scalar(s) => scalar(s, value),
            ValueType::Message(m) => match value {
                WireValue::Bytes(b) => self.message_at(m, b, depth + 1),
                other => Err(Malformed::new(format!("message field is {}", other.describe()))),
            },
        }
    }

    /// Appends one occurrence of a repeated field (several items if it is a packed scalar).
    fn repeated_value(
        &self,
        vt: ValueType,
        value: WireValue<'_>,
        depth: usize,
        items: &mut Vec<Value>,
    ) -> Wire<()> {
        match (vt, value) {
            (ValueType::Scalar(s), WireValue::Bytes(packed))
                if !matches!(s, Scalar::String | Scalar::Bytes) =>
            {
                let mut reader = Reader::new(packed);
                while !reader.buf.is_empty() {
                    let v = match s {
                        Scalar::Double => {
                            let b = reader.take(8)?;
                            WireValue::Fixed64(u64::from_le_bytes(
                                b.try_into().map_err(|_| Malformed::new("truncated"))?,
                            ))
                        }
                        Scalar::Float => {
                            let b = reader.take(4)?;
                            WireValue::Fixed32(u32::from_le_bytes(
                                b.try_into().map_err(|_| Malformed::new("truncated"))?,
                            ))
                        }
                        _ => WireValue::Varint(reader.varint()?),
                    };
                    items.push(scalar(s, v)?.value);
                }
            }
            _ => items.push(self.single_value(vt, value, depth)?.value),
        }
        Ok(())
    }

    fn map_entry(&self, vt: ValueType, entry: &[u8], depth: usize) -> Wire<(String, Value)> {
        let mut key = String::new();
        let mut value = None;
        for (number, v) in split_fields(entry)? {
            match number {
                1 => match v {
                    WireValue::Bytes(b) => key = utf8(b)?,
                    other => return Err(Malformed::new(format!("map key is {}", other.describe()))),
                },
                2 => value = Some(v),
                _ => {}
            }
        }
        let decoded = match value {
            Some(v) => self
                .single_value(vt, v, depth)
                .map_err(|e| e.at(format!("[{key:?}]")))?,
            None => self.single_value(vt, zero_wire(vt), depth)?,
        };
        Ok((key, decoded.value))
    }

    fn special(&self, special: Special, message: &Message, buf: &[u8], depth: usize) -> Wire<Decoded> {
        let fields = split_fields(buf)?;
        let get = |n: u32| fields.iter().rev().find(|(num, _)| *num == n).map(|f| f.1);
        let int = |n: u32| -> Wire<i64> {
            match get(n) {
                None => Ok(0),
                Some(WireValue::Varint(v)) => Ok(v as i64),
                Some(other) => Err(Malformed::new(format!("field {n} is {}", other.describe()))),
            }
        };
        let bytes = |n: u32| -> Wire<&[u8]> {
            match get(n) {
                None => Ok(&[]),
                Some(WireValue::Bytes(b)) => Ok(b),
                Some(other) => Err(Malformed::new(format!("field {n} is {}", other.describe()))),
            }
        };
        let decoded = |value: Value, zero: bool| Ok(Decoded { value, zero });
        match special {
            Special::Time | Special::MicroTime => {
                if buf.is_empty() {
                    return decoded(Value::Null, true);
                }
                let seconds = int(1)?;
                let nanos = int(2)? as i32;
                let text = if special == Special::Time {
                    format_time(seconds, 0, false)?
                } else {
                    format_time(seconds, nanos, true)?
                };
                decoded(Value::String(text), false)
            }
            Special::Duration => {
                let d = int(1)?;
                decoded(Value::String(go_duration(d)), d == 0)
            }
            Special::Quantity => {
                let s = utf8(bytes(1)?)?;
                let zero = s.is_empty();
                decoded(Value::String(s), zero)
            }
            Special::IntOrString => {
                let ty = int(1)?;
                if ty == 1 {
                    let s = utf8(bytes(3)?)?;
                    decoded(Value::String(s), false)
                } else {
                    let v = int(2)? as i32;
                    decoded(Value::Number(v.into()), ty == 0 && v == 0)
                }
            }
            Special::RawJson => {
                let raw = bytes(1)?;
                if raw.is_empty() {
                    return decoded(Value::Null, true);
                }
                if let Some(payload) = raw.strip_prefix(MAGIC) {
                    let v = decode_unknown(self.table, payload, depth + 1)
                        .map_err(|e| Malformed::new(format!("embedded protobuf object: {}", e.message)))?;
                    return decoded(v, false);
                }
                let v: Value = serde_json::from_slice(raw)
                    .map_err(|e| Malformed::new(format!("embedded raw value is not JSON: {e}")))?;
                decoded(v, false)
            }
            Special::StringList => {
                let mut items = Vec::new();
                for (n, v) in &fields {
                    if *n == 1 {
                        match v {
                            WireValue::Bytes(b) => items.push(Value::String(utf8(b)?)),
                            other => {
                                return Err(Malformed::new(format!(
                                    "string list item is {}",
                                    other.describe()
                                )))
                            }
                        }
                    }
                }
                let zero = items.is_empty();
                decoded(Value::Array(items), zero)
            }
            Special::SchemaOrArray | Special::SchemaOrBool | Special::SchemaOrStringArray => {
                self.schema_union(special, message, &fields, depth)
            }
        }
    }

    /// apiextensions `JSONSchemaPropsOrArray` {schema, jSONSchemas}, `…OrBool` {allows, schema},
    /// `…OrStringArray` {schema, property}: whichever alternative is set.
    fn schema_union(
        &self,
        special: Special,
        message: &Message,
        fields: &[(u32, WireValue<'_>)],
        depth: usize,
    ) -> Wire<Decoded> {
        let schema_message = message
            .fields
            .iter()
            .find(|f| f.json == "schema" || f.json == "Schema")
            .and_then(|f| match f.ty {
                FieldType::Value(ValueType::Message(m)) => Some(m),
                _ => None,
            })
            .ok_or_else(|| Malformed::new(format!("{} has no schema field", message.name)))?;
        let (schema_field, list_field) = match special {
            Special::SchemaOrBool => (2, 0),
            _ => (1, 2),
        };
        let mut schema = None;
        let mut list = Vec::new();
        let mut allows = false;
        for (n, v) in fields {
            match (*n, v) {
                (n, WireValue::Bytes(b)) if n == schema_field => {
                    schema = Some(self.message_at(schema_message, b, depth + 1)?.value)
                }
                (n, WireValue::Bytes(b)) if n == list_field => {
                    if special == Special::SchemaOrStringArray {
                        list.push(Value::String(utf8(b)?));
                    } else {
                        list.push(self.message_at(schema_message, b, depth + 1)?.value);
                    }
                }
                (1, WireValue::Varint(v)) if special == Special::SchemaOrBool => allows = *v != 0,
                _ => {}
            }
        }
        let value = match special {
            Special::SchemaOrBool => schema.unwrap_or(Value::Bool(allows)),
            _ if !list.is_empty() => Value::Array(list),
            _ => schema.unwrap_or(Value::Null),
        };
        let zero = value.is_null();
        Ok(Decoded { value, zero })
    }
}

/// The wire form of a map value that was left out (the type's zero value).
fn zero_wire(vt: ValueType) -> WireValue<'static> {
    match vt {
        ValueType::Scalar(Scalar::String | Scalar::Bytes) | ValueType::Message(_) => WireValue::Bytes(&[]),
        ValueType::Scalar(Scalar::Double) => WireValue::Fixed64(0),
        ValueType::Scalar(Scalar::Float) => WireValue::Fixed32(0),
        ValueType::Scalar(_) => WireValue::Varint(0),
    }
}

fn scalar(s: Scalar, value: WireValue<'_>) -> Wire<Decoded> {
    let mismatch = |expected: &str| {
        Malformed::new(format!(
            "is {}, expected {expected} for a {s:?} field",
            value.describe()
        ))
    };
    let (value, zero) = match (s, value) {
        (Scalar::String, WireValue::Bytes(b)) => {
            let text = utf8(b)?;
            let zero = text.is_empty();
            (Value::String(text), zero)
        }
        (Scalar::Bytes, WireValue::Bytes(b)) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
            b.is_empty(),
        ),
        (Scalar::Bool, WireValue::Varint(v)) => (Value::Bool(v != 0), v == 0),
        // int32 is sign-extended to 64 bits on the wire; truncating undoes that.
        (Scalar::Int32, WireValue::Varint(v)) => (Value::Number((v as i32).into()), v == 0),
        (Scalar::Int64, WireValue::Varint(v)) => (Value::Number((v as i64).into()), v == 0),
        (Scalar::Uint32, WireValue::Varint(v)) => (Value::Number((v as u32).into()), v == 0),
        (Scalar::Uint64, WireValue::Varint(v)) => (Value::Number(v.into()), v == 0),
        (Scalar::Int32 | Scalar::Uint32, WireValue::Fixed32(v)) => (Value::Number(v.into()), v == 0),
        (Scalar::Int64 | Scalar::Uint64, WireValue::Fixed64(v)) => (Value::Number(v.into()), v == 0),
        (Scalar::Double, WireValue::Fixed64(bits)) => float(f64::from_bits(bits))?,
        (Scalar::Float, WireValue::Fixed32(bits)) => float(f64::from(f32::from_bits(bits)))?,
        (Scalar::String | Scalar::Bytes, _) => return Err(mismatch("a length-delimited value")),
        (Scalar::Double, _) => return Err(mismatch("a 64-bit value")),
        (Scalar::Float, _) => return Err(mismatch("a 32-bit value")),
        _ => return Err(mismatch("a varint")),
    };
    Ok(Decoded { value, zero })
}

fn float(f: f64) -> Wire<(Value, bool)> {
    let n = Number::from_f64(f).ok_or_else(|| Malformed::new(format!("{f} is not a JSON number")))?;
    Ok((Value::Number(n), f == 0.0))
}

/// `metav1.Time` (seconds precision) or `metav1.MicroTime` (microseconds) as upstream's JSON.
fn format_time(seconds: i64, nanos: i32, micro: bool) -> Wire<String> {
    let t = jiff::Timestamp::new(seconds, if micro { nanos } else { 0 })
        .map_err(|e| Malformed::new(format!("timestamp {seconds}s {nanos}ns: {e}")))?;
    Ok(if micro {
        t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    } else {
        crate::time::format_rfc3339(t)
    })
}

/// A Go `time.Duration` (nanoseconds) as `Duration.String()` writes it: `1h0m0s`, `1.5s`, `20ms`.
fn go_duration(d: i64) -> String {
    if d == 0 {
        return "0s".into();
    }
    let sign = if d < 0 { "-" } else { "" };
    let u = d.unsigned_abs();
    const SECOND: u64 = 1_000_000_000;
    let body = if u < SECOND {
        let (div, unit) = if u < 1_000 {
            (1, "ns")
        } else if u < 1_000_000 {
            (1_000, "µs")
        } else {
            (1_000_000, "ms")
        };
        format!("{}{unit}", fraction(u, div))
    } else {
        let hours = u / (3600 * SECOND);
        let minutes = u % (3600 * SECOND) / (60 * SECOND);
        let seconds = fraction(u % (60 * SECOND), SECOND);
        if hours > 0 {
            format!("{hours}h{minutes}m{seconds}s")
        } else if minutes > 0 {
            format!("{minutes}m{seconds}s")
        } else {
            format!("{seconds}s")
        }
    };
    format!("{sign}{body}")
}

/// `v / div` with the remainder as decimal digits, trailing zeros trimmed (`1500, 1000` → `1.5`).
fn fraction(v: u64, div: u64) -> String {
    let (int, rem) = (v / div, v % div);
    if rem == 0 {
        return int.to_string();
    }
    let width = div.ilog10() as usize;
    let digits = format!("{rem:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

// ---------------------------------------------------------------------------------------------
// Encoding

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire_type));
}

fn put_bytes(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_key(out, number, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Encoder<'t> {
    table: &'t Table,
}

impl Encoder<'_> {
    fn message(&self, index: usize, value: &Value, depth: usize) -> Wire<Vec<u8>> {
        if depth > MAX_DEPTH {
            return Err(Malformed::new(format!("nested deeper than {MAX_DEPTH} messages")));
        }
        let message = &self.table.messages[index];
        if let Some(special) = message.special {
            return self.special(special, message, value, depth);
        }
        let object = match value {
            Value::Object(o) => o,
            Value::Null => return Ok(Vec::new()),
            other => return Err(Malformed::new(format!("expected an object, found {other}"))),
        };
        let mut out = Vec::new();
        for &(_, i) in &message.by_number {
            let field = &message.fields[i];
            self.field(field, object, value, depth, &mut out).map_err(|e| {
                if field.inline {
                    e
                } else {
                    e.at(field.json.as_str())
                }
            })?;
        }
        Ok(out)
    }

    fn field(
        &self,
        field: &Field,
        object: &Map<String, Value>,
        whole: &Value,
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Wire<()> {
        if field.inline {
            if let FieldType::Value(ValueType::Message(m)) = field.ty {
                let inner = self.message(m, whole, depth + 1)?;
                put_bytes(out, field.number, &inner);
            }
            return Ok(());
        }
        let Some(value) = object.get(&field.json).filter(|v| !v.is_null()) else {
            return Ok(());
        };
        match field.ty {
            FieldType::Map(vt) => {
                let map = value
                    .as_object()
                    .ok_or_else(|| Malformed::new(format!("expected a map, found {value}")))?;
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                for key in keys {
                    let mut entry = Vec::new();
                    put_bytes(&mut entry, 1, key.as_bytes());
                    self.value(vt, 2, &map[key.as_str()], depth, &mut entry)
                        .map_err(|e| e.at(format!("[{key:?}]")))?;
                    put_bytes(out, field.number, &entry);
                }
            }
            FieldType::Value(vt) if field.repeated => {
                let items = value
                    .as_array()
                    .ok_or_else(|| Malformed::new(format!("expected an array, found {value}")))?;
                for (i, item) in items.iter().enumerate() {
                    self.value(vt, field.number, item, depth, out)
                        .map_err(|e| e.at(format!("[{i}]")))?;
                }
            }
            FieldType::Value(vt) => self.value(vt, field.number, value, depth, out)?,
        }
        Ok(())
    }

    fn value(&self, vt: ValueType, number: u32, value: &Value, depth: usize, out: &mut Vec<u8>) -> Wire<()> {
        let mismatch = |what: &str| Malformed::new(format!("expected {what}, found {value}"));
        match vt {
            ValueType::Message(m) => {
                let inner = self.message(m, value, depth + 1)?;
                put_bytes(out, number, &inner);
            }
            ValueType::Scalar(Scalar::String) => put_bytes(
                out,
                number,
                value.as_str().ok_or_else(|| mismatch("a string"))?.as_bytes(),
            ),
            ValueType::Scalar(Scalar::Bytes) => {
                let text = value.as_str().ok_or_else(|| mismatch("a base64 string"))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| Malformed::new(format!("not base64: {e}")))?;
                put_bytes(out, number, &bytes);
            }
            ValueType::Scalar(Scalar::Bool) => {
                put_key(out, number, 0);
                put_varint(
                    out,
                    u64::from(value.as_bool().ok_or_else(|| mismatch("a boolean"))?),
                );
            }
            ValueType::Scalar(Scalar::Int32 | Scalar::Int64) => {
                put_key(out, number, 0);
                // Negative numbers are sign-extended to 64 bits, as protobuf does for int32 too.
                put_varint(out, value.as_i64().ok_or_else(|| mismatch("an integer"))? as u64);
            }
            ValueType::Scalar(Scalar::Uint32 | Scalar::Uint64) => {
                put_key(out, number, 0);
                put_varint(
                    out,
                    value.as_u64().ok_or_else(|| mismatch("an unsigned integer"))?,
                );
            }
            ValueType::Scalar(Scalar::Double) => {
                put_key(out, number, 1);
                let f = value.as_f64().ok_or_else(|| mismatch("a number"))?;
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            ValueType::Scalar(Scalar::Float) => {
                put_key(out, number, 5);
                let f = value.as_f64().ok_or_else(|| mismatch("a number"))? as f32;
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
        }
        Ok(())
    }

    fn special(&self, special: Special, message: &Message, value: &Value, depth: usize) -> Wire<Vec<u8>> {
        let mut out = Vec::new();
        let text = || {
            value
                .as_str()
                .ok_or_else(|| Malformed::new(format!("expected a string, found {value}")))
        };
        match special {
            Special::Time | Special::MicroTime => {
                if value.is_null() {
                    return Ok(out);
                }
                let t = crate::time::parse(text()?)
                    .ok_or_else(|| Malformed::new(format!("{value} is not an RFC 3339 time")))?;
                put_key(&mut out, 1, 0);
                put_varint(&mut out, t.as_second() as u64);
                if special == Special::MicroTime {
                    put_key(&mut out, 2, 0);
                    put_varint(&mut out, t.subsec_nanosecond() as i64 as u64);
                }
            }
            Special::Duration => {
                let nanos = parse_go_duration(text()?)
                    .ok_or_else(|| Malformed::new(format!("{value} is not a duration")))?;
                put_key(&mut out, 1, 0);
                put_varint(&mut out, nanos as u64);
            }
            Special::Quantity => {
                let s = match value {
                    Value::Number(n) => n.to_string(),
                    _ => text()?.to_string(),
                };
                put_bytes(&mut out, 1, s.as_bytes());
            }
            Special::IntOrString => match value {
                Value::String(s) => {
                    put_key(&mut out, 1, 0);
                    put_varint(&mut out, 1);
                    put_key(&mut out, 2, 0);
                    put_varint(&mut out, 0);
                    put_bytes(&mut out, 3, s.as_bytes());
                }
                _ => {
                    let n = value
                        .as_i64()
                        .ok_or_else(|| Malformed::new(format!("expected an int or string, found {value}")))?;
                    put_key(&mut out, 1, 0);
                    put_varint(&mut out, 0);
                    put_key(&mut out, 2, 0);
                    put_varint(&mut out, n as u64);
                    put_bytes(&mut out, 3, b"");
                }
            },
            Special::RawJson => {
                if !value.is_null() {
                    let raw = serde_json::to_vec(value).map_err(|e| Malformed::new(e.to_string()))?;
                    put_bytes(&mut out, 1, &raw);
                }
            }
            Special::StringList => {
                let items = value
                    .as_array()
                    .ok_or_else(|| Malformed::new(format!("expected a list of strings, found {value}")))?;
                for item in items {
                    let s = item
                        .as_str()
                        .ok_or_else(|| Malformed::new(format!("expected a string, found {item}")))?;
                    put_bytes(&mut out, 1, s.as_bytes());
                }
            }
            Special::SchemaOrArray | Special::SchemaOrBool | Special::SchemaOrStringArray => {
                let schema_message = message
                    .fields
                    .iter()
                    .find_map(|f| match (f.json.as_str(), f.ty) {
                        ("schema" | "Schema", FieldType::Value(ValueType::Message(m))) => Some(m),
                        _ => None,
                    })
                    .ok_or_else(|| Malformed::new(format!("{} has no schema field", message.name)))?;
                match (special, value) {
                    (Special::SchemaOrBool, Value::Bool(b)) => {
                        put_key(&mut out, 1, 0);
                        put_varint(&mut out, u64::from(*b));
                    }
                    (Special::SchemaOrBool, _) => {
                        put_key(&mut out, 1, 0);
                        put_varint(&mut out, 1);
                        put_bytes(&mut out, 2, &self.message(schema_message, value, depth + 1)?);
                    }
                    (Special::SchemaOrStringArray, Value::Array(items)) => {
                        for item in items {
                            let s = item
                                .as_str()
                                .ok_or_else(|| Malformed::new(format!("expected a string, found {item}")))?;
                            put_bytes(&mut out, 2, s.as_bytes());
                        }
                    }
                    (_, Value::Array(items)) => {
                        for item in items {
                            put_bytes(&mut out, 2, &self.message(schema_message, item, depth + 1)?);
                        }
                    }
                    _ => put_bytes(&mut out, 1, &self.message(schema_message, value, depth + 1)?),
                }
            }
        }
        Ok(out)
    }
}

/// Parses a Go duration string (`1h2m3.5s`, `300ms`, `-1.5µs`) into nanoseconds.
fn parse_go_duration(s: &str) -> Option<i64> {
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    let nanos = total.round();
    if nanos > i64::MAX as f64 {
        return None;
    }
    Some(if negative { -(nanos as i64) } else { nanos as i64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/protobuf")
    }

    fn fixture(name: &str) -> Value {
        let body = std::fs::read(fixtures().join(format!("{name}.pb"))).expect("fixture exists");
        decode(&body).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Every captured kubectl body decodes to its golden JSON (`KEEL_BLESS=1` rewrites them).
    #[test]
    fn kubectl_bodies_decode_to_golden_json() {
        let bless = std::env::var_os("KEEL_BLESS").is_some();
        let mut names: Vec<String> = std::fs::read_dir(fixtures())
            .expect("fixture dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".pb").map(str::to_string))
            .collect();
        names.sort();
        assert!(names.len() >= 30, "fixtures missing: {names:?}");
        for name in names {
            let got = fixture(&name);
            let path = fixtures().join(format!("{name}.json"));
            if bless {
                let text = serde_json::to_string_pretty(&got).expect("serializable") + "\n";
                std::fs::write(&path, text).expect("write golden");
                continue;
            }
            let want: Value = serde_json::from_str(
                &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            )
            .expect("golden is JSON");
            assert_eq!(got, want, "{name}");
        }
    }

    // ---- a tiny encoder for hand-made bodies

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A varint field.
    fn vf(number: u32, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(number) << 3, &mut out);
        varint(v, &mut out);
        out
    }

    /// A length-delimited field.
    fn lf(number: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint((u64::from(number) << 3) | 2, &mut out);
        varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    fn body(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = cat(&[lf(1, api_version.as_bytes()), lf(2, kind.as_bytes())]);
        let mut out = MAGIC.to_vec();
        out.extend(cat(&[lf(1, &type_meta), lf(2, raw), lf(3, b""), lf(4, b"")]));
        out
    }

    fn meta(name: &str) -> Vec<u8> {
        // gogo writes every non-pointer field, so a real ObjectMeta is full of empties.
        cat(&[
            lf(1, name.as_bytes()),
            lf(2, b""),
            lf(3, b""),
            vf(7, 0),
            lf(8, b""),
        ])
    }

    #[test]
    fn pointer_zeros_stay_and_value_zeros_go() {
        // DeploymentSpec: replicas (*int32) = 0, minReadySeconds (int32) = 0, paused (bool) = false.
        let spec = cat(&[vf(1, 0), vf(5, 0), vf(7, 0)]);
        let raw = cat(&[lf(1, &meta("d")), lf(2, &spec)]);
        let got = decode(&body("apps/v1", "Deployment", &raw)).expect("decodes");
        assert_eq!(
            got,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "d"}, "spec": {"replicas": 0}})
        );
        assert_eq!(fixture("deployment-replicas0")["spec"]["replicas"], json!(0));
        assert_eq!(fixture("deployment")["spec"]["replicas"], json!(3));
    }

    #[test]
    fn access_reviews_carry_no_empty_noise() {
        fn strings(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::String(s) => out.push(s.clone()),
                Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
                Value::Object(o) => o.values().for_each(|x| strings(x, out)),
                _ => {}
            }
        }
        for name in ["can-i", "can-i-subresource", "can-i-nonresource", "can-i-list"] {
            let v = fixture(name);
            let mut all = Vec::new();
            strings(&v, &mut all);
            assert!(!all.iter().any(String::is_empty), "{name}: {v}");
            assert!(v.get("metadata").is_none(), "{name}: {v}");
        }
        let v = fixture("can-i-subresource");
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"namespace": "ns1", "verb": "get", "resource": "pods", "subresource": "log",
                   "name": "log"})
        );
        // `allowed` has no omitempty upstream: Go's JSON writes it even when false.
        assert_eq!(v["status"], json!({"allowed": false}));
    }

    #[test]
    fn bytes_and_byte_maps_are_base64() {
        let s = fixture("secret-generic");
        assert_eq!(s["data"], json!({"bin": "AAEC/w==", "k": "dg=="}));
        let cm = fixture("configmap");
        assert_eq!(cm["data"], json!({"a": "b", "c": "d"}));
        assert_eq!(cm["binaryData"], json!({"bin": "AAEC/w=="}));
        let csr = fixture("certificate-approve");
        assert!(csr["spec"]["request"]
            .as_str()
            .is_some_and(|r| r.starts_with("LS0tLS1CRUdJTi")));
    }

    #[test]
    fn times_quantities_and_int_or_strings() {
        let csr = fixture("certificate-approve");
        assert_eq!(
            csr["metadata"]["creationTimestamp"],
            json!("2026-11-23T13:32:16Z")
        );
        let condition = &csr["status"]["conditions"][0];
        assert_eq!(condition["lastUpdateTime"], json!("2026-11-23T13:32:16Z"));
        assert!(condition.get("lastTransitionTime").is_none());
        let quota = fixture("quota");
        assert_eq!(
            quota["spec"]["hard"],
            json!({"cpu": "1", "memory": "1G", "pods": "2"})
        );
        assert_eq!(fixture("poddisruptionbudget")["spec"]["minAvailable"], json!(1));
        assert_eq!(
            fixture("poddisruptionbudget-percent")["spec"]["maxUnavailable"],
            json!("50%")
        );
        let svc = fixture("service-clusterip");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], json!(8080));

        // MicroTime keeps microseconds; Time drops the nanos upstream ignores too.
        let lease_spec = cat(&[
            lf(1, b"holder"),
            lf(4, &cat(&[vf(1, 1_767_225_600), vf(2, 123_456_789)])),
        ]);
        let raw = cat(&[lf(1, &meta("l")), lf(2, &lease_spec)]);
        let lease = decode(&body("coordination.k8s.io/v1", "Lease", &raw)).expect("lease");
        assert_eq!(lease["spec"]["renewTime"], json!("2026-01-01T00:00:00.123456Z"));
        let meta_with_time = cat(&[lf(1, b"t"), lf(8, &cat(&[vf(1, 1_767_225_600), vf(2, 5)]))]);
        let ns = decode(&body("v1", "Namespace", &lf(1, &meta_with_time))).expect("ns");
        assert_eq!(ns["metadata"]["creationTimestamp"], json!("2026-01-01T00:00:00Z"));

        // A pointer IntOrString set to 0 stays (maxUnavailable: 0 means "none").
        let pdb_spec = lf(3, &cat(&[vf(1, 0), vf(2, 0), lf(3, b"")]));
        let raw = cat(&[lf(1, &meta("p")), lf(2, &pdb_spec)]);
        let pdb = decode(&body("policy/v1", "PodDisruptionBudget", &raw)).expect("pdb");
        assert_eq!(pdb["spec"], json!({"maxUnavailable": 0}));
    }

    #[test]
    fn inline_structs_pointer_structs_and_raw_json() {
        // Pod volume: Volume.name + inlined VolumeSource {emptyDir: {}, configMap: {name: cm}}.
        let config_map = lf(1, &lf(1, b"cm")); // ConfigMapVolumeSource.localObjectReference
        let source = cat(&[lf(2, b""), lf(19, &config_map)]); // emptyDir (pointer) empty
        let volume = cat(&[lf(1, b"v"), lf(2, &source)]);
        let container = cat(&[lf(1, b"c"), lf(2, b"img")]);
        let pod_spec = cat(&[lf(1, &volume), lf(2, &container)]);
        let raw = cat(&[lf(1, &meta("p")), lf(2, &pod_spec), lf(3, b"")]);
        let pod = decode(&body("v1", "Pod", &raw)).expect("pod");
        assert_eq!(
            pod["spec"],
            json!({"volumes": [{"name": "v", "emptyDir": {}, "configMap": {"name": "cm"}}],
                   "containers": [{"name": "c", "image": "img"}]})
        );
        assert!(pod.get("status").is_none());

        // ControllerRevision.data is a RawExtension: embedded JSON, or an embedded k8s\0 body.
        let json_data = lf(1, br#"{"spec":{"x":1}}"#);
        let raw = cat(&[lf(1, &meta("r")), lf(2, &json_data), vf(3, 2)]);
        let rev = decode(&body("apps/v1", "ControllerRevision", &raw)).expect("revision");
        assert_eq!(rev["data"], json!({"spec": {"x": 1}}));
        assert_eq!(rev["revision"], json!(2));
        let nested = body(
            "v1",
            "ConfigMap",
            &cat(&[lf(1, &meta("inner")), lf(2, &cat(&[lf(1, b"k"), lf(2, b"v")]))]),
        );
        let raw = cat(&[lf(1, &meta("r")), lf(2, &lf(1, &nested))]);
        let rev = decode(&body("apps/v1", "ControllerRevision", &raw)).expect("nested");
        assert_eq!(
            rev["data"],
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "inner"}, "data": {"k": "v"}})
        );

        // managedFields[].fieldsV1 is embedded JSON too.
        let entry = cat(&[
            lf(1, b"kubectl"),
            lf(2, b"Apply"),
            lf(6, b"FieldsV1"),
            lf(7, &lf(1, br#"{"f:data":{}}"#)),
        ]);
        let m = cat(&[lf(1, b"cm"), lf(17, &entry)]);
        let cm = decode(&body("v1", "ConfigMap", &lf(1, &m))).expect("cm");
        assert_eq!(
            cm["metadata"]["managedFields"][0],
            json!({"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                   "fieldsV1": {"f:data": {}}})
        );
    }

    #[test]
    fn delete_options_and_extra_values() {
        // gracePeriodSeconds: 0 (pointer) stays; dryRun is a list.
        let raw = cat(&[vf(1, 0), lf(4, b"Foreground"), lf(5, b"All")]);
        for api_version in ["v1", "apps/v1", "meta.k8s.io/v1"] {
            let got = decode(&body(api_version, "DeleteOptions", &raw)).expect("delete options");
            assert_eq!(
                got,
                json!({"apiVersion": api_version, "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                       "propagationPolicy": "Foreground", "dryRun": ["All"]}),
            );
        }
        // SubjectAccessReviewSpec.extra is map<string, ExtraValue{repeated string items}>.
        let extra = cat(&[lf(1, b"scopes"), lf(2, &cat(&[lf(1, b"a"), lf(1, b"b")]))]);
        let spec = cat(&[lf(3, b"bob"), lf(5, &extra)]);
        let sar = decode(&body(
            "authorization.k8s.io/v1",
            "SubjectAccessReview",
            &cat(&[lf(1, b""), lf(2, &spec)]),
        ))
        .expect("sar");
        assert_eq!(
            sar["spec"],
            json!({"user": "bob", "extra": {"scopes": ["a", "b"]}})
        );
    }

    #[test]
    fn scalars_negative_and_packed() {
        // Container.ports[].containerPort = -1 (sign-extended int32 varint) - decoded as is.
        let port = vf(3, (-1i64) as u64);
        let container = cat(&[lf(1, b"c"), lf(6, &port)]);
        let raw = cat(&[lf(1, &meta("p")), lf(2, &lf(2, &container))]);
        let pod = decode(&body("v1", "Pod", &raw)).expect("pod");
        assert_eq!(
            pod["spec"]["containers"][0]["ports"][0]["containerPort"],
            json!(-1)
        );
        // NodeSelectorRequirement has no ints; use an EndpointPort-free case: packed and
        // unpacked repeated int32 (LimitRange has none either), so exercise the reader directly.
        let decoder = Decoder {
            table: table().expect("table"),
        };
        let mut items = Vec::new();
        let packed = cat(&[vec![1], vec![0x96, 0x01]]);
        decoder
            .repeated_value(
                ValueType::Scalar(Scalar::Int32),
                WireValue::Bytes(&packed),
                0,
                &mut items,
            )
            .expect("packed");
        assert_eq!(items, vec![json!(1), json!(150)]);
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(90_500_000_000), "1m30.5s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(-2_000), "-2µs");
        assert_eq!(go_duration(0), "0s");
    }

    #[test]
    fn malformed_bodies_are_bad_requests_naming_the_field() {
        let e = decode(b"{\"kind\":\"Pod\"}").expect_err("no magic");
        assert_eq!((e.code, e.reason), (400, "BadRequest"));

        let e = decode(&body("", "", b"")).expect_err("no kind");
        assert_eq!(e.code, 400);

        // Truncated: a length that runs past the end of spec.template.
        let spec = cat(&[vf(1, 1), vec![(3 << 3) | 2, 50, 1, 2]]);
        let raw = cat(&[lf(1, &meta("d")), lf(2, &spec)]);
        let e = decode(&body("apps/v1", "Deployment", &raw)).expect_err("truncated");
        assert_eq!(e.code, 400);
        assert!(e.message.contains("spec"), "{}", e.message);

        // Wrong wire type for a string field.
        let raw = lf(1, &vf(1, 7));
        let e = decode(&body("v1", "Namespace", &raw)).expect_err("wire type");
        assert_eq!(e.code, 400);
        assert!(e.message.contains("metadata.name"), "{}", e.message);

        // Inlined structs add no path segment: volumes[0].configMap.name, not …VolumeSource….
        let config_map = lf(1, &vf(1, 1));
        let volume = cat(&[lf(1, b"v"), lf(2, &lf(19, &config_map))]);
        let raw = cat(&[lf(1, &meta("p")), lf(2, &lf(1, &volume))]);
        let e = decode(&body("v1", "Pod", &raw)).expect_err("inline path");
        assert!(
            e.message.contains("at spec.volumes[0].configMap.name:"),
            "{}",
            e.message
        );

        // Invalid UTF-8 in a string.
        let raw = lf(1, &lf(1, &[0xff, 0xfe]));
        let e = decode(&body("v1", "Namespace", &raw)).expect_err("utf8");
        assert!(e.message.contains("UTF-8"), "{}", e.message);

        // Whole body garbage after the magic.
        let mut garbage = MAGIC.to_vec();
        garbage.extend([
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        assert_eq!(decode(&garbage).expect_err("garbage").code, 400);

        // Deep nesting is refused, not a stack overflow: CRD spec.versions[0].schema.
        // openAPIV3Schema.not.not.… (JSONSchemaProps is recursive).
        let mut schema = Vec::new();
        for _ in 0..200 {
            schema = lf(28, &schema);
        }
        let spec = lf(7, &lf(4, &lf(1, &schema)));
        let e = decode(&body(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            &lf(2, &spec),
        ))
        .expect_err("too deep");
        assert_eq!(e.code, 400);
        assert!(e.message.contains("nested deeper"), "{}", e.message);
    }

    #[test]
    fn unknown_kinds_are_unsupported_media_type() {
        let e = decode(&body("example.com/v1", "Widget", b"")).expect_err("unknown");
        assert_eq!((e.code, e.reason), (415, "UnsupportedMediaType"));
        assert!(e.message.contains("example.com/v1, Kind=Widget"), "{}", e.message);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let raw = cat(&[lf(1, &cat(&[lf(1, b"ns"), lf(99, b"future")])), vf(77, 1)]);
        let got = decode(&body("v1", "Namespace", &raw)).expect("decodes");
        assert_eq!(
            got,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}})
        );
    }

    /// Every kind a client can send a body for resolves: the registry's kinds, the kinds of
    /// subresources taking bodies, and DeleteOptions.
    #[test]
    fn every_served_kind_has_a_message() {
        let table = table().expect("table loads");
        let mut missing = Vec::new();
        for r in crate::registry::RESOURCES {
            if table.message_of(&r.api_version(), r.kind).is_none() {
                missing.push(format!("{}/{}", r.api_version(), r.kind));
            }
            for s in r.subresources {
                if s.kind.ends_with("Options") {
                    continue; // proxy/exec/attach/portforward take query parameters
                }
                let api_version = if s.group.is_empty() && s.version.is_empty() {
                    r.api_version()
                } else if s.group.is_empty() {
                    s.version.to_string()
                } else {
                    format!("{}/{}", s.group, s.version)
                };
                if table.message_of(&api_version, s.kind).is_none() {
                    missing.push(format!("{api_version}/{} ({})", s.kind, s.name));
                }
            }
        }
        assert!(missing.is_empty(), "no protobuf message for {missing:?}");
        assert!(table.message_of("v1", "DeleteOptions").is_some());
    }

    /// decode → encode → decode is the identity for every kubectl body.
    #[test]
    fn encoding_round_trips_every_fixture() {
        let mut names: Vec<String> = std::fs::read_dir(fixtures())
            .expect("fixture dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".pb").map(str::to_string))
            .collect();
        names.sort();
        for name in names {
            let json = fixture(&name);
            let bytes = encode(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(bytes.starts_with(MAGIC));
            assert_eq!(decode(&bytes).expect("re-decodes"), json, "{name}");
        }
    }

    #[test]
    fn encoding_writes_what_upstream_reads() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}});
        let bytes = encode(&ns).expect("encodes");
        assert_eq!(bytes, body("v1", "Namespace", &lf(1, &lf(1, b"a"))));

        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"renewTime": "2026-01-01T00:00:00.250000Z", "leaseDurationSeconds": -1}});
        assert_eq!(decode(&encode(&lease).expect("lease")).expect("decodes"), lease);

        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"volumes": [{"name": "v", "emptyDir": {}, "secret": {"secretName": "s"}}],
                     "containers": [{"name": "c", "ports": [{"containerPort": 80}],
                                     "resources": {"limits": {"cpu": "500m"}},
                                     "livenessProbe": {"httpGet": {"port": "http", "path": "/"}}}]}});
        assert_eq!(decode(&encode(&pod).expect("pod")).expect("decodes"), pod);

        let e = encode(&json!({"apiVersion": "example.com/v1", "kind": "Widget"})).expect_err("unknown");
        assert_eq!(e.code, 406);
        let e = encode(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": 5}}))
            .expect_err("bad json");
        assert!(e.message.contains("metadata.name"), "{}", e.message);
    }

    #[test]
    fn go_durations_parse_back() {
        for d in [
            0,
            1,
            1_500,
            2_000_000,
            3_600_000_000_000,
            90_500_000_000,
            -7_000_000_000,
        ] {
            assert_eq!(parse_go_duration(&go_duration(d)), Some(d), "{}", go_duration(d));
        }
        assert_eq!(parse_go_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}
