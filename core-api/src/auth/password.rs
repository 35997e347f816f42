//! bcrypt password hashing off the async threads, behind a concurrency cap, on hashing threads
//! of their own at a lower CPU priority.
//!
//! The hashing threads run at nice `auth.hash_nice` (10 by default): bcrypt is the one request
//! path that burns a core for a quarter of a second, and on a small machine a login flood would
//! otherwise take its share of the CPU from every other request (and from PostgreSQL beside it).
//! Niced, the hashing yields the CPU to request handling whenever that has work, and still gets
//! all of a core that would otherwise be idle; a flood's logins wait longer instead of every
//! other request. The threads only ever hash, so the priority never leaks to other work (a
//! blocking-pool thread would carry it to whatever ran on it next, and an unprivileged process
//! cannot lower its nice value again).
//!
//! bcrypt reads only 72 bytes of input (docs/security.md). Rather than reject long pass phrases, we
//! pre-hash: bcrypt(base64(SHA-256("gatehouse-bcrypt-v1\0" ‖ password))). The 44-byte base64
//! input is under the limit and has no NUL bytes, so two passwords that share their first 72
//! bytes never both verify. The stored string is still a standard `$2b$<cost>$…` hash.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, oneshot};

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

/// The nice value of the hashing threads unless `auth.hash_nice` says otherwise.
pub const DEFAULT_HASH_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// Hashes and verifies passwords with a fixed cost and at most `concurrency` at a time.
#[derive(Clone)]
pub struct Hasher {
    cost: u32,
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
    /// Verified against when the e-mail is unknown, so both paths cost one bcrypt.
    dummy_hash: Arc<str>,
    /// To the hashing threads (as many as `slots` has permits, so a job that holds a permit
    /// always finds an idle thread). They end when the last clone of this is dropped.
    jobs: mpsc::Sender<Job>,
}

impl Hasher {
    /// Starts `concurrency` hashing threads at nice `nice` (0 keeps the process's priority).
    pub fn new(
        cost: u32,
        concurrency: usize,
        queue_timeout: Duration,
        nice: i32,
    ) -> Result<Self, HashError> {
        let dummy = bcrypt::hash(prehash("not a real password"), cost)
            .map_err(|e| HashError::Internal(e.to_string()))?;
        let concurrency = concurrency.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..concurrency {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || hashing_thread(&queue, nice))
                .map_err(|e| HashError::Internal(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self {
            cost,
            slots: Arc::new(Semaphore::new(concurrency)),
            queue_timeout,
            dummy_hash: dummy.into(),
            jobs,
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
        let (done, out) = oneshot::channel();
        // The permit goes with the job and is released when it ends, panic included (the job
        // is dropped while unwinding, and so is `done`: the caller gets an error, not a hang).
        let job: Job = Box::new(move || {
            let _permit = permit;
            let _ = done.send(f());
        });
        self.jobs
            .send(job)
            .map_err(|_| HashError::Internal("the hashing threads are gone".into()))?;
        out.await
            .map_err(|_| HashError::Internal("the hashing job panicked".into()))?
            .map_err(|e| HashError::Internal(e.to_string()))
    }
}

/// One hashing thread: lowers its own priority once, then runs jobs until the `Hasher` is gone.
/// A panicking job is caught, so the thread (and the pool's size) survives it.
fn hashing_thread(queue: &Mutex<mpsc::Receiver<Job>>, nice: i32) {
    if nice != 0 {
        // Linux keeps a nice value per thread, and "the calling process" (no pid) is the
        // calling thread. Raising it needs no privilege.
        if let Err(e) = rustix::process::setpriority_process(None, nice) {
            tracing::warn!(error = %e, nice, "could not lower the hashing thread's priority");
        }
    }
    loop {
        // The lock is held only to take the next job, never while one runs.
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = next else { return };
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
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
        let h = Hasher::new(4, 1, Duration::from_secs(5), 0).unwrap_or_else(|e| panic!("{e}"));
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

    #[tokio::test]
    async fn hashing_runs_at_the_configured_priority() {
        // 19, the lowest priority, can always be set, however this test runs.
        let h = Hasher::new(4, 1, Duration::from_secs(5), 19).unwrap_or_else(|e| panic!("{e}"));
        let priority = || rustix::process::getpriority_process(None).unwrap_or(-100);
        let mine = priority();
        let nice = h
            .run(move || Ok(priority()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(nice, 19);
        // The other threads keep theirs.
        assert_eq!(priority(), mine);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_frees_its_slot_and_thread() {
        let h = Hasher::new(4, 1, Duration::from_secs(5), 0).unwrap_or_else(|e| panic!("{e}"));
        let out = h
            .run(|| -> Result<(), bcrypt::BcryptError> { panic!("injected") })
            .await;
        assert!(matches!(out, Err(HashError::Internal(_))), "{out:?}");
        // One slot and one thread: both must still be there for the next hash.
        let stored = h.hash(&pw("correct horse battery")).await;
        assert!(stored.is_ok_and(|s| s.starts_with("$2b$04$")));
    }
}
