//! Settings: from flags and `RUNLOG_*` environment variables (clap reads
//! both), with defaults that need no set-up: bind 127.0.0.1:8080, data in
//! `./runlog-data` (SQLite); and an optional TOML file ([`file`]) for what
//! does not fit on a command line (remote agents, commands, the LLM server,
//! secrets, limits).

mod file;

pub use file::{
    CommandConfig, ConfigError, FileConfig, LimitsConfig, LlmConfig, Price, RemoteAgentConfig,
    SecretSource, BUILTIN_AGENTS,
};

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct StorageSettings {
    /// Directory for the embedded SQLite database (used when no database URL
    /// is given).
    #[arg(long, env = "RUNLOG_DATA_DIR", default_value = "./runlog-data")]
    pub data_dir: PathBuf,
    /// `postgres://…` selects PostgreSQL; `sqlite://…` a specific SQLite
    /// file. Default: `runlog.db` under the data directory.
    #[arg(long, env = "RUNLOG_DATABASE_URL")]
    pub database_url: Option<String>,
}

/// Everything `serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "RUNLOG_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Storage.
    #[command(flatten)]
    pub storage: StorageSettings,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "RUNLOG_HTTP_WORKERS")]
    pub http_workers: Option<usize>,
    /// Seconds the actor of a finished run lingers before it is passivated.
    #[arg(long, env = "RUNLOG_PASSIVATE_AFTER_SECS", default_value_t = 10)]
    pub passivate_after_secs: u64,
    /// A TOML configuration file: remote agents and the worker token,
    /// commands, the LLM server, secrets, limits (see docs/operations.md).
    #[arg(long, env = "RUNLOG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Rebuild, in the background while the old ones serve, the
    /// projections whose stored version is older than this build's
    /// (`false`: only say so in the log).
    #[arg(long, env = "RUNLOG_REBUILD_OUTDATED", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub rebuild_outdated: bool,
    /// This node's id among the nodes on one PostgreSQL (default: a new
    /// random one at each start). Keep it stable across restarts: a node
    /// restarted under its id recovers its runs at once, instead of its
    /// peers taking them over once it is found dead.
    #[arg(long, env = "RUNLOG_NODE_ID")]
    pub node_id: Option<String>,
    /// The base URL at which the other nodes reach this one, to forward
    /// commands for the runs it hosts (default: `http://` and the bound
    /// address and port, with `127.0.0.1` for an unspecified address such
    /// as `0.0.0.0`, which serves only nodes on one machine).
    #[arg(long, env = "RUNLOG_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Run without accounts: every caller may do everything, and nothing
    /// records who did it. For local experiments only; never the default.
    #[arg(long, env = "RUNLOG_NO_AUTH")]
    pub no_auth: bool,
    /// Web origins besides the server's own whose pages may use the API
    /// from a browser (change state, open WebSockets, read answers):
    /// comma-separated, e.g. `https://app.example.com,http://localhost:3000`.
    /// Default: none (the dashboard is same-origin).
    #[arg(long, env = "RUNLOG_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,
}

impl ServeSettings {
    /// Settings for a server on a free port with data in `data_dir`, or in
    /// the database at `database_url` (tests and benchmarks).
    pub fn ephemeral(data_dir: PathBuf, database_url: Option<String>) -> Self {
        Self {
            bind: "127.0.0.1:0".into(),
            storage: StorageSettings {
                data_dir,
                database_url,
            },
            http_workers: None,
            passivate_after_secs: 10,
            rebuild_outdated: true,
            config: None,
            node_id: None,
            advertise_url: None,
            no_auth: false,
            allowed_origins: String::new(),
        }
    }

    /// The passivation delay.
    pub fn passivate_after(&self) -> Duration {
        Duration::from_secs(self.passivate_after_secs)
    }
}
