//! Content-addressed blob store for large artifact bodies: the SHA-256 of
//! the bytes is the key, so writing the same body twice stores it once and
//! events only carry the hash.

use sha2::{Digest, Sha256};

use super::StoreError;
use crate::db::Db;
use crate::with_pool;

const PUT: &str = include_str!("sql/blob_put.sql");
const GET: &str = include_str!("sql/blob_get.sql");

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

    /// Stores `bytes` (once) and returns their key.
    pub async fn put(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let key = Self::key_of(bytes);
        let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        with_pool!(&self.db, pool => {
            sqlx::query(PUT).bind(&key).bind(size).bind(bytes).execute(pool).await.map(|_| ())?
        });
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
}
