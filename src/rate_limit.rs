//! The per-IP request rate limit of the external endpoints (streams and
//! SSE tokens): one GCRA bucket per client address (governor).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::LimitSettings;
use crate::error::ApiError;

/// Limits requests per client IP; disabled when the rate is 0.
pub struct RateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trust_forwarded_for: bool,
}

impl RateLimiter {
    /// `rate_per_minute` sustained, bursts of `rate_burst`.
    pub fn new(settings: &LimitSettings) -> Self {
        let limiter = (settings.rate_per_minute > 0).then(|| {
            let period = Duration::from_secs(60) / settings.rate_per_minute;
            let burst = NonZeroU32::new(settings.rate_burst.max(1)).unwrap_or(NonZeroU32::MIN);
            // `period` is non-zero: at most 60 s / u32::MAX, still > 0 ns.
            let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
                .allow_burst(burst);
            DefaultKeyedRateLimiter::keyed(quota)
        });
        Self {
            limiter,
            trust_forwarded_for: settings.trust_forwarded_for,
        }
    }

    /// The client address a request counts against. Behind a trusted
    /// proxy, the last `X-Forwarded-For` entry: the one the proxy appended;
    /// entries to its left came from the client, who can write anything.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        if self.trust_forwarded_for {
            let forwarded = req
                .headers()
                .get_all("x-forwarded-for")
                .last()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|ip| ip.trim().parse().ok());
            if forwarded.is_some() {
                return forwarded;
            }
        }
        req.peer_addr().map(|a| a.ip())
    }

    /// Counts one request.
    ///
    /// # Errors
    /// `RATE_LIMITED` with the seconds until the next request is allowed.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let (Some(limiter), Some(ip)) = (&self.limiter, self.client_ip(req)) else {
            return Ok(());
        };
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    /// Forgets buckets that are full again (bounded memory under many IPs).
    pub fn sweep(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}
