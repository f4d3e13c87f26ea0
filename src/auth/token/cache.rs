//! When to fetch the identity provider's keys. No I/O here: the caller asks whether a
//! fetch is due, runs [`fetch_jwks`](super::fetch_jwks) itself, and hands the result back.
//!
//! Every fetch attempt, whatever its reason, is at least `min_fetch_interval` after the
//! previous one, so a flood of tokens naming random key ids costs the identity provider
//! one request a minute, and a failing provider is retried at that pace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{FetchError, Jwks};

/// How often keys are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshTiming {
    /// Age of the key set after which it is fetched again.
    pub refresh_interval: Duration,
    /// Shortest time between two fetch attempts: bounds unknown-key refreshes and retries.
    pub min_fetch_interval: Duration,
}

impl Default for RefreshTiming {
    fn default() -> Self {
        RefreshTiming { refresh_interval: Duration::from_secs(3_600), min_fetch_interval: Duration::from_secs(60) }
    }
}

/// Why a scheduled fetch is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    /// No fetch was ever attempted.
    Initial,
    /// The last attempt failed, or none has succeeded yet.
    RetryAfterFailure,
    /// The key set is `refresh_interval` old.
    Periodic,
}

/// The last good key set and the fetch schedule.
#[derive(Debug)]
pub struct KeyCache {
    timing: RefreshTiming,
    keys: Option<Arc<Jwks>>,
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    last_attempt_failed: bool,
}

impl KeyCache {
    pub fn new(timing: RefreshTiming) -> KeyCache {
        KeyCache { timing, keys: None, last_attempt: None, last_success: None, last_attempt_failed: false }
    }

    /// The last key set fetched successfully; `None` until the first success.
    pub fn keys(&self) -> Option<Arc<Jwks>> {
        self.keys.clone()
    }

    /// When the current key set was stored.
    pub fn last_success(&self) -> Option<Instant> {
        self.last_success
    }

    /// For a timer: whether a fetch is due now. When it is, the attempt is recorded as
    /// started; the caller must fetch and report with [`KeyCache::finish_refresh`].
    pub fn start_scheduled_refresh(&mut self, now: Instant) -> Option<RefreshReason> {
        let reason = self.scheduled_reason(now)?;
        self.last_attempt = Some(now);
        Some(reason)
    }

    /// For a token naming a key id the current set lacks: whether to fetch now. When
    /// `true`, the attempt is recorded as started, as with [`KeyCache::start_scheduled_refresh`].
    pub fn start_refresh_for_unknown_key(&mut self, now: Instant) -> bool {
        if !self.may_attempt(now) {
            return false;
        }
        self.last_attempt = Some(now);
        true
    }

    /// Stores a fetched key set, or keeps the previous one when the fetch failed; the
    /// error comes back for the caller to log.
    pub fn finish_refresh(&mut self, result: Result<Jwks, FetchError>, now: Instant) -> Result<Arc<Jwks>, FetchError> {
        match result {
            Ok(jwks) => {
                let keys = Arc::new(jwks);
                self.keys = Some(keys.clone());
                self.last_success = Some(now);
                self.last_attempt_failed = false;
                Ok(keys)
            }
            Err(error) => {
                self.last_attempt_failed = true;
                Err(error)
            }
        }
    }

    /// How long a timer may sleep before [`KeyCache::start_scheduled_refresh`] has
    /// something to do (zero when a fetch is due now).
    pub fn time_until_scheduled_refresh(&self, now: Instant) -> Duration {
        let Some(last_attempt) = self.last_attempt else {
            return Duration::ZERO;
        };
        let until_attempt_allowed = self.timing.min_fetch_interval.saturating_sub(now.duration_since(last_attempt));
        match self.last_success {
            Some(last_success) if !self.last_attempt_failed => {
                until_attempt_allowed.max(self.timing.refresh_interval.saturating_sub(now.duration_since(last_success)))
            }
            _ => until_attempt_allowed,
        }
    }

    fn scheduled_reason(&self, now: Instant) -> Option<RefreshReason> {
        if self.last_attempt.is_none() {
            return Some(RefreshReason::Initial);
        }
        if !self.may_attempt(now) {
            return None;
        }
        match self.last_success {
            Some(_) if self.last_attempt_failed => Some(RefreshReason::RetryAfterFailure),
            Some(last_success) => {
                (now.duration_since(last_success) >= self.timing.refresh_interval).then_some(RefreshReason::Periodic)
            }
            None => Some(RefreshReason::RetryAfterFailure),
        }
    }

    fn may_attempt(&self, now: Instant) -> bool {
        self.last_attempt.is_none_or(|last| now.duration_since(last) >= self.timing.min_fetch_interval)
    }
}
