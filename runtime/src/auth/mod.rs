//! Who may write the audit trail (`auth.mode: jwt`): a bearer JWT verified offline against
//! each issuer's cached keys ([`keys`]), its principal matched against `auth.emitters` for
//! the event's `source`, and each principal's share of the ingest ([`bucket`]).

pub mod bucket;
pub mod config;
mod fetch;
pub mod keys;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Validation, decode, decode_header};
use serde::Deserialize;

use self::bucket::Buckets;
use self::config::{AuthConfig, AuthMode, EmitterConfig};
use self::keys::{IssuerKeys, KeySet};

/// The longest token read from `Authorization`.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Verified tokens remembered (their signature is not checked again until they expire, the
/// keys are read again, or a minute passes).
const MAX_REMEMBERED: usize = 10_000;
const REMEMBER_FOR: Duration = Duration::from_secs(60);

/// Why a request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no usable token.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: a principal writing a source it may not.
    #[error("{0}")]
    Forbidden(String),
    /// 429: the principal is over its share.
    #[error("{message}")]
    OverShare {
        message: String,
        retry_after: Duration,
    },
}

/// An authenticated principal and what it may write.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `<issuer name>/<principal>`, stored with every row it sends.
    pub principal: Arc<str>,
    /// The source prefixes of every emitter entry it matches (`*`: any).
    sources: Arc<[String]>,
}

impl Caller {
    /// Refuses `source` unless one of the caller's prefixes admits it; `at` is the event's
    /// place in a batch (`("events", 3)` names it `events[3]`).
    pub fn may_write(&self, source: &str, at: Option<(&str, usize)>) -> Result<(), Refusal> {
        if self
            .sources
            .iter()
            .any(|p| p == "*" || source.starts_with(p.as_str()))
        {
            return Ok(());
        }
        let at = at.map_or(String::new(), |(prefix, i)| format!("{prefix}[{i}]: "));
        Err(Refusal::Forbidden(format!(
            "{at}{} may not write source `{source}`; it may write sources starting with {} (auth.emitters)",
            self.principal,
            self.sources
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

#[derive(Deserialize)]
struct Unverified {
    iss: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    azp: Option<String>,
    /// Required and checked by the verification.
    exp: u64,
}

struct Remembered {
    caller: Caller,
    keys: Arc<KeySet>,
    until: Instant,
}

/// The verifier of one runtime (present only with `auth.mode: jwt`).
pub struct Authenticator {
    issuers: Vec<Arc<IssuerKeys>>,
    emitters: Vec<EmitterConfig>,
    buckets: Option<Buckets>,
    remembered: Mutex<HashMap<Box<str>, Remembered>>,
}

impl Authenticator {
    /// Reads every issuer's keys once and keeps them current in the background; None when
    /// authentication is off.
    pub async fn start(config: &AuthConfig) -> Option<Arc<Authenticator>> {
        if config.mode == AuthMode::None {
            return None;
        }
        let mut issuers = Vec::new();
        for issuer in &config.issuers {
            let keys = IssuerKeys::load(issuer.clone()).await;
            if keys.current().is_empty() {
                tracing::warn!(issuer = %issuer.name, "no signing key yet: its tokens are refused until its keys can be read");
            }
            tokio::spawn(Arc::clone(&keys).refresh_forever());
            issuers.push(keys);
        }
        Some(Arc::new(Authenticator {
            issuers,
            emitters: config.emitters.clone(),
            buckets: (config.rate_per_second > 0)
                .then(|| Buckets::new(config.rate_per_second, config.burst)),
            remembered: Mutex::new(HashMap::new()),
        }))
    }

    /// The caller of a request, from its `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, Refusal> {
        let header = authorization.ok_or_else(|| {
            Refusal::Unauthenticated(
                "no bearer token: send `Authorization: Bearer <JWT>` (auth.mode is jwt)".into(),
            )
        })?;
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| {
                let (scheme, token) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Refusal::Unauthenticated("the Authorization header is not `Bearer <JWT>`".into())
            })?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Unauthenticated(format!(
                "the token is {} bytes; at most {MAX_TOKEN_BYTES} are read",
                token.len()
            )));
        }
        let now = Instant::now();
        if let Some(caller) = self.recall(token, now) {
            return Ok(caller);
        }
        let (caller, keys, until) = self.verify(token, now)?;
        let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if remembered.len() >= MAX_REMEMBERED {
            remembered.retain(|_, r| r.until > now);
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(
            token.into(),
            Remembered {
                caller: caller.clone(),
                keys,
                until,
            },
        );
        Ok(caller)
    }

    fn recall(&self, token: &str, now: Instant) -> Option<Caller> {
        let remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        let r = remembered.get(token)?;
        let current = self
            .issuers
            .iter()
            .any(|i| Arc::ptr_eq(&i.current(), &r.keys));
        (r.until > now && current).then(|| r.caller.clone())
    }

    /// Verifies a token in full: issuer, key, algorithm, signature, `exp`, `nbf`, `aud`.
    fn verify(&self, token: &str, now: Instant) -> Result<(Caller, Arc<KeySet>, Instant), Refusal> {
        let bad = |why: String| Refusal::Unauthenticated(format!("invalid token: {why}"));
        let header = decode_header(token).map_err(|e| bad(format!("header: {e}")))?;
        let iss = token
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|p| serde_json::from_slice::<Unverified>(&p).ok())
            .and_then(|c| c.iss)
            .ok_or_else(|| bad("no readable `iss` claim".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| bad(format!("issuer `{iss}` is not trusted here (auth.issuers)")))?;
        let keys = issuer.current();
        let candidates = keys.find(header.kid.as_deref());
        if candidates.is_empty() {
            issuer.ask_for_read();
            return Err(bad(format!(
                "no signing key {} of issuer `{iss}` is known (its keys are read again now)",
                header
                    .kid
                    .as_deref()
                    .map_or("without kid".to_string(), |k| format!("`{k}`"))
            )));
        }
        let config = &issuer.config;
        let mut last = None;
        for key in candidates {
            if !key.algorithms.contains(&header.alg) {
                last = Some(format!(
                    "algorithm {:?} does not fit the issuer's key",
                    header.alg
                ));
                continue;
            }
            let mut rules = Validation::new(header.alg);
            rules.leeway = config.clock_skew_seconds;
            rules.validate_nbf = true;
            rules.set_issuer(&[&config.issuer]);
            rules.set_audience(&config.audiences);
            rules.set_required_spec_claims(&["exp", "iss", "aud"]);
            match decode::<Claims>(token, &key.key, &rules) {
                Ok(data) => {
                    let claims = data.claims;
                    let name = match config.principal_claim.as_str() {
                        "azp" => claims.azp,
                        _ => claims.sub,
                    }
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        bad(format!(
                            "no `{}` claim to name the principal",
                            config.principal_claim
                        ))
                    })?;
                    let caller = self.caller(&config.name, &name)?;
                    let left = claims
                        .exp
                        .saturating_sub(chrono::Utc::now().timestamp().max(0) as u64);
                    let until = now + REMEMBER_FOR.min(Duration::from_secs(left));
                    return Ok((caller, keys, until));
                }
                Err(e) => last = Some(explain(&e, config)),
            }
        }
        Err(bad(last.unwrap_or_default()))
    }

