//! TLS session tickets for clients: keys rotated every `ticket_rotation` period, a ticket valid
//! in the period it was issued and the next one. Keys are either random and per process (a
//! client resumes on this instance only), or derived from a secret in a key file shared by the
//! instances behind one load balancer (HKDF-SHA256 of the secret and the period number: every
//! instance with the same file and a roughly right clock issues and accepts the same tickets, with
//! no coordination). A ticket is `period (8 bytes) | nonce (12) | AES-256-GCM(session state)`.
//!
//! With a key file, whoever holds the file can decrypt every ticket issued under it: rotate the
//! file's secret now and then (with a reload), as with NGINX's `ssl_session_ticket_key`.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// The smallest key file secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;
const PERIOD_BYTES: usize = 8;
const HKDF_SALT: &[u8] = b"edge-proxy session ticket keys v1";

/// Seconds since the epoch; a parameter so tests can move time.
pub type Clock = fn() -> u64;

fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

enum KeySource {
    /// Fresh random keys, kept for the current and the previous period.
    Random,
    /// Keys derived from the shared secret (the file's bytes).
    Shared(hkdf::Prk),
}

pub struct RotatingTicketer {
    source: KeySource,
    period: u64,
    clock: Clock,
    rng: SystemRandom,
    /// Keys by period number: at most the previous, the current and (shared) the next one.
    keys: Mutex<BTreeMap<u64, LessSafeKey>>,
}

impl std::fmt::Debug for RotatingTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingTicketer")
            .field(
                "keys",
                &match self.source {
                    KeySource::Random => "random",
                    KeySource::Shared(_) => "shared",
                },
            )
            .field("period_seconds", &self.period)
            .finish_non_exhaustive()
    }
}

impl RotatingTicketer {
    /// Random per-process keys rotated every `period`.
    pub fn random(period: Duration) -> Self {
        Self::with_clock(None, period, system_clock)
    }

    /// Keys derived from `secret` (at least [`MIN_SECRET_BYTES`]) rotated every `period`.
    pub fn shared(secret: &[u8], period: Duration) -> Self {
        Self::with_clock(Some(secret), period, system_clock)
    }

    pub fn with_clock(secret: Option<&[u8]>, period: Duration, clock: Clock) -> Self {
        let source = match secret {
            Some(secret) => {
                KeySource::Shared(hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret))
            }
            None => KeySource::Random,
        };
        Self {
            source,
            period: period.as_secs().max(1),
            clock,
            rng: SystemRandom::new(),
            keys: Mutex::new(BTreeMap::new()),
        }
    }

    fn current_period(&self) -> u64 {
        (self.clock)() / self.period
    }

    fn make_key(&self, period: u64) -> Option<LessSafeKey> {
        let unbound = match &self.source {
            KeySource::Shared(prk) => {
                let info = period.to_be_bytes();
                let info = [info.as_slice()];
                UnboundKey::from(prk.expand(&info, &AES_256_GCM).ok()?)
            }
            KeySource::Random => {
                let mut bytes = [0u8; 32];
                self.rng.fill(&mut bytes).ok()?;
                UnboundKey::new(&AES_256_GCM, &bytes).ok()?
            }
        };
        Some(LessSafeKey::new(unbound))
    }

    /// Runs `f` with the key of `period`, when that period's tickets are acceptable now.
    fn with_key<T>(
        &self,
        period: u64,
        issuing: bool,
        f: impl FnOnce(&LessSafeKey) -> Option<T>,
    ) -> Option<T> {
        let now = self.current_period();
        let shared = matches!(self.source, KeySource::Shared(_));
        // Issued in this period or the last; a shared key one period ahead is another
        // instance's clock running a little fast.
        let acceptable = period == now
            || period.checked_add(1) == Some(now)
            || (shared && !issuing && Some(period) == now.checked_add(1));
        if !acceptable {
            return None;
        }
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.retain(|p, _| p.saturating_add(1) >= now && *p <= now.saturating_add(1));
        let key = match keys.entry(period) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            // A random key for a past period never existed here: such a ticket is not ours.
            std::collections::btree_map::Entry::Vacant(_) if !shared && period != now => {
                return None
            }
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(self.make_key(period)?)
            }
        };
        f(key)
    }
}

