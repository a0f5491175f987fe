//! The native platform: reqwest for HTTP, tokio for timers and tasks.

use std::time::Duration;

use distributed_events_shared::wire::CURSOR_HEADER;

use super::{BoxFuture, HttpRequest, HttpResponse, Method, Platform, StreamingResponse};
use crate::ClientError;

pub(crate) struct NativePlatform {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl NativePlatform {
    /// Captures the current tokio runtime, so that the client's tasks run on it whoever
    /// drops the client.
    pub(crate) fn new() -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::Config {
            message: "the native client must be built inside a tokio runtime (for example in `#[tokio::main]`)"
                .into(),
        })?;
        Ok(Self {
            http: reqwest::Client::new(),
            runtime,
        })
    }
}

impl NativePlatform {
    fn request(&self, request: HttpRequest) -> reqwest::RequestBuilder {
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
        };
        let mut builder = self.http.request(method, &request.url);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        builder
    }
}

/// A header of `response` as text.
fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

impl Platform for NativePlatform {
    fn fetch(&self, request: HttpRequest) -> BoxFuture<'static, Result<HttpResponse, String>> {
        let builder = self.request(request);
        Box::pin(async move {
            let response = builder.send().await.map_err(|error| describe(&error))?;
            let status = response.status().as_u16();
            let cursor = header(&response, CURSOR_HEADER);
            let retry_after = header(&response, "retry-after");
            let body = response.text().await.map_err(|error| describe(&error))?;
            Ok(HttpResponse {
                status,
                cursor,
                retry_after,
                body,
            })
        })
    }

    fn fetch_stream(
        &self,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<StreamingResponse, String>> {
        let builder = self.request(request);
        Box::pin(async move {
            let response = builder.send().await.map_err(|error| describe(&error))?;
            let status = response.status().as_u16();
            let content_type = header(&response, "content-type");
            let retry_after = header(&response, "retry-after");
            // Dropping the stream drops the response, which closes its connection.
            let body = futures::stream::unfold(Some(response), |response| async move {
                let mut response = response?;
                match response.chunk().await {
                    Ok(Some(chunk)) => Some((Ok(chunk.to_vec()), Some(response))),
                    Ok(None) => None,
                    Err(error) => Some((Err(describe(&error)), None)),
                }
            });
            Ok(StreamingResponse {
                status,
                content_type,
                retry_after,
                body: Box::pin(body),
            })
        })
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        // Detached: the client stops its tasks through abort handles, not join handles.
        drop(self.runtime.spawn(task));
    }
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
