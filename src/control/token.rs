//! The token service of the control plane: the issuer's signing keys (fetched on
//! tokio's blocking pool, cached, refreshed hourly and on an unknown key id at most once
//! a minute, the last good keys kept when a fetch fails) and token verification.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::auth::token::{
    ClaimCondition, HttpTrust, JwksSource, KeyCache, RefreshTiming, TokenError, TokenPolicy, VerifiedToken, fetch_jwks,
    verify,
};
use crate::config::{TokenConfig, parse_claim_condition};

pub struct TokenService {
    cache: Mutex<KeyCache>,
    /// Fetches under way, and a counter bumped when one ends: a token that arrives while
    /// the keys are being fetched waits for them instead of being refused.
    fetching: AtomicUsize,
    fetched: watch::Sender<u64>,
    source: JwksSource,
    trust: HttpTrust,
    policy: TokenPolicy,
}

impl TokenService {
    pub fn new(config: &TokenConfig) -> anyhow::Result<Arc<TokenService>> {
        let source = match (&config.jwks_file, &config.jwks_uri) {
            (Some(file), _) => JwksSource::File(file.clone()),
            (None, Some(uri)) => JwksSource::Url(uri.clone()),
            (None, None) => JwksSource::Discovery { issuer: config.issuers.first().cloned().unwrap_or_default() },
        };
        let mut policy = TokenPolicy::new(config.issuers.clone(), config.audiences.clone());
        policy.tenant_id = config.tenant.clone();
        policy.clock_skew = Duration::from_secs(config.clock_skew_secs.into());
        policy.required_claims = config
            .required_claims
            .iter()
            .filter_map(|c| parse_claim_condition(c))
            .map(|(claim, value)| ClaimCondition::contains(&claim, &value))
            .collect();
        policy.allowed_groups = config.allowed_groups.clone();
        Ok(Arc::new(TokenService {
            cache: Mutex::new(KeyCache::new(RefreshTiming {
                min_fetch_interval: Duration::from_secs(config.min_key_refresh_secs.into()),
                ..RefreshTiming::default()
            })),
            fetching: AtomicUsize::new(0),
            fetched: watch::Sender::new(0),
            trust: HttpTrust::new(true, &config.ca_files, HttpTrust::DEFAULT_TIMEOUT)?,
            source,
            policy,
        }))
    }

    /// Verifies a token. An unknown key id triggers one key refresh (rate limited).
    pub async fn verify(self: &Arc<Self>, token: &str) -> Result<VerifiedToken, String> {
        if self.keys().is_none() {
            let fetch_ended = self.fetched.subscribe();
            self.refresh_if_due().await;
            if self.keys().is_none() {
                self.wait_for_fetch_in_flight(fetch_ended).await;
            }
        }
        let Some(keys) = self.keys() else {
            return Err(format!("no signing keys available yet from {}", self.source));
        };
        let now = crate::dataplane::sys::unix_time();
        match verify(token, &keys, &self.policy, now) {
            Err(TokenError::UnknownKeyId(kid)) => {
                let fetch_ended = self.fetched.subscribe();
                let refresh = self.lock().start_refresh_for_unknown_key(Instant::now());
                if !refresh {
                    // A fetch already under way may bring the key.
                    if self.wait_for_fetch_in_flight(fetch_ended).await
                        && let Some(keys) = self.keys()
                    {
                        return verify(token, &keys, &self.policy, now).map_err(|e| e.to_string());
                    }
                    return Err(TokenError::UnknownKeyId(kid).to_string());
                }
                info!(kid, source = %self.source, "unknown signing key: fetching the issuer's keys");
                let keys = self.fetch().await.map_err(|_| TokenError::UnknownKeyId(kid.clone()).to_string())?;
                verify(token, &keys, &self.policy, now).map_err(|e| e.to_string())
            }
            other => other.map_err(|e| e.to_string()),
        }
    }

    /// Fetches the keys when a scheduled refresh is due (first use, hourly, or retry
    /// after a failure). Call it periodically.
    pub async fn refresh_if_due(self: &Arc<Self>) {
        let due = self.lock().start_scheduled_refresh(Instant::now());
        if due.is_some() {
            let _ = self.fetch().await;
        }
    }

    /// Waits (at most the fetch timeout) for a fetch under way to end; false when none was.
    async fn wait_for_fetch_in_flight(&self, mut fetch_ended: watch::Receiver<u64>) -> bool {
        if self.fetching.load(Ordering::SeqCst) == 0 {
            return false;
        }
        tokio::time::timeout(HttpTrust::DEFAULT_TIMEOUT + Duration::from_secs(1), fetch_ended.changed()).await.is_ok()
    }

    /// Runs a fetch the cache has agreed to, and records its result.
    async fn fetch(self: &Arc<Self>) -> Result<Arc<crate::auth::token::Jwks>, ()> {
        self.fetching.fetch_add(1, Ordering::SeqCst);
        let result = self.fetch_now().await;
        self.fetching.fetch_sub(1, Ordering::SeqCst);
        self.fetched.send_modify(|n| *n += 1);
        result
    }

    async fn fetch_now(self: &Arc<Self>) -> Result<Arc<crate::auth::token::Jwks>, ()> {
        let this = self.clone();
        let fetched =
            tokio::task::spawn_blocking(move || fetch_jwks(&this.source, &this.trust)).await.unwrap_or_else(|e| {
                Err(crate::auth::token::FetchError::Http { url: self.source.to_string(), reason: e.to_string() })
            });
        match self.lock().finish_refresh(fetched, Instant::now()) {
            Ok(keys) => {
                info!(source = %self.source, keys = %keys, "token signing keys loaded");
                Ok(keys)
            }
            Err(e) => {
                warn!(source = %self.source, error = %e, "cannot fetch token signing keys; keeping the previous ones");
                Err(())
            }
        }
    }

    fn keys(&self) -> Option<Arc<crate::auth::token::Jwks>> {
        self.lock().keys()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
