//! The rules every stored event follows: one owner, used by the server when it takes a
//! post or publishes, and by the clients before they publish.

use chrono::{Datelike, Timelike};
use serde_json::Value;

use crate::wire::StoredEvent;

/// Deepest nesting of arrays and objects that a page of `GET /events` may reach (the
/// page's array counts 1, a record 2, its `context` 3), and, separately, an `eventJson`
/// payload. serde_json, so every Rust client, decodes 127 levels; 64 leaves room for
/// wrappers and for decoders with lower limits (.NET's default is 64).
pub const MAX_NESTING: usize = 64;

/// Why an event breaks the rules: every message names the field and says what it
/// should be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEvent {
    /// The body is not a JSON object at all.
    #[error("the body must be a JSON object, an event record: {0}")]
    NotARecord(String),
    /// A field is missing or has the wrong value.
    #[error("`{field}` {problem}")]
    Field {
        /// The field's wire name, such as `eventJson`.
        field: String,
        /// What is wrong and what it should be.
        problem: String,
    },
}

impl InvalidEvent {
    fn field(field: &str, problem: impl Into<String>) -> Self {
        Self::Field {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }

    /// The field at fault, when the error is about one.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            Self::NotARecord(_) => None,
            Self::Field { field, .. } => Some(field),
        }
    }
}

/// What each field of a record should be, for messages.
fn expected(field: &str) -> &'static str {
    match field {
        "id" => "a UUID, such as \"0193a5a0-7a4c-7c8e-9d2e-1f0a3b4c5d6e\"",
        "createdAt" => {
            "an RFC 3339 time in the years 0000 to 9999, such as \"2024-12-04T10:00:00Z\""
        }
        "aggregateId" | "eventType" => "a non-empty string",
        "eventJson" => "a string holding the payload's JSON, such as \"{\\\"amount\\\":1}\"",
        "userId" | "tenantId" | "sessionId" => "a string or null",
        "context" => "an object",
        "position" => "absent or a whole number of 0 or more (the server assigns it)",
        _ => "valid",
    }
}

impl StoredEvent {
    /// Decodes a posted record, naming the field at fault when it does not decode. It
    /// does not check the rules: call [`validate`](Self::validate) for that.
    pub fn from_json(json: &[u8]) -> Result<Self, InvalidEvent> {
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let error = match serde_path_to_error::deserialize::<_, Self>(&mut deserializer) {
            Ok(event) => match deserializer.end() {
                Ok(()) => return Ok(event),
                Err(error) => return Err(InvalidEvent::NotARecord(error.to_string())),
            },
            Err(error) => error,
        };
        let field = match error.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
            _ => missing_field(&error.inner().to_string()),
        };
        Err(match field {
            Some(field) => {
                let problem = format!("must be {}: {}", expected(&field), error.inner());
                InvalidEvent::Field { field, problem }
            }
            None => InvalidEvent::NotARecord(error.inner().to_string()),
        })
    }

    /// Checks the event against the rules of docs/PROTOCOL.md: non-empty `eventType` and
    /// `aggregateId`, `eventJson` that is JSON, a `createdAt` that RFC 3339 can write, no
    /// U+0000, and nesting within [`MAX_NESTING`] both for the record as a page serves it
    /// and for `eventJson`, so that every client can decode it.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        if self.event_type.trim().is_empty() {
            return Err(InvalidEvent::field("eventType", "must not be empty"));
        }
        if self.aggregate_id.is_empty() {
            return Err(InvalidEvent::field("aggregateId", "must not be empty"));
        }
        if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(&self.event_json) {
            return Err(InvalidEvent::field(
                "eventJson",
                format!("must be {}: {error}", expected("eventJson")),
            ));
        }
        if !(0..=9999).contains(&self.created_at.year()) {
            return Err(InvalidEvent::field(
                "createdAt",
                format!(
                    "must be {}; the year is {}",
                    expected("createdAt"),
                    self.created_at.year()
                ),
            ));
        }
        // chrono keeps a leap second as a nanosecond count past 10^9; stores cannot.
        if self.created_at.nanosecond() >= 1_000_000_000 {
            return Err(InvalidEvent::field(
                "createdAt",
                "must not be a leap second (:60); use :59 or the next second",
            ));
        }
        if let Some(field) = self.field_with_nul() {
            return Err(InvalidEvent::field(
                field,
                "must not contain U+0000 (NUL), which stores cannot keep",
            ));
        }
        let payload_depth = nesting_depth(&self.event_json);
        if payload_depth > MAX_NESTING {
            return Err(InvalidEvent::field(
                "eventJson",
                format!("nests {payload_depth} levels deep; at most {MAX_NESTING} are allowed, so that clients can decode it"),
            ));
        }
        let page_depth = self.page_depth();
        if page_depth > MAX_NESTING {
            // Only the context nests in a record; a page holds its values 3 levels deep.
            return Err(InvalidEvent::field(
                "context",
                format!(
                    "values nest {} levels deep; at most {} are allowed (a page of events adds 3 levels around them), so that clients can decode it",
                    page_depth - 3,
                    MAX_NESTING - 3,
                ),
            ));
        }
        Ok(())
    }

    /// The first field holding U+0000 (`context` for a key or value in it), which
    /// PostgreSQL cannot store; [`validate`](Self::validate) refuses such an self.
    pub fn field_with_nul(&self) -> Option<&'static str> {
        let strings = [
            ("aggregateId", Some(&self.aggregate_id)),
            ("eventType", Some(&self.event_type)),
            ("eventJson", Some(&self.event_json)),
            ("userId", self.user_id.as_ref()),
            ("tenantId", self.tenant_id.as_ref()),
            ("sessionId", self.session_id.as_ref()),
        ];
        let in_strings = strings
            .into_iter()
            .find(|(_, value)| value.is_some_and(|s| s.contains('\0')))
            .map(|(field, _)| field);
        let in_context = || {
            self.context
                .iter()
                .any(|(key, value)| key.contains('\0') || value_has_nul(value))
                .then_some("context")
        };
        in_strings.or_else(in_context)
    }

    /// How deeply a page holding this record nests: the page's array, the record, and
    /// its context with the context's values.
    fn page_depth(&self) -> usize {
        let record = 2;
        if self.context.is_empty() {
            return record;
        }
        record + 1 + self.context.values().map(value_depth).max().unwrap_or(0)
    }
}

