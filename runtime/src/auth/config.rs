//! The `auth` section of the configuration: who may write the audit trail.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// How emitters are identified.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone who reaches the port may write any `source` (the original behaviour). Rows carry
    /// no principal.
    #[default]
    None,
    /// Every event request carries a bearer JWT from one of `issuers`; its principal must be
    /// listed in `emitters` for the event's `source`.
    Jwt,
}

/// Authentication, authorization and each emitter's share of the ingest.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub issuers: Vec<IssuerConfig>,
    pub emitters: Vec<EmitterConfig>,
    /// Events per second each principal may send, on average (0: no limit).
    pub rate_per_second: u32,
    /// Events a principal may send at once above its rate (at least `ingest.max_batch_size`,
    /// or a full batch could never pass).
    pub burst: u32,
}

/// A token issuer whose signatures are trusted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerConfig {
    /// A short name, stored with the principal (`<name>/<principal>`) and named by emitters.
    pub name: String,
    /// The `iss` claim, exactly.
    pub issuer: String,
    /// Where the signing keys (a JWK set) are read: a URL (`https://…/certs`) …
    pub jwks_url: String,
    /// … or a file (the operator writes the cluster's keys to one).
    pub jwks_file: String,
    /// The CA that signs the JWKS server's certificate (empty: the system trust store).
    pub jwks_ca_file: String,
    /// A bearer token sent to the JWKS URL (the API server's `/openid/v1/jwks` asks for one).
    pub jwks_token_file: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Tolerance for `exp` and `nbf`, in seconds.
    pub clock_skew_seconds: u64,
    /// How often the keys are read again; an unknown `kid` also asks for a read, at most once
    /// per `min_refresh_seconds`.
    pub refresh_seconds: u64,
    pub min_refresh_seconds: u64,
    /// The claim that names the principal: `sub` (Kubernetes service accounts) or `azp`
    /// (the client of a Keycloak access token).
    pub principal_claim: String,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            name: String::new(),
            issuer: String::new(),
            jwks_url: String::new(),
            jwks_file: String::new(),
            jwks_ca_file: String::new(),
            jwks_token_file: String::new(),
            audiences: Vec::new(),
            clock_skew_seconds: 60,
            refresh_seconds: 300,
            min_refresh_seconds: 10,
            principal_claim: "sub".into(),
        }
    }
}

