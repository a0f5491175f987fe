//! The query of `GET /events` (docs/PROTOCOL.md), owned here so that the client writes
//! it and the server reads it from one definition.
//!
//! A new parameter is a field of [`EventsQuery`] with its text form (in `Text` and
//! [`EventsQuery::to_query_string`]), its use in the server's reads
//! (`server/src/reads.rs`), the client setting that fills it (`client-wasm/src/client.rs`),
//! and a line in docs/PROTOCOL.md.

use std::fmt::Write;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::StoredEvent;

/// Most values one filter parameter (`eventType`, `aggregateId`) takes.
pub const MAX_FILTER_VALUES: usize = 100;
/// Most bytes of one filter value.
pub const MAX_FILTER_VALUE_BYTES: usize = 200;

/// What a `GET /events` asks for. Parsed from the query string by
/// [`EventsQuery::from_query_string`]: each field arrives as text and a malformed one fails
/// with a message that names it and says what it should be.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct EventsQuery {
    /// Cursor mode: the events after this position; `0` for the start, then the
    /// `X-Events-Cursor` of the previous answer. Pass `after` or `since`, not both.
    #[cfg_attr(feature = "openapi", param(value_type = Option<u64>, minimum = 0))]
    pub after: Option<u64>,
    /// Timestamp mode: the events with `createdAt` at or after this time, from the first
    /// such event on in position order.
    #[cfg_attr(feature = "openapi", param(value_type = Option<String>, format = DateTime))]
    pub since: Option<DateTime<Utc>>,
    /// Most events in the answer, from 1; larger values are lowered to the server's cap
    /// (1000 by default).
    #[cfg_attr(feature = "openapi", param(value_type = Option<u64>, minimum = 1))]
    pub limit: Option<u64>,
    /// Cursor mode: when no event is available, wait up to this many seconds for one
    /// (decimals allowed; larger values are lowered to the server's cap, 30 s by default).
    #[cfg_attr(feature = "openapi", param(value_type = Option<f64>, minimum = 0))]
    pub wait: Option<Duration>,
    /// Only events of these types (repeat the parameter for several; none: every type).
    /// At most 100 values of at most 200 bytes each. The cursor still moves past the
    /// events left out, so they are never read again.
    #[cfg_attr(
        feature = "openapi",
        param(rename = "eventType", value_type = Option<Vec<String>>, max_items = 100, style = Form, explode)
    )]
    pub event_types: Vec<String>,
    /// Only events of these aggregates (repeatable, as `eventType`; none: every
    /// aggregate). With both parameters an event must match both.
    #[cfg_attr(
        feature = "openapi",
        param(rename = "aggregateId", value_type = Option<Vec<String>>, max_items = 100, style = Form, explode)
    )]
    pub aggregate_ids: Vec<String>,
}

impl EventsQuery {
    /// Parses a query string (without `?`, percent-encoded as in a URL). Unknown
    /// parameters are ignored; `eventType` and `aggregateId` may repeat, the others
    /// may not.
    pub fn from_query_string(query: &str) -> Result<Self, String> {
        let mut text = Text::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let single = match key.as_ref() {
                "after" => &mut text.after,
                "since" => &mut text.since,
                "limit" => &mut text.limit,
                "wait" => &mut text.wait,
                "eventType" => {
                    text.event_types.push(value.into_owned());
                    continue;
                }
                "aggregateId" => {
                    text.aggregate_ids.push(value.into_owned());
                    continue;
                }
                _ => continue,
            };
            if single.is_some() {
                return Err(format!("`{key}` is given more than once; pass it once"));
            }
            *single = Some(value.into_owned());
        }
        Self::try_from(text)
    }

    /// Whether the filter (`event_types`, `aggregate_ids`) takes `event`: its type is
    /// among `event_types` (or that is empty) and its aggregate among `aggregate_ids`
    /// (or that is empty).
    pub fn selects(&self, event: &StoredEvent) -> bool {
        filter_selects(&self.event_types, &event.event_type)
            && filter_selects(&self.aggregate_ids, &event.aggregate_id)
    }
}

