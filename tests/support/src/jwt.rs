//! A local token issuer standing in for Keycloak: RSA keys made with `openssl`, tokens signed
//! with them, and their JWK set served over HTTP on 127.0.0.1 (its keys can be replaced while
//! it runs, for rotation tests).

use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process;
use crate::setup::{Error, scratch_dir};

/// One RSA signing key.
pub struct SigningKey {
    pub kid: String,
    /// The private key (PKCS#8 PEM).
    pub pem: Vec<u8>,
    /// The public key (SPKI PEM): what an `HS256` forgery would use as its secret.
    pub public_pem: Vec<u8>,
    /// The public key as a JWK.
    pub jwk: Value,
}

impl SigningKey {
    /// A new 2048-bit RSA key named `kid`.
    pub fn generate(kid: &str) -> Result<SigningKey, Error> {
        let dir = scratch_dir("jwt")?;
        let openssl = |args: &[&str]| {
            let mut c = Command::new("openssl");
            c.args(args).current_dir(&dir);
            process::run("openssl (token issuer)", c)
        };
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "key.pem",
        ])?;
        openssl(&["pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"])?;
        let modulus = openssl(&["rsa", "-in", "key.pem", "-noout", "-modulus"])?;
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> = (0..hex.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect();
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| Error::io(format!("reading {name}"), e))
        };
        Ok(SigningKey {
            kid: kid.to_string(),
            pem: read("key.pem")?,
            public_pem: read("pub.pem")?,
            jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                        "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"}),
        })
    }

    /// `claims` signed RS256 under this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_rsa_pem(&self.pem).expect("an RSA key made by openssl");
        jsonwebtoken::encode(&header, claims, &key).expect("signing a token")
    }
}

/// `header` and `claims` encoded with `signature` as given (forgeries).
pub fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// `claims` signed HS256 with `secret`.
pub fn hs256(claims: &Value, secret: &[u8], kid: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("HS256")
}

/// A JWK set served at `http://127.0.0.1:PORT/certs`, as Keycloak serves
/// `/realms/<realm>/protocol/openid-connect/certs`.
pub struct JwksServer {
    pub url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `keys` until dropped (in the calling Tokio runtime).
    pub async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the JWKS server");
        let port = listener.local_addr().expect("bound").port();
        let keys = Arc::new(Mutex::new(keys));
        let served = Arc::clone(&keys);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let body =
                    json!({"keys": *served.lock().unwrap_or_else(|p| p.into_inner())}).to_string();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        JwksServer {
            url: format!("http://127.0.0.1:{port}/certs"),
            keys,
            task,
        }
    }

    /// Publishes `keys` instead (a rotation).
    pub fn publish(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap_or_else(|p| p.into_inner()) = keys;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Seconds since the epoch, for `iat`, `nbf` and `exp`.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A file holding `text` in a scratch folder (a token file, a config).
pub fn write_scratch(name: &str, text: &str) -> Result<std::path::PathBuf, Error> {
    let path = scratch_dir("jwt")?.join(name);
    std::fs::write(&path, text).map_err(|e| Error::io(format!("writing {name}"), e))?;
    Ok(path)
}
