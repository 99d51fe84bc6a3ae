//! The person store: face embeddings per `space` (0–9) and `person_id`, for persons/set,
//! recognize, delete and truncate. Embedded by default: one SQLite file (WAL journal,
//! `synchronous = FULL`: a write is on disk when the call returns, and a crash — even `kill -9`
//! mid-write — loses at most the write in progress, never the file). Shared between replicas:
//! PostgreSQL (`postgres`), see there for how every replica sees every other's writes. Search is
//! exact cosine over an in-memory copy of the space's embeddings, loaded at open and written
//! through; every write is one transaction, and memory follows it only once it has committed (a
//! failed one reloads memory from the database).
//!
//! `update` semantics: a person's embedding is the running mean of the unit-length embeddings of
//! their faces, each new face weighing 1/n for the first `MAX_SAMPLES` faces and 1/`MAX_SAMPLES`
//! after that (an exponential moving average: recent photos keep counting, old ones fade).

pub mod pg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use self::pg::{PgDb, PgTx};

pub const SPACES: u32 = 10;
/// Beyond this many faces a person's mean becomes a moving average.
pub const MAX_SAMPLES: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("person store {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("person store (PostgreSQL): {0}")]
    Postgres(String),
    #[error("cannot create the data directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("space must be within 0..=9, got {0}")]
    Space(u32),
    #[error("embedding has {got} values, the store holds {expected}")]
    Dimension { got: usize, expected: usize },
    #[error("the person store is unavailable after an internal error; restart the server")]
    Unavailable,
}

/// The best match of a face in a space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match {
    pub person_id: i64,
    pub similarity: f32,
}

#[derive(Debug, Clone)]
pub(crate) struct Person {
    /// Running mean of unit embeddings (not unit itself).
    pub(crate) mean: Vec<f32>,
    pub(crate) samples: u32,
}

/// One space in memory: persons by id, and their unit embeddings as one contiguous row-major
/// matrix so that a search is a single pass over memory.
#[derive(Debug, Clone, Default)]
pub(crate) struct Space {
    persons: BTreeMap<i64, Person>,
    ids: Vec<i64>,
    units: Vec<f32>,
    rows: std::collections::HashMap<i64, usize>,
}

impl Space {
    fn get(&self, id: &i64) -> Option<&Person> {
        self.persons.get(id)
    }

    pub(crate) fn insert(&mut self, id: i64, person: Person) {
        // The matrix holds `mean` scaled to unit length, what search compares against.
        let u = unit(&person.mean);
        let dim = u.len();
        match self.rows.get(&id) {
            Some(&row) => self.units[row * dim..(row + 1) * dim].copy_from_slice(&u),
            None => {
                self.rows.insert(id, self.ids.len());
                self.ids.push(id);
                self.units.extend_from_slice(&u);
            }
        }
        self.persons.insert(id, person);
    }

    pub(crate) fn remove(&mut self, id: i64) {
        let Some(row) = self.rows.remove(&id) else { return };
        let dim = self.persons.remove(&id).map_or(0, |p| p.mean.len());
        let last = self.ids.len() - 1;
        if row != last {
            let moved = self.ids[last];
            self.units.copy_within(last * dim..(last + 1) * dim, row * dim);
            self.ids[row] = moved;
            self.rows.insert(moved, row);
        }
        self.ids.pop();
        self.units.truncate(last * dim);
    }

    /// One above the largest id (1 in an empty space).
    fn next_id(&self) -> i64 {
        self.persons.keys().next_back().map_or(1, |id| id + 1)
    }

    fn search(&self, q: &[f32]) -> Option<Match> {
        let mut best: Option<Match> = None;
        for (row, &person_id) in self.ids.iter().enumerate() {
            let u = &self.units[row * q.len()..(row + 1) * q.len()];
            let similarity = dot(q, u);
            if best.is_none_or(|b| similarity > b.similarity) {
                best = Some(Match { person_id, similarity });
            }
        }
        best
    }
}

