//! bcrypt password hashing off the async threads, behind a concurrency cap.
//!
//! bcrypt reads only 72 bytes of input (docs/security.md). Rather than reject long pass phrases, we
//! pre-hash: bcrypt(base64(SHA-256("gatehouse-bcrypt-v1\0" ‖ password))). The 44-byte base64
//! input is under the limit and has no NUL bytes, so two passwords that share their first 72
//! bytes never both verify. The stored string is still a standard `$2b$<cost>$…` hash.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::domain::Password;

const PREHASH_DOMAIN: &[u8] = b"gatehouse-bcrypt-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing slot stayed busy for the whole queue timeout: 503.
    #[error("password hashing is saturated")]
    Overloaded,
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// Hashes and verifies passwords with a fixed cost and at most `concurrency` at a time.
#[derive(Clone)]
pub struct Hasher {
    cost: u32,
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
    /// Verified against when the e-mail is unknown, so both paths cost one bcrypt.
    dummy_hash: Arc<str>,
}

impl Hasher {
    pub fn new(cost: u32, concurrency: usize, queue_timeout: Duration) -> Result<Self, HashError> {
        let dummy = bcrypt::hash(prehash("not a real password"), cost)
            .map_err(|e| HashError::Internal(e.to_string()))?;
        Ok(Self {
            cost,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            queue_timeout,
            dummy_hash: dummy.into(),
        })
    }

    /// Default concurrency: leave one core for everything else.
    pub fn default_concurrency() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get().saturating_sub(1))
            .unwrap_or(1)
            .max(1)
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let input = prehash(password.expose());
        let cost = self.cost;
        self.run(move || bcrypt::hash(input, cost)).await
    }

    /// Verifies `password` against `stored`, or against a dummy hash when there is no account,
    /// so that an unknown e-mail costs the same as a wrong password.
    pub async fn verify(
        &self,
        password: &Password,
        stored: Option<&str>,
    ) -> Result<bool, HashError> {
        let input = prehash(password.expose());
        let known = stored.is_some();
        let hash: Arc<str> = stored
            .map(Arc::from)
            .unwrap_or_else(|| self.dummy_hash.clone());
        let ok = self.run(move || bcrypt::verify(input, &hash)).await?;
        Ok(ok && known)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Overloaded)?
            .map_err(|_| HashError::Overloaded)?;
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| HashError::Internal(e.to_string()))?;
        out.map_err(|e| HashError::Internal(e.to_string()))
    }
}

fn prehash(password: &str) -> String {
    let mut h = Sha256::new();
    h.update(PREHASH_DOMAIN);
    h.update(password.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(s: &str) -> Password {
        Password::parse(s.to_string(), "password").unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[tokio::test]
    async fn long_passwords_sharing_72_bytes_do_not_collide() {
        let h = Hasher::new(4, 1, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        let base = "a".repeat(72);
        let stored = h.hash(&pw(&format!("{base}ONE"))).await.unwrap_or_default();
        assert!(stored.starts_with("$2b$04$"), "{stored}");
        assert!(
            h.verify(&pw(&format!("{base}ONE")), Some(&stored))
                .await
                .unwrap_or(false)
        );
        assert!(
            !h.verify(&pw(&format!("{base}TWO")), Some(&stored))
                .await
                .unwrap_or(true)
        );
        assert!(
            !h.verify(&pw(&format!("{base}ONE")), None)
                .await
                .unwrap_or(true)
        );
    }
}
