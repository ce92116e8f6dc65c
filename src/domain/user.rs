//! The User aggregate: an account with a role, and the API tokens it holds.
//! Accounts are events like everything else (who created whom, which token
//! was issued and revoked, when), so they replay and audit as runs do.
//!
//! A token itself never reaches the domain or the log: the engine draws it,
//! shows it once and hands the aggregate its SHA-256 digest. The token's
//! text format (prefix, checksum) is pure and lives here too ([`token`]).

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::ids::{Timestamp, TokenId, UserId};

/// Longest user name accepted (characters).
pub const MAX_USER_NAME: usize = 64;
/// Longest token name accepted (characters).
pub const MAX_TOKEN_NAME: usize = 100;
/// Most tokens one user may hold that are neither revoked nor expired.
pub const MAX_LIVE_TOKENS: usize = 100;

/// What a user may do (DESIGN.md invariant 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Creates, revises and archives templates, manages accounts, sees and
    /// steers every run.
    Admin,
    /// Starts runs from templates; sees and steers its own runs only.
    User,
}

impl Role {
    /// The role as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }

    /// Parses `admin` or `user`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Self::Admin),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token to issue: everything about it but the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Its id.
    pub id: TokenId,
    /// What its holder calls it ("ci", "laptop").
    pub name: String,
    /// SHA-256 of the token's text, in lowercase hex.
    pub digest: String,
    /// Whether it may only read.
    pub read_only: bool,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
}

/// Commands to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCommand {
    /// Create the account.
    Create {
        /// Its id.
        id: UserId,
        /// Its name, unique among users (the engine checks).
        name: String,
        /// Its role.
        role: Role,
        /// When.
        at: Timestamp,
    },
    /// Issue an API token.
    IssueToken {
        /// The token.
        token: NewToken,
        /// When.
        at: Timestamp,
    },
    /// Revoke a token: it stops working at once.
    RevokeToken {
        /// Which.
        token_id: TokenId,
        /// When.
        at: Timestamp,
    },
}

/// Events of a user (`event_version` 1.0 each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserEvent {
    /// The account was created.
    UserCreated {
        /// Its id.
        user_id: UserId,
        /// Its name.
        name: String,
        /// Its role.
        role: Role,
        /// When.
        at: Timestamp,
    },
    /// A token was issued (its digest only: the token is never recorded).
    TokenIssued {
        /// Its id.
        token_id: TokenId,
        /// Its name.
        name: String,
        /// SHA-256 of the token, lowercase hex.
        digest: String,
        /// Whether it may only read.
        read_only: bool,
        /// When it stops working, if ever.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<Timestamp>,
        /// When.
        at: Timestamp,
    },
    /// A token was revoked.
    TokenRevoked {
        /// Which.
        token_id: TokenId,
        /// When.
        at: Timestamp,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserCreated { .. } => "UserCreated",
            Self::TokenIssued { .. } => "TokenIssued",
            Self::TokenRevoked { .. } => "TokenRevoked",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Refusals of user commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// Create on a user that exists.
    #[error("user already exists")]
    AlreadyExists,
    /// A command to a user that does not exist.
    #[error("user not found")]
    NotFound,
    /// The user name is not one.
    #[error("invalid user name: {0}")]
    InvalidName(&'static str),
    /// The token name is not one.
    #[error("invalid token name: {0}")]
    InvalidTokenName(&'static str),
    /// The digest is not 64 lowercase hex digits.
    #[error("a token digest is 64 lowercase hex digits")]
    InvalidDigest,
    /// The expiry is not after now.
    #[error("expires_at must be in the future")]
    ExpiryPassed,
    /// The user holds as many live tokens as allowed.
    #[error("a user may hold at most {MAX_LIVE_TOKENS} tokens that are neither revoked nor expired; revoke one first")]
    TooManyTokens,
    /// A token id issued before.
    #[error("token already issued")]
    TokenExists,
    /// The user holds no token with that id.
    #[error("token not found")]
    TokenNotFound,
    /// The token was revoked before.
    #[error("token already revoked")]
    TokenRevoked,
}

/// One token as the aggregate keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenState {
    /// When it expires, if ever.
    pub expires_at: Option<Timestamp>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// The state of a user, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Its id, once created.
    pub id: Option<UserId>,
    /// Its name.
    pub name: String,
    /// Its role (meaningless before creation).
    pub role: Option<Role>,
    /// Its tokens, by id.
    pub tokens: BTreeMap<TokenId, TokenState>,
}

/// Checks a user name: 1 to 64 ASCII letters, digits, `.`, `_`, `-`, `@`.
pub fn check_user_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() {
        return Err(UserError::InvalidName("must not be empty"));
    }
    if name.chars().count() > MAX_USER_NAME {
        return Err(UserError::InvalidName("longer than 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(UserError::InvalidName(
            "may hold only ASCII letters, digits, '.', '_', '-' and '@'",
        ));
    }
    Ok(())
}

