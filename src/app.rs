//! `Application`: the one place where concrete backends are wired together.
//! `build` opens the database, migrates it, catches the read models up with
//! the log, starts the engine and binds the HTTP server;
//! `run_until_stopped` serves until the given shutdown future resolves.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, Service};
use actix_web::{App, HttpServer};

use crate::api::{self, ApiState, WorkerAuth};
use crate::config::{FileConfig, ServeSettings};
use crate::db::{Commits, Db};
use crate::domain::definition::DefinitionLimits;
use crate::domain::ids::{ArtifactName, RunId, UserId};
use crate::domain::log::{Logged, Position};
use crate::domain::prerequisites::LatestRun;
use crate::domain::run::{ArtifactContent, Policy, Run, RunEvent};
use crate::domain::template::Template;
use crate::engine::agents::{
    AgentSpec, BuiltinSettings, CommandSpec, LlmSettings, Secrets, TokenPrice,
};
use crate::engine::{
    AgentLimits, AgentRegistry, Engine, EngineConfig, EngineParts, NodeTasks, ReadModelFeed,
    RunHistory, SharedClock, SystemClock,
};
use crate::projections::{LogReader, LogReaderFactory, Projector, ReadModels, Rebuilds};
use crate::store::{
    self, AggregateStore, BlobStore, Cluster, EventLog, RecordedEvent, TaskQueue,
    RUN_SNAPSHOT_EVERY,
};
use futures::future::BoxFuture;

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `--allowed-origins` names something that is not an origin.
    #[error("--allowed-origins: {0}")]
    Origins(String),
    /// An agent could not be set up.
    #[error(transparent)]
    Agent(#[from] crate::engine::agents::RegistryError),
    /// The database could not be opened.
    #[error(transparent)]
    Connect(#[from] crate::db::ConnectError),
    /// The schema could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] store::StoreError),
    /// The read models could not be caught up.
    #[error("projection catch-up failed: {0}")]
    Projections(#[from] crate::projections::ProjectionError),
    /// Another `runlog serve` holds this SQLite database.
    #[error(
        "another runlog serve{holder} holds the SQLite database {path} (lock {lock}); \
             SQLite serves one process: stop it first, or use PostgreSQL for many nodes"
    )]
    Locked {
        /// The database file.
        path: String,
        /// The lock file.
        lock: String,
        /// ` (pid N)` when the lock file says.
        holder: String,
    },
    /// The serving lock could not be taken.
    #[error("cannot take the serving lock {lock}: {source}")]
    Lock {
        /// The lock file.
        lock: String,
        /// Why.
        source: std::io::Error,
    },
    /// `--node-id` is not a usable id.
    #[error("invalid node id '{0}': use 1 to 64 letters, digits, '.', '_' or '-'")]
    NodeId(String),
    /// This node could not join the others on the database.
    #[error("cannot register this node: {0}")]
    Join(store::StoreError),
    /// The first admin could not be created.
    #[error("cannot create the first admin: {0}")]
    FirstAdmin(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Held by the process serving a SQLite database for as long as it
/// serves: an exclusive lock on `<database>.serve-lock` (`flock`, released
/// by the kernel however the process ends), so a second `serve` on the
/// same database is refused instead of running every run twice.
struct ServeLock {
    lock: crate::db::FileLock,
}

/// How long a second `serve` waits for the lock before it gives up (a
/// server that is stopping still holds it for a few seconds).
const SERVE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl ServeLock {
    /// Takes the lock of `db` if it is a SQLite file (PostgreSQL serves
    /// many nodes; an in-memory database is this process's alone).
    async fn take(db: &Db) -> Result<Option<Self>, AppError> {
        let Some((database, path)) = db.sqlite_lock_path(".serve-lock") else {
            return Ok(None);
        };
        let failed = |source| AppError::Lock {
            lock: path.display().to_string(),
            source,
        };
        let deadline = std::time::Instant::now() + SERVE_LOCK_WAIT;
        let mut said = false;
        let mut lock = loop {
            if let Some(lock) = crate::db::FileLock::try_take(path.clone()).map_err(failed)? {
                break lock;
            }
            if std::time::Instant::now() >= deadline {
                let holder = crate::db::ServingHolder::read(&path)
                    .map_or(String::new(), |h| format!(" (pid {})", h.pid));
                return Err(AppError::Locked {
                    path: database.display().to_string(),
                    lock: path.display().to_string(),
                    holder,
                });
            }
            if !said {
                said = true;
                tracing::warn!(lock = %path.display(),
                    "another runlog serve holds this SQLite database; waiting up to 10 s for it to stop");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        // Says who holds it (for the error a second process prints).
        lock.write_holder(&std::process::id().to_string())
            .map_err(failed)?;
        Ok(Some(Self { lock }))
    }

    /// Adds where this server listens, so that CLI writers can go through
    /// its admin API.
    fn listening(&mut self, address: &str) {
        let holder = format!("{}\n{address}\n", std::process::id());
        if let Err(e) = self.lock.write_holder(&holder) {
            tracing::warn!(lock = %self.lock.path.display(), error = %e,
                "cannot record the address in the serving lock");
        }
    }
}

/// The engine tells the follower where its commits went.
struct Feed(Projector);

impl ReadModelFeed for Feed {
    fn committed(&self, position: Position) {
        self.0.committed(position);
    }

    fn applied(&self, position: Position) -> BoxFuture<'static, ()> {
        Box::pin(self.0.applied(position))
    }

    fn backlog(&self) -> usize {
        self.0.backlog()
    }

    fn barrier(&self) -> BoxFuture<'static, ()> {
        Box::pin(self.0.barrier())
    }
}

/// Starts look up prerequisites in the read models: the newest live
/// template of a name, the user's most recent run of it (by index), its
/// detail (status, the version each artifact is at) and those versions'
/// bodies.
struct History(ReadModels);

impl RunHistory for History {
    fn latest_run(
        &self,
        owner: Option<UserId>,
        template: String,
        artifacts: Vec<ArtifactName>,
    ) -> BoxFuture<'static, Result<Option<LatestRun>, String>> {
        let reads = self.0.clone();
        Box::pin(async move {
            let fail = |e: crate::projections::ProjectionError| e.to_string();
            let Some(template) = reads.live_template_by_name(&template).await.map_err(fail)? else {
                return Ok(None);
            };
            let owner = owner.as_ref().map(UserId::as_str);
            let Some(run_id) = reads
                .latest_run_of(owner, &template.id)
                .await
                .map_err(fail)?
            else {
                return Ok(None);
            };
            let Some(detail) = reads.run_detail(&run_id).await.map_err(fail)? else {
                return Ok(None);
            };
            let mut held = BTreeMap::new();
            for name in artifacts {
                let Some(view) = detail.artifacts.get(name.as_str()) else {
                    continue;
                };
                let Some(stored) = reads
                    .artifact_version(&run_id, name.as_str(), view.latest)
                    .await
                    .map_err(fail)?
                else {
                    continue;
                };
                let content: ArtifactContent = serde_json::from_value(stored)
                    .map_err(|e| format!("artifact {name} of run {run_id}: {e}"))?;
                held.insert(name, (view.latest, content));
            }
            Ok(Some(LatestRun {
                run_id: RunId::parse(run_id.as_str()).map_err(|e| e.to_string())?,
                status: detail.status,
                artifacts: held,
            }))
        })
    }
}

/// The projections read the log through the store.
struct StoreLog(EventLog);

impl LogReader for StoreLog {
    fn read_after(
        &self,
        after: Position,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<Logged>, String>> {
        Box::pin(async move { self.0.follow(after, limit).await.map_err(|e| e.to_string()) })
    }

    fn aggregate_after<'a>(
        &'a self,
        aggregate_type: &'a str,
        aggregate_id: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<Vec<Logged>, String>> {
        Box::pin(async move {
            self.0
                .follow_aggregate(aggregate_type, aggregate_id, after)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn count_after(&self, after: Position) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async move {
            let count = self.0.count_after(after).await.map_err(|e| e.to_string())?;
            Ok(u64::try_from(count).unwrap_or_default())
        })
    }
}

/// Starts the projection follower on `db`, reading the log through the
/// store.
pub fn start_projector(db: &Db) -> Projector {
    Projector::start(db.clone(), log_readers())
}

/// Builds the projections' log readers: the store's log on a given pool.
pub fn log_readers() -> LogReaderFactory {
    Arc::new(|own: Db| Box::new(StoreLog(EventLog::new(own))) as Box<dyn LogReader>)
}

/// Starts a rebuild of each projection whose stored version is older than
/// its code's (or, with `rebuild` off, says how to); the live ones keep
/// serving meanwhile.
pub async fn rebuild_outdated(db: &Db, rebuilds: &Rebuilds, rebuild: bool) {
    let outdated = match crate::projections::outdated(db).await {
        Ok(outdated) => outdated,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the projections' versions");
            return;
        }
    };
    for (name, stored, code) in outdated {
        if !rebuild {
            tracing::warn!(projection = %name, stored, code,
                "projection is older than this build: run `runlog projections rebuild {name}` \
                 (or POST /api/admin/projections/{name}/rebuild)");
            continue;
        }
        tracing::info!(projection = %name, stored, code,
            "projection is older than this build: rebuilding it while the old one serves");
        if let Err(e) = rebuilds.start(&name) {
            tracing::error!(projection = %name, error = %e, "cannot start the rebuild");
        }
    }
}

/// Where the first admin's token is written, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The token the CLI sends to a server it talks to: `RUNLOG_TOKEN`, else
/// the first admin's from `<data dir>/admin.token`, if either is there.
pub fn cli_token(given: Option<String>, data_dir: &std::path::Path) -> Option<String> {
    given
        .or_else(|| std::env::var("RUNLOG_TOKEN").ok())
        .filter(|t| !t.trim().is_empty())
        .or_else(|| std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE)).ok())
        .map(|t| t.trim().to_string())
}

