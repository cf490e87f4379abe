//! An issuer's signing keys: a JWK set read from a file or a URL, kept in memory and read
//! again in the background. Verifying a token never waits for the network: an unknown `kid`
//! is refused at once and asks for an early read (at most once per `min_refresh_seconds`).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::Notify;

use super::config::IssuerConfig;
use super::fetch;

/// One verification key and the algorithms it may verify.
pub struct Key {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

/// The keys of one issuer, by `kid` (keys without one are tried in order).
#[derive(Default)]
pub struct KeySet {
    pub by_kid: HashMap<String, Arc<Key>>,
    pub without_kid: Vec<Arc<Key>>,
}

impl KeySet {
    /// The key for a token's `kid`.
    pub fn find(&self, kid: Option<&str>) -> Vec<Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned().into_iter().collect(),
            None => self
                .without_kid
                .iter()
                .chain(self.by_kid.values())
                .cloned()
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads a JWK set (`{"keys": [...]}`). Keys that cannot sign tokens here are left out with
/// the reason: encryption keys, symmetric keys (a shared secret published in a key set would
/// let anyone sign), curves `ring` does not implement.
pub fn parse(bytes: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the JWK set is not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWK set has no `keys` array")?;
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    for (i, raw) in keys.iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(raw.clone()) {
            Ok(jwk) => jwk,
            Err(e) => {
                skipped.push(format!("keys[{i}]: {e}"));
                continue;
            }
        };
        let kid = jwk.common.key_id.clone();
        match usable(&jwk) {
            Ok(key) => match kid {
                Some(kid) => {
                    set.by_kid.insert(kid, Arc::new(key));
                }
                None => set.without_kid.push(Arc::new(key)),
            },
            Err(why) => skipped.push(format!(
                "keys[{i}] (kid {}): {why}",
                kid.as_deref().unwrap_or("none")
            )),
        }
    }
    Ok((set, skipped))
}

fn usable(jwk: &Jwk) -> Result<Key, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (use: enc)".into());
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key: never trusted from a key set".into());
        }
    };
    // A key that names its algorithm verifies only that one.
    let algorithms = match &jwk.common.key_algorithm {
        Some(named) => {
            let alg = Algorithm::from_str(&named.to_string())
                .map_err(|_| format!("algorithm {named} cannot sign tokens"))?;
            if !family.contains(&alg) {
                return Err(format!("algorithm {named} does not fit the key type"));
            }
            vec![alg]
        }
        None => family,
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(Key { key, algorithms })
}

/// An issuer's keys as last read, and the means to read them again.
pub struct IssuerKeys {
    pub config: IssuerConfig,
    current: RwLock<Arc<KeySet>>,
    /// Woken when a token names a `kid` not in `current`.
    unknown_kid: Notify,
}

impl IssuerKeys {
    /// Reads the keys once: a runtime that cannot read them at start says so and keeps trying
    /// in the background (every token is refused meanwhile).
    pub async fn load(config: IssuerConfig) -> Arc<IssuerKeys> {
        let keys = Arc::new(IssuerKeys {
            config,
            current: RwLock::new(Arc::new(KeySet::default())),
            unknown_kid: Notify::new(),
        });
        keys.read().await;
        keys
    }

    pub fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Asks the background task for an early read.
    pub fn ask_for_read(&self) {
        self.unknown_kid.notify_one();
    }

    /// Reads the keys now; keeps the previous set when the read fails.
    pub async fn read(&self) {
        let source = self.source();
        let bytes = if self.config.jwks_url.is_empty() {
            tokio::fs::read(&self.config.jwks_file)
                .await
                .map_err(|e| e.to_string())
        } else {
            fetch::get(&self.config).await
        };
        let parsed = bytes.and_then(|b| parse(&b));
        match parsed {
            Ok((set, skipped)) => {
                for why in skipped {
                    tracing::warn!(issuer = %self.config.name, %source, "signing key left out: {why}");
                }
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                if current.len() != set.len()
                    || set.by_kid.keys().any(|k| !current.by_kid.contains_key(k))
                {
                    tracing::info!(issuer = %self.config.name, %source, keys = set.len(), kids = ?set.by_kid.keys().collect::<Vec<_>>(), "signing keys read");
                }
                *current = Arc::new(set);
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.name, %source, error = %e, "cannot read the signing keys; keeping the previous ones")
            }
        }
    }

    fn source(&self) -> &str {
        if self.config.jwks_url.is_empty() {
            &self.config.jwks_file
        } else {
            &self.config.jwks_url
        }
    }

    /// Reads the keys every `refresh_seconds`, and early (at most every
    /// `min_refresh_seconds`) when a token names an unknown `kid`.
    pub async fn refresh_forever(self: Arc<Self>) {
        let every = Duration::from_secs(self.config.refresh_seconds);
        let min = Duration::from_secs(self.config.min_refresh_seconds);
        loop {
            let _ = tokio::time::timeout(every, self.unknown_kid.notified()).await;
            self.read().await;
            tokio::time::sleep(min).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_encryption_keys_are_left_out_with_their_reason() {
        let set = br#"{"keys":[
            {"kty":"oct","kid":"shared","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"sXch","e":"AQAB"},
            {"kty":"RSA","kid":"sig","use":"sig","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"XYZ","kid":"odd"}
        ]}"#;
        let (keys, skipped) = parse(set).expect("a key set");
        assert_eq!(keys.by_kid.keys().collect::<Vec<_>>(), ["sig"]);
        assert_eq!(keys.by_kid["sig"].algorithms, [Algorithm::RS256]);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].contains("symmetric"), "{skipped:?}");
        assert!(skipped[1].contains("encryption"), "{skipped:?}");
    }

    #[test]
    fn a_document_without_keys_is_refused_by_name() {
        assert!(parse(b"{}").err().is_some_and(|e| e.contains("`keys`")));
        assert!(parse(b"nope").err().is_some_and(|e| e.contains("not JSON")));
    }
}
