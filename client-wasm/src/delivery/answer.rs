//! What a server's answer means to the client (docs/PROTOCOL.md, "Errors").

/// The meaning of an answer to any request of the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `2xx`.
    Ok,
    /// `410` with `cursor_expired` or `cursor_ahead` and a `resumeAfter`: the events after
    /// the cursor are gone; continue after `resumeAfter`.
    Reset,
    /// `400`, `409`, `413`: this request will never succeed as it is; an event is dropped
    /// from the outbox.
    Refused,
    /// Anything else: the server recovers, a token is refreshed (`401`), an address or a
    /// proxy is fixed (`404`, `405`). Retried with backoff.
    Retry,
}

/// What an answer with `status` and the error body's `code` means; `has_resume_after`:
/// whether the body has a `resumeAfter`.
pub fn classify(status: u16, code: Option<&str>, has_resume_after: bool) -> Answer {
    match status {
        200..=299 => Answer::Ok,
        410 if has_resume_after && matches!(code, Some("cursor_expired" | "cursor_ahead")) => {
            Answer::Reset
        }
        400 | 409 | 413 => Answer::Refused,
        _ => Answer::Retry,
    }
}

/// Whether an error with this `code` (and the HTTP `status` of the answer, if any) goes
/// away by itself: no answer, a timeout, an unreadable answer (a proxy's page), or a
/// server in trouble (`5xx`, `408`, `429`). Such errors only show in the status; the others
/// are reported to the app too.
pub fn is_transient(code: &str, status: Option<u16>) -> bool {
    matches!(code, "network_error" | "timeout" | "invalid_response")
        || status.is_some_and(|status| status >= 500 || status == 408 || status == 429)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_mean_ok_reset_refused_or_retry() {
        assert_eq!(classify(204, None, false), Answer::Ok);
        assert_eq!(classify(410, Some("cursor_expired"), true), Answer::Reset);
        assert_eq!(classify(410, Some("cursor_ahead"), true), Answer::Reset);
        assert_eq!(classify(410, Some("cursor_expired"), false), Answer::Retry);
        assert_eq!(classify(410, Some("gone"), true), Answer::Retry);
        for status in [400, 409, 413] {
            assert_eq!(
                classify(status, Some("bad_request"), false),
                Answer::Refused
            );
        }
        for status in [401, 404, 405, 429, 500, 503] {
            assert_eq!(classify(status, None, false), Answer::Retry);
        }
    }

    #[test]
    fn no_answer_and_server_trouble_are_transient_refusals_are_not() {
        for code in ["network_error", "timeout", "invalid_response"] {
            assert!(is_transient(code, None));
        }
        for status in [500, 503, 408, 429] {
            assert!(is_transient("unavailable", Some(status)));
        }
        for (code, status) in [
            ("unauthorized", 401),
            ("wrong_server_url", 404),
            ("bad_request", 400),
        ] {
            assert!(!is_transient(code, Some(status)));
        }
        assert!(!is_transient("token_failed", None));
    }

    #[cfg(feature = "client")]
    #[test]
    fn the_reset_codes_are_the_servers() {
        use distributed_events_shared::wire::codes;
        assert_eq!(
            classify(410, Some(codes::CURSOR_EXPIRED), true),
            Answer::Reset
        );
        assert_eq!(
            classify(410, Some(codes::CURSOR_AHEAD), true),
            Answer::Reset
        );
    }
}
