//! `docs/PROTOCOL.md` from the client's side: the requests, and what each answer means.
//! Pure functions, so that every status a server can send is tested here.

use std::time::Duration;

use distributed_events_shared::sse::Message;
use distributed_events_shared::wire::{codes, CURSOR_HEADER};
use distributed_events_shared::{ErrorBody, EventsQuery, Receipt, StoredEvent};
use serde::Deserialize;

use crate::delivery::{classify, Answer};
use crate::platform::{HttpRequest, HttpResponse, Method};
use crate::ClientError;

/// `GET /events` with `query` (the query type is shared with the server).
pub(crate) fn events_request(base: &str, query: &EventsQuery) -> HttpRequest {
    get(format!("{base}/events?{}", query.to_query_string()))
}

/// `GET /events` as a Server-Sent Events stream; `last_event_id` on a reconnect.
pub(crate) fn stream_request(
    base: &str,
    query: &EventsQuery,
    last_event_id: Option<u64>,
) -> HttpRequest {
    let mut request = events_request(base, query);
    request.headers.push(("accept".into(), EVENT_STREAM.into()));
    if let Some(id) = last_event_id {
        request
            .headers
            .push(("last-event-id".into(), id.to_string()));
    }
    request
}

/// The media type of a Server-Sent Events stream.
const EVENT_STREAM: &str = "text/event-stream";

/// Most bytes of one stream message the client takes: above the largest record a
/// server sends (posts are capped at 1 MiB by default), below what hurts a browser tab.
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// `GET /healthz`, whose `head` is where a client that starts "now" begins.
pub(crate) fn head_request(base: &str) -> HttpRequest {
    get(format!("{base}/healthz"))
}

pub(crate) fn post_request(base: &str, event: &StoredEvent) -> Result<HttpRequest, ClientError> {
    let mut event = event.clone();
    event.position = None;
    let body = serde_json::to_string(&event).map_err(|error| ClientError::InvalidEvent {
        message: error.to_string(),
    })?;
    Ok(HttpRequest {
        method: Method::Post,
        url: format!("{base}/events"),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Some(body),
    })
}

fn get(url: String) -> HttpRequest {
    HttpRequest {
        method: Method::Get,
        url,
        headers: Vec::new(),
        body: None,
    }
}

/// Why an exchange did not produce what was asked for, and what to do about it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Failure {
    /// Worth sending again as is, after a backoff of at least `retry_after`.
    Retry {
        error: ClientError,
        retry_after: Option<Duration>,
    },
    /// `410`: the cursor is gone; poll again with `after = resume_after`.
    Reset { code: String, resume_after: u64 },
    /// The server rejected the request itself (`400`, `409`, `413`): sent again
    /// unchanged, it gets the same answer until the server changes. The send loop drops
    /// the event; the receive loop, which has no other request to make, reports it and
    /// retries slowly. Any other status says nothing against the request, not even
    /// against an event: a `404` or `405` means the client is pointed at the wrong place.
    Rejected(ClientError),
}

/// One page of `GET /events`.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) events: Vec<StoredEvent>,
    /// `X-Events-Cursor`: the `after` of the next poll, past every record of the page.
    pub(crate) cursor: u64,
    /// The records that did not decode, as [`ClientError::UndecodableRecord`]s to report.
    pub(crate) undecodable: Vec<ClientError>,
}

pub(crate) fn read_page(response: HttpResponse) -> Result<Page, Failure> {
    let response = success(response)?;
    let cursor = match response.cursor.as_deref().map(str::trim) {
        Some(value) => value.parse().map_err(|_| {
            invalid(format!(
                "the {CURSOR_HEADER} header is {value:?}, not a position"
            ))
        })?,
        None => {
            return Err(invalid(format!(
                "the answer has no {CURSOR_HEADER} header; a cross-origin server must expose it \
                 (Access-Control-Expose-Headers), and a proxy must pass it on"
            )))
        }
    };
    match serde_json::from_str(&response.body) {
        Ok(events) => Ok(Page {
            events,
            cursor,
            undecodable: Vec::new(),
        }),
        // One record that does not decode must not stop the others.
        Err(error) => read_records(&response.body, cursor).ok_or_else(|| {
            invalid(format!(
                "the events are not a JSON array of event records: {error}"
            ))
        }),
    }
}

