//! `oauth_token` / `oauth_provider` from the query string, checked against configured tokens.

use std::collections::HashSet;

use serde::Deserialize;

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
}

impl Auth {
    pub fn new(tokens: Vec<String>, providers: Vec<String>) -> Self {
        Self { tokens: tokens.into_iter().collect(), providers: providers.into_iter().collect() }
    }

    /// No tokens configured: every request is accepted.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn check(&self, q: &AuthQuery) -> Result<(), ApiError> {
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
        let a = Auth::new(vec!["secret".into()], vec!["mcs".into()]);
        assert!(a.check(&q(Some("secret"), Some("mcs"))).is_ok());
        assert!(a.check(&q(Some("secreT"), Some("mcs"))).is_err());
        assert!(a.check(&q(Some("secret"), Some("vk"))).is_err());
        assert!(a.check(&q(None, Some("mcs"))).is_err());
        let err = a.check(&q(Some("wrong-token"), Some("mcs"))).unwrap_err().to_string();
        assert!(!err.contains("wrong-token"), "never echo a token: {err}");
    }

    #[test]
    fn open_when_no_tokens() {
        assert!(Auth::new(vec![], vec![]).check(&q(None, None)).is_ok());
    }
}
