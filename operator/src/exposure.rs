//! Pure builders of who may reach and write to the runtime: the runtime's `auth` section, the
//! NetworkPolicy, Istio's AuthorizationPolicy and RequestAuthentication, and the
//! VirtualService that routes only the event paths.

use audit_manager::auth::config::{AuthConfig, AuthMode, EmitterConfig, IssuerConfig};
use audit_manager::config as runtime;
use audit_manager::http::paths;
use audit_manager_crds::{AuditManager, AuthenticationMode, IssuerSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::DynamicObject;
use serde_json::{Value, json};

use crate::context::Error;
use crate::objects::{CONFIG_DIR, Names, from, metadata, namespace_of, selector};

/// The port `/metrics` is served on in the pods, apart from the events.
pub const METRICS_PORT: u16 = 9090;
/// The key of the config ConfigMap holding the cluster's ServiceAccount JWK set.
pub const CLUSTER_KEYS: &str = "cluster-jwks.json";

/// The cluster's ServiceAccount issuer, as the API server publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterIssuer {
    /// `issuer` of `/.well-known/openid-configuration`.
    pub issuer: String,
    /// The JWK set of `/openid/v1/jwks`.
    pub jwks: String,
}

/// What the builders need from outside the spec.
#[derive(Debug, Clone, Default)]
pub struct Surroundings {
    /// Where the operator runs (its health probe reaches the pods from there).
    pub operator_namespace: String,
    /// The cluster's issuer, read when an issuer of the spec is `serviceAccountIssuer`.
    pub cluster_issuer: Option<ClusterIssuer>,
}

/// Whether any issuer of the spec is the cluster's own.
pub fn wants_cluster_issuer(am: &AuditManager) -> bool {
    let auth = &am.spec.ingest.authentication;
    auth.mode == AuthenticationMode::Jwt && auth.issuers.iter().any(|i| i.service_account_issuer)
}

/// The `iss` of an issuer of the spec.
fn issuer_of(spec: &IssuerSpec, cluster: Option<&ClusterIssuer>) -> String {
    match (&spec.issuer, cluster) {
        (Some(iss), _) => iss.clone(),
        (None, Some(c)) if spec.service_account_issuer => c.issuer.clone(),
        _ => String::new(),
    }
}

/// The runtime's `auth` section for the spec.
pub fn runtime_auth(am: &AuditManager, around: &Surroundings) -> AuthConfig {
    let spec = &am.spec.ingest.authentication;
    if spec.mode == AuthenticationMode::None {
        return AuthConfig::default();
    }
    let cluster = around.cluster_issuer.as_ref();
    AuthConfig {
        mode: AuthMode::Jwt,
        issuers: spec
            .issuers
            .iter()
            .map(|i| {
                let mut c = IssuerConfig {
                    name: i.name.clone(),
                    issuer: issuer_of(i, cluster),
                    audiences: i.audiences.clone(),
                    clock_skew_seconds: u64::try_from(i.clock_skew_seconds).unwrap_or(60),
                    principal_claim: i.principal_claim.as_str().into(),
                    ..IssuerConfig::default()
                };
                if i.service_account_issuer {
                    // Written by the operator beside the config; kubelet updates the file and
                    // the runtime reads it again every minute.
                    c.jwks_file = format!("{CONFIG_DIR}/{CLUSTER_KEYS}");
                    c.refresh_seconds = 60;
                } else {
                    c.jwks_url = i.jwks_uri.clone().unwrap_or_default();
                }
                c
            })
            .collect(),
        emitters: spec
            .emitters
            .iter()
            .map(|e| EmitterConfig {
                principal: e.principal.clone(),
                issuer: e.issuer.clone().unwrap_or_default(),
                sources: e.sources.clone(),
            })
            .collect(),
        rate_per_second: spec
            .rate_limit
            .as_ref()
            .map_or(0, |r| u32::try_from(r.events_per_second).unwrap_or(0)),
        burst: spec
            .rate_limit
            .as_ref()
            .map_or(0, |r| u32::try_from(r.burst).unwrap_or(0)),
    }
}

fn namespace_peer(namespace: &str) -> Value {
    json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}})
}