/// A page decoded record by record, when it did not decode as a whole; `None` when it
/// is not a JSON array at all. The cursor lies past every record, decoded or not.
fn read_records(body: &str, cursor: u64) -> Option<Page> {
    let records: Vec<&serde_json::value::RawValue> = serde_json::from_str(body).ok()?;
    let mut page = Page {
        events: Vec::with_capacity(records.len()),
        cursor,
        undecodable: Vec::new(),
    };
    for record in records {
        page.add(record.get());
    }
    Some(page)
}

impl Page {
    /// Adds one record (its JSON text): the event, or the error that reports it.
    fn add(&mut self, record: &str) {
        /// What can be told of a record that does not decode, read leniently.
        #[derive(Deserialize)]
        struct Identity {
            #[serde(default)]
            id: Option<serde_json::Value>,
            #[serde(default)]
            position: Option<serde_json::Value>,
        }
        match serde_json::from_str::<StoredEvent>(record) {
            Ok(event) => self.events.push(event),
            Err(error) => {
                let identity = serde_json::from_str::<Identity>(record).ok();
                let (id, position) = identity
                    .map(|found| (found.id, found.position))
                    .unwrap_or_default();
                let position = position.as_ref().and_then(serde_json::Value::as_u64);
                self.cursor = self.cursor.max(position.unwrap_or_default());
                self.undecodable.push(ClientError::UndecodableRecord {
                    position,
                    event_id: id
                        .as_ref()
                        .and_then(serde_json::Value::as_str)
                        .and_then(|id| id.parse().ok()),
                    message: error.to_string(),
                });
            }
        }
    }
}

/// Whether an answer to [`stream_request`] is a stream: a server without streams (or
/// a proxy) may answer with a page instead.
pub(crate) fn is_event_stream(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|value| {
        let media_type = value.split(';').next().unwrap_or_default().trim();
        media_type.eq_ignore_ascii_case(EVENT_STREAM)
    })
}

/// What an error answer to [`stream_request`] means, as for any other request.
pub(crate) fn read_stream_error(response: HttpResponse) -> Failure {
    match success(response) {
        Err(failure) => failure,
        Ok(response) => invalid(format!(
            "HTTP {} is not the start of an event stream",
            response.status
        )),
    }
}

/// Adds one message of an event stream to `page` (the messages of one read are
/// delivered together): a record with its position as `id`, or an `id` alone that moves
/// the cursor past events this reader does not see. `event: cursor_expired` (retention
/// overtook the reader) is the stream's `410`. `Ok(false)`: nothing for this client.
pub(crate) fn read_message(message: &Message, page: &mut Page) -> Result<bool, Failure> {
    if let Some(event) = message.event.as_deref().filter(|event| *event != "message") {
        if event == codes::CURSOR_EXPIRED {
            let data = message.data.as_deref().unwrap_or_default();
            return Err(match serde_json::from_str::<ErrorBody>(data) {
                Ok(ErrorBody {
                    code,
                    resume_after: Some(resume_after),
                    ..
                }) => Failure::Reset { code, resume_after },
                _ => invalid(format!(
                    "the cursor_expired event does not say where to resume: {data:?}"
                )),
            });
        }
        // A kind of message this client does not know yet: not for it.
        return Ok(false);
    }
    if let Some(id) = &message.id {
        let position = id
            .trim()
            .parse::<u64>()
            .map_err(|_| invalid(format!("the event stream's id is {id:?}, not a position")))?;
        page.cursor = page.cursor.max(position);
    }
    if let Some(data) = &message.data {
        page.add(data);
    }
    Ok(message.id.is_some() || message.data.is_some())
}

