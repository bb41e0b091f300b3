//! HTTP basic auth against bcrypt hashes, as exporter-toolkit does it. bcrypt is slow by
//! design, so a verified password is remembered per user (one digest each: attackers
//! cannot grow it), and bcrypt runs off the async thread, one check at a time. Nobody
//! waits for that one check: a request that finds it taken, or whose address failed too
//! often lately, is told to come back, so wrong passwords cannot pile up requests.
//! Users are read once, at start-up, and passwords stay remembered until the agent stops.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::HeaderValue;
use base64::Engine;
use ring::digest::{digest, SHA256};
use tokio::sync::Semaphore;

use super::failed_logins::FailedLogins;

/// Concurrent bcrypt checks: each takes a core for tens of milliseconds.
const BCRYPT_SLOTS: usize = 1;
/// When to come back after finding every bcrypt slot taken: a check ends within it.
const BCRYPT_BUSY_RETRY: Duration = Duration::from_secs(1);

pub struct BasicAuth {
    users: BTreeMap<String, Arc<User>>,
    /// Checked for unknown users, so that the answer takes as long as for known ones: it
    /// has the highest cost among the users' hashes (users of a lower cost answer faster).
    dummy_hash: String,
    /// Shared with the check on the blocking pool, which holds its permit until bcrypt
    /// returns, even when the request that started it is gone.
    bcrypt_slots: Arc<Semaphore>,
    failed: Arc<FailedLogins>,
}

pub enum Verdict {
    Allowed,
    Refused,
    /// Not checked: ask again after this.
    TryLater(Duration),
}

struct User {
    hash: String,
    /// SHA-256 of the password that last passed bcrypt.
    verified: Mutex<Option<[u8; 32]>>,
}

impl BasicAuth {
    /// `None` when no users are configured: everything is open. Makes one bcrypt hash.
    pub fn new(users: &BTreeMap<String, String>) -> bcrypt::BcryptResult<Option<BasicAuth>> {
        if users.is_empty() {
            return Ok(None);
        }
        let cost = users
            .values()
            .map(|hash| bcrypt::HashParts::from_str(hash).map(|parts| parts.get_cost()))
            .try_fold(0, |highest, cost| cost.map(|cost| cost.max(highest)))?;
        // Its password does not matter: a match for an unknown user is still a refusal.
        let dummy_hash = bcrypt::hash("", cost)?;
        Ok(Some(BasicAuth {
            users: users
                .iter()
                .map(|(name, hash)| {
                    let user = User {
                        hash: hash.clone(),
                        verified: Mutex::new(None),
                    };
                    (name.clone(), Arc::new(user))
                })
                .collect(),
            dummy_hash,
            bcrypt_slots: Arc::new(Semaphore::new(BCRYPT_SLOTS)),
            failed: Arc::default(),
        }))
    }

    /// Whether an `Authorization` header from `peer` names a configured user with the
    /// right password.
    pub async fn check(&self, authorization: Option<&HeaderValue>, peer: IpAddr) -> Verdict {
        let Some((name, password)) = authorization.and_then(credentials) else {
            return Verdict::Refused;
        };
        let offered = sha256(password.as_bytes());
        let user = self.users.get(&name);
        if let Some(user) = user {
            let verified = *user.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.is_some_and(|known| same(&known, &offered)) {
                return Verdict::Allowed;
            }
        }
        if let Some(wait) = self.failed.blocked_for(peer) {
            return Verdict::TryLater(wait);
        }
        let Ok(slot) = self.bcrypt_slots.clone().try_acquire_owned() else {
            return Verdict::TryLater(BCRYPT_BUSY_RETRY);
        };
        let hash = user.map_or(&self.dummy_hash, |u| &u.hash).clone();
        let (user, failed) = (user.cloned(), self.failed.clone());
        // The outcome is recorded by the check, not by the request: a connection evicted
        // while bcrypt runs must neither waste a right password nor leave a wrong one
        // uncounted.
        let allowed = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let checked = bcrypt::verify(password, &hash).unwrap_or(false);
            match user {
                Some(user) if checked => {
                    *user.verified.lock().unwrap_or_else(|e| e.into_inner()) = Some(offered);
                    true
                }
                _ => {
                    failed.failed(peer);
                    false
                }
            }
        })
        .await
        .unwrap_or(false);
        if allowed {
            Verdict::Allowed
        } else {
            Verdict::Refused
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

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER_PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn alice() -> BasicAuth {
        let hash = bcrypt::hash("right", 4).expect("hashing");
        BasicAuth::new(&BTreeMap::from([("alice".to_string(), hash)]))
            .expect("valid hashes")
            .expect("users configured")
    }

    async fn allowed(auth: &BasicAuth, header: Option<&HeaderValue>, peer: IpAddr) -> bool {
        matches!(auth.check(header, peer).await, Verdict::Allowed)
    }

    #[tokio::test]
    async fn checks_users_and_passwords() {
        let auth = alice();
        assert!(!allowed(&auth, None, PEER).await);
        assert!(!allowed(&auth, Some(&header("alice", "wrong")), PEER).await);
        assert!(!allowed(&auth, Some(&header("bob", "right")), PEER).await);
        let bearer = HeaderValue::from_static("Bearer x");
        assert!(!allowed(&auth, Some(&bearer), PEER).await);
        assert!(allowed(&auth, Some(&header("alice", "right")), PEER).await);
        // Second time from the remembered digest; a wrong password still fails after it.
        assert!(allowed(&auth, Some(&header("alice", "right")), PEER).await);
        assert!(!allowed(&auth, Some(&header("alice", "righ")), PEER).await);
        assert!(BasicAuth::new(&BTreeMap::new())
            .expect("nothing to hash")
            .is_none());
    }

    #[tokio::test]
    async fn a_taken_bcrypt_slot_is_not_waited_for() {
        let auth = alice();
        let _taken = auth
            .bcrypt_slots
            .clone()
            .try_acquire_owned()
            .expect("a free slot");
        let verdict = tokio::time::timeout(
            Duration::from_secs(5),
            auth.check(Some(&header("alice", "right")), PEER),
        )
        .await
        .expect("an answer without waiting for the slot");
        assert!(matches!(verdict, Verdict::TryLater(_)));
    }

    #[tokio::test]
    async fn an_address_that_keeps_failing_does_not_lock_out_others() {
        let auth = alice();
        let mut failures = 0;
        while !matches!(
            auth.check(Some(&header("alice", "wrong")), PEER).await,
            Verdict::TryLater(_)
        ) {
            failures += 1;
            assert!(failures < 100, "wrong passwords are checked without end");
        }
        let right = header("alice", "right");
        assert!(matches!(
            auth.check(Some(&right), PEER).await,
            Verdict::TryLater(_)
        ));
        assert!(allowed(&auth, Some(&right), OTHER_PEER).await);
        // Once verified, the password needs no bcrypt check, so the address gets in too.
        assert!(allowed(&auth, Some(&right), PEER).await);
    }

    #[test]
    fn unknown_users_are_checked_at_the_users_cost() {
        let users = BTreeMap::from([
            ("alice".to_string(), bcrypt::hash("a", 4).expect("hashing")),
            ("bob".to_string(), bcrypt::hash("b", 5).expect("hashing")),
        ]);
        let auth = BasicAuth::new(&users)
            .expect("valid hashes")
            .expect("users configured");
        let dummy = bcrypt::HashParts::from_str(&auth.dummy_hash).expect("a bcrypt hash");
        assert_eq!(dummy.get_cost(), 5);
    }
}
