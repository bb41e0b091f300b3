//! Failed password checks per client address. bcrypt runs one check at a time, so a client
//! that keeps guessing would otherwise hold it all the time and keep scrapers whose
//! password is not verified yet from ever getting a check.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Failed checks an address gets per window before its checks are refused unchecked.
const ALLOWED: u32 = 5;
const WINDOW: Duration = Duration::from_secs(10);
/// Addresses remembered at most: entries only come from failed bcrypt checks, which run
/// one at a time, so an attacker with many addresses fills it slowly and gains little by
/// pushing its own entries out.
const MAX_PEERS: usize = 4096;

#[derive(Default)]
pub struct FailedLogins {
    peers: Mutex<HashMap<IpAddr, Window>>,
}

struct Window {
    started: Instant,
    failures: u32,
}

impl FailedLogins {
    /// How long `peer` must wait before its password is checked again, if it used up its
    /// failures.
    pub fn blocked_for(&self, peer: IpAddr) -> Option<Duration> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let window = peers.get(&key(peer))?;
        if window.failures < ALLOWED {
            return None;
        }
        WINDOW
            .checked_sub(window.started.elapsed())
            .filter(|left| !left.is_zero())
    }

    pub fn failed(&self, peer: IpAddr) {
        let now = Instant::now();
        let key = key(peer);
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.len() >= MAX_PEERS && !peers.contains_key(&key) {
            peers.retain(|_, window| now.duration_since(window.started) < WINDOW);
            let oldest = peers
                .iter()
                .min_by_key(|(_, window)| window.started)
                .map(|(peer, _)| *peer);
            if let Some(oldest) = oldest.filter(|_| peers.len() >= MAX_PEERS) {
                peers.remove(&oldest);
            }
        }
        let window = peers.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures += 1;
    }
}

/// One IPv6 host usually holds a whole /64, so it counts as one address.
fn key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    #[test]
    fn an_address_is_blocked_after_its_failures_and_others_are_not() {
        let logins = FailedLogins::default();
        for _ in 0..ALLOWED - 1 {
            logins.failed(ip("192.0.2.1"));
        }
        assert_eq!(logins.blocked_for(ip("192.0.2.1")), None);
        logins.failed(ip("192.0.2.1"));
        assert!(logins
            .blocked_for(ip("192.0.2.1"))
            .is_some_and(|left| left <= WINDOW));
        assert_eq!(logins.blocked_for(ip("192.0.2.2")), None);
        // The same host over IPv4-mapped IPv6.
        assert!(logins.blocked_for(ip("::ffff:192.0.2.1")).is_some());
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let logins = FailedLogins::default();
        for host in 0..ALLOWED {
            logins.failed(ip(&format!("2001:db8:0:1::{host}")));
        }
        assert!(logins.blocked_for(ip("2001:db8:0:1:ffff::")).is_some());
        assert_eq!(logins.blocked_for(ip("2001:db8:0:2::1")), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let logins = FailedLogins::default();
        for n in 0..MAX_PEERS as u32 + 100 {
            logins.failed(IpAddr::V4(n.into()));
        }
        let peers = logins.peers.lock().expect("not poisoned");
        assert_eq!(peers.len(), MAX_PEERS);
        assert!(peers.contains_key(&IpAddr::V4((MAX_PEERS as u32 + 99).into())));
    }
}
