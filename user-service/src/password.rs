//! Password hashing with argon2id, kept off the async runtime and bounded.
//!
//! One hash costs ~33 ms of CPU and 19 MiB of memory (OWASP's minimum: `Argon2::default()`, m=19 MiB, t=2, p=1).
//! Run on the runtime's worker threads it would stall every other request; run unbounded on the blocking pool a login
//! storm would queue hundreds of hashes (and hundreds of 19 MiB buffers) at once. So each hash runs on
//! `spawn_blocking` only after taking a permit from a semaphore sized to the CPU count: excess requests wait in the
//! semaphore's queue instead of on threads, and give up their place when their caller's deadline passes
//! ([`PasswordError::Expired`]), so a login storm does not spend the CPU on hashes whose answers no one waits for.
//!
//! Login must answer an unknown user exactly like a wrong password, in content *and* in time, or response times
//! reveal which usernames exist. [`PasswordHasher::verify`] therefore takes the stored hash as an `Option` and, for
//! `None`, verifies against a fixed dummy hash with the same parameters, paying the same cost.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{self, PasswordHasher as _, PasswordVerifier as _};
use tokio::sync::Semaphore;

use crate::domain::Password;

/// An argon2id hash of the password "dummy password for unknown users", with `Argon2::default()` parameters.
///
/// Verifying against it costs what verifying a real hash costs; a unit test checks its parameters stay in step
/// with `Argon2::default()` (to regenerate it, hash that phrase with `PasswordHasher::hash`). It is not a secret: nobody can log in with it because no user row holds it.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$06ozXPXzqGNGE2eaDOT6Qw$+ZQk4xXm+mH78IkKk1aj6WqnRyI5iwAMG0bT/ppq2Ro";