/// Whether a filter's `values` take `value`: an empty filter takes everything.
pub fn filter_selects(values: &[String], value: &str) -> bool {
    values.is_empty() || values.iter().any(|v| v == value)
}

/// The query's fields as they arrive, before they are checked.
#[derive(Default)]
struct Text {
    after: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
    event_types: Vec<String>,
    aggregate_ids: Vec<String>,
}

/// A filter parameter's values, checked against the bounds.
fn filter_values(name: &str, values: Vec<String>) -> Result<Vec<String>, String> {
    if values.len() > MAX_FILTER_VALUES {
        return Err(format!(
            "`{name}` takes at most {MAX_FILTER_VALUES} values, got {}",
            values.len()
        ));
    }
    if let Some(value) = values
        .iter()
        .find(|value| value.is_empty() || value.len() > MAX_FILTER_VALUE_BYTES)
    {
        return Err(format!(
            "each `{name}` must be 1 to {MAX_FILTER_VALUE_BYTES} bytes long, got one of {} bytes",
            value.len()
        ));
    }
    Ok(values)
}

impl TryFrom<Text> for EventsQuery {
    type Error = String;

    fn try_from(text: Text) -> Result<Self, String> {
        let after = text
            .after
            .map(|after| {
                after.parse::<u64>().map_err(|_| {
                    format!("`after` must be a whole number of 0 or more, got {after:?}")
                })
            })
            .transpose()?;
        let since = text
            .since
            .map(|since| {
                DateTime::parse_from_rfc3339(&since)
                    .map(|since| since.with_timezone(&Utc))
                    .map_err(|error| {
                        format!(
                            "`since` must be an RFC 3339 time such as 2024-12-04T10:00:00Z, \
                             got {since:?} ({error})"
                        )
                    })
            })
            .transpose()?;
        let limit = text
            .limit
            .map(|limit| match limit.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "`limit` must be a whole number of 1 or more, got {limit:?}"
                )),
            })
            .transpose()?;
        let wait = text
            .wait
            .map(|wait| match wait.parse::<f64>() {
                // Past what a `Duration` holds is past any cap: the longest wait there is.
                Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
                    Ok(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
                }
                _ => Err(format!(
                    "`wait` must be a number of seconds of 0 or more, got {wait:?}"
                )),
            })
            .transpose()?;
        Ok(Self {
            after,
            since,
            limit,
            wait,
            event_types: filter_values("eventType", text.event_types)?,
            aggregate_ids: filter_values("aggregateId", text.aggregate_ids)?,
        })
    }
}

impl EventsQuery {
    /// The query string, without `?`: the fields that are set (`since` in UTC with `Z`,
    /// `wait` in seconds to the millisecond), then one `eventType=` and `aggregateId=`
    /// per value, percent-encoded.
    pub fn to_query_string(&self) -> String {
        let mut query = String::new();
        let mut field = |name: &str, value: std::fmt::Arguments<'_>| {
            if !query.is_empty() {
                query.push('&');
            }
            // Writing to a String cannot fail.
            let _ = write!(query, "{name}={value}");
        };
        if let Some(after) = self.after {
            field("after", format_args!("{after}"));
        }
        if let Some(since) = self.since {
            let since = since.to_rfc3339_opts(SecondsFormat::Micros, true);
            field("since", format_args!("{since}"));
        }
        if let Some(limit) = self.limit {
            field("limit", format_args!("{limit}"));
        }
        if let Some(wait) = self.wait {
            field(
                "wait",
                format_args!("{}.{:03}", wait.as_secs(), wait.subsec_millis()),
            );
        }
        for (name, values) in [
            ("eventType", &self.event_types),
            ("aggregateId", &self.aggregate_ids),
        ] {
            for value in values {
                let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
                field(name, format_args!("{value}"));
            }
        }
        query
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<EventsQuery, String> {
        EventsQuery::from_query_string(query)
    }

