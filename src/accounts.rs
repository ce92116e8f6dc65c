//! `runlog users` and `runlog tokens`: accounts from the command line.
//!
//! Users and tokens are events of the User aggregate, which a server
//! records, so these commands go through a server on the same database
//! (the one holding the SQLite file, or a live PostgreSQL node, or the one
//! `--server` names), with an admin's token (`--token`, else
//! `RUNLOG_TOKEN`, else `<data dir>/admin.token`). They speak the account
//! endpoints of docs/api.md#accounts-and-access and print what those
//! answer: a table or a line for a person, `--json` for a script. A new
//! token is the only thing on standard output of `tokens create`, so that
//! `TOKEN=$(runlog tokens create alice)` keeps it and nothing else.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::config::StorageSettings;
use crate::db::Db;
use crate::domain::ids::Timestamp;

/// Where to send the commands, and as whom.
#[derive(Debug, Clone, Args)]
pub struct ServerSettings {
    /// The server to go through (default: the one serving this SQLite
    /// database, or a live node on this PostgreSQL database).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// An admin's API token (default: the first admin's, from
    /// `<data dir>/admin.token`, if that file is there).
    #[arg(
        long,
        env = "RUNLOG_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Print the server's JSON answer instead of a table or a line.
    #[arg(long)]
    pub json: bool,
    /// Storage (to find the server and the first admin's token).
    #[command(flatten)]
    pub storage: StorageSettings,
}

/// `runlog users …`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user.
    Create {
        /// Its name: 1 to 64 of ASCII letters, digits and `.` `_` `-` `@`.
        name: String,
        /// `admin` (templates, every run, accounts) or `user` (their own
        /// runs).
        #[arg(long, default_value = "user")]
        role: String,
        #[command(flatten)]
        server: ServerSettings,
    },
    /// List the users.
    List {
        #[command(flatten)]
        server: ServerSettings,
    },
}

