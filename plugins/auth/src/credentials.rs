//! A VM's memory of credentials it verified, so a returning client costs a map lookup instead
//! of a SHA-256 (API keys) or a signature check (JWTs): presented value -> client id, a JWT
//! until its `exp` (plus leeway). Only verified credentials are kept, so random guesses cannot
//! fill it, and it is bounded: when full it starts over. A lookup reveals by its timing only
//! whether the credential is valid, which the answer says anyway. Its hasher is the fast,
//! unkeyed one: only verified credentials are ever in it, so nobody can fill its buckets.

use std::rc::Rc;

use plugin_support::FastMap;

/// Entries kept per VM, per kind.
pub const CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub struct Verified {
    /// `x-api-key` values (and bearer tokens that are API keys) -> client id.
    keys: FastMap<String, Rc<str>>,
    /// JWTs -> (client id, valid until: seconds since the epoch; `None`: no `exp`).
    tokens: FastMap<String, (Rc<str>, Option<u64>)>,
}

impl Verified {
    /// The client of API key `key`, if it was verified before.
    pub fn key(&self, key: &str) -> Option<Rc<str>> {
        self.keys.get(key).cloned()
    }

    pub fn remember_key(&mut self, key: &str, client: Rc<str>) {
        if self.keys.len() >= CAPACITY {
            self.keys.clear();
        }
        self.keys.insert(key.to_string(), client);
    }

    /// The client of JWT `token`, if it was verified before and is still valid at `now`.
    pub fn token(&mut self, token: &str, now: u64) -> Option<Rc<str>> {
        let (client, valid_until) = self.tokens.get(token)?;
        if valid_until.is_some_and(|until| now > until) {
            self.tokens.remove(token);
            return None;
        }
        Some(client.clone())
    }

    pub fn remember_token(&mut self, token: &str, client: Rc<str>, valid_until: Option<u64>) {
        if self.tokens.len() >= CAPACITY {
            self.tokens.clear();
        }
        self.tokens.insert(token.to_string(), (client, valid_until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_remembered_and_tokens_until_they_expire() {
        let mut v = Verified::default();
        assert_eq!(v.key("k"), None);
        v.remember_key("k", "c1".into());
        assert_eq!(v.key("k").as_deref(), Some("c1"));
        v.remember_token("t", "c2".into(), Some(100));
        assert_eq!(v.token("t", 100).as_deref(), Some("c2"));
        assert_eq!(v.token("t", 101), None, "expired");
        assert_eq!(v.token("t", 50), None, "and forgotten");
        v.remember_token("forever", "c3".into(), None);
        assert_eq!(v.token("forever", u64::MAX).as_deref(), Some("c3"));
    }

    #[test]
    fn it_stays_bounded() {
        let mut v = Verified::default();
        for i in 0..CAPACITY * 3 {
            v.remember_key(&i.to_string(), "c".into());
            v.remember_token(&i.to_string(), "c".into(), None);
        }
        assert!(v.keys.len() <= CAPACITY && v.tokens.len() <= CAPACITY);
    }
}