    #[test]
    fn what_the_client_writes_the_server_reads_back() {
        let since = DateTime::parse_from_rfc3339("2024-12-04T10:00:05.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        for query in [
            EventsQuery {
                after: Some(7),
                limit: Some(100),
                wait: Some(Duration::from_millis(25_500)),
                ..EventsQuery::default()
            },
            EventsQuery {
                since: Some(since),
                limit: Some(1),
                ..EventsQuery::default()
            },
            EventsQuery {
                after: Some(0),
                event_types: vec!["Order Placed".into(), "a&b=c+d%e".into(), "été/?#".into()],
                aggregate_ids: vec!["order-1".into()],
                ..EventsQuery::default()
            },
            EventsQuery::default(),
        ] {
            let text = query.to_query_string();
            assert_eq!(parse(&text), Ok(query), "{text}");
        }
    }

    #[test]
    fn a_malformed_field_is_named_with_what_it_should_be() {
        for (query, field) in [
            ("after=-1", "`after` must be a whole number"),
            ("since=yesterday", "`since` must be an RFC 3339 time"),
            ("limit=0", "`limit` must be a whole number of 1 or more"),
            ("wait=NaN", "`wait` must be a number of seconds"),
            ("wait=inf", "`wait` must be a number of seconds"),
        ] {
            let error = parse(query).expect_err(query);
            assert!(error.contains(field), "{query}: {error}");
        }
        assert_eq!(
            parse("wait=1e300").unwrap().wait,
            Some(Duration::MAX),
            "past a Duration is the longest wait, lowered to the cap by the server"
        );
    }

    #[test]
    fn filters_repeat_and_are_bounded() {
        let query = parse("after=3&eventType=A&eventType=B%20C&aggregateId=x&other=1").unwrap();
        assert_eq!(query.event_types, ["A", "B C"]);
        assert_eq!(query.aggregate_ids, ["x"]);
        let error = parse("after=1&after=2").unwrap_err();
        assert!(error.contains("`after` is given more than once"), "{error}");

        let many = vec!["eventType=T"; MAX_FILTER_VALUES + 1].join("&");
        let error = parse(&many).unwrap_err();
        assert!(
            error.contains("`eventType` takes at most 100 values"),
            "{error}"
        );
        assert!(parse(&many[..many.len() - "&eventType=T".len()]).is_ok());
        let long = format!("aggregateId={}", "x".repeat(MAX_FILTER_VALUE_BYTES + 1));
        let error = parse(&long).unwrap_err();
        assert!(
            error.contains("each `aggregateId` must be 1 to 200 bytes"),
            "{error}"
        );
        let error = parse("eventType=").unwrap_err();
        assert!(
            error.contains("each `eventType` must be 1 to 200 bytes"),
            "{error}"
        );
    }

    #[test]
    fn an_event_is_selected_when_it_matches_every_given_filter() {
        let event = |event_type: &str, aggregate_id: &str| StoredEvent {
            id: uuid::Uuid::nil(),
            created_at: Utc::now(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            event_json: "{}".into(),
            user_id: None,
            tenant_id: None,
            session_id: None,
            context: Default::default(),
            position: None,
        };
        let query = |types: &[&str], ids: &[&str]| EventsQuery {
            event_types: types.iter().map(|t| t.to_string()).collect(),
            aggregate_ids: ids.iter().map(|t| t.to_string()).collect(),
            ..EventsQuery::default()
        };
        assert!(query(&[], &[]).selects(&event("A", "1")));
        assert!(query(&["A", "B"], &[]).selects(&event("B", "1")));
        assert!(!query(&["A"], &[]).selects(&event("B", "1")));
        assert!(query(&[], &["1"]).selects(&event("B", "1")));
        assert!(query(&["B"], &["1", "2"]).selects(&event("B", "2")));
        assert!(!query(&["B"], &["1"]).selects(&event("B", "2")));
        assert!(!query(&["A"], &["1"]).selects(&event("B", "1")));
    }
}