/// The first admin's id: fixed, so that two nodes starting at once on an
/// empty PostgreSQL create one admin, not two.
const FIRST_ADMIN_ID: &str = "admin";

/// On an empty database: creates the first admin, `admin`, and writes its
/// token to `<data dir>/admin.token` (mode 0600, the token alone on one
/// line), once.
async fn first_admin(
    engine: &Engine,
    reads: &ReadModels,
    data_dir: &std::path::Path,
) -> Result<(), AppError> {
    let failed = |e: String| AppError::FirstAdmin(e);
    if reads
        .user_count()
        .await
        .map_err(|e| failed(e.to_string()))?
        > 0
    {
        return Ok(());
    }
    let id =
        crate::domain::ids::UserId::parse(FIRST_ADMIN_ID).map_err(|e| failed(e.to_string()))?;
    let by = crate::engine::Cause::Engine;
    match engine
        .create_user(
            Some(id.clone()),
            "admin".to_string(),
            crate::domain::user::Role::Admin,
            &by,
        )
        .await
    {
        Ok(_) => {}
        // Another node created it a moment ago.
        Err(crate::engine::EngineError::Conflict)
        | Err(crate::engine::EngineError::User(crate::domain::user::UserError::AlreadyExists)) => {
            return Ok(())
        }
        Err(e) => return Err(failed(e.to_string())),
    }
    let issued = engine
        .issue_token(&id, "first start".to_string(), false, None, &by)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    write_secret(&path, &format!("{}\n", issued.token))
        .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
    tracing::warn!(path = %path.display(),
        "first start on an empty database: created the admin user 'admin'; its API token is in \
         this file, readable only by you (send it as 'Authorization: Bearer <token>'; create \
         other users and tokens with it, then delete the file)");
    Ok(())
}

