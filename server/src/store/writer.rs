//! The group-commit writer that every SQL store shares.
//!
//! One task per store owns the write connection. It takes every append that is waiting
//! when it starts (up to [`MAX_GROUP`] events), drops the ids that are stored already
//! and the repeats within the group, and hands the rest to the backend's
//! [`Insert::insert`] at once, so that many concurrent producers share one commit (and
//! one fsync). What differs between backends ([`Insert`]) is how to connect, that insert,
//! and what to do after a failure; the rest is here, once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use distributed_events_shared::StoredEvent;
use sqlx::{Connection, Database};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::sql::{fetch, Dialect, SqlDatabase};
use super::{Appended, StoreError};

/// Most events one group takes, so that one huge burst does not delay the
/// acknowledgement of everything behind it for long.
pub(super) const MAX_GROUP: usize = 4096;

/// The writer's connection of backend `I`.
pub type Conn<I> = <<I as Insert>::Db as Database>::Connection;

/// Where a backend's reply to a command goes.
pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What a backend does on the writer's connection.
#[async_trait]
pub trait Insert: Send + Sync + 'static {
    /// The sqlx database.
    type Db: SqlDatabase;

    /// How the backend writes statements.
    const DIALECT: Dialect;

    /// Other work that must run on the writer's connection (SQLite: retention, the
    /// write probe); each carries its own [`Reply`]. `Infallible` for none.
    type Job: Send + 'static;

    /// The backend's name, for the log.
    const NAME: &'static str;

    /// Longest a group may take, connecting included; `None` for no limit.
    const GROUP_TIMEOUT: Option<Duration> = None;

    /// Why the backend cannot store these events, if it cannot. Such a batch fails alone
    /// instead of failing the whole group.
    fn unstorable(&self, _events: &[StoredEvent]) -> Option<StoreError> {
        None
    }

    /// Opens the writer's connection: when the writer has none yet, and again after a
    /// failure that dropped it.
    async fn connect(&self) -> Result<Conn<Self>, StoreError>;

    /// The stored events among these ids.
    async fn fetch(
        &self,
        connection: &mut Conn<Self>,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, StoredEvent>, StoreError> {
        fetch::<Self::Db>(connection, &Self::DIALECT, ids).await
    }

    /// Stores `fresh` (distinct ids, none stored when looked up) durably, positions in
    /// this order; returns the position of each event stored, and the head after the
    /// commit. An id missing from the answer was stored meanwhile by another instance.
    async fn insert(
        &self,
        connection: &mut Conn<Self>,
        fresh: &[&StoredEvent],
    ) -> Result<(HashMap<Uuid, u64>, u64), StoreError>;

    /// After a failed group: the connection to go on with, or `None` to connect again
    /// (the default: it may be broken, or in the middle of a transaction).
    async fn recover(&self, _connection: Conn<Self>) -> Option<Conn<Self>> {
        None
    }

    /// Runs one job.
    async fn run(&self, _connection: &mut Conn<Self>, _job: Self::Job) {}
}

enum Command<J> {
    Append(Vec<StoredEvent>, Reply<Vec<Appended>>),
    Job(J),
    /// Ends the writer once the commands queued before it are done.
    Close,
}

/// The handle of a writer task; see the module docs.
pub struct Writer<I: Insert> {
    commands: mpsc::Sender<Command<I::Job>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<I: Insert> Writer<I> {
    /// Starts the writer task on `backend`, with `connection` if there is one already;
    /// it raises `head` after each commit.
    pub(super) fn start(backend: I, connection: Option<Conn<I>>, head: watch::Sender<u64>) -> Self {
        let (commands, receiver) = mpsc::channel(MAX_GROUP);
        let task = tokio::spawn(run(backend, connection, receiver, head));
        Self {
            commands,
            task: Mutex::new(Some(task)),
        }
    }

    /// Stores `events`; see `EventStore::append_batch`.
    pub(super) async fn append(
        &self,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<Appended>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.call(|reply| Command::Append(events, reply)).await
    }

    /// Runs the job that `job` makes, on the writer's connection, after what is queued.
    pub(super) async fn job<T>(
        &self,
        job: impl FnOnce(Reply<T>) -> I::Job,
    ) -> Result<T, StoreError> {
        self.call(|reply| Command::Job(job(reply))).await
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(Reply<T>) -> Command<I::Job>,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Ends the task once what is queued is done. Later calls fail with
    /// [`StoreError::Closed`].
    pub(super) async fn close(&self) {
        let task = self.task.lock().await.take();
        if let Some(task) = task {
            let _ = self.commands.send(Command::Close).await;
            let _ = task.await;
        }
    }
}

impl<I: Insert> std::fmt::Debug for Writer<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Writer({})", I::NAME)
    }
}

/// Raises `head` to `position`, never lowers it (a notification from another instance
/// may arrive after this instance's own later commit).
pub(super) fn advance(head: &watch::Sender<u64>, position: u64) {
    head.send_if_modified(|known| {
        let changed = position > *known;
        *known = (*known).max(position);
        changed
    });
}

type Group = Vec<(Vec<StoredEvent>, Reply<Vec<Appended>>)>;