impl User {
    /// Decides the events for `command` without changing `self`.
    pub fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        match command {
            UserCommand::Create { id, name, role, at } => {
                if self.id.is_some() {
                    return Err(UserError::AlreadyExists);
                }
                check_user_name(&name)?;
                Ok(vec![UserEvent::UserCreated {
                    user_id: id,
                    name,
                    role,
                    at,
                }])
            }
            UserCommand::IssueToken { token, at } => {
                self.check_exists()?;
                let name = token.name.trim();
                if name.is_empty() {
                    return Err(UserError::InvalidTokenName("must not be empty"));
                }
                if name.chars().count() > MAX_TOKEN_NAME {
                    return Err(UserError::InvalidTokenName("longer than 100 characters"));
                }
                if name.chars().any(char::is_control) {
                    return Err(UserError::InvalidTokenName("holds a control character"));
                }
                if token.digest.len() != 64
                    || !token
                        .digest
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(UserError::InvalidDigest);
                }
                if token.expires_at.is_some_and(|e| e <= at) {
                    return Err(UserError::ExpiryPassed);
                }
                if self.tokens.contains_key(&token.id) {
                    return Err(UserError::TokenExists);
                }
                if self.live_tokens(at) >= MAX_LIVE_TOKENS {
                    return Err(UserError::TooManyTokens);
                }
                Ok(vec![UserEvent::TokenIssued {
                    token_id: token.id,
                    name: name.to_string(),
                    digest: token.digest,
                    read_only: token.read_only,
                    expires_at: token.expires_at,
                    at,
                }])
            }
            UserCommand::RevokeToken { token_id, at } => {
                self.check_exists()?;
                match self.tokens.get(&token_id) {
                    None => Err(UserError::TokenNotFound),
                    Some(t) if t.revoked => Err(UserError::TokenRevoked),
                    Some(_) => Ok(vec![UserEvent::TokenRevoked { token_id, at }]),
                }
            }
        }
    }

    /// Tokens neither revoked nor expired at `at`.
    pub fn live_tokens(&self, at: Timestamp) -> usize {
        self.tokens
            .values()
            .filter(|t| !t.revoked && t.expires_at.is_none_or(|e| e > at))
            .count()
    }

    fn check_exists(&self) -> Result<(), UserError> {
        match self.id {
            Some(_) => Ok(()),
            None => Err(UserError::NotFound),
        }
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserCreated {
                user_id,
                name,
                role,
                ..
            } => {
                self.id = Some(user_id);
                self.name = name;
                self.role = Some(role);
            }
            UserEvent::TokenIssued {
                token_id,
                expires_at,
                ..
            } => {
                self.tokens.insert(
                    token_id,
                    TokenState {
                        expires_at,
                        revoked: false,
                    },
                );
            }
            UserEvent::TokenRevoked { token_id, .. } => {
                if let Some(t) = self.tokens.get_mut(&token_id) {
                    t.revoked = true;
                }
            }
        }
    }
}

