//! Who may reach and write to the runtime, as the real API server takes it (Istio's own CRDs
//! with their published schemas): the NetworkPolicy, the AuthorizationPolicy and the
//! RequestAuthentication for emitters with ServiceAccount and Keycloak tokens, a
//! VirtualService that routes only the event paths under a custom prefix, and the runtime's
//! `auth` section with the cluster's own issuer and keys.
//! (Its own test binary: installing Istio's CRDs changes the API server.)

mod common;

use audit_manager::config::Config;
use audit_manager_operator::exposure::routes_of;
use common::{Fixture, expect_condition};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

fn istio(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposure_objects_are_accepted_and_route_only_the_event_paths() {
    let kube = audit_testenv::kube();
    kube.install_istio_crds().expect("Istio's CRDs");
    let f = Fixture::new(
        true,
        json!({
            "istio": {"enabled": true, "hostname": "audit.example.org", "pathPrefix": "/audit/"},
            "networkPolicy": {"enabled": true, "monitoringNamespace": "monitoring",
                "ingestFrom": [{"namespace": "registry"},
                               {"namespace": "payments", "podLabels": {"app": "payments-api"}}]},
            "ingest": {"maxBatchSize": 100, "authentication": {"mode": "jwt",
                "issuers": [
                    {"name": "cluster", "serviceAccountIssuer": true, "audiences": ["audit-manager"]},
                    {"name": "keycloak", "issuer": "https://keycloak.example.org/realms/openg2p",
                     "jwksUri": "https://keycloak.example.org/realms/openg2p/protocol/openid-connect/certs",
                     "audiences": ["audit-manager"], "principalClaim": "azp"}],
                "emitters": [
                    {"principal": "system:serviceaccount:registry:*", "issuer": "cluster",
                     "sources": ["urn:openg2p:registry"]},
                    {"principal": "payments-*", "issuer": "keycloak", "sources": ["urn:openg2p:payments"]}],
                "rateLimit": {"eventsPerSecond": 200, "burst": 400}}},
        }),
    )
    .await;
    let am = f.reconcile().await;
    expect_condition(&am, "EmittersAuthenticated", "True", "Ok");
    assert_eq!(
        common::condition(&am, "IstioReady").0,
        "",
        "Istio's kinds are installed"
    );
    assert_eq!(
        am.status
            .as_ref()
            .and_then(|s| s.endpoint.clone())
            .as_deref(),
        Some("https://audit.example.org/audit/events"),
        "the endpoint is under the custom prefix"
    );

    // The VirtualService: the two event paths, rewritten to the runtime's own; nothing else.
    let get = |resource: ApiResource| {
        let api: Api<DynamicObject> =
            Api::namespaced_with(f.client.clone(), &f.namespace, &resource);
        let name = f.app();
        async move { api.get(&name).await.expect("exists") }
    };
    let vs = get(istio(
        "networking.istio.io",
        "VirtualService",
        "virtualservices",
    ))
    .await;
    assert_eq!(
        routes_of(&vs.data),
        [
            (
                "/audit/events/batch".to_string(),
                "/v1/auditmanager/events/batch".to_string()
            ),
            (
                "/audit/events".to_string(),
                "/v1/auditmanager/events".to_string()
            ),
        ]
    );

    // The RequestAuthentication: both issuers; the cluster's keys inline (its JWK set asks
    // for credentials), Keycloak's by URL.
    let ra = get(istio(
        "security.istio.io",
        "RequestAuthentication",
        "requestauthentications",
    ))
    .await;
    let rules = ra.data["spec"]["jwtRules"].as_array().expect("jwtRules");
    assert_eq!(rules[0]["issuer"], json!(audit_testenv::SA_ISSUER));
    let inline: Value =
        serde_json::from_str(rules[0]["jwks"].as_str().expect("inline keys")).expect("a JWK set");
    assert!(!inline["keys"].as_array().expect("keys").is_empty());
    assert_eq!(
        rules[1]["jwksUri"],
        json!("https://keycloak.example.org/realms/openg2p/protocol/openid-connect/certs")
    );

    // The AuthorizationPolicy: the emitters' principals on the event paths, health for all,
    // metrics from the monitoring namespace.
    let ap = get(istio(
        "security.istio.io",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ))
    .await;
    let rules = ap.data["spec"]["rules"].as_array().expect("rules");
    assert_eq!(ap.data["spec"]["action"], json!("ALLOW"));
    assert_eq!(
        rules[0]["from"][0]["source"]["requestPrincipals"],
        json!([format!(
            "{}/system:serviceaccount:registry:*",
            audit_testenv::SA_ISSUER
        )])
    );
    assert_eq!(rules[1]["when"][0]["values"], json!(["payments-*"]));
    assert_eq!(
        rules.last().expect("metrics")["from"][0]["source"]["namespaces"],
        json!(["monitoring"])
    );

    // The NetworkPolicy: events from the listed peers, the operator and the gateway's
    // namespace; metrics from the monitoring namespace.
    let np = f
        .api::<NetworkPolicy>()
        .get(&f.app())
        .await
        .expect("NetworkPolicy");
    let np = serde_json::to_value(np.spec.expect("spec")).expect("json");
    let peers: Vec<Value> = np["ingress"][0]["from"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].clone())
        .collect();
    assert_eq!(
        peers,
        [
            json!("registry"),
            json!("payments"),
            json!("audit-manager-system"),
            json!("istio-system")
        ]
    );
    assert_eq!(
        np["ingress"][0]["from"][1]["podSelector"]["matchLabels"],
        json!({"app": "payments-api"})
    );
    assert_eq!(np["ingress"][0]["ports"][0]["port"], json!(8000));
    assert_eq!(np["ingress"][1]["ports"][0]["port"], json!(9090));

    // The runtime's configuration: the cluster's issuer as the API server names it, its keys in
    // a file beside the config, and the runtime's loader takes it all.
    let cm = f
        .api::<ConfigMap>()
        .get(&format!("{}-config", f.app()))
        .await
        .expect("ConfigMap");
    let data = cm.data.expect("data");
    let keys: Value = serde_json::from_str(&data["cluster-jwks.json"]).expect("a JWK set");
    assert!(!keys["keys"].as_array().expect("keys").is_empty());
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, &data["config.yaml"]).expect("write");
    let env = std::collections::BTreeMap::from([(
        "CONFIG_PATH".to_string(),
        config_path.display().to_string(),
    )]);
    let loaded = Config::load_from(&env).expect("the runtime loads what the operator rendered");
    assert_eq!(loaded.auth.issuers[0].issuer, audit_testenv::SA_ISSUER);
    assert_eq!(
        loaded.auth.issuers[0].jwks_file,
        "/etc/audit-manager/cluster-jwks.json"
    );
    assert_eq!(loaded.auth.issuers[1].principal_claim, "azp");
    assert_eq!((loaded.auth.rate_per_second, loaded.auth.burst), (200, 400));
    assert_eq!(loaded.server.metrics_port, 9090);

    // Authentication off: the Istio token rules go, and the status warns.
    f.api::<audit_manager_crds::AuditManager>()
        .patch(
            &f.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ingest": {"authentication": {"mode": "none"}}}})),
        )
        .await
        .expect("authentication off");
    let am = f.reconcile().await;
    let warning = expect_condition(&am, "EmittersAuthenticated", "False", "AuthenticationOff");
    assert!(
        warning.contains("any workload that reaches the Service"),
        "{warning}"
    );
    let ras: Api<DynamicObject> = Api::namespaced_with(
        f.client.clone(),
        &f.namespace,
        &istio(
            "security.istio.io",
            "RequestAuthentication",
            "requestauthentications",
        ),
    );
    assert!(ras.get_opt(&f.app()).await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_authentication_specs_are_refused_by_the_api_server() {
    let kube = audit_testenv::kube();
    let client = kube.client().await;
    common::install(&client).await;
    let namespace = common::unique("ns");
    common::create_namespace(&client, &namespace).await;
    let api: Api<audit_manager_crds::AuditManager> = Api::namespaced(client.clone(), &namespace);
    let cases = [
        (
            json!({"mode": "jwt"}),
            "needs at least one issuer and one emitter",
        ),
        (
            json!({"mode": "jwt", "issuers": [{"name": "kc", "audiences": ["a"]}],
                   "emitters": [{"principal": "x", "sources": ["s"]}]}),
            "either the cluster's own",
        ),
        (
            json!({"mode": "jwt", "issuers": [{"name": "cluster", "serviceAccountIssuer": true, "audiences": ["a"]}],
                   "emitters": [{"principal": "x", "issuer": "elsewhere", "sources": ["s"]}]}),
            "must name one of ingest.authentication.issuers",
        ),
        (
            json!({"mode": "jwt", "issuers": [{"name": "cluster", "serviceAccountIssuer": true, "audiences": ["a"]}],
                   "emitters": [{"principal": "x", "sources": ["s"]}],
                   "rateLimit": {"eventsPerSecond": 10, "burst": 10}}),
            "burst must be at least ingest.maxBatchSize",
        ),
    ];
    for (i, (authentication, expected)) in cases.into_iter().enumerate() {
        let am: audit_manager_crds::AuditManager = serde_json::from_value(json!({
            "apiVersion": "audit.openg2p.org/v1alpha1", "kind": "AuditManager",
            "metadata": {"name": format!("refused-{i}"), "namespace": namespace},
            "spec": {"database": {"host": "pg", "adminSecretRef": {"name": "a"}},
                     "kafka": {"bootstrapServers": "k:9092"},
                     "ingest": {"authentication": authentication}}
        }))
        .expect("resource");
        let refused = api
            .create(&Default::default(), &am)
            .await
            .expect_err("the API server refuses it");
        assert!(
            refused.to_string().contains(expected),
            "case {i}: {refused}"
        );
    }
}
