//! Reading a JWK set over HTTP(S): a bounded body, a deadline, an optional CA and bearer token.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::config::IssuerConfig;

/// A JWK set larger than this is not one.
const MAX_JWKS_BYTES: usize = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(10);

/// GETs `jwks_url`; the error names the URL's problem.
pub async fn get(config: &IssuerConfig) -> Result<Vec<u8>, String> {
    let tls = tls(config)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let mut request = http::Request::get(&config.jwks_url)
        // The API server serves its set only as application/jwk-set+json.
        .header("accept", "application/jwk-set+json, application/json");
    if !config.jwks_token_file.is_empty() {
        let token = std::fs::read_to_string(&config.jwks_token_file).map_err(|e| {
            format!(
                "cannot read jwks_token_file {}: {e}",
                config.jwks_token_file
            )
        })?;
        request = request.header("authorization", format!("Bearer {}", token.trim()));
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| format!("not a usable URL: {e}"))?;
    let response = tokio::time::timeout(DEADLINE, client.request(request))
        .await
        .map_err(|_| format!("no answer within {} s", DEADLINE.as_secs()))?
        .map_err(|e| format!("request failed: {e:?}"))?;
    let status = response.status();
    let body = tokio::time::timeout(
        DEADLINE,
        Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
    )
    .await
    .map_err(|_| format!("the body did not arrive within {} s", DEADLINE.as_secs()))?
    .map_err(|e| format!("reading the body failed (at most {MAX_JWKS_BYTES} bytes): {e}"))?
    .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("answered {status}: {text}"));
    }
    Ok(body.to_vec())
}

/// Trusts `jwks_ca_file` alone when it is set, else the system's roots.
fn tls(config: &IssuerConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if config.jwks_ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
    } else {
        let pem = std::fs::read(&config.jwks_ca_file)
            .map_err(|e| format!("cannot read jwks_ca_file {}: {e}", config.jwks_ca_file))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("jwks_ca_file {}: {e}", config.jwks_ca_file))?;
            roots
                .add(cert)
                .map_err(|e| format!("jwks_ca_file {}: {e}", config.jwks_ca_file))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "jwks_ca_file {} holds no certificate",
                config.jwks_ca_file
            ));
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}
