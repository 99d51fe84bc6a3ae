//! The person store on PostgreSQL (`store.backend = "postgres"`), shared by every API replica.
//!
//! How each replica sees the others' writes: every write transaction first takes the
//! `person_changes` table's EXCLUSIVE lock (writers of the whole database take turns; readers are
//! not blocked), catches its memory up, writes its rows and appends one `person_changes` row per
//! person it changed (`person_id` NULL: the whole space was emptied). Holding the lock until
//! commit makes change versions commit in order, so "every change above the last version I saw"
//! is exactly what a replica is missing. Before each read (`persons/recognize` that writes
//! nothing) a replica asks for those changes and re-reads the changed persons: one indexed query,
//! so a person set through one replica is seen by the next request on any other replica — no
//! delay, no notification to lose. Replicas only ever re-read what changed; the change log keeps
//! the last `KEEP_CHANGES` entries, and a replica further behind than that reloads every person.
//!
//! Blocking client (`postgres`, on the store actor's own thread, never on the async executor);
//! a dropped connection is re-opened on the next call, followed by a full reload.

use std::time::Duration;

use postgres::{Client, Config, GenericClient, NoTls, Transaction};

use super::{Space, StoreError, spaces_from_rows};

/// Change log entries kept: a replica further behind reloads everything.
pub const KEEP_CHANGES: i64 = 100_000;

/// Creating the schema from several replicas at once races in PostgreSQL's catalogs: one
/// session-level advisory lock (an arbitrary, fixed key) serialises it.
const SCHEMA_LOCK: i64 = 0x6770_7562_6b6e_6401;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS persons (
        space INTEGER NOT NULL,
        person_id BIGINT NOT NULL,
        embedding BYTEA NOT NULL,
        samples INTEGER NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (space, person_id)
    );
    CREATE TABLE IF NOT EXISTS person_changes (
        version BIGSERIAL PRIMARY KEY,
        space INTEGER NOT NULL,
        person_id BIGINT
    );";

fn pg_err(e: postgres::Error) -> StoreError {
    StoreError::Postgres(e.to_string())
}

/// A stored row: space, person, little-endian f32 embedding, samples.
pub(crate) type Row = (u32, i64, Vec<u8>, u32);

pub(crate) struct PgDb {
    client: Client,
    config: Config,
    /// The last change version this replica's memory includes.
    last_version: i64,
}

impl PgDb {
    /// Connects and creates the schema. Unless the URL sets them: 5 s to connect, 10 s per
    /// statement and per lock wait (a stuck database fails the request, never hangs it).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: Config =
            url.parse().map_err(|e: postgres::Error| StoreError::Postgres(format!("store.postgres_url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_options().is_none() {
            // (and no NOTICE for every `CREATE TABLE IF NOT EXISTS` of an existing schema)
            config.options("-c statement_timeout=10000 -c lock_timeout=10000 -c client_min_messages=warning");
        }
        let mut client = config.connect(NoTls).map_err(pg_err)?;
        client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK]).map_err(pg_err)?;
        let created = client.batch_execute(SCHEMA);
        client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK]).map_err(pg_err)?;
        created.map_err(pg_err)?;
        Ok(Self { client, config, last_version: 0 })
    }

    /// Every person, with the change version they are current to (one snapshot).
    pub fn load_all(&mut self) -> Result<Vec<Row>, StoreError> {
        self.reconnect_if_closed()?;
        let (rows, version) = load(&mut self.client)?;
        self.last_version = version;
        Ok(rows)
    }

    fn reconnect_if_closed(&mut self) -> Result<bool, StoreError> {
        if !self.client.is_closed() {
            return Ok(false);
        }
        tracing::warn!("person store: the PostgreSQL connection was closed; reconnecting");
        self.client = self.config.connect(NoTls).map_err(pg_err)?;
        Ok(true)
    }

    /// Brings `spaces` up to every committed change (see the module doc).
    pub fn refresh(&mut self, spaces: &mut Vec<Space>, dim: usize) -> Result<(), StoreError> {
        if self.reconnect_if_closed()? {
            let (rows, version) = load(&mut self.client)?;
            *spaces = spaces_from_rows(rows, dim);
            self.last_version = version;
            return Ok(());
        }
        catch_up(&mut self.client, &mut self.last_version, spaces, dim)
    }

    /// A write transaction: the writers' lock taken, memory caught up under it.
    pub fn begin<'a>(&'a mut self, spaces: &mut Vec<Space>, dim: usize) -> Result<PgTx<'a>, StoreError> {
        // Only a re-opened connection needs memory first; the catch-up happens under the lock.
        if self.reconnect_if_closed()? {
            let (rows, version) = load(&mut self.client)?;
            *spaces = spaces_from_rows(rows, dim);
            self.last_version = version;
        }
        let Self { client, last_version, .. } = self;
        let mut tx = client.transaction().map_err(pg_err)?;
        tx.batch_execute("LOCK TABLE person_changes IN EXCLUSIVE MODE").map_err(pg_err)?;
        catch_up(&mut tx, last_version, spaces, dim)?;
        Ok(PgTx { tx, last_version, written: 0 })
    }

    /// "ok" when every stored embedding has `dim` values.
    pub fn integrity_check(&mut self, dim: usize) -> Result<String, StoreError> {
        self.reconnect_if_closed()?;
        let bad: i64 = self
            .client
            .query_one("SELECT COUNT(*) FROM persons WHERE length(embedding) <> $1", &[&((dim * 4) as i32)])
            .map_err(pg_err)?
            .get(0);
        Ok(if bad == 0 { "ok".into() } else { format!("{bad} embeddings of the wrong length") })
    }

    pub fn stored_len(&mut self, space: u32) -> Result<usize, StoreError> {
        self.reconnect_if_closed()?;
        let n: i64 = self
            .client
            .query_one("SELECT COUNT(*) FROM persons WHERE space = $1", &[&(space as i32)])
            .map_err(pg_err)?
            .get(0);
        Ok(n as usize)
    }
}

