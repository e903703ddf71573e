//! Single-use SSE tokens for browsers (EventSource cannot send headers):
//! minted with a map key, stored hashed, used up by the stream it opens
//! (a request refused on the way leaves it valid), expired after
//! `auth.sse_token_ttl_secs`. A single node keeps them in memory; in
//! a cluster they are stored in the database, so a token minted on one node
//! opens a stream on any.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use ulid::Ulid;

use crate::auth::{generate_secret, hash_secret, SecretHash};
use crate::cluster::Cluster;
use crate::store::StoreError;

/// What a token grants: one stream of one map, counted against its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrant {
    pub map_id: Ulid,
    /// `None` when minted with the admin token.
    pub key_id: Option<Ulid>,
}

/// Outstanding tokens.
pub struct SseTokens {
    ttl: Duration,
    // A std Mutex: insert and remove only, never across an `.await`.
    tokens: Mutex<HashMap<SecretHash, (TokenGrant, Instant)>>,
    cluster: Option<std::sync::Arc<Cluster>>,
}

impl SseTokens {
    /// Tokens that live `ttl`, kept in memory.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            tokens: Mutex::default(),
            cluster: None,
        }
    }

    /// Tokens that live `ttl`, kept where every node of `cluster` finds
    /// them (in memory on a single node).
    pub fn shared(ttl: Duration, cluster: std::sync::Arc<Cluster>) -> Self {
        Self {
            cluster: Some(cluster),
            ..Self::new(ttl)
        }
    }

    /// Mints a token, in the cluster's database when there is one.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn mint(&self, grant: TokenGrant) -> Result<String, StoreError> {
        if let Some(cluster) = &self.cluster {
            let token = generate_secret("st_");
            if cluster
                .issue_token(&hash_secret(&token), grant, self.ttl)
                .await?
            {
                return Ok(token);
            }
        }
        Ok(self.issue(grant))
    }

    /// What a token minted by [`SseTokens::mint`] on any node grants,
    /// without using it up.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn peek(&self, token: &str) -> Result<Option<TokenGrant>, StoreError> {
        let hash = hash_secret(token);
        let local = self
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&hash)
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(grant, _)| *grant);
        match (local, &self.cluster) {
            (Some(grant), _) => Ok(Some(grant)),
            (None, Some(cluster)) => cluster.peek_token(&hash).await,
            (None, None) => Ok(None),
        }
    }

    /// Consumes a token minted by [`SseTokens::mint`] on any node.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn consume(&self, token: &str) -> Result<Option<TokenGrant>, StoreError> {
        if let Some(grant) = self.redeem(token) {
            return Ok(Some(grant));
        }
        match &self.cluster {
            Some(cluster) => cluster.redeem_token(&hash_secret(token)).await,
            None => Ok(None),
        }
    }

    /// Lifetime of new tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Mints a token; expired ones are swept on the way.
    pub fn issue(&self, grant: TokenGrant) -> String {
        let token = generate_secret("st_");
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(hash_secret(&token), (grant, now + self.ttl));
        token
    }

    /// Consumes a token: valid once, before it expires.
    pub fn redeem(&self, token: &str) -> Option<TokenGrant> {
        let entry = self
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&hash_secret(token));
        entry
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(grant, _)| grant)
    }

    /// Removes every token minted with this key (it was revoked).
    pub fn revoke_key(&self, key_id: Ulid) {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, (g, _)| g.key_id != Some(key_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> TokenGrant {
        TokenGrant {
            map_id: Ulid::generate(),
            key_id: Some(Ulid::generate()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_single_use_and_expire() {
        let tokens = SseTokens::new(Duration::from_secs(30));
        let g = grant();
        let t = tokens.issue(g);
        assert_eq!(tokens.peek(&t).await.unwrap(), Some(g));
        assert_eq!(tokens.redeem(&t), Some(g), "a peek does not use it up");
        assert_eq!(tokens.redeem(&t), None, "second use");
        let late = tokens.issue(g);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(tokens.peek(&late).await.unwrap(), None, "expired");
        assert_eq!(tokens.redeem(&late), None, "expired");
        assert_eq!(tokens.redeem("st_unknown"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn revoking_a_key_voids_its_tokens() {
        let tokens = SseTokens::new(Duration::from_secs(30));
        let g = grant();
        let t = tokens.issue(g);
        tokens.revoke_key(g.key_id.unwrap());
        assert_eq!(tokens.redeem(&t), None);
    }
}
