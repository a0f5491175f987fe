//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers and the wire
//! types; served at `/openapi.json` and kept in `docs/openapi.json`.

use std::sync::OnceLock;

use distributed_events_shared::wire::{ErrorBody, Receipt, StoredEvent};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "distributed-events",
        description = "Domain events, persisted and delivered in order. docs/PROTOCOL.md is the prose of this document: what a client does with each answer."
    ),
    paths(crate::http::get_events, crate::http::post_event, crate::http::healthz),
    components(schemas(StoredEvent, Receipt, ErrorBody, crate::http::Health)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The `bearer` scheme that operations name: a server started with a JWT key requires it.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".to_owned());
        bearer.description = Some(
            "Required when the server is started with a JWT key (`--jwt-secret` or `--jwt-public-key`)."
                .to_owned(),
        );
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(bearer));
    }
}

/// The document as pretty JSON, ending in a newline (as the file in the repository).
pub(crate) fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut json = ApiDoc::openapi().to_pretty_json().unwrap_or_else(|error| {
            format!("{{\"error\": \"the OpenAPI document does not serialize: {error}\"}}")
        });
        json.push('\n');
        json
    })
}
