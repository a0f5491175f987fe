//! What the SQL backends share: rows to events, and integer conversions.

use distributed_events_shared::StoredEvent;
use futures::stream::BoxStream;
use futures::TryStreamExt;
use sqlx::{ColumnIndex, Decode, Row, Type};
use uuid::Uuid;

use super::{event_size, from_micros, StoreError};

/// A stored position from its SQL integer.
pub(super) fn to_position(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative position {value}")))
}

/// A position as an SQL integer (positions stay far below `i64::MAX`).
pub(super) fn sql_position(position: u64) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

/// A row count as an SQL integer.
pub(super) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// An event from a row of the backend's `COLUMNS` (with `id` as text and `context` as a
/// JSON text or NULL).
pub(super) fn decode<'r, R>(row: &'r R) -> Result<StoredEvent, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
    let id: String = row.try_get("id")?;
    let context: Option<String> = row.try_get("context")?;
    Ok(StoredEvent {
        position: Some(to_position(row.try_get("position")?)?),
        id: Uuid::parse_str(&id).map_err(|e| corrupt(&e))?,
        created_at: from_micros(row.try_get("created_at")?)?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        event_json: row.try_get("event_json")?,
        user_id: row.try_get("user_id")?,
        tenant_id: row.try_get("tenant_id")?,
        session_id: row.try_get("session_id")?,
        context: match context {
            Some(json) => serde_json::from_str(&json).map_err(|e| corrupt(&e))?,
            None => Default::default(),
        },
    })
}

/// Events decoded from `rows` as they arrive, until `limit` of them or until their sizes
/// reach `max_bytes` (see `EventStore::read_range`); the rows after that are never read.
pub(super) async fn decode_until<R>(
    mut rows: BoxStream<'_, Result<R, sqlx::Error>>,
    max_bytes: usize,
) -> Result<Vec<StoredEvent>, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut events = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.try_next().await? {
        let event = decode(&row)?;
        bytes = bytes.saturating_add(event_size(&event));
        events.push(event);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(events)
}
/// Events from rows; see [`decode`].
pub(super) fn decode_all<R>(rows: &[R]) -> Result<Vec<StoredEvent>, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    rows.iter().map(decode).collect()
}