/// Writes `text` to a new file readable and writable by its owner only.
fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A file left from an earlier database holds a token nothing accepts.
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Opens and migrates the database.
pub async fn open_database(settings: &crate::config::StorageSettings) -> Result<Db, AppError> {
    let db = Db::connect(settings.database_url.as_deref(), &settings.data_dir).await?;
    store::migrate(&db).await?;
    Ok(db)
}

/// A built, bound, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    engine: Engine,
    db: Db,
    /// The task queue's pool (relaxed commits, see [`Db::pool`]).
    queue_db: Db,
    /// The read models' follower, stopped after the engine.
    projector: Projector,
    /// Heartbeat, takeover and log tail (PostgreSQL), stopped after the
    /// engine: leaving then frees this node's runs for the others.
    node_tasks: Option<NodeTasks>,
    /// SQLite: this process's claim on the database, released last.
    _serve_lock: Option<ServeLock>,
}

impl Application {
    /// Builds everything and binds the listener. Must run inside an actix
    /// system (`#[actix_web::main]`, `#[actix_web::test]`).
    pub async fn build(settings: ServeSettings) -> Result<Self, AppError> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// [`Application::build`] with the engine reading `clock` (tests drive
    /// timers with a [`ManualClock`](crate::engine::ManualClock)).
    pub async fn build_with_clock(
        settings: ServeSettings,
        clock: SharedClock,
    ) -> Result<Self, AppError> {
        let file = FileConfig::load(settings.config.as_deref())?;
        let origins =
            api::AllowedOrigins::parse(&settings.allowed_origins).map_err(AppError::Origins)?;
        let agents = agent_registry(&file)?;
        let db = open_database(&settings.storage).await?;
        let mut serve_lock = match ServeLock::take(&db).await {
            Ok(lock) => lock,
            Err(e) => {
                db.close().await;
                return Err(e);
            }
        };
        let projector = start_projector(&db);
        let head = EventLog::new(db.clone())
            .last_committed()
            .await
            .map_err(|e| crate::projections::ProjectionError::Log(e.to_string()))?;
        let applied = projector.catch_up(head).await?;
        if applied > 0 {
            tracing::info!(events = applied, position = %projector.position(),
                "read models caught up with the log");
        }
        let reads = ReadModels::new(db.clone());
        let queue_db = db.pool(4, Commits::Relaxed).await?;
        let listener = TcpListener::bind(&settings.bind).map_err(|source| AppError::Bind {
            addr: settings.bind.clone(),
            source,
        })?;
        let local = listener.local_addr().map_err(|source| AppError::Bind {
            addr: settings.bind.clone(),
            source,
        })?;
        let port = local.port();
        let node = node_identity(&settings, local)?;
        if let Some(lock) = serve_lock.as_mut() {
            lock.listening(&node.address);
        }
        let cluster = Cluster::join(&db, &node.id, &node.address, store::DEAD_AFTER)
            .await
            .map_err(AppError::Join)?;
        if cluster.is_some() && settings.advertise_url.is_none() && local.ip().is_unspecified() {
            tracing::warn!(address = %node.address,
                "listening on every address without --advertise-url: other nodes forward commands \
                 to this address, which reaches only nodes on this machine; set --advertise-url");
        }
        let engine = Engine::new(EngineParts {
            runs: AggregateStore::<Run>::new(&db, RUN_SNAPSHOT_EVERY),
            templates: AggregateStore::<Template>::new(&db, 0),
            users: AggregateStore::<crate::domain::user::User>::new(&db, 0),
            blobs: BlobStore::new(db.clone()),
            tasks: TaskQueue::new(queue_db.clone()),
            agents,
            read_models: Arc::new(Feed(projector.clone())),
            history: Arc::new(History(reads.clone())),
            config: engine_config(&settings, &file),
            clock,
            cluster,
            peers: Some(Arc::new(api::forward::HttpPeers::new(
                file.worker_token.clone(),
            ))),
        });
        let workers = WorkerAuth::new(file.worker_token.as_deref());
        if settings.no_auth {
            tracing::warn!(
                "ACCOUNTS ARE OFF (--no-auth): anyone who can reach {} may read and steer every \
                 run, and no event records who caused it. Use this for local experiments only.",
                node.address
            );
        } else {
            first_admin(&engine, &reads, &settings.storage.data_dir).await?;
        }
        let state = ApiState {
            engine: engine.clone(),
            reads: reads.clone(),
            log: EventLog::new(db.clone()),
            access: api::Access::new(
                !settings.no_auth,
                reads.clone(),
                store::AccessStore::new(db.clone()),
                workers.clone(),
                engine.clock().clone(),
            ),
            workers,
            rebuilds: Rebuilds::new(db.clone(), log_readers()),
            history: store::History::new(db.clone()),
            node: node.clone(),
            origins,
            limits: api::limits::Limits::new(input_limits(&file)),
        };
        rebuild_outdated(&db, &state.rebuilds, settings.rebuild_outdated).await;
        // What a crash left behind is listed before anything is served: runs
        // started from now on belong to this process, and "recovering" one
        // would dispatch its running steps a second time.
        let unfinished = reads.active_runs().await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot list unfinished runs to recover");
            Vec::new()
        });
        let redirects = EventLog::new(db.clone())
            .events_of_type("Run", "RunRedirected")
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot list redirects to repair");
                Vec::new()
            });
        let mut server = HttpServer::new(move || {
            App::new()
                // Access log through tracing, at debug level (target
                // `runlog::http`): RUNLOG_LOG=info,runlog::http=debug.
                .wrap_fn(|request, service| {
                    let method = request.method().clone();
                    let path = request.path().to_string();
                    let started = std::time::Instant::now();
                    let response = service.call(request);
                    async move {
                        let response = response.await?;
                        tracing::debug!(
                            target: "runlog::http",
                            %method,
                            %path,
                            status = response.status().as_u16(),
                            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                            "request"
                        );
                        Ok(response)
                    }
                })
                .configure(api::configure(state.clone()))
        })
        // Small responses and WebSocket frames must not wait for Nagle's
        // algorithm to meet the peer's delayed ACK (a 40 ms stall).
        .on_connect(|connection, _| {
            if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
        .shutdown_timeout(5)
        .disable_signals();
        if let Some(workers) = settings.http_workers {
            server = server.workers(workers);
        }
        let server = server
            .listen(listener)
            .map_err(|source| AppError::Bind {
                addr: settings.bind.clone(),
                source,
            })?
            .run();
        // No run is left behind by a crash: finish redirects cut off between
        // their two commits, then re-activate every unfinished run (both
        // listed before the server started, in the background while it
        // serves).
        let recovering = engine.clone();
        actix_web::rt::spawn(async move {
            repair_redirects(&recovering, redirects).await;
            if !unfinished.is_empty() {
                let n = recovering.recover(unfinished).await;
                tracing::info!(recovered = n, "re-activated unfinished runs");
            }
        });
        let node_tasks = NodeTasks::start(&engine, EventLog::new(db.clone()));
        if node_tasks.is_some() {
            tracing::info!(node = %node.id, address = %node.address,
                "joined the nodes on this database");
        }
        tracing::info!(port, backend = db.backend(), "runlog listening");
        Ok(Self {
            port,
            server,
            engine,
            projector,
            db,
            queue_db,
            node_tasks,
            _serve_lock: serve_lock,
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves (or the server stops by itself),
    /// then stops gracefully and releases the actors and the database.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let handle = self.server.handle();
        let server = self.server;
        tokio::pin!(server);
        let result = tokio::select! {
            result = &mut server => result,
            () = shutdown => {
                // The server future processes the stop command itself, so it
                // must be polled while the stop is awaited.
                let (result, ()) = tokio::join!(&mut server, handle.stop(true));
                result
            }
        };
        // A stopping node takes no run over; it leaves once its engine has
        // stopped (then its peers take its runs at once).
        let mut node_tasks = self.node_tasks;
        if let Some(tasks) = node_tasks.as_mut() {
            tasks.stop_taking().await;
        }
        self.engine
            .shutdown(std::time::Duration::from_secs(5))
            .await;
        if let Some(tasks) = node_tasks {
            tasks.leave().await;
        }
        // Removals of finished tasks still queued for the writer.
        self.engine.flush_task_queue().await;
        self.projector.stop().await;
        self.queue_db.close().await;
        self.db.close().await;
        drop(self._serve_lock);
        result
    }
}

/// This node's id and the address its peers reach it at.
fn node_identity(
    settings: &ServeSettings,
    local: std::net::SocketAddr,
) -> Result<api::NodeIdentity, AppError> {
    let id = match &settings.node_id {
        Some(id) => {
            let valid = (1..=64).contains(&id.len())
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(AppError::NodeId(id.clone()));
            }
            id.clone()
        }
        None => format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
    };
    let address = match &settings.advertise_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let ip = if local.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                local.ip()
            };
            format!("http://{}", std::net::SocketAddr::new(ip, local.port()))
        }
    };
    Ok(api::NodeIdentity {
        id,
        address,
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// `[llm] max_concurrency` unless set.
const DEFAULT_LLM_CONCURRENCY: usize = 8;
/// `[llm] timeout_ms` unless set (two minutes).
const DEFAULT_LLM_TIMEOUT_MS: u64 = 120_000;

/// The agents: the built-ins, and the remote agents the configuration
/// declares.
fn agent_registry(file: &FileConfig) -> Result<AgentRegistry, AppError> {
    let commands = file
        .commands
        .iter()
        .map(|(name, command)| {
            let spec = CommandSpec {
                program: command.program.clone(),
                args: command.args.clone(),
                timeout: command.timeout_ms.map(Duration::from_millis),
                env: command.env.clone(),
                description: command.description.clone(),
            };
            (name.clone(), spec)
        })
        .collect();
    let llm = LlmSettings {
        base_url: file.llm.base_url.clone(),
        api_key: file.llm.api_key.clone(),
        model: file.llm.model.clone(),
        max_concurrency: file.llm.max_concurrency.unwrap_or(DEFAULT_LLM_CONCURRENCY),
        timeout: Duration::from_millis(file.llm.timeout_ms.unwrap_or(DEFAULT_LLM_TIMEOUT_MS)),
        prices: file
            .llm
            .prices
            .iter()
            .map(|(model, p)| {
                let price = TokenPrice {
                    prompt: p.prompt,
                    completion: p.completion,
                };
                (model.clone(), price)
            })
            .collect(),
    };
    let settings = BuiltinSettings {
        secrets: Secrets::new(file.resolve_secrets()?),
        commands,
        llm,
    };
    let mut agents = AgentRegistry::builtins(settings)?;
    for (name, agent) in &file.agents {
        let spec = AgentSpec {
            description: agent.description.clone(),
            config_schema: agent
                .config_schema
                .clone()
                .unwrap_or_else(|| serde_json::json!({"type": "object"})),
            output_schema: agent.output_schema.clone(),
        };
        agents.register_remote(name, spec)?;
    }
    agents.limit_definitions(definition_limits(file));
    Ok(agents)
}

/// The bounds on clients' input from the file (`[limits]`).
fn input_limits(file: &FileConfig) -> api::limits::InputLimits {
    let defaults = api::limits::InputLimits::default();
    let limits = &file.limits;
    api::limits::InputLimits {
        max_run_input_bytes: limits
            .max_run_input_bytes
            .unwrap_or(defaults.max_run_input_bytes),
        messages_per_run_per_minute: limits
            .messages_per_run_per_minute
            .unwrap_or(defaults.messages_per_run_per_minute),
        ws_subscriptions_per_connection: limits
            .ws_subscriptions_per_connection
            .unwrap_or(defaults.ws_subscriptions_per_connection),
        ws_connections_per_token: limits
            .ws_connections_per_token
            .unwrap_or(defaults.ws_connections_per_token),
        ws_outbound_queue: limits
            .ws_outbound_queue
            .unwrap_or(defaults.ws_outbound_queue),
        max_start_wait_seconds: limits
            .max_start_wait_seconds
            .unwrap_or(defaults.max_start_wait_seconds),
        max_claim_wait_seconds: limits
            .max_claim_wait_seconds
            .unwrap_or(defaults.max_claim_wait_seconds),
        max_body_bytes: limits.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        max_claims_per_worker: limits
            .max_claims_per_worker
            .unwrap_or(defaults.max_claims_per_worker),
    }
}

/// The bounds on definitions from the file (`[limits]`).
fn definition_limits(file: &FileConfig) -> DefinitionLimits {
    let defaults = DefinitionLimits::default();
    let limits = &file.limits;
    DefinitionLimits {
        max_steps: limits.max_steps.unwrap_or(defaults.max_steps),
        max_chain_depth: limits
            .max_dependency_depth
            .unwrap_or(defaults.max_chain_depth),
        max_prompt_bytes: limits.max_prompt_bytes.unwrap_or(defaults.max_prompt_bytes),
    }
}

/// The engine's settings from the flags and the file.
fn engine_config(settings: &ServeSettings, file: &FileConfig) -> EngineConfig {
    let defaults = EngineConfig::default();
    let limits = AgentLimits {
        timeout: file
            .limits
            .agent_timeout_ms
            .map_or(defaults.agent_limits.timeout, Duration::from_millis),
        max_output_bytes: file
            .limits
            .max_output_bytes
            .unwrap_or(defaults.agent_limits.max_output_bytes),
        template_fuel: file
            .limits
            .template_fuel
            .unwrap_or(defaults.agent_limits.template_fuel),
    };
    let policy = Policy {
        lease_ms: file.lease_ms.unwrap_or(defaults.policy.lease_ms),
        cancel_grace_ms: file
            .cancel_grace_ms
            .unwrap_or(defaults.policy.cancel_grace_ms),
        max_lease_expiries: file
            .max_lease_expiries
            .unwrap_or(defaults.policy.max_lease_expiries),
    };
    EngineConfig {
        passivate_after: settings.passivate_after(),
        agent_limits: limits,
        policy,
        ..defaults
    }
}

/// Starts the new run of every redirect whose old run records it but which
/// was never started (the server stopped between the redirect's two
/// commits).
async fn repair_redirects(engine: &Engine, redirects: Vec<(String, RecordedEvent)>) {
    let mut repaired = 0;
    for (from, recorded) in redirects {
        let parsed = RunId::parse(from)
            .ok()
            .zip(serde_json::from_value(recorded.payload).ok());
        let Some((
            from,
            RunEvent::RunRedirected {
                to, instructions, ..
            },
        )) = parsed
        else {
            tracing::error!("unreadable RunRedirected event in the log; skipped");
            continue;
        };
        match engine.repair_redirect(&from, to, instructions).await {
            Ok(true) => repaired += 1,
            Ok(false) => {}
            Err(e) => tracing::error!(run_id = %from, error = %e, "cannot repair a redirect"),
        }
    }
    if repaired > 0 {
        tracing::warn!(repaired, "started the new runs of interrupted redirects");
    }
}