/// What persons/recognize says of one face: the person (None = `undefined`), the similarity to
/// them (1 for a person created from this face; for an unknown face, the best similarity found),
/// and whether this face created them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recognition {
    pub person_id: Option<i64>,
    pub similarity: f32,
    pub created: bool,
}

pub struct PersonStore {
    db: Db,
    dim: usize,
    spaces: Vec<Space>,
}

/// Where the store's rows live.
enum Db {
    Sqlite { conn: Connection, path: PathBuf },
    Postgres(Box<PgDb>),
}

/// One write transaction: rolled back when dropped uncommitted.
enum Tx<'a> {
    Sqlite { tx: rusqlite::Transaction<'a>, path: &'a Path },
    Postgres(PgTx<'a>),
}

/// Memory from stored rows (space, person, little-endian embedding, samples); rows of another
/// space range or embedding length are skipped.
pub(crate) fn spaces_from_rows(rows: Vec<pg::Row>, dim: usize) -> Vec<Space> {
    let mut spaces = vec![Space::default(); SPACES as usize];
    for (space, id, blob, samples) in rows {
        let mean = from_blob(&blob);
        if space < SPACES && mean.len() == dim {
            spaces[space as usize].insert(id, Person { mean, samples });
        }
    }
    spaces
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Tx<'_> {
    fn sqlite_err(path: &Path, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: path.to_path_buf(), source }
    }

    /// Writes a person's row (insert or replace).
    fn upsert(&mut self, space: u32, person_id: i64, p: &Person) -> Result<(), StoreError> {
        match self {
            Self::Sqlite { tx, path } => tx
                .prepare_cached(
                    "INSERT INTO persons (space, person_id, embedding, samples, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (space, person_id) DO UPDATE SET embedding = ?3, samples = ?4, updated_ms = ?5",
                )
                .and_then(|mut stmt| stmt.execute(params![space, person_id, to_blob(&p.mean), p.samples, now_ms()]))
                .map(|_| ())
                .map_err(|e| Self::sqlite_err(path, e)),
            Self::Postgres(tx) => tx.upsert(space, person_id, &to_blob(&p.mean), p.samples, now_ms()),
        }
    }

    /// Deletes a person's row; false when there was none.
    fn delete(&mut self, space: u32, person_id: i64) -> Result<bool, StoreError> {
        match self {
            Self::Sqlite { tx, path } => tx
                .execute("DELETE FROM persons WHERE space = ?1 AND person_id = ?2", params![space, person_id])
                .map(|n| n > 0)
                .map_err(|e| Self::sqlite_err(path, e)),
            Self::Postgres(tx) => tx.delete(space, person_id),
        }
    }

    /// Deletes a space's rows; returns how many there were.
    fn truncate(&mut self, space: u32) -> Result<usize, StoreError> {
        match self {
            Self::Sqlite { tx, path } => tx
                .execute("DELETE FROM persons WHERE space = ?1", params![space])
                .map_err(|e| Self::sqlite_err(path, e)),
            Self::Postgres(tx) => tx.truncate(space),
        }
    }

    fn commit(self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite { tx, path } => tx.commit().map_err(|e| Self::sqlite_err(path, e)),
            Self::Postgres(tx) => tx.commit(),
        }
    }
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n == 0.0 { v.to_vec() } else { v.iter().map(|x| x / n).collect() }
}

/// Dot product in 8 independent lanes (vectorises; a plain `sum()` is one serial chain).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

pub(crate) fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