/// The namespace of the Istio gateway the VirtualService binds (`namespace/name`).
fn gateway_namespace(am: &AuditManager) -> String {
    match am.spec.istio.gateway.split_once('/') {
        Some((ns, _)) => ns.to_string(),
        None => namespace_of(am),
    }
}

/// The NetworkPolicy: the events port from the listed peers, the operator (health probe) and
/// the Istio gateway's namespace; the metrics port from the monitoring namespace only.
pub fn network_policy(
    am: &AuditManager,
    names: &Names,
    around: &Surroundings,
) -> Result<NetworkPolicy, Error> {
    let policy = &am.spec.network_policy;
    let mut ingest: Vec<Value> = policy
        .ingest_from
        .iter()
        .map(|p| {
            let mut peer = namespace_peer(&p.namespace);
            if !p.pod_labels.is_empty() {
                peer["podSelector"] = json!({"matchLabels": p.pod_labels});
            }
            peer
        })
        .collect();
    ingest.push(namespace_peer(&around.operator_namespace));
    if am.spec.istio.enabled {
        ingest.push(namespace_peer(&gateway_namespace(am)));
    }
    let mut rules = vec![json!({
        "from": ingest,
        "ports": [{"protocol": "TCP", "port": runtime::DEFAULT_PORT}],
    })];
    if let Some(monitoring) = &policy.monitoring_namespace {
        rules.push(json!({
            "from": [namespace_peer(monitoring)],
            "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
        }));
    }
    from(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(am, &names.app),
        "spec": {
            "podSelector": {"matchLabels": selector(am)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        }
    }))
}

/// Istio's RequestAuthentication: the same issuers as the runtime, checked at the sidecar.
pub fn request_authentication(
    am: &AuditManager,
    names: &Names,
    around: &Surroundings,
) -> Result<DynamicObject, Error> {
    let cluster = around.cluster_issuer.as_ref();
    let rules: Vec<Value> = am
        .spec
        .ingest
        .authentication
        .issuers
        .iter()
        .map(|i| {
            let mut rule = json!({
                "issuer": issuer_of(i, cluster),
                "audiences": i.audiences,
                "forwardOriginalToken": true,
            });
            match (&i.jwks_uri, cluster) {
                (Some(uri), _) => rule["jwksUri"] = json!(uri),
                // The API server's JWK set asks for credentials: given inline instead.
                (None, Some(c)) => rule["jwks"] = json!(c.jwks),
                (None, None) => {}
            }
            rule
        })
        .collect();
    from(json!({
        "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": metadata(am, &names.app),
        "spec": {
            "selector": {"matchLabels": selector(am)},
            "jwtRules": rules,
        }
    }))
}

/// An Istio request principal (`<iss>/<sub>`) for an emitter pattern: Istio matches `*` only
/// at either end, so a pattern with one inside admits the whole issuer (the runtime checks it).
fn request_principal(iss: &str, pattern: &str) -> String {
    let inner = pattern.trim_start_matches('*').trim_end_matches('*');
    if inner.contains('*') || pattern.starts_with('*') {
        format!("{iss}/*")
    } else {
        format!("{iss}/{pattern}")
    }
}

