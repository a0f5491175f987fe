//! The seed's end-to-end example in Rust: a server and two clients in one program, with
//! events flowing both ways. The server publishes a user; both clients receive it. Each
//! client publishes an order; the server's handler sees both, and each client sees the
//! other's.
//!
//! ```bash
//! cargo run -p distributed-events-server --example end_to_end_example
//! ```
//!
//! It uses a temporary SQLite file and a free port, and ends by itself once every
//! event has arrived everywhere.

use std::time::Duration;

use distributed_events_client::{EventBus, EventBusClient, Status};
use distributed_events_server::{store, DomainEvent, Event, EventBusServer};
use futures::{Stream, StreamExt};
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
    // The server, on a SQLite file of its own and a free port.
    let dir = tempfile::tempdir()?;
    let database = format!("sqlite://{}", dir.path().join("events.db").display());
    let server = EventBusServer::builder(store::open(&database).await?).build();
    let mut server_orders = server.on::<OrderPurchasedEvent>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = server.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("server listening on {url}");

    // Two clients that forward what they publish and replay everything stored.
    let (alice, mut alice_users, mut alice_orders) = client(&url)?;
    let (bob, mut bob_users, mut bob_orders) = client(&url)?;
    for (name, client) in [("alice", &alice), ("bob", &bob)] {
        let mut statuses = client.status_changes();
        tokio::spawn(async move {
            while let Some(status) = statuses.next().await {
                if let Status::BackingOff { error, .. } = status {
                    eprintln!("{name}: waiting for the server: {error}");
                }
            }
        });
    }

    // Server to clients.
    server
        .publish(DomainEvent::new(
            "user-1",
            UserCreatedEvent {
                email: "carol@example.com".into(),
                name: "Carol".into(),
            },
        ))
        .await?;
    let user = next("alice hears of the user", &mut alice_users).await?;
    println!("alice received user created: {}", user.payload.email);
    let user = next("bob hears of the user", &mut bob_users).await?;
    println!("bob received user created: {}", user.payload.email);

    // Clients to the server and to each other.
    alice.publish(DomainEvent::new(
        "order-1",
        OrderPurchasedEvent {
            amount: 99.99,
            product_id: "product-123".into(),
        },
    ))?;
    bob.publish(DomainEvent::new(
        "order-2",
        OrderPurchasedEvent {
            amount: 24.5,
            product_id: "product-456".into(),
        },
    ))?;
    for _ in 0..2 {
        let order = next("the server's handler sees an order", &mut server_orders).await?;
        println!(
            "server handler: order of {} at position {:?}",
            order.payload.product_id, order.position
        );
    }
    // Each client sees its own order at once (position None), then the other's from the server.
    for (name, orders) in [("alice", &mut alice_orders), ("bob", &mut bob_orders)] {
        for _ in 0..2 {
            let order = next("a client sees both orders", orders).await?;
            println!(
                "{name} received order: {} (position {:?})",
                order.payload.product_id, order.position
            );
        }
    }

    alice.close().await;
    bob.close().await;
    server.close().await;
    println!("done: events flowed both ways");
    Ok(())
}

/// A client of `url` with its user and order streams, subscribed before it starts.
#[allow(clippy::type_complexity)]
fn client(
    url: &str,
) -> Result<
    (
        EventBusClient,
        impl Stream<Item = DomainEvent<UserCreatedEvent>> + Unpin,
        impl Stream<Item = DomainEvent<OrderPurchasedEvent>> + Unpin,
    ),
    distributed_events_client::ClientError,
> {
    let bus = EventBus::new();
    let users = bus.on::<UserCreatedEvent>();
    let orders = bus.on::<OrderPurchasedEvent>();
    let client = EventBusClient::builder(url)
        .registry(distributed_events_client::event_registry![
            UserCreatedEvent,
            OrderPurchasedEvent
        ])
        .event_bus(bus)
        .auto_forward(true)
        .initial_position(0)
        .build()?;
    Ok((client, users, orders))
}

/// The next item of `stream`, or an error after 30 s instead of a hang.
async fn next<T>(what: &str, stream: &mut (impl Stream<Item = T> + Unpin)) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(item)) => Ok(item),
        Ok(None) => Err(format!("the stream ended before: {what}")),
        Err(_) => Err(format!("nothing arrived within 30 s: {what}")),
    }
}