pub(crate) fn read_head(response: HttpResponse) -> Result<u64, Failure> {
    #[derive(Deserialize)]
    struct Health {
        status: Option<String>,
        head: Option<u64>,
    }
    let response = success(response)?;
    match serde_json::from_str::<Health>(&response.body) {
        Ok(Health {
            head: Some(head), ..
        }) => Ok(head),
        // The server shows its head only to callers with a valid token: the same as a
        // `401`, so that the token source is asked for a fresh one.
        Ok(Health {
            status: Some(_),
            head: None,
        }) => Err(Failure::Retry {
            error: ClientError::Http {
                status: 401,
                code: codes::UNAUTHORIZED.to_owned(),
                message: "/healthz shows the head only to callers with a valid token: \
                          give the client one"
                    .to_owned(),
            },
            retry_after: None,
        }),
        Ok(_) => Err(invalid(
            "/healthz did not answer {\"head\": <position>}".to_owned(),
        )),
        Err(error) => Err(invalid(format!(
            "/healthz did not answer {{\"head\": <position>}}: {error}"
        ))),
    }
}

pub(crate) fn read_receipt(response: HttpResponse) -> Result<Receipt, Failure> {
    let response = success(response)?;
    serde_json::from_str(&response.body)
        .map_err(|error| invalid(format!("the receipt does not decode: {error}")))
}

fn invalid(message: String) -> Failure {
    Failure::Retry {
        error: ClientError::InvalidResponse { message },
        retry_after: None,
    }
}