/// Istio's AuthorizationPolicy: POST to the event paths only (from the emitters' principals
/// when authentication is on, from the NetworkPolicy's namespaces otherwise), GET on the
/// health paths, and `/metrics` from the monitoring namespace. Anything else is refused.
pub fn authorization_policy(
    am: &AuditManager,
    names: &Names,
    around: &Surroundings,
) -> Result<DynamicObject, Error> {
    let events =
        json!([{"operation": {"methods": ["POST"], "paths": [paths::EVENTS, paths::BATCH]}}]);
    let auth = &am.spec.ingest.authentication;
    let mut rules = Vec::new();
    if auth.mode == AuthenticationMode::Jwt {
        let cluster = around.cluster_issuer.as_ref();
        for issuer in &auth.issuers {
            let iss = issuer_of(issuer, cluster);
            let patterns: Vec<&str> = auth
                .emitters
                .iter()
                .filter(|e| e.issuer.as_deref().is_none_or(|n| n == issuer.name))
                .map(|e| e.principal.as_str())
                .collect();
            if patterns.is_empty() {
                continue;
            }
            let mut rule = json!({"to": events});
            match issuer.principal_claim {
                audit_manager_crds::PrincipalClaim::Sub => {
                    let principals: Vec<String> = patterns
                        .iter()
                        .map(|p| request_principal(&iss, p))
                        .collect();
                    rule["from"] = json!([{"source": {"requestPrincipals": principals}}]);
                }
                audit_manager_crds::PrincipalClaim::Azp => {
                    rule["from"] = json!([{"source": {"requestPrincipals": [format!("{iss}/*")]}}]);
                    rule["when"] = json!([{"key": "request.auth.claims[azp]", "values": patterns}]);
                }
            }
            rules.push(rule);
        }
    } else {
        let policy = &am.spec.network_policy;
        let mut rule = json!({"to": events});
        if policy.enabled {
            let namespaces: Vec<&str> = policy
                .ingest_from
                .iter()
                .map(|p| p.namespace.as_str())
                .collect();
            rule["from"] = json!([{"source": {"namespaces": namespaces}}]);
        }
        rules.push(rule);
    }
    rules.push(json!({"to": [{"operation": {"methods": ["GET"],
        "paths": [paths::HEALTH, format!("{}/*", paths::HEALTH)]}}]}));
    let mut metrics = json!({"to": [{"operation": {"methods": ["GET"], "paths": [paths::METRICS],
        "ports": [METRICS_PORT.to_string()]}}]});
    if let Some(monitoring) = &am.spec.network_policy.monitoring_namespace {
        metrics["from"] = json!([{"source": {"namespaces": [monitoring]}}]);
    }
    rules.push(metrics);
    from(json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": metadata(am, &names.app),
        "spec": {
            "selector": {"matchLabels": selector(am)},
            "action": "ALLOW",
            "rules": rules,
        }
    }))
}

/// The public prefix under which `events` and `events/batch` are served, without its trailing
/// slash: `spec.istio.pathPrefix`, less a trailing `events` (the prefix the docs once
/// suggested, `/v1/auditmanager/events`, means the same as `/v1/auditmanager/`).
pub fn public_base(am: &AuditManager) -> String {
    let prefix = am.spec.istio.path_prefix.trim_end_matches('/');
    prefix.strip_suffix("/events").unwrap_or(prefix).to_string()
}

/// The Istio VirtualService: only the two event paths, under the public prefix, rewritten to
/// the runtime's own paths.
pub fn virtual_service(am: &AuditManager, names: &Names) -> Result<DynamicObject, Error> {
    let istio = &am.spec.istio;
    let base = public_base(am);
    let destination = json!([{"destination": {
        "host": format!("{}.{}.svc.cluster.local", names.app, namespace_of(am)),
        "port": {"number": 80}}}]);
    let route = |public: String, own: &str| {
        json!({
            "name": own.rsplit('/').next().unwrap_or(own),
            "match": [{"uri": {"exact": public}}],
            "rewrite": {"uri": own},
            "route": destination,
        })
    };
    from(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": metadata(am, &names.app),
        "spec": {
            "hosts": [istio.hostname.clone().unwrap_or_default()],
            "gateways": [istio.gateway],
            "http": [
                route(format!("{base}/events/batch"), paths::BATCH),
                route(format!("{base}/events"), paths::EVENTS),
            ]
        }
    }))
}

/// The (public path, runtime path) pairs a rendered VirtualService routes, in its order: what
/// a reader of the object (a test, a status check) compares with [`virtual_service`]'s intent.
pub fn routes_of(virtual_service: &Value) -> Vec<(String, String)> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    virtual_service["spec"]["http"]
        .as_array()
        .map(|routes| {
            routes
                .iter()
                .map(|r| {
                    (
                        text(&r["match"][0]["uri"]["exact"]),
                        text(&r["rewrite"]["uri"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The endpoint emitters POST a single event to.
pub fn endpoint(am: &AuditManager, names: &Names) -> String {
    match (&am.spec.istio.enabled, &am.spec.istio.hostname) {
        (true, Some(host)) => format!("https://{host}{}/events", public_base(am)),
        _ => format!(
            "http://{}.{}.svc{}",
            names.app,
            namespace_of(am),
            paths::EVENTS
        ),
    }
}
