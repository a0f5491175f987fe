//! The plain requests of `post` and `stats`, and what each failure tells the user.

use distributed_events_client::wire::{codes, ErrorBody, Receipt};
use distributed_events_client::StoredEvent;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::Failure;

/// A server to talk to: its base URL and the token, if any.
#[derive(Debug)]
pub(crate) struct Server {
    url: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Server {
    pub(crate) fn new(url: &str, token: Option<String>) -> Self {
        Self {
            url: url.trim().trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The position of the newest event (`GET /healthz`).
    pub(crate) async fn head(&self) -> Result<u64, Failure> {
        #[derive(serde::Deserialize)]
        struct Health {
            head: Option<u64>,
        }
        let health: Health = self.get_json(&format!("{}/healthz", self.url)).await?;
        // The server shows its head only to callers with a valid token.
        health.head.ok_or_else(|| {
            refusal(
                401,
                "unauthorized",
                "/healthz shows the head only to callers with a valid token",
                self.token.is_some(),
            )
        })
    }

    /// The oldest event this caller may see, if any: where the retained window starts.
    pub(crate) async fn oldest(&self) -> Result<Option<StoredEvent>, Failure> {
        let first_page = |after: u64| format!("{}/events?after={after}&limit=1", self.url);
        let (status, body) = self
            .answer(self.authorized(self.http.get(first_page(0))))
            .await?;
        // After a cleanup the events right after 0 are gone; the server says where the
        // kept ones start.
        let body = match expired_resume_after(status, &body) {
            Some(resume_after) => self.get(&first_page(resume_after)).await?,
            None => self.success(status, body)?,
        };
        let page: Vec<StoredEvent> = decode(&body)?;
        Ok(page.into_iter().next())
    }

    /// Posts `event`; the receipt as the server wrote it (one line of JSON).
    pub(crate) async fn post_event(&self, event: &StoredEvent) -> Result<String, Failure> {
        let request = self
            .authorized(self.http.post(format!("{}/events", self.url)))
            .json(event);
        let body = self.send(request).await.map_err(|failure| match failure {
            // The request may have been stored before the answer was lost.
            Failure::Unreachable(message) => Failure::Unreachable(format!(
                "{message}\nIf the post was sent it may be stored: run again with --id {} to retry safely.",
                event.id
            )),
            other => other,
        })?;
        let receipt: Receipt = decode(&body)?;
        serde_json::to_string(&receipt).map_err(|error| Failure::Refused(error.to_string()))
    }

    /// The text of a Prometheus metrics endpoint.
    pub(crate) async fn metrics(&self, url: &str) -> Result<String, Failure> {
        self.send(self.http.get(url)).await
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, Failure> {
        decode(&self.get(url).await?)
    }

    async fn get(&self, url: &str) -> Result<String, Failure> {
        self.send(self.authorized(self.http.get(url))).await
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`; the body of a 2xx answer, or what went wrong.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<String, Failure> {
        let (status, body) = self.answer(request).await?;
        self.success(status, body)
    }

    /// Sends `request`; the answer's status and body, whatever the status.
    async fn answer(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, String), Failure> {
        let response = request
            .send()
            .await
            .map_err(|error| unreachable(&self.url, &describe(&error)))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|error| unreachable(&self.url, &describe(&error)))?;
        Ok((status, body))
    }

    /// The body of a 2xx answer, or the failure an error answer means.
    fn success(&self, status: StatusCode, body: String) -> Result<String, Failure> {
        if status.is_success() {
            return Ok(body);
        }
        let (code, message) = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(error) => (error.code, error.error),
            Err(_) => ("http_error".to_owned(), body.trim().to_owned()),
        };
        Err(refusal(
            status.as_u16(),
            &code,
            &message,
            self.token.is_some(),
        ))
    }
}

/// The failure for an error answer, saying what to do about it.
pub(crate) fn refusal(status: u16, code: &str, message: &str, has_token: bool) -> Failure {
    let said = format!("the server answered {status} {code}: {message}");
    match StatusCode::from_u16(status) {
        Ok(StatusCode::UNAUTHORIZED) if has_token => Failure::Unauthorized(format!(
            "{said}\nThe token was refused: pass a valid one with --token or DISTRIBUTED_EVENTS_TOKEN."
        )),
        Ok(StatusCode::UNAUTHORIZED) => Failure::Unauthorized(format!(
            "{said}\nThis server needs a token: pass one with --token or DISTRIBUTED_EVENTS_TOKEN."
        )),
        Ok(StatusCode::GONE) => Failure::CursorGone(said),
        _ => Failure::Refused(said),
    }
}

/// Where to resume when the answer is `410 cursor_expired`: retention deleted the events
/// after the cursor.
fn expired_resume_after(status: StatusCode, body: &str) -> Option<u64> {
    if status != StatusCode::GONE {
        return None;
    }
    let error: ErrorBody = serde_json::from_str(body).ok()?;
    (error.code == codes::CURSOR_EXPIRED)
        .then_some(error.resume_after)
        .flatten()
}

/// The failure when no answer came.
pub(crate) fn unreachable(url: &str, what: &str) -> Failure {
    Failure::Unreachable(format!(
        "cannot reach the server at {url}: {what}\nIs it running? Start one with `distributed-events-server`, or give its address with --url or DISTRIBUTED_EVENTS_URL."
    ))
}

fn decode<T: DeserializeOwned>(body: &str) -> Result<T, Failure> {
    serde_json::from_str(body).map_err(|error| {
        Failure::Refused(format!(
            "the answer is not what a distributed-events server sends ({error}); is --url right?"
        ))
    })
}

/// reqwest's own message is "error sending request"; the cause ("connection refused")
/// is in the source chain.
fn describe(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The sample lines of a Prometheus text answer that say how the server is doing: every
/// sample except histogram buckets (their `_sum` and `_count` stay).
pub(crate) fn interesting_metrics(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter(|line| {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            !name.ends_with("_bucket")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_keep_samples_and_drop_comments_and_buckets() {
        let text = "# HELP events_posted_total Events stored.\n# TYPE events_posted_total counter\nevents_posted_total 42\nlatency_seconds_bucket{le=\"0.1\"} 3\nlatency_seconds_sum 0.5\n\nlong_polls_waiting 7\n";
        assert_eq!(
            interesting_metrics(text),
            [
                "events_posted_total 42",
                "latency_seconds_sum 0.5",
                "long_polls_waiting 7"
            ]
        );
    }

    #[test]
    fn a_refused_token_and_a_missing_one_say_what_to_do() {
        let refused = refusal(401, "unauthorized", "bad signature", true);
        assert!(matches!(&refused, Failure::Unauthorized(m) if m.contains("was refused")));
        let missing = refusal(401, "unauthorized", "no token", false);
        assert!(matches!(&missing, Failure::Unauthorized(m) if m.contains("needs a token")));
        assert_eq!(missing.exit_code(), 4);
        assert_eq!(refusal(410, "cursor_expired", "gone", false).exit_code(), 5);
        assert_eq!(refusal(400, "bad_request", "no", false).exit_code(), 1);
    }
}
