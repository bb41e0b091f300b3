//! HTTP basic auth against bcrypt hashes, as exporter-toolkit does it. bcrypt is slow by
//! design, so a verified password is remembered per user (one digest each: attackers
//! cannot grow it), and bcrypt runs off the async thread, one check at a time.
use std::{collections::BTreeMap, sync::Mutex};

use axum::http::HeaderValue;
use base64::Engine;
use ring::digest::{digest, SHA256};
use tokio::sync::Semaphore;

/// Checked for unknown users too, so that the answer takes as long as for known ones.
/// (bcrypt of a random password at cost 10.)
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// Concurrent bcrypt checks: each takes a core for tens of milliseconds.
const BCRYPT_SLOTS: usize = 1;

pub struct BasicAuth {
    users: BTreeMap<String, User>,
    bcrypt_slots: Semaphore,
}

struct User {
    hash: String,
    /// SHA-256 of the password that last passed bcrypt.
    verified: Mutex<Option<[u8; 32]>>,
}

impl BasicAuth {
    /// `None` when no users are configured: everything is open.
    pub fn new(users: &BTreeMap<String, String>) -> Option<BasicAuth> {
        (!users.is_empty()).then(|| BasicAuth {
            users: users
                .iter()
                .map(|(name, hash)| {
                    let user = User {
                        hash: hash.clone(),
                        verified: Mutex::new(None),
                    };
                    (name.clone(), user)
                })
                .collect(),
            bcrypt_slots: Semaphore::new(BCRYPT_SLOTS),
        })
    }

    /// Whether an `Authorization` header names a configured user with the right password.
    pub async fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((name, password)) = authorization.and_then(credentials) else {
            return false;
        };
        let offered = sha256(password.as_bytes());
        let user = self.users.get(&name);
        if let Some(user) = user {
            let verified = *user.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.is_some_and(|known| same(&known, &offered)) {
                return true;
            }
        }
        let Ok(_slot) = self.bcrypt_slots.acquire().await else {
            return false;
        };
        let hash = user.map_or(DUMMY_HASH, |u| &u.hash).to_string();
        let checked =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        match user {
            Some(user) if checked => {
                *user.verified.lock().unwrap_or_else(|e| e.into_inner()) = Some(offered);
                true
            }
            _ => false,
        }
    }
}

/// `Basic base64(user:password)` → (user, password).
fn credentials(header: &HeaderValue) -> Option<(String, String)> {
    let encoded = header.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Compares without an early exit, so the time taken says nothing about the contents.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b)
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        .eq(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("a valid header")
    }

    #[tokio::test]
    async fn checks_users_and_passwords() {
        let hash = bcrypt::hash("right", 4).expect("hashing");
        let users = BTreeMap::from([("alice".to_string(), hash)]);
        let auth = BasicAuth::new(&users).expect("users configured");
        assert!(!auth.allows(None).await);
        assert!(!auth.allows(Some(&header("alice", "wrong"))).await);
        assert!(!auth.allows(Some(&header("bob", "right"))).await);
        assert!(
            !auth
                .allows(Some(&HeaderValue::from_static("Bearer x")))
                .await
        );
        assert!(auth.allows(Some(&header("alice", "right"))).await);
        // Second time from the remembered digest; a wrong password still fails after it.
        assert!(auth.allows(Some(&header("alice", "right"))).await);
        assert!(!auth.allows(Some(&header("alice", "righ"))).await);
        assert!(BasicAuth::new(&BTreeMap::new()).is_none());
    }

    #[test]
    fn dummy_hash_is_a_bcrypt_hash() {
        assert_eq!(bcrypt::verify("", DUMMY_HASH).ok(), Some(false));
    }
}
