//! HTTP caching of `GET /events` answers (docs/PROTOCOL.md, "Caching"). A full catch-up
//! page never changes for its query (positions are never reused, stored events never
//! change), so a CDN or a browser may keep it for a year; every other answer is
//! `no-store`. Every page carries a strong `ETag`, and `If-None-Match` gets `304`.

use axum::http::header::{CACHE_CONTROL, IF_NONE_MATCH, VARY};
use axum::http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

/// A page that never changes, on a server without authentication: shared caches (a
/// CDN, nginx) may keep it and serve it to anyone.
const IMMUTABLE_PUBLIC: &str = "public, max-age=31536000, immutable";
/// A page that never changes, on a server with authentication: what a caller sees is its
/// own (its tenant, the authorization filter), so only the caller's own cache keeps it.
const IMMUTABLE_PRIVATE: &str = "private, max-age=31536000, immutable";
/// Everything else: the page at the head, long-poll answers, errors.
const NO_STORE: &str = "no-store";

/// The `Cache-Control` of a page.
pub(crate) fn cache_control(immutable: bool, authenticated: bool) -> HeaderValue {
    HeaderValue::from_static(match (immutable, authenticated) {
        (true, false) => IMMUTABLE_PUBLIC,
        (true, true) => IMMUTABLE_PRIVATE,
        (false, _) => NO_STORE,
    })
}

/// A hash of one event's JSON, made once with the JSON (the tail keeps both), so that
/// a page's `ETag` costs 16 bytes of hashing per event, not a pass over every byte of
/// every answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EventDigest([u8; 16]);

impl EventDigest {
    pub(crate) fn of(json: &[u8]) -> Self {
        Self(truncated(Sha256::digest(json).into()))
    }
}

/// 128 bits of a SHA-256: no accidental collision between the pages of one URL.
fn truncated(digest: [u8; 32]) -> [u8; 16] {
    let mut short = [0; 16];
    short.copy_from_slice(&digest[..16]);
    short
}

/// The strong validator of a page: a hash of what the answer carries (its events' JSON,
/// through their digests, in order, and the cursor; the body is those JSONs in `[…]`),
/// so two answers share it only when they are the same bytes, whichever instance or
/// path (memory or store) built them.
pub(crate) fn etag<'a>(
    events: impl IntoIterator<Item = &'a EventDigest>,
    cursor: u64,
) -> HeaderValue {
    let mut hasher = Sha256::new();
    hasher.update(cursor.to_be_bytes());
    for event in events {
        hasher.update(event.0);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut quoted = [b'"'; 34];
    for (i, byte) in truncated(hasher.finalize().into()).iter().enumerate() {
        quoted[1 + 2 * i] = HEX[usize::from(byte >> 4)];
        quoted[2 + 2 * i] = HEX[usize::from(byte & 0xf)];
    }
    // Hex digits between quotes are a valid header value.
    HeaderValue::from_bytes(&quoted).unwrap_or(HeaderValue::from_static("\"\""))
}

/// Whether the request's `If-None-Match` names `etag` (or is `*`): the caller holds
/// this page already. Compared weakly, as RFC 9110 says for `If-None-Match`.
pub(crate) fn not_modified(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

/// The headers every `GET /events` answer carries: `Vary` (the answer depends on the
/// credentials and, for streams, on `Accept`), and `Cache-Control: no-store` unless the
/// answer is a page that set its own.
pub(crate) fn set_defaults(headers: &mut HeaderMap) {
    headers.append(VARY, HeaderValue::from_static("Authorization, Accept"));
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(if_none_match: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in if_none_match {
            headers.append(IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_etag_is_the_events_in_order_and_the_cursor() {
        let (a, b) = (EventDigest::of(b"{\"a\":1}"), EventDigest::of(b"{\"b\":1}"));
        assert_eq!(etag(&[a, b], 7), etag(&[a, b], 7));
        assert_eq!(a, EventDigest::of(b"{\"a\":1}"));
        assert_ne!(a, b);
        assert_ne!(etag(&[a, b], 7), etag(&[a, b], 8));
        assert_ne!(etag(&[a, b], 7), etag(&[b, a], 7));
        assert_ne!(etag(&[a, b], 7), etag(&[a], 7));
        assert_ne!(etag(&[a], 7), etag(&[], 7));
        let tag = etag(&[a, b], 7);
        let tag = tag.to_str().unwrap();
        assert!(
            tag.len() == 34 && tag.starts_with('"') && tag.ends_with('"'),
            "{tag}"
        );
    }

    #[test]
    fn if_none_match_matches_the_etag_in_any_of_its_forms() {
        let tag = etag(&[], 1);
        let text = tag.to_str().unwrap();
        assert!(not_modified(&request(&[text]), &tag));
        assert!(not_modified(&request(&[&format!("W/{text}")]), &tag));
        assert!(not_modified(
            &request(&[&format!("\"other\", {text}")]),
            &tag
        ));
        assert!(not_modified(&request(&["\"other\"", text]), &tag));
        assert!(not_modified(&request(&["*"]), &tag));
        assert!(!not_modified(&request(&["\"other\""]), &tag));
        assert!(!not_modified(&request(&[]), &tag));
        assert!(
            !not_modified(&request(&[text.trim_matches('"')]), &tag),
            "an unquoted tag is not the tag"
        );
    }

    #[test]
    fn only_immutable_pages_may_be_stored_and_shared_only_without_authentication() {
        assert_eq!(cache_control(true, false), IMMUTABLE_PUBLIC);
        assert_eq!(cache_control(true, true), IMMUTABLE_PRIVATE);
        assert_eq!(cache_control(false, false), NO_STORE);
        assert_eq!(cache_control(false, true), NO_STORE);
        let mut headers = HeaderMap::new();
        set_defaults(&mut headers);
        assert_eq!(headers[CACHE_CONTROL], NO_STORE);
        assert_eq!(headers[VARY], "Authorization, Accept");
    }
}
