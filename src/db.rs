//! Database connections: one pool, SQLite or PostgreSQL, chosen by URL.
//!
//! Shared infrastructure below both `store` and `projections` (which must not
//! depend on each other). Queries that read the same on both backends are
//! written once and run through [`with_pool!`](crate::with_pool), which expands the same code
//! for each pool type.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Postgres, Sqlite};

/// A connection pool to one of the supported backends.
#[derive(Clone, Debug)]
pub enum Db {
    /// The embedded default: a SQLite file.
    Sqlite(Pool<Sqlite>),
    /// Production: PostgreSQL.
    Postgres(Pool<Postgres>),
}

/// Runs the same code against whichever pool `db` holds; `$pool` is bound to
/// `&Pool<Sqlite>` or `&Pool<Postgres>`.
#[macro_export]
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}

/// `url` with the password of its user info (`scheme://user:password@…`)
/// replaced by `***`, fit for an error message or a log.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = user_info
        .split_once(':')
        .map_or(user_info, |(user, _)| user);
    let hidden = if user_info.contains(':') { ":***" } else { "" };
    format!("{scheme}://{user}{hidden}@{host}{tail}")
}

/// Failure to open the database.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not one we understand.
    #[error("unsupported database URL '{0}': use postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No database exists where one was expected.
    #[error("no runlog database at {0} (check --data-dir or --database-url)")]
    Missing(String),
    /// The database refused the connection.
    #[error("cannot connect to the database: {0}")]
    Sqlx(#[from] sqlx::Error),
}

/// A file a process holds an exclusive lock on (`flock`; the kernel
/// releases it however the process ends), beside a SQLite database.
#[derive(Debug)]
pub struct FileLock {
    /// The lock file.
    pub path: std::path::PathBuf,
    /// Open while held.
    file: std::fs::File,
}

/// Who holds a SQLite database's serving lock, as its lock file says: the
/// pid, and where it listens once it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingHolder {
    /// The server's process id.
    pub pid: u32,
    /// Its base URL (`http://127.0.0.1:8080`), once it listens.
    pub address: Option<String>,
}

impl ServingHolder {
    /// Reads the lock file at `path`.
    pub fn read(path: &std::path::Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok()?;
        let address = lines
            .next()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string);
        Some(Self { pid, address })
    }

    /// The server holding `db`'s serving lock now, if `db` is a SQLite file
    /// a `runlog serve` holds (PostgreSQL: `None`, many may serve it).
    pub fn of(db: &Db) -> std::io::Result<Option<Self>> {
        let Some((_, path)) = db.sqlite_lock_path(".serve-lock") else {
            return Ok(None);
        };
        if !path.exists() {
            return Ok(None);
        }
        // Free: no server (the lock is let go at once).
        if FileLock::try_take(path.clone())?.is_some() {
            return Ok(None);
        }
        Ok(Some(Self::read(&path).unwrap_or(Self {
            pid: 0,
            address: None,
        })))
    }
}

