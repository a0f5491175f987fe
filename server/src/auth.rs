//! Who is calling: the authentication hook and the authorization filter.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;
use axum::http::{request::Parts, HeaderMap};
use distributed_events_shared::{Context, StoredEvent};

/// The authenticated caller. An unauthenticated server treats everyone as
/// `Principal::default()`.
///
/// With an authenticator, the server stamps `tenant_id` and `user_id` (and `session_id`
/// when set) on every event the caller posts, whatever the body says, and shows the
/// caller only events of its own tenant when `tenant_id` is set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Principal {
    /// The caller's user id.
    pub user_id: Option<String>,
    /// The caller's tenant.
    pub tenant_id: Option<String>,
    /// The caller's session.
    pub session_id: Option<String>,
    /// When the credentials expire (a JWT's `exp`): a stream ends by then, and the
    /// client reconnects with fresh ones.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Anything else the authorization filter needs (roles, organisation, ...).
    pub claims: Context,
}

/// A refusal to authenticate: answered `401` with `WWW-Authenticate: {challenge}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRejection {
    /// The `WWW-Authenticate` value, such as `Bearer realm="events"`.
    pub challenge: String,
    /// What is wrong with the credentials, for the caller.
    pub message: String,
}

impl AuthRejection {
    /// A bearer-token challenge with `message`.
    pub fn bearer(message: impl Into<String>) -> Self {
        Self {
            challenge: "Bearer realm=\"distributed-events\"".to_owned(),
            message: message.into(),
        }
    }
}

/// Checks a request's credentials (the seed's authHandler). Any
/// `Fn(HeaderMap) -> impl Future<Output = Result<Principal, AuthRejection>>` is one.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The caller behind `request`, or why it is refused.
    async fn authenticate(&self, request: &Parts) -> Result<Principal, AuthRejection>;
}

#[async_trait]
impl<F, Fut> Authenticator for F
where
    F: Fn(HeaderMap) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Principal, AuthRejection>> + Send,
{
    async fn authenticate(&self, request: &Parts) -> Result<Principal, AuthRejection> {
        self(request.headers.clone()).await
    }
}

/// What an authorization filter may return: `bool`, or `Result<bool, E>` where an error
/// hides the event.
pub trait FilterOutcome {
    /// Whether the event is visible; `Err` with a reason to log when the filter failed.
    fn into_decision(self) -> Result<bool, String>;
}

impl FilterOutcome for bool {
    fn into_decision(self) -> Result<bool, String> {
        Ok(self)
    }
}

impl<E: fmt::Display> FilterOutcome for Result<bool, E> {
    fn into_decision(self) -> Result<bool, String> {
        self.map_err(|error| error.to_string())
    }
}

/// The type-erased authorization filter the server keeps.
pub(crate) type AuthorizationFilter =
    dyn Fn(&StoredEvent, &Principal) -> Result<bool, String> + Send + Sync;

/// Whether `principal` may see `event`: its own tenant only (when it has one), then the
/// app's filter. A filter that errors or panics hides the event and is logged; it never
/// fails the request.
pub(crate) fn is_visible(
    filter: Option<&AuthorizationFilter>,
    event: &StoredEvent,
    principal: &Principal,
) -> bool {
    if principal.tenant_id.is_some() && event.tenant_id != principal.tenant_id {
        return false;
    }
    let Some(filter) = filter else { return true };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| filter(event, principal))) {
        Ok(Ok(visible)) => visible,
        Ok(Err(error)) => {
            tracing::warn!(event = %event.id, %error, "authorization filter failed; event hidden");
            false
        }
        Err(_) => {
            tracing::warn!(event = %event.id, "authorization filter panicked; event hidden");
            false
        }
    }
}
