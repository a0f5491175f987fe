use distributed_events_client::{
    event_registry, ClientError, DomainEvent, Event, EventBus, EventBusClient, Status,
};
use futures::{stream, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, Event)]
struct UserCreatedEvent {
    email: String,
    name: String,
}

async fn follow_users(server_url: &str) -> Result<(), ClientError> {
    // Subscribe before the client starts, so that no event can come before the stream.
    let bus = EventBus::new();
    let users = bus.on::<UserCreatedEvent>(); // a futures::Stream
    let client = EventBusClient::builder(server_url)
        .registry(event_registry![UserCreatedEvent]) // every type to decode from the server
        .event_bus(bus) // the bus subscribed above
        .auto_forward(true) // publish() also sends to the server
        .initial_position(0) // replay what the server kept, then follow
        .build()?; // starts polling at once

    client.publish(DomainEvent::new(
        "user-1",
        UserCreatedEvent {
            email: "a@example.com".into(),
            name: "Alice".into(),
        },
    ))?;

    // Alice first, from the publish (position None), then every user the server has,
    // each once; and why nothing comes, if so: a server that is down, a refused token.
    let users =
        users.map(|event| format!("{} at position {:?}", event.payload.name, event.position));
    let statuses = client.status_changes().map(|status| match status {
        Status::BackingOff { error, .. } => format!("waiting for the server: {error}"),
        status => format!("status: {status:?}"),
    });
    let errors = client.errors().map(|error| format!("error: {error}"));
    let mut lines = stream::select(users, stream::select(statuses, errors));
    while let Some(line) = lines.next().await {
        println!("{line}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    follow_users("http://127.0.0.1:8080").await
}
