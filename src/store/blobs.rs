//! Content-addressed blob store for large artifact bodies: the SHA-256 of
//! the bytes is the key, so writing the same body twice stores it once and
//! events only carry the hash. Each run that stores a body is recorded as
//! referencing it (`blob_refs`), so that retention can delete a body once
//! no run that is not purged references it.

use sha2::{Digest, Sha256};

use super::StoreError;
use crate::db::{BeginWrite, Db};
use crate::with_pool;

const PUT: &str = include_str!("sql/blob_put.sql");
const REF_PUT: &str = include_str!("sql/blob_ref_put.sql");
const GET: &str = include_str!("sql/blob_get.sql");
const REFS_RELEASE: &str = include_str!("sql/blob_refs_release.sql");
const DELETE_UNREFERENCED: &str = include_str!("sql/blob_delete_unreferenced.sql");
const RELEASE_OWED: &str = include_str!("sql/blob_release_owed.sql");
const RELEASE_DONE: &str = include_str!("sql/blob_release_done.sql");
const RELEASES_OWED: &str = include_str!("sql/blob_releases_owed.sql");
const PG_PUT: &str = include_str!("sql/postgres/blob_put.sql");
const PG_LOCK: &str = include_str!("sql/postgres/blobs_lock.sql");
const PG_DELETE_UNREFERENCED: &str = include_str!("sql/postgres/blobs_delete_unreferenced.sql");

/// What releasing a run's references freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Blobs the run referenced.
    pub referenced: u64,
    /// Blobs deleted: no other run references them.
    pub deleted: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The blob store.
#[derive(Clone, Debug)]
pub struct BlobStore {
    db: Db,
}

impl BlobStore {
    /// A blob store in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The key of `bytes`: lower-case hex SHA-256.
    pub fn key_of(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Stores `bytes` (once) as a body of run `run_id`, and returns their
    /// key.
    pub async fn put(&self, run_id: &str, bytes: &[u8]) -> Result<String, StoreError> {
        let key = Self::key_of(bytes);
        let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        match &self.db {
            Db::Postgres(pool) => {
                sqlx::query(PG_PUT)
                    .bind(&key)
                    .bind(size)
                    .bind(bytes)
                    .bind(run_id)
                    .execute(pool)
                    .await?;
            }
            // One writer at a time: the body and its reference in one
            // transaction, so a purge never sees one without the other.
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_write().await?;
                sqlx::query(PUT)
                    .bind(&key)
                    .bind(size)
                    .bind(bytes)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(REF_PUT)
                    .bind(&key)
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
        crate::db::count_commit();
        Ok(key)
    }

    /// The bytes stored under `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let body: Option<Vec<u8>> = with_pool!(&self.db, pool => {
            sqlx::query_scalar(GET).bind(key).fetch_optional(pool).await?
        });
        Ok(body)
    }

    /// Records that a purge of `run_id` is under way (before its event is
    /// recorded), so that one cut short is found again by
    /// [`BlobStore::owed_releases`].
    pub async fn owe_release(&self, run_id: &str, now_ms: i64) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            sqlx::query(RELEASE_OWED).bind(run_id).bind(now_ms).execute(pool).await.map(|_| ())?
        });
        Ok(())
    }

    /// A purge of `run_id` will not happen (the run refused it).
    pub async fn forgive_release(&self, run_id: &str) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            sqlx::query(RELEASE_DONE).bind(run_id).execute(pool).await.map(|_| ())?
        });
        Ok(())
    }

    /// The runs whose purge was cut short between its event and the release
    /// of its blobs (or before its event), oldest first.
    pub async fn owed_releases(&self) -> Result<Vec<String>, StoreError> {
        let ids = with_pool!(&self.db, pool => {
            sqlx::query_scalar(RELEASES_OWED).fetch_all(pool).await?
        });
        Ok(ids)
    }

    /// Run `run_id` references no blob any more (its artifacts were
    /// purged): its references go, and so does every blob it referenced
    /// that no other run does, and the purge is no longer owed. Idempotent.
    /// A put of the same body racing with this either lands first and keeps
    /// the blob, or stores it again.
    pub async fn release_run(&self, run_id: &str) -> Result<Released, StoreError> {
        let mut released = Released::default();
        match &self.db {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let keys: Vec<String> = sqlx::query_scalar(REFS_RELEASE)
                    .bind(run_id)
                    .fetch_all(&mut *tx)
                    .await?;
                released.referenced = keys.len() as u64;
                if !keys.is_empty() {
                    sqlx::query(PG_LOCK).bind(&keys).execute(&mut *tx).await?;
                    let sizes: Vec<i64> = sqlx::query_scalar(PG_DELETE_UNREFERENCED)
                        .bind(&keys)
                        .fetch_all(&mut *tx)
                        .await?;
                    released.deleted = sizes.len() as u64;
                    released.bytes = sizes.iter().map(|s| u64::try_from(*s).unwrap_or(0)).sum();
                }
                sqlx::query(RELEASE_DONE)
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_write().await?;
                let keys: Vec<String> = sqlx::query_scalar(REFS_RELEASE)
                    .bind(run_id)
                    .fetch_all(&mut *tx)
                    .await?;
                released.referenced = keys.len() as u64;
                for key in &keys {
                    let size: Option<i64> = sqlx::query_scalar(DELETE_UNREFERENCED)
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(size) = size {
                        released.deleted += 1;
                        released.bytes += u64::try_from(size).unwrap_or(0);
                    }
                }
                sqlx::query(RELEASE_DONE)
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
        crate::db::count_commit();
        Ok(released)
    }
}