/// The field named in serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(field, _)| field.to_owned())
}

fn value_has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(value_has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.contains('\0') || value_has_nul(v)),
        _ => false,
    }
}

/// How deeply arrays and objects nest in a value (a scalar: 0), without recursion.
fn value_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0)];
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    deepest
}

/// How deeply arrays and objects nest in a (syntactically valid) JSON text, found
/// without recursion or allocation.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nesting_depth_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth("1"), 0);
        assert_eq!(nesting_depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(nesting_depth(r#"{"a":"[[[{{{\"]]]"}"#), 1);
        assert_eq!(
            nesting_depth(&format!("{}{}", "[".repeat(500), "]".repeat(500))),
            500
        );
    }

    fn nested(depth: usize) -> Value {
        (0..depth).fold(json!(1), |inner, _| json!([inner]))
    }

    fn event() -> StoredEvent {
        StoredEvent::from_json(
            json!({
                "id": "0193a5a0-7a4c-7c8e-9d2e-1f0a3b4c5d6e",
                "createdAt": "2024-12-04T10:00:00Z",
                "aggregateId": "a",
                "eventType": "T",
                "eventJson": "{}",
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    /// The computed depth is the depth of the page as the server serializes it.
    #[test]
    fn page_depth_is_that_of_the_serialized_page() {
        for depth in [0, 1, 5, 61, 62] {
            let mut event = event();
            if depth > 0 {
                event.context.insert("deep".into(), nested(depth - 1));
                event.context.insert("flat".into(), json!("x"));
            }
            let page = serde_json::to_string(&[&event]).unwrap();
            assert_eq!(
                event.page_depth(),
                nesting_depth(&page),
                "context depth {depth}"
            );
            assert_eq!(
                event.validate().is_ok(),
                nesting_depth(&page) <= MAX_NESTING
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        let body = |field: &str, value: Value| {
            let mut record = serde_json::to_value(event()).unwrap();
            record[field] = value;
            StoredEvent::from_json(record.to_string().as_bytes())
                .and_then(|event| event.validate())
                .unwrap_err()
        };
        for (field, value) in [
            ("id", json!("v1")),
            ("eventJson", json!({"a": 1})),
            ("createdAt", json!("+10000-01-01T00:00:00Z")),
            ("createdAt", json!("2024-12-31T23:59:60Z")),
            ("createdAt", json!("-0001-01-01T00:00:00Z")),
            ("context", json!({"a": nested(70)})),
            ("eventJson", json!(nested(65).to_string())),
            ("tenantId", json!("a\u{0}")),
        ] {
            let error = body(field, value.clone());
            assert_eq!(
                error.field_name(),
                Some(field),
                "{field} = {value}: {error}"
            );
            assert!(
                error.to_string().starts_with(&format!("`{field}`")),
                "{error}"
            );
        }
        let mut missing = serde_json::to_value(event()).unwrap();
        missing.as_object_mut().unwrap().remove("eventType");
        let error = StoredEvent::from_json(missing.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.field_name(), Some("eventType"), "{error}");
        assert!(StoredEvent::from_json(b"[1]")
            .unwrap_err()
            .field_name()
            .is_none());
    }
}