/// A PHC-format argon2 hash string (`$argon2id$v=19$m=…`) as stored in `users.users.password_hash`.
///
/// Not a secret in the way a password is, but a leaked hash can be attacked offline, so `Debug` hides it too.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a hash read back from the database. The string is not parsed here; a corrupt value surfaces as
    /// [`PasswordError::CorruptHash`] when verified.
    pub fn from_stored(hash: String) -> Self {
        Self(hash)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// Why hashing or verifying failed — never because the password was wrong (that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed")]
    Hash(#[source] password_hash::Error),
    #[error("stored password hash is corrupt")]
    CorruptHash(#[source] password_hash::Error),
    #[error("password hashing task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("password hasher is shut down")]
    Closed,
    #[error("the caller's deadline passed while the hash waited its turn")]
    Expired,
}

/// Hashes and verifies passwords on the blocking pool, at most `permits` at a time. Clone it freely: clones share
/// the same semaphore.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
}

impl Default for PasswordHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl PasswordHasher {
    /// One concurrent hash per CPU: more would only time-slice the same cores and multiply memory.
    pub fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self::with_concurrency(cpus)
    }

    /// At most `max_concurrent` (at least 1) hashes at once.
    pub fn with_concurrency(max_concurrent: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max_concurrent.max(1))) }
    }

    /// Hashes a new password with a fresh random salt, unless `deadline_ms` (ms since the Unix epoch, as a
    /// request's context carries it) passes while it waits its turn.
    pub async fn hash(&self, password: &Password, deadline_ms: Option<i64>) -> Result<PasswordHash, PasswordError> {
        let secret = password.expose().to_owned();
        self.run_blocking(deadline_ms, move || {
            Argon2::default()
                .hash_password(secret.as_bytes())
                .map(|hash| PasswordHash(hash.to_string()))
                .map_err(PasswordError::Hash)
        })
        .await
    }

    /// Whether `password` matches `stored`. With `stored = None` (unknown user) it verifies against a dummy hash
    /// and returns `Ok(false)`, taking as long as a wrong password would. `deadline_ms` as for [`Self::hash`].
    pub async fn verify(
        &self,
        password: &Password,
        stored: Option<&PasswordHash>,
        deadline_ms: Option<i64>,
    ) -> Result<bool, PasswordError> {
        let secret = password.expose().to_owned();
        let known_user = stored.is_some();
        let hash = stored.map_or_else(|| DUMMY_HASH.to_owned(), |hash| hash.0.clone());
        self.run_blocking(deadline_ms, move || {
            match Argon2::default().verify_password(secret.as_bytes(), hash.as_str()) {
                Ok(()) => Ok(known_user),
                Err(password_hash::Error::PasswordInvalid) => Ok(false),
                Err(error) => Err(PasswordError::CorruptHash(error)),
            }
        })
        .await
    }

    async fn run_blocking<T, F>(&self, deadline_ms: Option<i64>, work: F) -> Result<T, PasswordError>
    where
        F: FnOnce() -> Result<T, PasswordError> + Send + 'static,
        T: Send + 'static,
    {
        let acquire = Arc::clone(&self.permits).acquire_owned();
        let acquired = match deadline_ms {
            None => acquire.await,
            Some(deadline_ms) => {
                let left = u64::try_from(deadline_ms - chrono::Utc::now().timestamp_millis()).unwrap_or(0);
                if left == 0 {
                    return Err(PasswordError::Expired);
                }
                tokio::time::timeout(Duration::from_millis(left), acquire).await.map_err(|_| PasswordError::Expired)?
            }
        };
        // Only fails if the semaphore is closed, which nothing does; mapped rather than unwrapped all the same.
        let permit = acquired.map_err(|_| PasswordError::Closed)?;
        // The permit moves into the task: if the caller gives up, the CPU stays busy until the hash finishes, and so
        // does the permit.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(PasswordError::Task)?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use argon2::Params;

    use super::*;

    fn password(s: &str) -> Password {
        Password::parse(s).unwrap()
    }

    #[tokio::test]
    async fn a_hashed_password_verifies() {
        let hasher = PasswordHasher::new();
        let hash = hasher.hash(&password("correct horse"), None).await.unwrap();

        assert!(hash.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(hasher.verify(&password("correct horse"), Some(&hash), None).await.unwrap());
    }

    #[tokio::test]
    async fn a_wrong_password_does_not_verify() {
        let hasher = PasswordHasher::new();
        let hash = hasher.hash(&password("correct horse"), None).await.unwrap();

        assert!(!hasher.verify(&password("correct horsf"), Some(&hash), None).await.unwrap());
    }

    #[tokio::test]
    async fn hashing_the_same_password_twice_uses_different_salts() {
        let hasher = PasswordHasher::new();

        let first = hasher.hash(&password("same password"), None).await.unwrap();
        let second = hasher.hash(&password("same password"), None).await.unwrap();

        assert_ne!(first, second);
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies_even_with_the_dummy_password() {
        let hasher = PasswordHasher::new();

        assert!(!hasher.verify(&password("dummy password for unknown users"), None, None).await.unwrap());
        assert!(!hasher.verify(&password("anything at all"), None, None).await.unwrap());
    }

    #[tokio::test]
    async fn the_dummy_hash_genuinely_verifies_its_own_password() {
        // If the dummy were unparsable, verifying against it would fail fast and leak timing.
        Argon2::default().verify_password(b"dummy password for unknown users", DUMMY_HASH).unwrap();
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_hash_costs() {
        let parsed = argon2::password_hash::phc::PasswordHash::new(DUMMY_HASH).unwrap();
        let params = Params::try_from(&parsed).unwrap();
        let defaults = Params::default();

        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (defaults.m_cost(), defaults.t_cost(), defaults.p_cost())
        );
    }

    #[tokio::test]
    async fn an_unknown_user_takes_as_long_as_a_wrong_password() {
        let hasher = PasswordHasher::with_concurrency(1);
        let hash = hasher.hash(&password("correct horse"), None).await.unwrap();
        let wrong = password("wrong password");

        // Interleaved, and the fastest of several runs of each, so other tests hashing in parallel do not skew it.
        let (mut known, mut unknown) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            let started = Instant::now();
            hasher.verify(&wrong, Some(&hash), None).await.unwrap();
            known = known.min(started.elapsed());
            let started = Instant::now();
            hasher.verify(&wrong, None, None).await.unwrap();
            unknown = unknown.min(started.elapsed());
        }

        // Same work, so close to each other; a skipped hash would be hundreds of times faster.
        assert!(unknown * 3 > known && known * 3 > unknown, "known {known:?} vs unknown {unknown:?}");
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_an_error_not_a_mismatch() {
        let hasher = PasswordHasher::new();
        let corrupt = PasswordHash::from_stored("not a phc string".into());

        let result = hasher.verify(&password("correct horse"), Some(&corrupt), None).await;

        assert!(matches!(result, Err(PasswordError::CorruptHash(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_work_never_exceeds_the_permits() {
        let hasher = PasswordHasher::with_concurrency(2);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));

        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (hasher, in_flight, peak) = (hasher.clone(), Arc::clone(&in_flight), Arc::clone(&peak));
                tokio::spawn(async move {
                    hasher
                        .run_blocking(None, move || {
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }

        assert!(peak.load(Ordering::SeqCst) <= 2, "peak {}", peak.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_hash_whose_caller_stopped_waiting_gives_up_its_place_and_never_runs() {
        let hasher = PasswordHasher::with_concurrency(1);
        let ran = Arc::new(AtomicUsize::new(0));
        let run = |deadline_ms: Option<i64>| {
            let ran = Arc::clone(&ran);
            hasher.run_blocking(deadline_ms, move || {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        };
        let now = || chrono::Utc::now().timestamp_millis();
        // Every permit is taken (a hash in progress, say).
        let busy = Arc::clone(&hasher.permits).acquire_owned().await.unwrap();

        let bounded = |work| async move {
            tokio::time::timeout(Duration::from_secs(10), work).await.expect("still queued 10 s later")
        };
        let queued = bounded(run(Some(now() + 100))).await;
        let late = bounded(run(Some(now() - 1))).await;

        assert!(matches!(queued, Err(PasswordError::Expired)), "{queued:?}");
        assert!(matches!(late, Err(PasswordError::Expired)), "{late:?}");
        assert_eq!(ran.load(Ordering::SeqCst), 0, "no work for answers no one reads");
        // Their places given up, the next one runs as soon as the permit is free.
        drop(busy);
        run(Some(now() + 10_000)).await.unwrap();
        run(None).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn debug_never_shows_the_hash() {
        let printed = format!("{:?}", PasswordHash::from_stored(DUMMY_HASH.to_owned()));

        assert!(!printed.contains("argon2"), "{printed}");
    }
}
