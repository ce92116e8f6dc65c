//! Account commands: users and their API tokens (the User aggregate). A
//! token is drawn here, handed back once, and recorded as its SHA-256
//! digest only.

use sha2::{Digest, Sha256};

use super::{Cause, Engine, EngineError};
use crate::domain::ids::{Timestamp, TokenId, UserId};
use crate::domain::user::{token, NewToken, Role, UserCommand};

/// A token just issued: the only time its text exists outside its holder.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// Its id.
    pub id: TokenId,
    /// The token itself.
    pub token: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token: a debug print must not leak it.
        f.debug_struct("IssuedToken").field("id", &self.id).finish()
    }
}

/// The lowercase hex SHA-256 of a token's text, as it is stored.
pub fn token_digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// 32 random bytes (from the operating system's generator, through v4
/// UUIDs: 244 random bits).
pub fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Engine {
    /// Creates a user (the caller checked that the name is free). `id`:
    /// a given id (the first admin's), else a fresh one.
    pub async fn create_user(
        &self,
        id: Option<UserId>,
        name: String,
        role: Role,
        by: &Cause,
    ) -> Result<UserId, EngineError> {
        let id = match id {
            Some(id) => id,
            None => UserId::parse(new_id()).map_err(|e| EngineError::Unavailable(e.to_string()))?,
        };
        let command = UserCommand::Create {
            id: id.clone(),
            name,
            role,
            at: self.ctx.clock.now(),
        };
        self.user_command(&id, command, by).await?;
        Ok(id)
    }

    /// Issues a token to `user`; the answer holds the token, which is
    /// never stored.
    pub async fn issue_token(
        &self,
        user: &UserId,
        name: String,
        read_only: bool,
        expires_at: Option<Timestamp>,
        by: &Cause,
    ) -> Result<IssuedToken, EngineError> {
        let id = TokenId::parse(new_id()).map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let text = token::encode(&random_bytes());
        let command = UserCommand::IssueToken {
            token: NewToken {
                id: id.clone(),
                name,
                digest: token_digest(&text),
                read_only,
                expires_at,
            },
            at: self.ctx.clock.now(),
        };
        self.user_command(user, command, by).await?;
        Ok(IssuedToken { id, token: text })
    }

    /// Revokes one of `user`'s tokens.
    pub async fn revoke_token(
        &self,
        user: &UserId,
        token_id: TokenId,
        by: &Cause,
    ) -> Result<(), EngineError> {
        let command = UserCommand::RevokeToken {
            token_id,
            at: self.ctx.clock.now(),
        };
        self.user_command(user, command, by).await
    }

    async fn user_command(
        &self,
        id: &UserId,
        command: UserCommand,
        by: &Cause,
    ) -> Result<(), EngineError> {
        let loaded = self.ctx.users.load(id.as_str()).await?;
        let events = loaded.state.decide(command)?;
        self.record(&self.ctx.users, id.as_str(), loaded, events, by)
            .await
    }
}