impl ProducesTickets for RotatingTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.period).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let period = self.current_period();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        self.with_key(period, true, |key| {
            key.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(period.to_be_bytes()),
                &mut sealed,
            )
            .ok()
        })?;
        let mut ticket = Vec::with_capacity(PERIOD_BYTES + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&period.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (period, rest) = ticket.split_at_checked(PERIOD_BYTES)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let period = u64::from_be_bytes(period.try_into().ok()?);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = sealed.to_vec();
        let plain_len = self.with_key(period, false, |key| {
            key.open_in_place(nonce, Aad::from(period.to_be_bytes()), &mut opened)
                .ok()
                .map(|plain| plain.len())
        })?;
        opened.truncate(plain_len);
        Some(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const HOUR: Duration = Duration::from_secs(3600);

    // Each test has its own clock (tests run in parallel).
    macro_rules! clock {
        ($name:ident) => {
            static $name: AtomicU64 = AtomicU64::new(1_000 * 3600);
        };
    }

    #[test]
    fn a_ticket_opens_in_its_period_and_the_next_then_never() {
        clock!(NOW);
        let ticketer = RotatingTicketer::with_clock(None, HOUR, || NOW.load(Ordering::Relaxed));
        let ticket = ticketer.encrypt(b"session state").unwrap();
        assert_ne!(&ticket[PERIOD_BYTES + NONCE_LEN..], b"session state");
        assert_eq!(ticketer.decrypt(&ticket).unwrap(), b"session state");
        NOW.fetch_add(3600, Ordering::Relaxed);
        assert_eq!(ticketer.decrypt(&ticket).unwrap(), b"session state");
        let newer = ticketer.encrypt(b"newer").unwrap();
        NOW.fetch_add(3600, Ordering::Relaxed);
        assert!(ticketer.decrypt(&ticket).is_none(), "two periods old");
        assert_eq!(ticketer.decrypt(&newer).unwrap(), b"newer");
    }

    #[test]
    fn random_keys_are_per_process_and_shared_keys_are_per_secret() {
        clock!(NOW);
        let clock = || NOW.load(Ordering::Relaxed);
        let a = RotatingTicketer::with_clock(None, HOUR, clock);
        let b = RotatingTicketer::with_clock(None, HOUR, clock);
        let ticket = a.encrypt(b"state").unwrap();
        assert!(b.decrypt(&ticket).is_none());

        let secret = [7u8; 48];
        let one = RotatingTicketer::with_clock(Some(&secret), HOUR, clock);
        let two = RotatingTicketer::with_clock(Some(&secret), HOUR, clock);
        let other = RotatingTicketer::with_clock(Some(&[8u8; 48]), HOUR, clock);
        let ticket = one.encrypt(b"state").unwrap();
        assert_eq!(two.decrypt(&ticket).unwrap(), b"state");
        assert!(other.decrypt(&ticket).is_none());
    }

    #[test]
    fn tampered_or_short_tickets_are_refused() {
        clock!(NOW);
        let ticketer =
            RotatingTicketer::with_clock(Some(&[1u8; 32]), HOUR, || NOW.load(Ordering::Relaxed));
        let ticket = ticketer.encrypt(b"state").unwrap();
        for i in [0, PERIOD_BYTES, PERIOD_BYTES + NONCE_LEN, ticket.len() - 1] {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert!(ticketer.decrypt(&bad).is_none(), "byte {i} flipped");
        }
        assert!(ticketer.decrypt(&ticket[..10]).is_none());
        assert!(ticketer.decrypt(&[]).is_none());
    }
}
