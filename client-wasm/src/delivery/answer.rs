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
