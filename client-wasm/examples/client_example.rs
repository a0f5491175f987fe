//! The seed's client example in Rust: a client that follows a server, prints the users
//! and orders it hears of, and publishes an order that the client forwards to the server.
//!
//! Start the server example first (`cargo run -p distributed-events-server --example
//! server_example`), then, in a second terminal:
//!
//! ```bash
//! cargo run -p distributed-events-client --features native --example client_example
//! ```
//!
//! It replays what the server kept, then follows it until Ctrl-C. `DISTRIBUTED_EVENTS_URL`
//! names another server; `STOP_AFTER=N` ends it after N events (CI runs it that way).

use distributed_events_client::{
    event_registry, DomainEvent, Event, EventBus, EventBusClient, Status,
};
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
    let server_url =
        std::env::var("DISTRIBUTED_EVENTS_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let stop_after: Option<usize> = std::env::var("STOP_AFTER")
        .ok()
        .map(|n| n.parse())
        .transpose()?;

    // Subscribe before the client starts (see the README's quick start for why).
    let bus = EventBus::new();
    let mut users = bus.on::<UserCreatedEvent>();
    let mut orders = bus.on::<OrderPurchasedEvent>();
    let client = EventBusClient::builder(&server_url)
        .registry(event_registry![UserCreatedEvent, OrderPurchasedEvent])
        .event_bus(bus)
        .auto_forward(true) // forward what this client publishes to the server
        .initial_position(0) // replay everything the server kept, then follow
        .build()?;
    let mut statuses = client.status_changes();
    println!("Following {server_url}");

    // Published locally at once, and sent to the server by the client's outbox.
    client.publish(DomainEvent::new(
        "order-2",
        OrderPurchasedEvent {
            amount: 24.5,
            product_id: "product-456".into(),
        },
    ))?;

    let mut seen = 0;
    while stop_after.is_none_or(|n| seen < n) {
        tokio::select! {
            Some(event) = users.next() => {
                println!("Received user created: {} (position {:?})", event.payload.email, event.position);
                seen += 1;
            }
            Some(event) = orders.next() => {
                println!("Received order: ${:.2} of {} (position {:?})", event.payload.amount, event.payload.product_id, event.position);
                seen += 1;
            }
            Some(status) = statuses.next() => match status {
                // Why nothing arrives: the server is down, the URL is wrong, a token is refused.
                Status::BackingOff { error, .. } => eprintln!("waiting for the server: {error}"),
                status => eprintln!("status: {status:?}"),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.close().await;
    Ok(())
}