impl FileLock {
    /// Takes the lock on `path`, creating the file, without waiting:
    /// `Ok(None)` when another holder has it.
    pub fn try_take(path: std::path::PathBuf) -> std::io::Result<Option<Self>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { path, file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Replaces the file's text (who holds it, for the next one to say).
    pub fn write_holder(&mut self, text: &str) -> std::io::Result<()> {
        use std::io::{Seek, Write};
        // Written first, then cut to its length: a reader never finds the
        // file empty.
        self.file.rewind()?;
        self.file.write_all(text.as_bytes())?;
        self.file.set_len(text.len() as u64)
    }
}

impl Db {
    /// Opens the database: `database_url` if given (postgres:// or sqlite://),
    /// else a SQLite file `runlog.db` under `data_dir`.
    pub async fn connect(
        database_url: Option<&str>,
        data_dir: &Path,
    ) -> Result<Self, ConnectError> {
        match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let options = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(24)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?;
                Ok(Self::Postgres(pool))
            }
            Some(url) if url.starts_with("sqlite:") => {
                Self::sqlite(SqliteConnectOptions::from_str(url)?).await
            }
            Some(url) => Err(ConnectError::UnsupportedUrl(redacted(url))),
            None => {
                std::fs::create_dir_all(data_dir).map_err(|source| ConnectError::DataDir {
                    path: data_dir.display().to_string(),
                    source,
                })?;
                let options = SqliteConnectOptions::new().filename(data_dir.join("runlog.db"));
                Self::sqlite(options).await
            }
        }
    }

    /// The SQLite database file and `<file><suffix>` beside it, for a
    /// process lock; `None` on PostgreSQL and for an in-memory database
    /// (this process's alone).
    pub fn sqlite_lock_path(
        &self,
        suffix: &str,
    ) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        let Self::Sqlite(pool) = self else {
            return None;
        };
        let options = pool.connect_options();
        let database = options.get_filename();
        if database.as_os_str().is_empty() || database.as_os_str() == ":memory:" {
            return None;
        }
        let mut lock = database.as_os_str().to_owned();
        lock.push(suffix);
        Some((database.to_path_buf(), lock.into()))
    }

    /// Opens an existing database without creating or migrating anything
    /// (for read-only commands such as `replay`).
    pub async fn open_existing(
        database_url: Option<&str>,
        data_dir: &Path,
    ) -> Result<Self, ConnectError> {
        match database_url {
            Some(url) if url.starts_with("sqlite:") => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(false)
                    .read_only(true);
                let path = options.get_filename().to_path_buf();
                if !path.is_file() {
                    return Err(ConnectError::Missing(path.display().to_string()));
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await?;
                Ok(Self::Sqlite(pool))
            }
            Some(url) => Self::connect(Some(url), data_dir).await,
            None => {
                let file = data_dir.join("runlog.db");
                if !file.is_file() {
                    return Err(ConnectError::Missing(file.display().to_string()));
                }
                let options = SqliteConnectOptions::new().filename(file).read_only(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await?;
                Ok(Self::Sqlite(pool))
            }
        }
    }

    async fn sqlite(options: SqliteConnectOptions) -> Result<Self, ConnectError> {
        // WAL with synchronous=FULL: every acknowledged commit is on disk.
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        Ok(Self::Sqlite(pool))
    }

    /// Another pool of `connections` on the same database, with the same
    /// settings except, with [`Commits::Relaxed`], that its commits do not
    /// wait for the disk (PostgreSQL `synchronous_commit = off`, SQLite
    /// `synchronous = NORMAL` in WAL mode).
    ///
    /// Relaxed commits are for writes that the log re-derives after a crash
    /// (the task queue). Such a commit is still ordered
    /// before every later commit: both backends write their write-ahead log
    /// in order, so once any later durable commit is on disk, so is this
    /// one; a relaxed write is lost only if no durable commit follows it
    /// before the crash.
    pub async fn pool(&self, connections: u32, commits: Commits) -> Result<Self, ConnectError> {
        match self {
            Self::Postgres(pool) => {
                let mut options = (*pool.connect_options()).clone();
                if commits == Commits::Relaxed {
                    options = options.options([("synchronous_commit", "off")]);
                }
                let pool = PgPoolOptions::new()
                    .max_connections(connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?;
                Ok(Self::Postgres(pool))
            }
            Self::Sqlite(pool) => {
                let mut options = (*pool.connect_options()).clone();
                if commits == Commits::Relaxed {
                    options = options.synchronous(SqliteSynchronous::Normal);
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(connections)
                    .connect_with(options)
                    .await?;
                Ok(Self::Sqlite(pool))
            }
        }
    }

    /// The backend's name, for logs and reports.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }
}

/// How the commits of a pool wait for the disk (see [`Db::pool`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commits {
    /// An answered commit is on disk.
    Durable,
    /// An answered commit is visible, and on disk with the next durable one.
    Relaxed,
}

/// Runs `task` on a thread of its own (a single-threaded tokio runtime)
/// with a pool of its own of `connections` on `db`'s database (see
/// [`Db::pool`]), so that its work (the event appender, the projection
/// writers) neither waits behind nor delays what runs on the server's other
/// threads. The thread ends when the task does. If the pool cannot be
/// opened, the task uses `db`'s.
pub fn spawn_dedicated<F, Fut>(name: &str, db: Db, connections: u32, commits: Commits, task: F)
where
    F: FnOnce(Db) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let thread = name.to_string();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(thread, error = %e, "cannot start a runtime; the task does not run");
                    return;
                }
            };
            runtime.block_on(async move {
                match db.pool(connections, commits).await {
                    Ok(own) => {
                        task(own.clone()).await;
                        own.close().await;
                    }
                    Err(e) => {
                        // The server's pool is not this thread's to close.
                        tracing::warn!(thread, error = %e, "cannot open a pool of its own; sharing the server's");
                        task(db).await;
                    }
                }
            });
        });
    if let Err(e) = spawned {
        tracing::error!(name, error = %e, "cannot start a thread");
    }
}

/// Durable write transactions committed by this process (event commits,
/// read-model batches, blob writes; not the task queue's relaxed ones),
/// for the benchmark's "durable commits per run".
static DURABLE_COMMITS: AtomicU64 = AtomicU64::new(0);

/// Counts one committed write transaction.
pub fn count_commit() {
    DURABLE_COMMITS.fetch_add(1, Ordering::Relaxed);
}

/// Write transactions committed by this process so far.
pub fn durable_commits() -> u64 {
    DURABLE_COMMITS.load(Ordering::Relaxed)
}

/// Opens a write transaction. On SQLite it is `BEGIN IMMEDIATE`: a deferred
/// transaction that reads first and writes later cannot wait for the write
/// lock (SQLite answers `SQLITE_BUSY` at once), so writers that read first
/// must take the lock up front, where the busy timeout applies.
pub(crate) trait BeginWrite {
    /// The backend.
    type Database: sqlx::Database;
    /// Begins a transaction that is going to write.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Database>, sqlx::Error>;
}

impl BeginWrite for Pool<Sqlite> {
    type Database = Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for Pool<Postgres> {
    type Database = Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            redacted("mysql://admin:s3cr%40t@db.internal:3306/runlog"),
            "mysql://admin:***@db.internal:3306/runlog"
        );
        assert_eq!(redacted("mysql://p:a:b@h/x?y=z"), "mysql://p:***@h/x?y=z");
        assert_eq!(redacted("mysql://admin@h/x"), "mysql://admin@h/x");
        assert_eq!(redacted("mysql://h/x@y"), "mysql://h/x@y");
        assert_eq!(redacted("not a url"), "not a url");
    }
}
