//! `oauth_token` / `oauth_provider` from the query string, checked against configured tokens.

use std::collections::HashSet;

use serde::Deserialize;

use super::ratelimit::RateLimiter;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct AuthQuery {
    pub oauth_token: Option<String>,
    pub oauth_provider: Option<String>,
}

#[derive(Debug)]
pub struct Auth {
    tokens: HashSet<String>,
    providers: HashSet<String>,
    /// Per-token rate limits (`rate_limit`), checked after the token.
    limiter: Option<RateLimiter>,
}

impl Auth {
    pub fn new(tokens: Vec<String>, providers: Vec<String>, rate: crate::config::RateLimitConfig) -> Self {
        Self {
            tokens: tokens.into_iter().collect(),
            providers: providers.into_iter().collect(),
            limiter: RateLimiter::new(rate.requests_per_s, rate.burst),
        }
    }

    /// The token is valid (or auth is open) and within its rate limit.
    pub fn check(&self, q: &AuthQuery) -> Result<(), ApiError> {
        self.check_token(q)?;
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.take(q.oauth_token.as_deref().unwrap_or_default(), std::time::Instant::now()).map_err(|wait| {
            ::metrics::counter!(crate::metrics::REFUSALS, "reason" => "rate_limit").increment(1);
            let retry_after_s = wait.as_secs_f64().ceil().max(1.0) as u64;
            ApiError::RateLimited {
                message: format!("rate limit exceeded for this token: retry in {retry_after_s} s (rate_limit)"),
                retry_after_s,
            }
        })
    }

    /// The Open Inference Protocol's way: `Authorization: Bearer <token>` (HTTP) or the gRPC
    /// metadata's `authorization`; the Vision query's `oauth_token` (+ `oauth_provider`) also
    /// passes. The same tokens and rate limits.
    pub fn check_bearer(&self, authorization: Option<&str>, query: &AuthQuery) -> Result<(), ApiError> {
        let bearer = authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")));
        let Some(token) = bearer.map(str::trim) else {
            if query.oauth_token.is_some() || self.is_open() {
                return self.check(query);
            }
            return Err(ApiError::Forbidden("a token is required: `Authorization: Bearer <token>`".into()));
        };
        // A bearer token needs no provider.
        let provider = self.providers.iter().next().cloned().unwrap_or_else(|| "bearer".into());
        self.check(&AuthQuery { oauth_token: Some(token.to_string()), oauth_provider: Some(provider) })
    }

    /// No tokens configured: every request is accepted.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    fn check_token(&self, q: &AuthQuery) -> Result<(), ApiError> {
        if self.is_open() {
            return Ok(());
        }
        let token = q.oauth_token.as_deref().unwrap_or_default();
        let provider = q.oauth_provider.as_deref().unwrap_or_default();
        if token.is_empty() || provider.is_empty() {
            return Err(ApiError::Forbidden("oauth_token and oauth_provider are required".into()));
        }
        if !self.providers.is_empty() && !self.providers.contains(provider) {
            return Err(ApiError::Forbidden(format!("unsupported oauth_provider: {provider}")));
        }
        // Compare against every token without stopping early, so timing does not reveal a prefix.
        let mut ok = false;
        for t in &self.tokens {
            ok |= constant_time_eq(t.as_bytes(), token.as_bytes());
        }
        if ok { Ok(()) } else { Err(ApiError::Forbidden("invalid oauth_token".into())) }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(t: Option<&str>, p: Option<&str>) -> AuthQuery {
        AuthQuery { oauth_token: t.map(String::from), oauth_provider: p.map(String::from) }
    }

    #[test]
    fn checks_token_and_provider() {
        let a = Auth::new(vec!["secret".into()], vec!["mcs".into()], Default::default());
        assert!(a.check(&q(Some("secret"), Some("mcs"))).is_ok());
        assert!(a.check(&q(Some("secreT"), Some("mcs"))).is_err());
        assert!(a.check(&q(Some("secret"), Some("vk"))).is_err());
        assert!(a.check(&q(None, Some("mcs"))).is_err());
        let err = a.check(&q(Some("wrong-token"), Some("mcs"))).unwrap_err().to_string();
        assert!(!err.contains("wrong-token"), "never echo a token: {err}");
    }

    #[test]
    fn a_bearer_token_passes_like_the_query_one() {
        let a = Auth::new(vec!["secret".into()], vec!["mcs".into()], Default::default());
        let none = q(None, None);
        assert!(a.check_bearer(Some("Bearer secret"), &none).is_ok());
        assert!(a.check_bearer(Some("Bearer wrong"), &none).is_err());
        assert!(a.check_bearer(None, &none).unwrap_err().to_string().contains("Bearer"));
        assert!(a.check_bearer(None, &q(Some("secret"), Some("mcs"))).is_ok());
        assert!(Auth::new(vec![], vec![], Default::default()).check_bearer(None, &none).is_ok());
    }

    #[test]
    fn open_when_no_tokens() {
        assert!(Auth::new(vec![], vec![], Default::default()).check(&q(None, None)).is_ok());
    }

    #[test]
    fn a_token_over_its_rate_gets_429_after_its_burst_and_others_pass() {
        let rate = crate::config::RateLimitConfig { requests_per_s: 0.01, burst: 2.0 };
        let a = Auth::new(vec!["a".into(), "b".into()], vec![], rate);
        let (ta, tb) = (q(Some("a"), Some("mcs")), q(Some("b"), Some("mcs")));
        assert!(a.check(&ta).is_ok() && a.check(&ta).is_ok());
        let e = a.check(&ta).unwrap_err();
        assert!(matches!(e, ApiError::RateLimited { retry_after_s: 100, .. }), "{e:?}");
        assert_eq!(e.envelope_status(), 429);
        assert!(a.check(&tb).is_ok());
        // A wrong token is refused as such, and does not spend anyone's requests.
        assert!(matches!(a.check(&q(Some("c"), Some("mcs"))), Err(ApiError::Forbidden(_))));
    }
}