/// The response when it is a success; else what its error status means
/// ([`classify`](crate::delivery::classify)).
fn success(response: HttpResponse) -> Result<HttpResponse, Failure> {
    let status = response.status;
    let body: Option<ErrorBody> = serde_json::from_str(&response.body).ok();
    let code = body.as_ref().map(|body| body.code.as_str());
    let resume_after = body.as_ref().and_then(|body| body.resume_after);
    let answer = classify(status, code, resume_after.is_some());
    match (answer, resume_after) {
        (Answer::Ok, _) => return Ok(response),
        (Answer::Reset, Some(resume_after)) => {
            return Err(Failure::Reset {
                code: code.unwrap_or_default().to_owned(),
                resume_after,
            })
        }
        _ => {}
    }
    let (code, message) = match body {
        Some(body) => (body.code, body.error),
        None => (
            "http_error".to_owned(),
            format!("no error body (HTTP {status})"),
        ),
    };
    let error = match status {
        404 | 405 => ClientError::WrongServerUrl { status, message },
        _ => ClientError::Http {
            status,
            code,
            message,
        },
    };
    if answer == Answer::Refused {
        return Err(Failure::Rejected(error));
    }
    let retry_after = response
        .retry_after
        .as_deref()
        .and_then(|value| value.trim().parse().ok())
        .map(Duration::from_secs);
    Err(Failure::Retry { error, retry_after })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            body: body.into(),
            ..HttpResponse::default()
        }
    }

    #[test]
    fn requests_follow_the_protocol() {
        let poll = events_request(
            "http://h",
            &EventsQuery {
                after: Some(5),
                limit: Some(100),
                wait: Some(Duration::from_millis(25_500)),
                ..EventsQuery::default()
            },
        );
        assert_eq!(poll.url, "http://h/events?after=5&limit=100&wait=25.500");
        let since = "2024-12-04T10:00:05.123456Z".parse().unwrap();
        assert_eq!(
            events_request(
                "http://h",
                &EventsQuery {
                    since: Some(since),
                    limit: Some(10),
                    ..EventsQuery::default()
                }
            )
            .url,
            "http://h/events?since=2024-12-04T10:00:05.123456Z&limit=10"
        );
    }

    #[test]
    fn a_page_takes_its_cursor_from_the_header() {
        let mut response = answer(200, "[]");
        response.cursor = Some("42".into());
        let page = read_page(response).unwrap();
        assert_eq!((page.events.len(), page.cursor), (0, 42));
        assert!(matches!(
            read_page(answer(200, "[]")),
            Err(Failure::Retry {
                error: ClientError::InvalidResponse { .. },
                ..
            })
        ));
    }

    /// A record at `position`; `context` is spliced in as JSON text.
    fn record(position: u64, id: &str, context: &str) -> String {
        format!(
            r#"{{"id":"{id}","createdAt":"2024-12-04T10:00:00Z","aggregateId":"a","eventType":"T","eventJson":"{{}}","context":{context},"position":{position}}}"#
        )
    }

    #[test]
    fn a_record_that_does_not_decode_is_reported_and_skipped_not_the_page() {
        let good = "0193a5a0-7a4c-7c8e-9d2e-1f0a3b4c5d61";
        let deep_id = "0193a5a0-7a4c-7c8e-9d2e-1f0a3b4c5d62";
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        let body = format!(
            "[{},{},{},{}]",
            record(1, good, "{}"),
            record(2, deep_id, &deep),
            record(3, "not-a-uuid", "{}"),
            "42",
        );
        let mut response = answer(200, &body);
        response.cursor = Some("3".into());
        let page = read_page(response).unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].id.to_string(), good);
        assert_eq!(page.cursor, 3);
        let found: Vec<_> = page
            .undecodable
            .iter()
            .map(|error| match error {
                ClientError::UndecodableRecord {
                    position, event_id, ..
                } => (*position, event_id.map(|id| id.to_string())),
                other => panic!("not an undecodable record: {other:?}"),
            })
            .collect();
        assert_eq!(
            found,
            [
                (Some(2), Some(deep_id.to_owned())),
                (Some(3), None),
                (None, None)
            ]
        );
        assert!(page
            .undecodable
            .iter()
            .all(|e| e.code() == "undecodable_record" && !e.is_transient()));

        // The cursor moves past a bad record even when the header lags behind it.
        let mut lagging = answer(200, &format!("[{}]", record(9, deep_id, &deep)));
        lagging.cursor = Some("3".into());
        assert_eq!(read_page(lagging).unwrap().cursor, 9);
        // Not an array at all: the answer is invalid, as before.
        let mut garbage = answer(200, "{\"events\":[]}");
        garbage.cursor = Some("3".into());
        assert!(matches!(read_page(garbage), Err(Failure::Retry { .. })));
    }

    #[test]
    fn statuses_map_to_retry_reset_or_refusal() {
        let reset = answer(
            410,
            r#"{"error":"gone","code":"cursor_expired","resumeAfter":17}"#,
        );
        assert_eq!(
            read_page(reset).unwrap_err(),
            Failure::Reset {
                code: "cursor_expired".into(),
                resume_after: 17
            }
        );
        let mut overloaded = answer(503, r#"{"error":"busy","code":"overloaded"}"#);
        overloaded.retry_after = Some("3".into());
        assert!(matches!(
            read_receipt(overloaded).unwrap_err(),
            Failure::Retry { retry_after: Some(d), error } if d == Duration::from_secs(3) && error.code() == "overloaded"
        ));
        assert!(matches!(
            read_receipt(answer(502, "<html>bad gateway</html>")).unwrap_err(),
            Failure::Retry { error, .. } if error.code() == "http_error"
        ));
        assert!(matches!(
            read_receipt(answer(401, r#"{"error":"no","code":"unauthorized"}"#)).unwrap_err(),
            Failure::Retry { .. }
        ));
        assert!(matches!(
            read_receipt(answer(409, r#"{"error":"used","code":"id_conflict"}"#)).unwrap_err(),
            Failure::Rejected(error) if error.code() == "id_conflict"
        ));
        for (status, code) in [(400, "bad_request"), (413, "payload_too_large")] {
            let body = format!(r#"{{"error":"no","code":"{code}"}}"#);
            assert!(matches!(
                read_receipt(answer(status, &body)).unwrap_err(),
                Failure::Rejected(error) if error.code() == code
            ));
        }
        // Not a refusal of the event: the client is pointed at the wrong place, or a
        // proxy stands in the way. The event stays in the outbox.
        for wrong_place in [
            answer(404, r#"{"error":"no such path","code":"not_found"}"#),
            answer(405, r#"{"error":"no","code":"method_not_allowed"}"#),
            answer(404, "<html>Not Found</html>"),
        ] {
            assert!(matches!(
                read_receipt(wrong_place).unwrap_err(),
                Failure::Retry { error, .. } if error.code() == "wrong_server_url" && !error.is_transient()
            ));
        }
        assert!(matches!(
            read_receipt(answer(403, "forbidden")).unwrap_err(),
            Failure::Retry { error, .. } if error.code() == "http_error"
        ));
        assert!(matches!(
            read_head(answer(200, r#"{"status":"ok","head":9}"#)),
            Ok(9)
        ));
    }

    /// `/healthz` leaves `head` out for callers without a valid token: that is a `401`
    /// (not transient, asks the token source again), never a garbled answer to retry.
    #[test]
    fn a_health_answer_without_the_head_means_unauthorized() {
        let no_head = read_head(answer(200, r#"{"status":"ok","writable":true}"#));
        assert!(
            matches!(
                &no_head,
                Err(Failure::Retry { error: ClientError::Http { status: 401, code, .. }, .. })
                    if code == codes::UNAUTHORIZED
            ),
            "{no_head:?}"
        );
        if let Err(Failure::Retry { error, .. }) = no_head {
            assert!(!error.is_transient());
        }
        assert!(matches!(
            read_head(answer(200, "{}")),
            Err(Failure::Retry {
                error: ClientError::InvalidResponse { .. },
                ..
            })
        ));
    }

    fn message(id: Option<&str>, event: Option<&str>, data: Option<&str>) -> Message {
        Message {
            id: id.map(Into::into),
            event: event.map(Into::into),
            data: data.map(Into::into),
        }
    }

    #[test]
    fn a_stream_is_asked_for_and_recognised() {
        let request = stream_request(
            "http://h",
            &EventsQuery {
                after: Some(5),
                ..EventsQuery::default()
            },
            Some(5),
        );
        assert_eq!(request.url, "http://h/events?after=5");
        assert!(request
            .headers
            .contains(&("accept".into(), "text/event-stream".into())));
        assert!(request
            .headers
            .contains(&("last-event-id".into(), "5".into())));
        assert!(is_event_stream(Some("text/event-stream; charset=utf-8")));
        assert!(!is_event_stream(Some("application/json")));
        assert!(!is_event_stream(None));
        assert!(matches!(
            read_stream_error(answer(401, r#"{"error":"no","code":"unauthorized"}"#)),
            Failure::Retry { error, .. } if error.code() == "unauthorized"
        ));
    }

    #[test]
    fn stream_messages_are_records_cursor_moves_or_a_reset() {
        let good = "0193a5a0-7a4c-7c8e-9d2e-1f0a3b4c5d61";
        let mut page = Page {
            events: Vec::new(),
            cursor: 3,
            undecodable: Vec::new(),
        };
        let record = record(4, good, "{}");
        assert_eq!(
            read_message(&message(Some("4"), None, Some(&record)), &mut page),
            Ok(true)
        );
        assert_eq!(
            read_message(&message(Some("9"), None, None), &mut page),
            Ok(true)
        );
        // Not ours: a kind of message this client does not know, and a comment-only one.
        assert_eq!(
            read_message(&message(None, Some("later"), Some("{}")), &mut page),
            Ok(false)
        );
        assert_eq!((page.events.len(), page.cursor), (1, 9));
        // A record that does not decode is reported; the cursor moves past it.
        assert_eq!(
            read_message(
                &message(Some("10"), None, Some("{\"position\":10}")),
                &mut page
            ),
            Ok(true)
        );
        assert_eq!((page.undecodable.len(), page.cursor), (1, 10));
        assert!(matches!(
            read_message(&message(Some("x"), None, None), &mut page),
            Err(Failure::Retry {
                error: ClientError::InvalidResponse { .. },
                ..
            })
        ));
        let expired = r#"{"error":"gone","code":"cursor_expired","resumeAfter":17}"#;
        assert_eq!(
            read_message(
                &message(None, Some("cursor_expired"), Some(expired)),
                &mut page
            ),
            Err(Failure::Reset {
                code: "cursor_expired".into(),
                resume_after: 17
            })
        );
        assert!(matches!(
            read_message(
                &message(None, Some("cursor_expired"), Some("{}")),
                &mut page
            ),
            Err(Failure::Retry { .. })
        ));
    }
}