/// `runlog tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue an API token to a user (by name or id) and print it: it is
    /// shown this once, and stored only as its SHA-256.
    Create {
        /// The user, by name or id.
        user: String,
        /// What the token is for (shown in lists).
        #[arg(long, default_value = "cli")]
        name: String,
        /// When it expires: an RFC 3339 time (2027-01-31T00:00:00Z), a
        /// date (2027-01-31, midnight UTC) or a number of days from now
        /// (90d). Default: never.
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// It may only read (GET, HEAD and subscriptions).
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        server: ServerSettings,
    },
    /// List a user's tokens (never their text).
    List {
        /// The user, by name or id.
        user: String,
        #[command(flatten)]
        server: ServerSettings,
    },
    /// Revoke a token, by its id (from `tokens list`).
    Revoke {
        /// The token's id.
        id: String,
        #[command(flatten)]
        server: ServerSettings,
    },
}

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// `runlog users …`.
pub async fn users(command: UsersCommand) -> CliResult {
    match command {
        UsersCommand::Create { name, role, server } => {
            let client = match ApiClient::connect(&server).await? {
                Ok(client) => client,
                Err(code) => return Ok(code),
            };
            let (status, body) = client
                .send(
                    "POST",
                    "/api/users",
                    Some(json!({ "name": name, "role": role })),
                )
                .await?;
            if status != 201 {
                return Ok(refused(status, &body));
            }
            if server.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                println!(
                    "created {} {} (id {}); give them a token with: runlog tokens create {}",
                    body["role"].as_str().unwrap_or("user"),
                    body["name"].as_str().unwrap_or(&name),
                    body["id"].as_str().unwrap_or("?"),
                    body["name"].as_str().unwrap_or(&name),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        UsersCommand::List { server } => {
            let client = match ApiClient::connect(&server).await? {
                Ok(client) => client,
                Err(code) => return Ok(code),
            };
            let users = match client.all_users().await? {
                Ok(users) => users,
                Err(code) => return Ok(code),
            };
            if server.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "items": users }))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<38} {:<24} {:<6} CREATED", "ID", "NAME", "ROLE");
            for user in &users {
                println!(
                    "{:<38} {:<24} {:<6} {}",
                    text(&user["id"]),
                    text(&user["name"]),
                    text(&user["role"]),
                    text(&user["created_at"])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `runlog tokens …`.
pub async fn tokens(command: TokensCommand) -> CliResult {
    match command {
        TokensCommand::Create {
            user,
            name,
            expires,
            read_only,
            server,
        } => {
            let now = Timestamp(chrono::Utc::now().timestamp_millis());
            let expires_at = match expires.as_deref().map(|w| parse_expiry(w, now)) {
                None => None,
                Some(Some(at)) if at.0 > now.0 => Some(at.to_rfc3339()),
                Some(_) => {
                    eprintln!(
                        "error: --expires {:?} is not a time to come: use RFC 3339 \
                         (2027-01-31T00:00:00Z), a date (2027-01-31) or days from now (90d)",
                        expires.unwrap_or_default()
                    );
                    return Ok(ExitCode::from(2));
                }
            };
            let client = match ApiClient::connect(&server).await? {
                Ok(client) => client,
                Err(code) => return Ok(code),
            };
            let holder = match client.find_user(&user).await? {
                Ok(holder) => holder,
                Err(code) => return Ok(code),
            };
            let mut body = json!({ "name": name, "read_only": read_only });
            if let Some(at) = expires_at {
                body["expires_at"] = json!(at);
            }
            let path = format!("/api/users/{}/tokens", text(&holder["id"]));
            let (status, body) = client.send("POST", &path, Some(body)).await?;
            if status != 201 {
                return Ok(refused(status, &body));
            }
            if server.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                eprintln!(
                    "issued token {} ({}{}{}) to {}; it is shown this once:",
                    text(&body["id"]),
                    text(&body["name"]),
                    if body["read_only"] == true {
                        ", read-only"
                    } else {
                        ""
                    },
                    body["expires_at"]
                        .as_str()
                        .map_or(String::new(), |at| format!(", expires {at}")),
                    text(&holder["name"]),
                );
                println!("{}", text(&body["token"]));
            }
            Ok(ExitCode::SUCCESS)
        }
        TokensCommand::List { user, server } => {
            let client = match ApiClient::connect(&server).await? {
                Ok(client) => client,
                Err(code) => return Ok(code),
            };
            let holder = match client.find_user(&user).await? {
                Ok(holder) => holder,
                Err(code) => return Ok(code),
            };
            let path = format!("/api/users/{}/tokens", text(&holder["id"]));
            let (status, body) = client.send("GET", &path, None).await?;
            if status != 200 {
                return Ok(refused(status, &body));
            }
            if server.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<38} {:<20} {:<10} {:<22} {:<22} LAST USED",
                "ID", "NAME", "ACCESS", "CREATED", "EXPIRES"
            );
            for token in body["items"].as_array().into_iter().flatten() {
                let access = if token["revoked_at"].is_string() {
                    "revoked"
                } else if token["read_only"] == true {
                    "read-only"
                } else {
                    "full"
                };
                println!(
                    "{:<38} {:<20} {:<10} {:<22} {:<22} {}",
                    text(&token["id"]),
                    text(&token["name"]),
                    access,
                    text(&token["created_at"]),
                    token["expires_at"].as_str().unwrap_or("never"),
                    token["last_used_at"].as_str().unwrap_or("never"),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokensCommand::Revoke { id, server } => {
            let client = match ApiClient::connect(&server).await? {
                Ok(client) => client,
                Err(code) => return Ok(code),
            };
            let path = format!("/api/tokens/{}", urlencoding(&id));
            let (status, body) = client.send("DELETE", &path, None).await?;
            if status != 200 {
                return Ok(refused(status, &body));
            }
            if server.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                println!(
                    "revoked token {} ({}) of user {} at {}",
                    text(&body["id"]),
                    text(&body["name"]),
                    text(&body["user_id"]),
                    text(&body["revoked_at"])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The expiry `text` names, as of `now`: RFC 3339, a date, or `Nd` days
/// from now.
pub fn parse_expiry(text: &str, now: Timestamp) -> Option<Timestamp> {
    let text = text.trim();
    if let Some(days) = text.strip_suffix('d') {
        let days: i64 = days.parse().ok().filter(|d| *d > 0)?;
        return Some(Timestamp(now.0.checked_add(days.checked_mul(86_400_000)?)?));
    }
    crate::retention::parse_cut_off(text, now)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

/// Percent-encodes what is not safe in a path segment.
fn urlencoding(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints the server's refusal and picks the exit code: 2 for what the
/// command line got wrong (a 4xx other than the token's), 1 otherwise.
fn refused(status: u16, body: &Value) -> ExitCode {
    let code = body["error"]["code"].as_str().unwrap_or("error");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no reason given");
    let hint = match status {
        401 => {
            " (give an admin's token with --token or RUNLOG_TOKEN; the first admin's is in \
             <data dir>/admin.token)"
        }
        403 => " (these commands need an admin's token)",
        _ => "",
    };
    eprintln!("error: the server answered {status} {code}: {message}{hint}");
    if (400..500).contains(&status) && status != 401 && status != 403 {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// An HTTP client for one server, with the token.
struct ApiClient {
    base: String,
    client: awc::Client,
}

impl ApiClient {
    /// The client for the server the settings name or that serves their
    /// database; `Err(code)` (after saying why) when there is none.
    async fn connect(
        settings: &ServerSettings,
    ) -> Result<Result<ApiClient, ExitCode>, Box<dyn std::error::Error>> {
        let base = match &settings.server {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let db = Db::open_existing(
                    settings.storage.database_url.as_deref(),
                    &settings.storage.data_dir,
                )
                .await?;
                let found = server_on(&db).await;
                db.close().await;
                match found? {
                    Some(address) => address.trim_end_matches('/').to_string(),
                    None => {
                        eprintln!(
                            "error: no runlog serve is running on this database: users and \
                             tokens are events, which a server records; start one (runlog serve \
                             with the same storage settings), or name one with --server"
                        );
                        return Ok(Err(ExitCode::FAILURE));
                    }
                }
            }
        };
        let mut client = awc::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(token) =
            crate::app::cli_token(settings.token.clone(), &settings.storage.data_dir)
        {
            client = client.add_default_header(("authorization", format!("Bearer {token}")));
        }
        Ok(Ok(ApiClient {
            base,
            client: client.finish(),
        }))
    }

    /// Sends one request; the status and the JSON body (null if none).
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Box<dyn std::error::Error>> {
        let method = awc::http::Method::from_bytes(method.as_bytes())?;
        let request = self.client.request(method, format!("{}{path}", self.base));
        let sent = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        };
        let mut response =
            sent.map_err(|e| format!("cannot reach the server at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let body: Value = response.json().limit(8 << 20).await.unwrap_or_default();
        Ok((status, body))
    }

    /// Every user, page by page; `Err(code)` after a refusal.
    async fn all_users(&self) -> Result<Result<Vec<Value>, ExitCode>, Box<dyn std::error::Error>> {
        let mut users = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/users?limit=500&cursor={}", urlencoding(c)),
                None => "/api/users?limit=500".to_string(),
            };
            let (status, body) = self.send("GET", &path, None).await?;
            if status != 200 {
                return Ok(Err(refused(status, &body)));
            }
            users.extend(body["items"].as_array().cloned().unwrap_or_default());
            match body["next_cursor"].as_str() {
                Some(next) if !next.is_empty() => cursor = Some(next.to_string()),
                _ => return Ok(Ok(users)),
            }
        }
    }

    /// The user `name_or_id` names (a name first, then an id).
    async fn find_user(
        &self,
        name_or_id: &str,
    ) -> Result<Result<Value, ExitCode>, Box<dyn std::error::Error>> {
        let users = match self.all_users().await? {
            Ok(users) => users,
            Err(code) => return Ok(Err(code)),
        };
        let found = users
            .iter()
            .find(|u| u["name"] == name_or_id)
            .or_else(|| users.iter().find(|u| u["id"] == name_or_id));
        match found {
            Some(user) => Ok(Ok(user.clone())),
            None => {
                eprintln!(
                    "error: no user named {name_or_id:?} (or with that id); runlog users list \
                     shows them"
                );
                Ok(Err(ExitCode::from(2)))
            }
        }
    }
}

/// The address of a server on this database: the SQLite file's holder, or
/// a live PostgreSQL node; `None` when none runs.
pub async fn server_on(db: &Db) -> Result<Option<String>, Box<dyn std::error::Error>> {
    if let Some(holder) = crate::db::ServingHolder::of(db)? {
        return match holder.address {
            Some(address) => Ok(Some(address)),
            None => Err(format!(
                "the runlog serve holding this SQLite database (pid {}) has not said where it \
                 listens yet: try again in a moment, or name it with --server",
                holder.pid
            )
            .into()),
        };
    }
    Ok(crate::store::Cluster::live_addresses(db)
        .await?
        .into_iter()
        .next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_is_a_time_a_date_or_days_from_now() {
        let now = Timestamp(1_800_000_000_000);
        assert_eq!(
            parse_expiry("90d", now),
            Some(Timestamp(now.0 + 90 * 86_400_000))
        );
        assert_eq!(
            parse_expiry("2027-01-31", now).map(|t| t.to_rfc3339()),
            Some("2027-01-31T00:00:00.000Z".to_string())
        );
        assert!(parse_expiry("2027-01-31T00:00:00Z", now).is_some());
        assert_eq!(parse_expiry("0d", now), None);
        assert_eq!(parse_expiry("-3d", now), None);
        assert_eq!(parse_expiry("soon", now), None);
    }

    #[test]
    fn a_path_segment_is_encoded() {
        assert_eq!(urlencoding("ab-1_2.x~"), "ab-1_2.x~");
        assert_eq!(urlencoding("a/b c"), "a%2Fb%20c");
    }
}