/// The text of API tokens: `rl_`, 43 base62 characters (256 bits, at least
/// 244 of them random), and a 6-character base62 CRC-32 of those, so that a
/// secret scanner can tell a real token from a lookalike and a typo is
/// refused without a lookup.
pub mod token {
    /// Every token starts with this.
    pub const PREFIX: &str = "rl_";
    /// Characters of the random part.
    const BODY: usize = 43;
    /// Characters of the checksum.
    const CHECK: usize = 6;
    /// A token's length.
    pub const LEN: usize = PREFIX.len() + BODY + CHECK;

    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

    /// The token for 32 random bytes.
    pub fn encode(random: &[u8; 32]) -> String {
        let body = base62(random, BODY);
        let check = base62(&crc32(body.as_bytes()).to_be_bytes(), CHECK);
        format!("{PREFIX}{body}{check}")
    }

    /// Whether `text` has a token's shape and a matching checksum.
    pub fn is_well_formed(text: &str) -> bool {
        let Some(rest) = text.strip_prefix(PREFIX) else {
            return false;
        };
        if rest.len() != BODY + CHECK || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return false;
        }
        let (body, check) = rest.split_at(BODY);
        base62(&crc32(body.as_bytes()).to_be_bytes(), CHECK) == check
    }

    /// `bytes` as a big-endian number in base 62, left-padded with `0` to
    /// `width` characters.
    fn base62(bytes: &[u8], width: usize) -> String {
        let mut number = bytes.to_vec();
        let mut digits = Vec::with_capacity(width);
        while number.iter().any(|&b| b != 0) {
            let mut remainder = 0u32;
            for byte in &mut number {
                let value = (remainder << 8) | u32::from(*byte);
                *byte = (value / 62) as u8;
                remainder = value % 62;
            }
            digits.push(ALPHABET[remainder as usize]);
        }
        while digits.len() < width {
            digits.push(b'0');
        }
        digits.reverse();
        String::from_utf8(digits).unwrap_or_default()
    }

    /// CRC-32 (IEEE 802.3), bit by bit: tokens are short.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn crc32_is_the_ieee_one() {
            assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        }

        #[test]
        fn tokens_are_prefixed_fixed_length_and_checked() {
            let token = encode(&[7u8; 32]);
            assert!(token.starts_with("rl_"));
            assert_eq!(token.len(), LEN);
            assert!(is_well_formed(&token));
            assert_ne!(encode(&[8u8; 32]), token);
            // The largest number still fits the width.
            assert_eq!(encode(&[255u8; 32]).len(), LEN);
            assert!(is_well_formed(&encode(&[0u8; 32])));
        }

        #[test]
        fn a_typo_or_a_lookalike_is_not_a_token() {
            let token = encode(&[42u8; 32]);
            let mut typo = token.clone().into_bytes();
            typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
            assert!(!is_well_formed(std::str::from_utf8(&typo).unwrap()));
            assert!(!is_well_formed(&token[..LEN - 1]));
            assert!(!is_well_formed(&format!("{token}x")));
            assert!(!is_well_formed(&token.replacen("rl_", "rx_", 1)));
            assert!(!is_well_formed(""));
            assert!(!is_well_formed("rl_"));
            assert!(!is_well_formed(&format!("rl_{}", "!".repeat(LEN - 3))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    fn created() -> User {
        let mut user = User::default();
        for e in User::default()
            .decide(UserCommand::Create {
                id: UserId::parse("u1").unwrap(),
                name: "ada".into(),
                role: Role::User,
                at: at(1),
            })
            .unwrap()
        {
            user.apply(e);
        }
        user
    }

    fn new_token(id: &str) -> NewToken {
        NewToken {
            id: TokenId::parse(id).unwrap(),
            name: "laptop".into(),
            digest: "a".repeat(64),
            read_only: false,
            expires_at: None,
        }
    }

    fn issue(user: &mut User, id: &str, now: i64) {
        let events = user
            .decide(UserCommand::IssueToken {
                token: new_token(id),
                at: at(now),
            })
            .unwrap();
        for e in events {
            user.apply(e);
        }
    }

    #[test]
    fn a_user_is_created_once_with_a_checked_name() {
        let user = created();
        assert_eq!(user.role, Some(Role::User));
        assert_eq!(
            user.decide(UserCommand::Create {
                id: UserId::parse("u1").unwrap(),
                name: "ada".into(),
                role: Role::User,
                at: at(2),
            }),
            Err(UserError::AlreadyExists)
        );
        for bad in ["", "a b", "ada\n", &"x".repeat(65)] {
            let refused = User::default().decide(UserCommand::Create {
                id: UserId::parse("u2").unwrap(),
                name: bad.to_string(),
                role: Role::Admin,
                at: at(1),
            });
            assert!(matches!(refused, Err(UserError::InvalidName(_))), "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_issued_to_existing_users_with_checked_fields() {
        let mut user = created();
        issue(&mut user, "t1", 5);
        assert_eq!(user.live_tokens(at(5)), 1);
        let refuse = |user: &User, token: NewToken| {
            user.decide(UserCommand::IssueToken { token, at: at(10) })
                .unwrap_err()
        };
        assert_eq!(refuse(&user, new_token("t1")), UserError::TokenExists);
        assert_eq!(
            refuse(&User::default(), new_token("t2")),
            UserError::NotFound
        );
        let mut t = new_token("t2");
        t.name = "  ".into();
        assert!(matches!(refuse(&user, t), UserError::InvalidTokenName(_)));
        let mut t = new_token("t2");
        t.digest = "A".repeat(64);
        assert_eq!(refuse(&user, t), UserError::InvalidDigest);
        let mut t = new_token("t2");
        t.expires_at = Some(at(10));
        assert_eq!(refuse(&user, t), UserError::ExpiryPassed);
        let mut t = new_token("t2");
        t.expires_at = Some(at(11));
        assert!(user
            .decide(UserCommand::IssueToken {
                token: t,
                at: at(10)
            })
            .is_ok());
    }

    #[test]
    fn live_tokens_are_bounded_and_expired_or_revoked_ones_do_not_count() {
        let mut user = created();
        for i in 0..MAX_LIVE_TOKENS {
            issue(&mut user, &format!("t{i}"), 5);
        }
        let more = UserCommand::IssueToken {
            token: new_token("extra"),
            at: at(6),
        };
        assert_eq!(user.decide(more.clone()), Err(UserError::TooManyTokens));
        for e in user
            .decide(UserCommand::RevokeToken {
                token_id: TokenId::parse("t0").unwrap(),
                at: at(6),
            })
            .unwrap()
        {
            user.apply(e);
        }
        assert!(user.decide(more).is_ok());
    }

    #[test]
    fn a_token_is_revoked_once() {
        let mut user = created();
        issue(&mut user, "t1", 5);
        let revoke = UserCommand::RevokeToken {
            token_id: TokenId::parse("t1").unwrap(),
            at: at(6),
        };
        let events = user.decide(revoke.clone()).unwrap();
        assert_eq!(
            events,
            vec![UserEvent::TokenRevoked {
                token_id: TokenId::parse("t1").unwrap(),
                at: at(6)
            }]
        );
        for e in events {
            user.apply(e);
        }
        assert_eq!(user.decide(revoke), Err(UserError::TokenRevoked));
        assert_eq!(
            user.decide(UserCommand::RevokeToken {
                token_id: TokenId::parse("nope").unwrap(),
                at: at(6),
            }),
            Err(UserError::TokenNotFound)
        );
    }
}