impl PersonStore {
    /// Opens (creating) `<dir>/persons.sqlite3` for embeddings of `dim` values.
    pub fn open(dir: &Path, dim: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir { path: dir.to_path_buf(), source })?;
        let path = dir.join("persons.sqlite3");
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS persons (
                 space INTEGER NOT NULL,
                 person_id INTEGER NOT NULL,
                 embedding BLOB NOT NULL,
                 samples INTEGER NOT NULL,
                 updated_ms INTEGER NOT NULL,
                 PRIMARY KEY (space, person_id)
             ) WITHOUT ROWID;",
        )
        .map_err(err)?;
        let mut store = Self { db: Db::Sqlite { conn, path }, dim, spaces: Vec::new() };
        store.reload()?;
        Ok(store)
    }

    /// The store `config` names.
    pub fn open_config(config: &crate::config::StoreConfig, dim: usize) -> Result<Self, StoreError> {
        match (config.backend, &config.postgres_url) {
            (crate::config::StoreBackend::Postgres, Some(url)) => Self::open_postgres(url, dim),
            _ => Self::open(&config.dir, dim),
        }
    }

    /// Connects to the PostgreSQL database at `url` (libpq key=value or URL form; the schema is
    /// created if missing) for embeddings of `dim` values.
    pub fn open_postgres(url: &str, dim: usize) -> Result<Self, StoreError> {
        let mut store = Self { db: Db::Postgres(Box::new(PgDb::connect(url)?)), dim, spaces: Vec::new() };
        store.reload()?;
        Ok(store)
    }

    /// Memory from the database: every person, again.
    fn reload(&mut self) -> Result<(), StoreError> {
        let rows = match &mut self.db {
            Db::Sqlite { conn, path } => {
                let err = |source| StoreError::Sqlite { path: path.clone(), source };
                let mut stmt = conn.prepare("SELECT space, person_id, embedding, samples FROM persons").map_err(err)?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, u32>(3)?))
                    })
                    .map_err(err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(err)?
            }
            Db::Postgres(pg) => pg.load_all()?,
        };
        self.spaces = spaces_from_rows(rows, self.dim);
        Ok(())
    }

    /// Brings memory up to the other replicas' committed writes (PostgreSQL; the SQLite file has
    /// one writer, this process). Reads do it themselves; public for measuring it.
    pub fn refresh(&mut self) -> Result<(), StoreError> {
        match &mut self.db {
            Db::Sqlite { .. } => Ok(()),
            Db::Postgres(pg) => pg.refresh(&mut self.spaces, self.dim),
        }
    }

    /// Runs `f` as one write transaction. `f` writes rows through the transaction and applies the
    /// same changes to `spaces` (memory) as it goes, so later steps of one call see earlier ones;
    /// if `f` or the commit fails, memory is reloaded from the database (what committed).
    fn transact<T>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>, &mut Vec<Space>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = (|| {
            let mut tx = match &mut self.db {
                Db::Sqlite { conn, path } => Tx::Sqlite {
                    tx: conn.transaction().map_err(|source| StoreError::Sqlite { path: path.clone(), source })?,
                    path,
                },
                // Every writer of the database takes its turn; memory catches up first.
                Db::Postgres(pg) => Tx::Postgres(pg.begin(&mut self.spaces, self.dim)?),
            };
            let value = f(&mut tx, &mut self.spaces)?;
            tx.commit()?;
            Ok(value)
        })();
        if result.is_err() {
            // Memory may hold changes that did not commit; the database is the truth.
            if let Err(e) = self.reload() {
                tracing::error!("person store: reloading after a failed write: {e}");
            }
        }
        result
    }

    fn check(&self, space: u32, embedding: &[f32]) -> Result<(), StoreError> {
        if space >= SPACES {
            return Err(StoreError::Space(space));
        }
        if embedding.len() != self.dim {
            return Err(StoreError::Dimension { got: embedding.len(), expected: self.dim });
        }
        Ok(())
    }

    /// Persons in `space` (memory).
    pub fn len(&self, space: u32) -> usize {
        self.spaces.get(space as usize).map_or(0, |s| s.ids.len())
    }

    pub fn is_empty(&self, space: u32) -> bool {
        self.len(space) == 0
    }

    /// The most similar person of `space` in memory (exact cosine over all of them).
    pub fn best_match(&self, space: u32, embedding: &[f32]) -> Result<Option<Match>, StoreError> {
        self.check(space, embedding)?;
        Ok(self.spaces[space as usize].search(&unit(embedding)))
    }

    /// Adds a face to `person_id` (creating the person): the running mean described above.
    pub fn add_face(&mut self, space: u32, person_id: i64, embedding: &[f32]) -> Result<(), StoreError> {
        self.add_faces(space, &[(person_id, embedding)])
    }

    /// Adds several faces in one transaction (all or none stored).
    pub fn add_faces(&mut self, space: u32, faces: &[(i64, &[f32])]) -> Result<(), StoreError> {
        for (_, embedding) in faces {
            self.check(space, embedding)?;
        }
        self.transact(|tx, spaces| {
            for &(person_id, embedding) in faces {
                let person = Self::with_face(spaces[space as usize].get(&person_id), embedding);
                tx.upsert(space, person_id, &person)?;
                spaces[space as usize].insert(person_id, person);
            }
            Ok(())
        })
    }

    fn with_face(previous: Option<&Person>, embedding: &[f32]) -> Person {
        let face = unit(embedding);
        let (mean, samples) = match previous {
            Some(p) => {
                let w = 1.0 / (p.samples + 1).min(MAX_SAMPLES) as f32;
                (p.mean.iter().zip(&face).map(|(m, f)| m * (1.0 - w) + f * w).collect(), p.samples + 1)
            }
            None => (face, 1),
        };
        Person { mean, samples }
    }

    /// A new person id in `space` (one above the largest in memory).
    pub fn next_id(&self, space: u32) -> i64 {
        self.spaces.get(space as usize).map_or(1, Space::next_id)
    }

    /// Removes a person; false when there was none.
    pub fn delete(&mut self, space: u32, person_id: i64) -> Result<bool, StoreError> {
        Ok(self.delete_many(space, &[person_id])?[0])
    }

    /// Removes persons in one transaction; for each, false when there was none.
    pub fn delete_many(&mut self, space: u32, ids: &[i64]) -> Result<Vec<bool>, StoreError> {
        if space >= SPACES {
            return Err(StoreError::Space(space));
        }
        self.transact(|tx, spaces| {
            let mut existed = Vec::with_capacity(ids.len());
            for &id in ids {
                existed.push(tx.delete(space, id)?);
                spaces[space as usize].remove(id);
            }
            Ok(existed)
        })
    }

    /// Removes every person of `space`; returns how many there were.
    pub fn truncate(&mut self, space: u32) -> Result<usize, StoreError> {
        if space >= SPACES {
            return Err(StoreError::Space(space));
        }
        self.transact(|tx, spaces| {
            let n = tx.truncate(space)?;
            spaces[space as usize] = Space::default();
            Ok(n)
        })
    }

    /// persons/recognize for the faces of one image: each face's best match in `space`; a match at
    /// or above `threshold` is that person (and, with `update`, the face joins their mean); below
    /// it, with `create_new`, the face becomes a new person, else it stays unknown. With a write
    /// possible, the whole image is one transaction over up-to-date memory (on PostgreSQL: no
    /// other replica writes in between, so two replicas cannot create the same new id).
    pub fn recognize(
        &mut self,
        space: u32,
        faces: &[Vec<f32>],
        threshold: f32,
        create_new: bool,
        update: bool,
    ) -> Result<Vec<Recognition>, StoreError> {
        for face in faces {
            self.check(space, face)?;
        }
        if !create_new && !update {
            self.refresh()?;
            return Ok(faces
                .iter()
                .map(|face| match self.spaces[space as usize].search(&unit(face)) {
                    Some(m) if m.similarity >= threshold => {
                        Recognition { person_id: Some(m.person_id), similarity: m.similarity, created: false }
                    }
                    best => {
                        Recognition { person_id: None, similarity: best.map_or(0.0, |m| m.similarity), created: false }
                    }
                })
                .collect());
        }
        self.transact(|tx, spaces| {
            let s = &mut spaces[space as usize];
            let mut out = Vec::with_capacity(faces.len());
            for face in faces {
                let best = s.search(&unit(face));
                let r = match best {
                    Some(m) if m.similarity >= threshold => {
                        if update {
                            let person = Self::with_face(s.get(&m.person_id), face);
                            tx.upsert(space, m.person_id, &person)?;
                            s.insert(m.person_id, person);
                        }
                        Recognition { person_id: Some(m.person_id), similarity: m.similarity, created: false }
                    }
                    _ if create_new => {
                        let id = s.next_id();
                        let person = Self::with_face(None, face);
                        tx.upsert(space, id, &person)?;
                        s.insert(id, person);
                        Recognition { person_id: Some(id), similarity: 1.0, created: true }
                    }
                    _ => {
                        Recognition { person_id: None, similarity: best.map_or(0.0, |m| m.similarity), created: false }
                    }
                };
                out.push(r);
            }
            Ok(out)
        })
    }

    /// The database's own consistency check ("ok" when sound): SQLite's integrity check; on
    /// PostgreSQL, that every stored embedding has this store's length.
    pub fn integrity_check(&mut self) -> Result<String, StoreError> {
        match &mut self.db {
            Db::Sqlite { conn, path } => conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .map_err(|source| StoreError::Sqlite { path: path.clone(), source }),
            Db::Postgres(pg) => pg.integrity_check(self.dim),
        }
    }

    /// Samples recorded for a person.
    pub fn samples(&self, space: u32, person_id: i64) -> Option<u32> {
        self.spaces.get(space as usize)?.get(&person_id).map(|p| p.samples)
    }

    /// The stored row count of a space, read from the database (not the memory copy).
    pub fn stored_len(&mut self, space: u32) -> Result<usize, StoreError> {
        match &mut self.db {
            Db::Sqlite { conn, path } => conn
                .query_row("SELECT COUNT(*) FROM persons WHERE space = ?1", params![space], |r| r.get::<_, i64>(0))
                .optional()
                .map(|n| n.unwrap_or(0) as usize)
                .map_err(|source| StoreError::Sqlite { path: path.clone(), source }),
            Db::Postgres(pg) => pg.stored_len(space),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gpubackend-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn e(values: &[f32]) -> Vec<f32> {
        let mut v = vec![0.0; 4];
        v[..values.len()].copy_from_slice(values);
        v
    }

    #[test]
    fn spaces_are_isolated_and_search_is_cosine() {
        let d = dir("spaces");
        let mut s = PersonStore::open(&d, 4).unwrap();
        s.add_face(5, 1, &e(&[1.0, 0.0])).unwrap();
        s.add_face(5, 2, &e(&[0.0, 1.0])).unwrap();
        s.add_face(6, 1, &e(&[0.0, 0.0, 1.0])).unwrap();
        let m = s.best_match(5, &e(&[2.0, 0.2])).unwrap().unwrap();
        assert_eq!(m.person_id, 1);
        assert!((m.similarity - 2.0 / (4.04f32).sqrt()).abs() < 1e-6);
        assert_eq!(s.best_match(6, &e(&[1.0])).unwrap().unwrap().person_id, 1);
        assert!(s.best_match(7, &e(&[1.0])).unwrap().is_none());
        assert!(matches!(s.best_match(10, &e(&[1.0])), Err(StoreError::Space(10))));
        assert!(matches!(s.add_face(5, 3, &[1.0]), Err(StoreError::Dimension { got: 1, expected: 4 })));
        assert_eq!(s.next_id(5), 3);
        assert_eq!(s.next_id(8), 1);
    }

    #[test]
    fn faces_average_into_the_person_and_survive_reopening() {
        let d = dir("reopen");
        {
            let mut s = PersonStore::open(&d, 4).unwrap();
            s.add_face(0, 7, &e(&[1.0, 0.0])).unwrap();
            s.add_face(0, 7, &e(&[0.0, 1.0])).unwrap();
            assert_eq!(s.samples(0, 7), Some(2));
            s.add_face(0, 8, &e(&[0.0, 0.0, 1.0])).unwrap();
            assert!(s.delete(0, 8).unwrap());
            assert!(!s.delete(0, 8).unwrap());
        }
        let mut s = PersonStore::open(&d, 4).unwrap();
        assert_eq!(s.len(0), 1);
        // Mean of (1,0) and (0,1): equally similar to both.
        let a = s.best_match(0, &e(&[1.0, 0.0])).unwrap().unwrap().similarity;
        let b = s.best_match(0, &e(&[0.0, 1.0])).unwrap().unwrap().similarity;
        assert!((a - b).abs() < 1e-6 && (a - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn the_mean_becomes_a_moving_average_after_max_samples() {
        let d = dir("ema");
        let mut s = PersonStore::open(&d, 4).unwrap();
        for _ in 0..100 {
            s.add_face(1, 1, &e(&[1.0, 0.0])).unwrap();
        }
        // 32 more faces of the other direction pull it most of the way (1 − (31/32)^32 ≈ 0.64).
        for _ in 0..32 {
            s.add_face(1, 1, &e(&[0.0, 1.0])).unwrap();
        }
        let mean = &s.spaces[1].persons[&1].mean;
        assert!((mean[1] - (1.0 - (31.0f32 / 32.0).powi(32))).abs() < 1e-3, "{mean:?}");
        assert_eq!(s.samples(1, 1), Some(132));
    }

    #[test]
    fn deleting_keeps_the_search_matrix_consistent() {
        let d = dir("swap");
        let mut s = PersonStore::open(&d, 4).unwrap();
        for (id, axis) in [(1, 0), (2, 1), (3, 2), (4, 3)] {
            let mut v = vec![0.0; 4];
            v[axis] = 1.0;
            s.add_face(0, id, &v).unwrap();
        }
        s.delete(0, 2).unwrap();
        s.delete(0, 1).unwrap();
        for (id, axis) in [(3, 2), (4, 3)] {
            let mut v = vec![0.0; 4];
            v[axis] = 1.0;
            assert_eq!(s.best_match(0, &v).unwrap().unwrap(), Match { person_id: id, similarity: 1.0 });
        }
        assert_eq!(s.len(0), 2);
    }

    #[test]
    fn recognize_matches_creates_or_leaves_unknown() {
        let d = dir("recognize");
        let mut s = PersonStore::open(&d, 4).unwrap();
        s.add_face(5, 1, &e(&[1.0, 0.0])).unwrap();
        let faces = vec![e(&[1.0, 0.1]), e(&[0.0, 1.0])];
        let r = s.recognize(5, &faces, 0.9, false, false).unwrap();
        assert_eq!(r[0].person_id, Some(1));
        assert!(r[0].similarity > 0.99);
        assert_eq!((r[1].person_id, r[1].created), (None, false));
        assert_eq!(s.samples(5, 1), Some(1), "update_embedding = false leaves the person alone");
        let r = s.recognize(5, &faces, 0.9, true, true).unwrap();
        assert_eq!(s.samples(5, 1), Some(2));
        assert_eq!((r[1].person_id, r[1].similarity, r[1].created), (Some(2), 1.0, true));
        assert_eq!(s.recognize(5, &faces[1..], 0.9, false, false).unwrap()[0].person_id, Some(2));
    }

    #[test]
    fn truncate_empties_one_space_only() {
        let d = dir("truncate");
        let mut s = PersonStore::open(&d, 4).unwrap();
        s.add_face(2, 1, &e(&[1.0])).unwrap();
        s.add_face(2, 2, &e(&[1.0])).unwrap();
        s.add_face(3, 1, &e(&[1.0])).unwrap();
        assert_eq!(s.truncate(2).unwrap(), 2);
        assert_eq!((s.len(2), s.len(3), s.stored_len(2).unwrap(), s.stored_len(3).unwrap()), (0, 1, 0, 1));
    }
}
