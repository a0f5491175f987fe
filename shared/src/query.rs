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
use serde::Deserialize;

/// What a `GET /events` asks for. Parsed from the query string with serde (such as
/// `serde_urlencoded`): each field arrives as text and a malformed one fails with a
/// message that names it and says what it should be.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(try_from = "Text")]
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
}

/// The query's fields as they arrive, before they are checked.
#[derive(Deserialize)]
struct Text {
    after: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
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
        })
    }
}

impl EventsQuery {
    /// The query string, without `?`: the fields that are set, in a form that needs no
    /// escaping (`since` in UTC with `Z`, `wait` in seconds to the millisecond).
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
        query
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<EventsQuery, String> {
        let pairs = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key.to_owned(), serde_json::Value::String(value.to_owned()))
            });
        serde_json::from_value(serde_json::Value::Object(pairs.collect()))
            .map_err(|error| error.to_string())
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
}
