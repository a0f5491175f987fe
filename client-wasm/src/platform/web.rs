//! The browser platform: gloo-net fetch, gloo-timers and `spawn_local`; and the
//! localStorage cursor store.

use std::time::Duration;

use distributed_events_shared::wire::CURSOR_HEADER;
use gloo_net::http::{Request, Response};
use gloo_timers::future::TimeoutFuture;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{AbortController, ReadableStreamDefaultReader};

use super::{BoxFuture, HttpRequest, HttpResponse, Method, Platform, StreamingResponse};
use crate::CursorStore;

pub(crate) struct WebPlatform;

/// Sends `request`, aborted through `controller`, up to the status and headers.
async fn send(request: HttpRequest, controller: &AbortController) -> Result<Response, String> {
    let mut builder = match request.method {
        Method::Get => Request::get(&request.url),
        Method::Post => Request::post(&request.url),
    };
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let signal = controller.signal();
    builder = builder.abort_signal(Some(&signal));
    let sent = match request.body {
        Some(body) => {
            builder
                .body(body)
                .map_err(|error| error.to_string())?
                .send()
                .await
        }
        None => builder.send().await,
    };
    // A failed fetch says little ("Failed to fetch"); CORS is the usual cause.
    sent.map_err(|error| {
        format!(
            "{error} (is the server running, and does it allow this origin with --cors-origin?)"
        )
    })
}

impl Platform for WebPlatform {
    fn fetch(&self, request: HttpRequest) -> BoxFuture<'static, Result<HttpResponse, String>> {
        Box::pin(async move {
            // Dropping a JS promise does not stop its fetch; aborting the controller does.
            let controller = AbortController::new().map_err(|error| js_message(&error))?;
            let _abort = AbortOnDrop(controller.clone());
            let response = send(request, &controller).await?;
            let headers = response.headers();
            let status = response.status();
            let cursor = headers.get(CURSOR_HEADER);
            let retry_after = headers.get("retry-after");
            let body = response.text().await.map_err(|error| error.to_string())?;
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
        Box::pin(async move {
            let controller = AbortController::new().map_err(|error| js_message(&error))?;
            // Moved into the body stream: dropping the stream aborts the fetch.
            let abort = AbortOnDrop(controller.clone());
            let response = send(request, &controller).await?;
            let headers = response.headers();
            let reader = response.body().map(|body| {
                body.get_reader()
                    .unchecked_into::<ReadableStreamDefaultReader>()
            });
            let body = futures::stream::unfold((reader, abort), |(reader, abort)| async move {
                let chunk = read_chunk(reader.as_ref()?).await;
                match chunk {
                    Ok(Some(bytes)) => Some((Ok(bytes), (reader, abort))),
                    Ok(None) => None,
                    Err(error) => Some((Err(error), (None, abort))),
                }
            });
            Ok(StreamingResponse {
                status: response.status(),
                content_type: headers.get("content-type"),
                retry_after: headers.get("retry-after"),
                body: Box::pin(body),
            })
        })
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        // Browser timers take a 32-bit count of milliseconds.
        let millis = u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
        Box::pin(TimeoutFuture::new(millis))
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        wasm_bindgen_futures::spawn_local(task);
    }
}

/// The next chunk of a fetch body; `None` at its end.
async fn read_chunk(reader: &ReadableStreamDefaultReader) -> Result<Option<Vec<u8>>, String> {
    let result = wasm_bindgen_futures::JsFuture::from(reader.read())
        .await
        .map_err(|error| js_message(&error))?;
    let done = js_sys::Reflect::get(&result, &JsValue::from_str("done"))
        .map_err(|error| js_message(&error))?;
    if done.is_truthy() {
        return Ok(None);
    }
    let value = js_sys::Reflect::get(&result, &JsValue::from_str("value"))
        .map_err(|error| js_message(&error))?;
    Ok(Some(js_sys::Uint8Array::new(&value).to_vec()))
}

/// Aborts the fetch when the request future is dropped (a no-op once it completed).
struct AbortOnDrop(AbortController);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn js_message(value: &JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|error| String::from(error.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}

/// Keeps the cursor in the browser's `localStorage`, so that a reloaded page resumes
/// where it left off.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalStorageCursorStore;

impl LocalStorageCursorStore {
    fn storage() -> Result<web_sys::Storage, String> {
        let window =
            web_sys::window().ok_or("localStorage needs a window (not available in workers)")?;
        window
            .local_storage()
            .map_err(|error| format!("localStorage is not accessible: {}", js_message(&error)))?
            .ok_or_else(|| "localStorage is disabled in this browser".to_owned())
    }
}

impl CursorStore for LocalStorageCursorStore {
    fn load(&self, key: &str) -> Result<Option<u64>, String> {
        let value = Self::storage()?
            .get_item(key)
            .map_err(|error| format!("reading localStorage failed: {}", js_message(&error)))?;
        match value {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                format!(
                    "localStorage `{key}` holds {text:?}, not a cursor; remove it to start afresh"
                )
            }),
        }
    }

    fn save(&self, key: &str, cursor: u64) -> Result<(), String> {
        Self::storage()?
            .set_item(key, &cursor.to_string())
            .map_err(|error| format!("writing localStorage failed: {}", js_message(&error)))
    }
}