async fn run<I: Insert>(
    backend: I,
    mut connection: Option<Conn<I>>,
    mut commands: mpsc::Receiver<Command<I::Job>>,
    head: watch::Sender<u64>,
) {
    while let Some(command) = commands.recv().await {
        let (events, reply) = match command {
            Command::Append(events, reply) => (events, reply),
            Command::Job(job) => {
                run_job(&backend, &mut connection, job).await;
                continue;
            }
            Command::Close => break,
        };
        // Group commit: take every append already waiting into this group.
        let mut group = vec![(events, reply)];
        let mut size = group[0].0.len();
        let mut next = None;
        while size < MAX_GROUP {
            match commands.try_recv() {
                Ok(Command::Append(events, reply)) => {
                    size += events.len();
                    group.push((events, reply));
                }
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_group(&backend, &mut connection, group, &head).await;
        match next {
            Some(Command::Job(job)) => run_job(&backend, &mut connection, job).await,
            Some(Command::Close) => break,
            _ => {}
        }
    }
    if let Some(connection) = connection {
        if let Err(error) = connection.close().await {
            tracing::warn!(%error, backend = I::NAME, "closing the writer's connection failed");
        }
    }
}

/// The writer's connection, connecting first if there is none.
async fn connected<'c, I: Insert>(
    backend: &I,
    connection: &'c mut Option<Conn<I>>,
) -> Result<&'c mut Conn<I>, StoreError> {
    Ok(match connection {
        Some(connection) => connection,
        None => connection.insert(backend.connect().await?),
    })
}

async fn run_job<I: Insert>(backend: &I, connection: &mut Option<Conn<I>>, job: I::Job) {
    match connected(backend, connection).await {
        Ok(connection) => backend.run(connection, job).await,
        // The job's caller hears that the store is closed; the cause is here.
        Err(error) => tracing::error!(%error, backend = I::NAME, "no connection for a job"),
    }
}

/// Stores one group and answers each of its callers.
async fn commit_group<I: Insert>(
    backend: &I,
    connection: &mut Option<Conn<I>>,
    group: Group,
    head: &watch::Sender<u64>,
) {
    let mut storable = Vec::with_capacity(group.len());
    for (events, reply) in group {
        match backend.unstorable(&events) {
            Some(problem) => {
                let _ = reply.send(Err(problem));
            }
            None => storable.push((events, reply)),
        }
    }
    if storable.is_empty() {
        return;
    }
    let attempt = async {
        let connection = connected(backend, connection).await?;
        append_group(backend, connection, &storable).await
    };
    let result = match I::GROUP_TIMEOUT {
        // A connection that went silent (a network partition) must not hold up every
        // append forever. If this fires during the commit the outcome is unknown; the
        // client retries under the same id, which is idempotent.
        Some(limit) => tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "{} did not answer within {limit:?}",
                    I::NAME
                )))
            }),
        None => attempt.await,
    };
    match result {
        Ok((results, last)) => {
            advance(head, last);
            for ((_, reply), result) in storable.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            tracing::error!(%error, backend = I::NAME, "append failed");
            if let Some(failed) = connection.take() {
                *connection = backend.recover(failed).await;
            }
            for (_, reply) in storable {
                let _ = reply.send(Err(error.duplicate()));
            }
        }
    }
}

/// Appends every batch of the group with one insert; returns the per-batch results and
/// the head after it.
async fn append_group<I: Insert>(
    backend: &I,
    connection: &mut Conn<I>,
    group: &Group,
) -> Result<(Vec<Vec<Appended>>, u64), StoreError> {
    // Which ids are stored already (a client retrying a post whose answer it lost):
    // such a retry uses no position.
    let ids: Vec<Uuid> = group
        .iter()
        .flat_map(|(events, _)| events.iter().map(|event| event.id))
        .collect();
    let mut known = backend.fetch(connection, &ids).await?;

    // The first occurrence of each new id is stored; later ones report it.
    let mut taken = HashSet::new();
    let fresh: Vec<&StoredEvent> = group
        .iter()
        .flat_map(|(events, _)| events)
        .filter(|event| !known.contains_key(&event.id) && taken.insert(event.id))
        .collect();

    let mut head = 0;
    let mut stored = HashMap::new();
    if !fresh.is_empty() {
        (stored, head) = backend.insert(connection, &fresh).await?;
        // Ids another instance stored between the look-up and the insert: theirs is the
        // event.
        let raced: Vec<Uuid> = fresh
            .iter()
            .map(|event| event.id)
            .filter(|id| !stored.contains_key(id))
            .collect();
        if !raced.is_empty() {
            known.extend(backend.fetch(connection, &raced).await?);
        }
    }

    let mut results = Vec::with_capacity(group.len());
    for (events, _) in group {
        let mut batch = Vec::with_capacity(events.len());
        for event in events {
            if let Some(existing) = known.get(&event.id) {
                batch.push(Appended::Existing(existing.clone()));
            } else if let Some(&position) = stored.get(&event.id) {
                let new = StoredEvent {
                    position: Some(position),
                    ..event.clone()
                };
                // A repeat of the id later in this group reports this event.
                known.insert(event.id, new.clone());
                batch.push(Appended::New(new));
            } else {
                // Stored by another instance and deleted by retention within this
                // append: vanishingly rare; the client's retry under the same id settles it.
                return Err(StoreError::Unavailable(format!(
                    "event {} was stored concurrently and is gone; retry",
                    event.id
                )));
            }
        }
        results.push(batch);
    }
    Ok((results, head))
}
