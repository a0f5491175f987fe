//! The seed's server example in Rust: an event server on SQLite with a local subscriber,
//! publishing a `UserCreatedEvent` and an `OrderPurchasedEvent`.
//!
//! Run it with `cargo run -p distributed-events-server --example server_example`, then
//! `curl 'http://127.0.0.1:8080/events?after=0'`. Ctrl-C stops it. It listens on
//! `DISTRIBUTED_EVENTS_BIND` when set (port 0 picks a free port), as the server binary does.

use std::time::Duration;

use distributed_events_server::{store, DomainEvent, Event, EventBusServer};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, Event)]
struct UserCreatedEvent {
    email: String,
    name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, Event)]
struct OrderPurchasedEvent {
    amount: f64,
    #[serde(rename = "productId")]
    product_id: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = EventBusServer::builder(store::open("sqlite://example-events.db").await?)
        .retention(Duration::from_secs(24 * 60 * 60))
        .cleanup_interval(Duration::from_secs(60 * 60))
        .build();

    // Local subscribers: they see events published here and events posted by clients.
    let mut users = server.on::<UserCreatedEvent>();
    let mut orders = server.on::<OrderPurchasedEvent>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(event) = users.next() => println!("user created: {} (position {:?})", event.payload.email, event.position),
                Some(event) = orders.next() => println!("order purchased: ${:.2} of {}", event.payload.amount, event.payload.product_id),
                else => break,
            }
        }
    });

    let address =
        std::env::var("DISTRIBUTED_EVENTS_BIND").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(address).await?;
    println!("Server listening on http://{}", listener.local_addr()?);
    let app = server.router();
    let http = tokio::spawn(async move { axum::serve(listener, app).await });

    // Published events are durable before `publish` returns.
    server
        .publish(
            DomainEvent::new(
                "user-1",
                UserCreatedEvent {
                    email: "alice@example.com".into(),
                    name: "Alice".into(),
                },
            )
            .with_context("userId", "user-1")
            .with_context("tenantId", "tenant-1"),
        )
        .await?;
    server
        .publish(DomainEvent::new(
            "order-1",
            OrderPurchasedEvent {
                amount: 99.99,
                product_id: "product-123".into(),
            },
        ))
        .await?;

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = http => {}
    }
    server.close().await;
    Ok(())
}