    /// The emitter entries `name` of issuer `issuer` matches, as one caller.
    fn caller(&self, issuer: &str, name: &str) -> Result<Caller, Refusal> {
        let sources: Vec<String> = self
            .emitters
            .iter()
            .filter(|e| e.issuer.is_empty() || e.issuer == issuer)
            .filter(|e| glob(&e.principal, name))
            .flat_map(|e| e.sources.iter().cloned())
            .collect();
        let principal: Arc<str> = format!("{issuer}/{name}").into();
        if sources.is_empty() {
            return Err(Refusal::Forbidden(format!(
                "{principal} is authenticated but is not an emitter (auth.emitters)"
            )));
        }
        Ok(Caller {
            principal,
            sources: sources.into(),
        })
    }

    /// Takes `n` events from the caller's share.
    pub fn charge(&self, caller: &Caller, n: usize) -> Result<(), Refusal> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        buckets
            .take(&caller.principal, n, Instant::now())
            .map_err(|wait| Refusal::OverShare {
                message: format!(
                    "{} is over its share of the ingest (auth.rate_per_second, auth.burst); nothing of this request was accepted",
                    caller.principal
                ),
                retry_after: wait,
            })
    }
}

/// A verification failure in words an emitter's operator can act on.
fn explain(e: &jsonwebtoken::errors::Error, config: &config::IssuerConfig) -> String {
    use jsonwebtoken::errors::ErrorKind;
    let skew = config.clock_skew_seconds;
    match e.kind() {
        ErrorKind::ExpiredSignature => {
            format!("expired (exp is past, beyond {skew} s of clock skew): get a new token")
        }
        ErrorKind::ImmatureSignature => {
            format!("not yet valid (nbf is ahead, beyond {skew} s of clock skew)")
        }
        ErrorKind::InvalidAudience => format!(
            "its aud names none of {} (auth.issuers[].audiences)",
            config.audiences.join(", ")
        ),
        ErrorKind::InvalidSignature => "the signature does not verify with the issuer's key".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("no `{claim}` claim"),
        _ => e.to_string(),
    }
}

/// `pattern` with `*` matching any run of characters (none included).
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_service_accounts_and_clients() {
        assert!(glob(
            "system:serviceaccount:registry:*",
            "system:serviceaccount:registry:api"
        ));
        assert!(!glob(
            "system:serviceaccount:registry:*",
            "system:serviceaccount:other:api"
        ));
        assert!(glob("*", "anything"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abde"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(!glob("ab*ba", "aba"), "the ends may not overlap");
    }

    #[test]
    fn a_source_outside_the_prefixes_is_refused_naming_principal_and_source() {
        let caller = Caller {
            principal: "cluster/system:serviceaccount:registry:api".into(),
            sources: vec!["urn:openg2p:registry".to_string()].into(),
        };
        assert!(caller.may_write("urn:openg2p:registry/api", None).is_ok());
        let refused = caller
            .may_write("urn:openg2p:payments", Some(("events", 3)))
            .expect_err("another source");
        let Refusal::Forbidden(message) = refused else {
            panic!("403 expected");
        };
        assert!(message.starts_with("events[3]: cluster/system:serviceaccount:registry:api may not write source `urn:openg2p:payments`"), "{message}");
    }
}
