//! Who may write and who may connect: `spec.ingest.authentication` (emitters' tokens, their
//! sources and share) and `spec.networkPolicy` (which namespaces reach which port).

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How emitters prove who they are.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthenticationMode {
    /// Anyone who reaches the Service writes any `source` (the original's behaviour; a
    /// status warning says so).
    #[default]
    None,
    /// A bearer JWT from one of `issuers`, whose principal is an emitter of the source.
    Jwt,
}

/// Authentication of emitters, the sources each may write, and each one's share.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'none' || (size(self.issuers) > 0 && size(self.emitters) > 0)").message("ingest.authentication.mode jwt needs at least one issuer and one emitter"))]
#[x_kube(validation = Rule::new("self.emitters.all(e, !has(e.issuer) || self.issuers.exists(i, i.name == e.issuer))").message("ingest.authentication.emitters[].issuer must name one of ingest.authentication.issuers"))]
#[x_kube(validation = Rule::new("self.issuers.filter(i, i.serviceAccountIssuer).size() <= 1").message("at most one issuer is the cluster's own (serviceAccountIssuer)"))]
pub struct AuthenticationSpec {
    #[serde(default)]
    pub mode: AuthenticationMode,
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub issuers: Vec<IssuerSpec>,
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub emitters: Vec<EmitterSpec>,
    /// Each principal's share of the ingest (none: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

/// A token issuer: the cluster's own (ServiceAccount tokens) or an OpenID provider (Keycloak).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.serviceAccountIssuer ? !has(self.jwksUri) : (has(self.issuer) && has(self.jwksUri))").message("an issuer is either the cluster's own (serviceAccountIssuer: true; its issuer and keys are read from the API server) or names issuer and jwksUri"))]
pub struct IssuerSpec {
    /// A short name (a DNS label of at most 32 characters), stored with each principal
    /// (`<name>/<principal>`).
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 32)
    )]
    pub name: String,
    /// The cluster's ServiceAccount issuer: the operator reads its `iss` and keys from the API
    /// server and hands them to the pods (no pod needs API access).
    #[serde(default)]
    pub service_account_issuer: bool,
    /// The tokens' `iss`, e.g. `https://keycloak.example.org/realms/openg2p` (with
    /// serviceAccountIssuer: read from the API server when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub issuer: Option<String>,
    /// The JWK set URL, e.g. `https://keycloak.example.org/realms/openg2p/protocol/openid-connect/certs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values (e.g. `audit-manager`).
    #[schemars(length(min = 1, max = 8), inner(length(min = 1, max = 256)))]
    pub audiences: Vec<String>,
    #[serde(default = "default_skew")]
    #[schemars(range(min = 0, max = 600))]
    pub clock_skew_seconds: i64,
    /// The claim naming the principal: `sub` (ServiceAccounts) or `azp` (Keycloak clients).
    #[serde(default)]
    pub principal_claim: PrincipalClaim,
}

fn default_skew() -> i64 {
    60
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalClaim {
    #[default]
    Sub,
    Azp,
}

impl PrincipalClaim {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalClaim::Sub => "sub",
            PrincipalClaim::Azp => "azp",
        }
    }
}

/// Principals allowed to write some sources.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmitterSpec {
    /// A principal; `*` matches any run of characters: `system:serviceaccount:registry:*`,
    /// or a Keycloak client id.
    #[schemars(length(min = 1, max = 512))]
    pub principal: String,
    /// The issuer's name it must come from (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub issuer: Option<String>,
    /// `source` prefixes it may write (`*`: every source).
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 512)))]
    pub sources: Vec<String>,
}

/// A token bucket per principal, in events.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.burst >= self.eventsPerSecond").message("rateLimit.burst must be at least rateLimit.eventsPerSecond"))]
pub struct RateLimitSpec {
    #[schemars(range(min = 1))]
    pub events_per_second: i32,
    /// At least `ingest.maxBatchSize`, or a full batch never passes.
    #[schemars(range(min = 1))]
    pub burst: i32,
}

/// Which pods may connect to the runtime, rendered as a NetworkPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Render the NetworkPolicy (off by default: turning it on refuses every client it does
    /// not list).
    #[serde(default)]
    pub enabled: bool,
    /// Who may reach the ingest port (besides the operator, for its health probe, and the
    /// Istio gateway's namespace when Istio is on).
    #[serde(default)]
    pub ingest_from: Vec<PeerSpec>,
    /// The namespace whose pods may scrape the metrics port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring_namespace: Option<String>,
}

/// Pods of a namespace, optionally narrowed by labels.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
}
