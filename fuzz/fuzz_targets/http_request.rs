//! The server's request decoding: any query string on `GET /events`, any body with any
//! content type on `POST /events`. Every answer must be a 2xx or 4xx, never a 5xx or a
//! panic (the store here is in memory and healthy, so a 5xx is a decoding bug). An
//! accepted post must read back as a page that the client's decoder decodes.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use distributed_events_server::store::MemoryStore;
use distributed_events_server::{EventBusServer, Limits, Receipt};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

#[derive(Arbitrary, Debug)]
enum Input {
    Get { query: Vec<u8> },
    Post { content_type: String, body: Vec<u8> },
}

struct World {
    runtime: tokio::runtime::Runtime,
    server: EventBusServer,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let server = runtime.block_on(async {
            EventBusServer::builder(Arc::new(MemoryStore::new()))
                .limits(Limits {
                    // No long-poll may hold an iteration up.
                    max_wait: Duration::ZERO,
                    max_body_bytes: 64 * 1024,
                    ..Limits::default()
                })
                .build()
        });
        World { runtime, server }
    })
}

fuzz_target!(|input: Input| {
    let world = world();
    let request = match &input {
        Input::Get { query } => {
            let query: String = query
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            Request::get(format!("/events?{query}")).body(Body::empty())
        }
        Input::Post { content_type, body } => Request::post("/events")
            .header("content-type", content_type.as_str())
            .body(Body::from(body.clone())),
    };
    // Some content types are not valid header values; such requests never reach a server.
    let Ok(request) = request else { return };
    let (status, body) = world.call(request);
    assert!(
        status.is_success() || status.is_client_error(),
        "{status} for {input:?}"
    );
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
    if matches!(input, Input::Post { .. }) && status == StatusCode::CREATED {
        assert_reads_back(world, &body, &input);
    }
});

impl World {
    fn call(&self, request: Request<Body>) -> (StatusCode, Vec<u8>) {
        self.runtime.block_on(async {
            let response = self
                .server
                .router()
                .oneshot(request)
                .await
                .expect("the router is infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("a body");
            (status, body.to_vec())
        })
    }
}

/// The accepted event, read back in a page, decodes as a client decodes it.
fn assert_reads_back(world: &World, receipt: &[u8], input: &Input) {
    let receipt: Receipt = serde_json::from_slice(receipt).expect("a receipt");
    let read = Request::get(format!("/events?after={}&limit=1", receipt.position - 1))
        .body(Body::empty())
        .expect("a request");
    let (status, page) = world.call(read);
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).expect("UTF-8");
    match distributed_events_client::fuzzing::decode_page(&page) {
        Ok(events) => assert!(
            events.len() == 1 && events[0].id == receipt.id,
            "read back {events:?} for {input:?}"
        ),
        Err(error) => panic!("accepted but undecodable ({error}): {input:?}"),
    }
}
