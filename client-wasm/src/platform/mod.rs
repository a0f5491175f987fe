//! What the client needs from its environment: one HTTP exchange, a timer and a way to
//! run tasks. The delivery logic in `client.rs` sees only [`Platform`], so the same code
//! runs in the browser, natively, and against the fake of the unit tests.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

#[cfg(all(not(target_arch = "wasm32"), feature = "native"))]
pub(crate) mod native;
#[cfg(target_arch = "wasm32")]
pub(crate) mod web;

/// `Send` natively, where tasks may run on any thread of a tokio runtime; no bound in
/// the browser, where JS values are not `Send` and everything runs on one thread.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + ?Sized> MaybeSend for T {}
/// `Send` natively, where tasks may run on any thread of a tokio runtime; no bound in
/// the browser, where JS values are not `Send` and everything runs on one thread.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSend for T {}

/// `Sync` natively and no bound in the browser; see [`MaybeSend`].
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSync: Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Sync + ?Sized> MaybeSync for T {}
/// `Sync` natively and no bound in the browser; see [`MaybeSend`].
#[cfg(target_arch = "wasm32")]
pub trait MaybeSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSync for T {}

/// A boxed future that is `Send` exactly where [`MaybeSend`] requires it.
#[cfg(not(target_arch = "wasm32"))]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed future that is `Send` exactly where [`MaybeSend`] requires it.
#[cfg(target_arch = "wasm32")]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A boxed stream that is `Send` exactly where [`MaybeSend`] requires it.
#[cfg(not(target_arch = "wasm32"))]
pub type BoxStream<'a, T> = Pin<Box<dyn futures::Stream<Item = T> + Send + 'a>>;
/// A boxed stream that is `Send` exactly where [`MaybeSend`] requires it.
#[cfg(target_arch = "wasm32")]
pub type BoxStream<'a, T> = Pin<Box<dyn futures::Stream<Item = T> + 'a>>;

/// An HTTP method the protocol uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
}

/// One request, fully formed by `protocol.rs`: a transport only carries it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HttpRequest {
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Option<String>,
}

/// The parts of an answer the protocol reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    /// `X-Events-Cursor`.
    pub(crate) cursor: Option<String>,
    /// `Retry-After`.
    pub(crate) retry_after: Option<String>,
    pub(crate) body: String,
}

/// An answer whose body arrives piece by piece (an event stream).
pub(crate) struct StreamingResponse {
    pub(crate) status: u16,
    /// `Content-Type`.
    pub(crate) content_type: Option<String>,
    /// `Retry-After`.
    pub(crate) retry_after: Option<String>,
    /// The body's chunks as they arrive; `Err` when the connection fails. Dropping it
    /// aborts the request.
    pub(crate) body: BoxStream<'static, Result<Vec<u8>, String>>,
}

/// The environment of a running client.
pub(crate) trait Platform: MaybeSend + MaybeSync + 'static {
    /// Sends `request`. `Err` is a failure to get any answer (network, CORS, DNS), with a
    /// message for people. Dropping the future aborts the request.
    fn fetch(&self, request: HttpRequest) -> BoxFuture<'static, Result<HttpResponse, String>>;
    /// Sends `request` and completes with the status and headers, before the body. `Err`
    /// as for [`fetch`](Self::fetch).
    fn fetch_stream(
        &self,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<StreamingResponse, String>>;
    /// Completes after `duration`; dropping it cancels the timer.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
    /// Runs `task` to completion in the background.
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

/// The platform of this target, or why there is none.
#[cfg(target_arch = "wasm32")]
pub(crate) fn default_platform() -> Result<Box<dyn Platform>, crate::ClientError> {
    Ok(Box::new(web::WebPlatform))
}

/// The platform of this target, or why there is none.
#[cfg(all(not(target_arch = "wasm32"), feature = "native"))]
pub(crate) fn default_platform() -> Result<Box<dyn Platform>, crate::ClientError> {
    Ok(Box::new(native::NativePlatform::new()?))
}

/// The platform of this target, or why there is none.
#[cfg(all(not(target_arch = "wasm32"), not(feature = "native")))]
pub(crate) fn default_platform() -> Result<Box<dyn Platform>, crate::ClientError> {
    Err(crate::ClientError::Config {
        message: "no HTTP transport on this target: enable the `native` feature of distributed-events-client"
            .into(),
    })
}