/// Every person and the change version they are current to, read in one snapshot.
fn load(client: &mut Client) -> Result<(Vec<Row>, i64), StoreError> {
    let mut tx =
        client.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().map_err(pg_err)?;
    let loaded = read_all(&mut tx)?;
    tx.commit().map_err(pg_err)?;
    Ok(loaded)
}

/// Every person and the last change version, the version read first: rows newer than it are
/// re-applied by the next catch-up, which re-reads them (idempotent).
fn read_all(client: &mut impl GenericClient) -> Result<(Vec<Row>, i64), StoreError> {
    let version: i64 =
        client.query_one("SELECT COALESCE(MAX(version), 0) FROM person_changes", &[]).map_err(pg_err)?.get(0);
    let rows = client
        .query("SELECT space, person_id, embedding, samples FROM persons", &[])
        .map_err(pg_err)?
        .into_iter()
        .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1), r.get::<_, Vec<u8>>(2), r.get::<_, i32>(3) as u32))
        .collect();
    Ok((rows, version))
}

/// Applies the changes above `last_version` to `spaces` (re-reading each changed person), or
/// reloads everything when the log no longer reaches back that far.
fn catch_up(
    client: &mut impl GenericClient,
    last_version: &mut i64,
    spaces: &mut Vec<Space>,
    dim: usize,
) -> Result<(), StoreError> {
    let oldest: Option<i64> = client.query_one("SELECT MIN(version) FROM person_changes", &[]).map_err(pg_err)?.get(0);
    if oldest.is_some_and(|oldest| oldest > *last_version + 1) {
        tracing::info!("person store: behind the change log (at {last_version}, oldest {oldest:?}); reloading");
        let (rows, version) = read_all(client)?;
        *spaces = spaces_from_rows(rows, dim);
        *last_version = version;
        return Ok(());
    }
    let since = *last_version;
    let changes = client
        .query(
            "SELECT c.version, c.space, c.person_id, p.embedding, p.samples
             FROM person_changes c LEFT JOIN persons p ON p.space = c.space AND p.person_id = c.person_id
             WHERE c.version > $1 ORDER BY c.version",
            &[&since],
        )
        .map_err(pg_err)?;
    for row in changes {
        let (version, space): (i64, i32) = (row.get(0), row.get(1));
        let person_id: Option<i64> = row.get(2);
        let embedding: Option<Vec<u8>> = row.get(3);
        let samples: Option<i32> = row.get(4);
        if let Some(s) = spaces.get_mut(space as usize) {
            match (person_id, embedding, samples) {
                (None, _, _) => *s = Space::default(),
                (Some(id), Some(blob), Some(samples)) => {
                    let mean = super::from_blob(&blob);
                    if mean.len() == dim {
                        s.insert(id, super::Person { mean, samples: samples as u32 });
                    }
                }
                (Some(id), _, _) => s.remove(id),
            }
        }
        *last_version = version;
    }
    Ok(())
}

/// One write transaction (rolled back when dropped uncommitted).
pub(crate) struct PgTx<'a> {
    tx: Transaction<'a>,
    last_version: &'a mut i64,
    /// The highest change version written.
    written: i64,
}

impl PgTx<'_> {
    fn changed(&mut self, space: u32, person_id: Option<i64>) -> Result<(), StoreError> {
        let version: i64 = self
            .tx
            .query_one(
                "INSERT INTO person_changes (space, person_id) VALUES ($1, $2) RETURNING version",
                &[&(space as i32), &person_id],
            )
            .map_err(pg_err)?
            .get(0);
        self.written = self.written.max(version);
        Ok(())
    }

    pub fn upsert(
        &mut self,
        space: u32,
        person_id: i64,
        blob: &[u8],
        samples: u32,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO persons (space, person_id, embedding, samples, updated_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (space, person_id) DO UPDATE
                 SET embedding = EXCLUDED.embedding, samples = EXCLUDED.samples, updated_ms = EXCLUDED.updated_ms",
                &[&(space as i32), &person_id, &blob, &(samples as i32), &now_ms],
            )
            .map_err(pg_err)?;
        self.changed(space, Some(person_id))
    }

    pub fn delete(&mut self, space: u32, person_id: i64) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute("DELETE FROM persons WHERE space = $1 AND person_id = $2", &[&(space as i32), &person_id])
            .map_err(pg_err)?;
        if n > 0 {
            self.changed(space, Some(person_id))?;
        }
        Ok(n > 0)
    }

    pub fn truncate(&mut self, space: u32) -> Result<usize, StoreError> {
        let n = self.tx.execute("DELETE FROM persons WHERE space = $1", &[&(space as i32)]).map_err(pg_err)?;
        self.changed(space, None)?;
        Ok(n as usize)
    }

    /// Commits; the change log is trimmed to its last `KEEP_CHANGES` entries on the way.
    pub fn commit(mut self) -> Result<(), StoreError> {
        if self.written > 0 {
            self.tx
                .execute("DELETE FROM person_changes WHERE version <= $1", &[&(self.written - KEEP_CHANGES)])
                .map_err(pg_err)?;
        }
        self.tx.commit().map_err(pg_err)?;
        if self.written > 0 {
            *self.last_version = self.written;
        }
        Ok(())
    }
}