/// Principals allowed to write some sources.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EmitterConfig {
    /// A principal, `*` matching any run of characters: `system:serviceaccount:registry:*`.
    pub principal: String,
    /// The issuer's `name` it must come from (empty: any).
    pub issuer: String,
    /// `source` prefixes it may write; `*` alone allows every source.
    pub sources: Vec<String>,
}

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl AuthConfig {
    /// Checks what can be checked without reading keys; `max_batch_size` bounds `burst`.
    pub fn validate(&self, max_batch_size: usize) -> Result<(), ConfigError> {
        if self.mode == AuthMode::None {
            return Ok(());
        }
        if self.issuers.is_empty() {
            return Err(invalid(
                "auth.issuers".into(),
                "auth.mode jwt needs at least one issuer",
            ));
        }
        if self.emitters.is_empty() {
            return Err(invalid(
                "auth.emitters".into(),
                "auth.mode jwt needs at least one emitter, or every event would be refused",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let at = |field: &str| format!("auth.issuers[{i}].{field}");
            if issuer.name.is_empty() || issuer.name.contains('/') {
                return Err(invalid(at("name"), "must be set, without `/`"));
            }
            if !names.insert(issuer.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("`{}` is used twice", issuer.name),
                ));
            }
            if issuer.issuer.is_empty() {
                return Err(invalid(at("issuer"), "must be set (the tokens' `iss`)"));
            }
            if issuer.jwks_url.is_empty() == issuer.jwks_file.is_empty() {
                return Err(invalid(
                    at("jwks_url"),
                    "set exactly one of jwks_url and jwks_file",
                ));
            }
            if !issuer.jwks_url.is_empty()
                && !issuer.jwks_url.starts_with("https://")
                && !issuer.jwks_url.starts_with("http://")
            {
                return Err(invalid(at("jwks_url"), "must be an http(s) URL"));
            }
            if issuer.audiences.is_empty() {
                return Err(invalid(
                    at("audiences"),
                    "name at least one audience: a token for another service must not be accepted here",
                ));
            }
            if !["sub", "azp"].contains(&issuer.principal_claim.as_str()) {
                return Err(invalid(at("principal_claim"), "must be `sub` or `azp`"));
            }
            if issuer.refresh_seconds == 0 || issuer.min_refresh_seconds == 0 {
                return Err(invalid(
                    at("refresh_seconds"),
                    "refresh_seconds and min_refresh_seconds must be greater than 0",
                ));
            }
        }
        for (i, emitter) in self.emitters.iter().enumerate() {
            let at = |field: &str| format!("auth.emitters[{i}].{field}");
            if emitter.principal.is_empty() {
                return Err(invalid(
                    at("principal"),
                    "must be set (`*` matches any run)",
                ));
            }
            if !emitter.issuer.is_empty() && !names.contains(emitter.issuer.as_str()) {
                return Err(invalid(
                    at("issuer"),
                    format!("`{}` is not the name of an issuer", emitter.issuer),
                ));
            }
            if emitter.sources.is_empty() || emitter.sources.iter().any(String::is_empty) {
                return Err(invalid(
                    at("sources"),
                    "list the source prefixes it may write (`*` for every source)",
                ));
            }
        }
        if self.rate_per_second > 0 && (self.burst as usize) < max_batch_size {
            return Err(invalid(
                "auth.burst".into(),
                format!(
                    "{} is below ingest.max_batch_size {max_batch_size}: a full batch could never pass",
                    self.burst
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(yaml: &str) -> String {
        let config: AuthConfig = audit_manager_crds::yaml::from_str(yaml).expect("yaml");
        match config.validate(500) {
            Err(ConfigError::Invalid { key, message }) => format!("{key}: {message}"),
            other => panic!("expected a refusal: {other:?}"),
        }
    }

    const ISSUER: &str =
        "{name: kc, issuer: 'https://kc/realms/r', jwks_url: 'https://kc/certs', audiences: [a]}";

    #[test]
    fn an_incomplete_jwt_section_is_refused_by_key() {
        assert!(refused("mode: jwt").starts_with("auth.issuers: "));
        assert!(refused(&format!("mode: jwt\nissuers: [{ISSUER}]")).starts_with("auth.emitters: "));
        let emitters = "emitters: [{principal: x, sources: [s]}]";
        let issuer = |extra: &str| {
            format!(
                "mode: jwt\nissuers: [{{name: kc, issuer: i, audiences: [a]{extra}}}]\n{emitters}"
            )
        };
        assert!(refused(&issuer("")).contains("auth.issuers[0].jwks_url: set exactly one"));
        assert!(refused(&issuer(", jwks_url: ftp://x")).contains("must be an http(s) URL"));
        assert!(
            refused(&issuer(", jwks_file: f, principal_claim: email")).contains("principal_claim")
        );
        assert!(
            refused(&format!("mode: jwt\nissuers: [{ISSUER}]\nemitters: [{{principal: x, issuer: other, sources: [s]}}]"))
                .contains("auth.emitters[0].issuer: `other` is not the name of an issuer")
        );
        assert!(
            refused(&format!(
                "mode: jwt\nissuers: [{ISSUER}]\n{emitters}\nrate_per_second: 10\nburst: 100"
            ))
            .starts_with("auth.burst: 100 is below ingest.max_batch_size 500")
        );
        let fine: AuthConfig = audit_manager_crds::yaml::from_str(&format!(
            "mode: jwt\nissuers: [{ISSUER}]\n{emitters}"
        ))
        .expect("yaml");
        assert!(fine.validate(500).is_ok());
        assert!(
            AuthConfig::default().validate(500).is_ok(),
            "none needs nothing"
        );
    }
}
