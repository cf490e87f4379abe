//! Who may write (`auth.mode: jwt`) against the real components: ServiceAccount tokens from
//! the test kube-apiserver's TokenRequest API, verified through its JWK set; a local issuer
//! standing in for Keycloak; every forgery refused with 401 AUD-009; sources outside an
//! emitter's prefixes refused with 403; each principal's share; the principal in every row.

use std::time::Duration;

use audit_testenv::http::{Answer, HttpClient};
use audit_testenv::jwt::{self, JwksServer, SigningKey};
use audit_testenv::topics::create_topic;
use audit_testenv::{AuditManager, Kafka};
use common::{Database, unique, wait_count};
use serde_json::{Value, json};

mod common;

const AUDIENCE: &str = "audit-manager";
const KEYCLOAK: &str = "https://keycloak.test/realms/openg2p";

/// The runtime's `auth` section: the cluster's issuer and the local one, three emitters.
fn auth_yaml(jwks: &JwksServer, rate: &str) -> String {
    let kube = audit_testenv::kube();
    let (issuer, url, ca, token) = kube.service_account_issuer();
    let token_file = jwt::write_scratch("apiserver-token", token).expect("token file");
    format!(
        "auth:
  mode: jwt
  {rate}
  issuers:
    - name: cluster
      issuer: {issuer}
      jwks_url: {url}
      jwks_ca_file: {ca}
      jwks_token_file: {token_file}
      audiences: [{AUDIENCE}]
      clock_skew_seconds: 5
    - name: keycloak
      issuer: {KEYCLOAK}
      jwks_url: {jwks}
      audiences: [{AUDIENCE}]
      principal_claim: azp
      clock_skew_seconds: 5
      min_refresh_seconds: 1
  emitters:
    - principal: 'system:serviceaccount:registry:*'
      issuer: cluster
      sources: ['urn:openg2p:registry']
    - principal: registry-client
      issuer: keycloak
      sources: ['urn:openg2p:registry', 'urn:openg2p:portal']
    - principal: 'payments-*'
      issuer: keycloak
      sources: ['urn:openg2p:payments']
",
        ca = ca.display(),
        token_file = token_file.display(),
        jwks = jwks.url
    )
}

fn start(kafka: &Kafka, topic: &str, yaml: &str, env: Vec<(&'static str, String)>) -> AuditManager {
    let config = jwt::write_scratch(&format!("{}.yaml", unique("auth")), yaml).expect("config");
    let mut env = env;
    env.push(("CONFIG_PATH", config.display().to_string()));
    common::start(kafka, topic, &env)
}

fn event(id: &str, source: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": source, "type": "org.openg2p.test.auth",
        "time": chrono::Utc::now().to_rfc3339(),
        "data": {"actor": {"type": "service", "id": "svc"}, "action": "write", "outcome": "success"}
    })
}

async fn post(client: &mut HttpClient, token: Option<&str>, body: &Value) -> Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let path = if body.get("events").is_some() {
        "/v1/auditmanager/events/batch"
    } else {
        "/v1/auditmanager/events"
    };
    client
        .send("POST", path, &headers, body.to_string())
        .await
        .expect("POST")
}

fn code(answer: &Answer) -> (u16, String, String) {
    let body = answer.json();
    (
        answer.status,
        body["errors"][0]["errorCode"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Claims of a Keycloak client-credentials access token for `client`.
fn keycloak_claims(client: &str) -> Value {
    let now = jwt::now();
    json!({"iss": KEYCLOAK, "sub": format!("service-account-{client}"), "azp": client,
           "aud": [AUDIENCE, "account"], "iat": now, "nbf": now - 1, "exp": now + 300,
           "typ": "Bearer"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authenticated_emitters_write_their_own_sources_and_every_row_names_its_sender() {
    let (kafka, pg, kube) = (
        audit_testenv::kafka(),
        audit_testenv::postgres(),
        audit_testenv::kube(),
    );
    let db = Database::create(pg);
    let topic = unique("events");
    create_topic(&kafka.bootstrap(), &topic, 1).await;
    let first = SigningKey::generate("kc-1").expect("a key");
    let jwks = JwksServer::start(vec![first.jwk.clone()]).await;
    let mut env = db.writer_env();
    env.extend([
        ("AUDIT_MANAGER__KAFKA__DLQ_TOPIC", unique("dlq")),
        ("AUDIT_MANAGER__KAFKA__CONSUMER_GROUP", unique("group")),
        (
            "AUDIT_MANAGER__KAFKA__CONSUMER__FLUSH_INTERVAL_MS",
            "200".into(),
        ),
    ]);
    let runtime = start(kafka, &topic, &auth_yaml(&jwks, ""), env);
    let mut client = HttpClient::connect(&runtime.address())
        .await
        .expect("connect");
    let run = unique("auth");

    // No token, or not a bearer token: 401 AUD-009 with a challenge.
    let answer = post(
        &mut client,
        None,
        &event(&format!("{run}-none"), "urn:openg2p:registry"),
    )
    .await;
    assert_eq!(code(&answer).0, 401, "{:?}", answer.json());
    assert_eq!(code(&answer).1, "AUD-009");
    let challenge = answer
        .headers
        .get("www-authenticate")
        .expect("WWW-Authenticate");
    assert!(
        challenge
            .to_str()
            .unwrap_or_default()
            .starts_with("Bearer realm=\"audit-manager\""),
        "{challenge:?}"
    );

    // A real ServiceAccount token of the API server, verified through its JWK set.
    let sa = kube
        .service_account_token("registry", "api", AUDIENCE, 600)
        .expect("TokenRequest");
    let answer = post(
        &mut client,
        Some(&sa),
        &event(&format!("{run}-sa"), "urn:openg2p:registry/api"),
    )
    .await;
    assert_eq!(answer.status, 202, "{:?}", answer.json());
    // ... for another audience: refused.
    let other = kube
        .service_account_token("registry", "api", "another-service", 600)
        .expect("TokenRequest");
    let answer = post(
        &mut client,
        Some(&other),
        &event(&format!("{run}-aud"), "urn:openg2p:registry"),
    )
    .await;
    assert_eq!(code(&answer).0, 401, "{:?}", answer.json());
    assert!(
        code(&answer)
            .2
            .contains("its aud names none of audit-manager"),
        "{:?}",
        answer.json()
    );
    // ... of a ServiceAccount that is no emitter: 403.
    let stranger = kube
        .service_account_token("elsewhere", "api", AUDIENCE, 600)
        .expect("TokenRequest");
    let answer = post(
        &mut client,
        Some(&stranger),
        &event(&format!("{run}-x"), "urn:openg2p:registry"),
    )
    .await;
    assert_eq!(code(&answer).0, 403, "{:?}", answer.json());
    assert!(
        code(&answer).2.contains(
            "cluster/system:serviceaccount:elsewhere:api is authenticated but is not an emitter"
        ),
        "{:?}",
        answer.json()
    );
    // ... writing a source outside its prefixes: 403 naming the principal and the source.
    let answer = post(
        &mut client,
        Some(&sa),
        &event(&format!("{run}-pay"), "urn:openg2p:payments"),
    )
    .await;
    let (status, c, message) = code(&answer);
    assert_eq!((status, c.as_str()), (403, "AUD-009"), "{message}");
    assert!(
        message.contains(
            "cluster/system:serviceaccount:registry:api may not write source `urn:openg2p:payments`"
        ),
        "{message}"
    );
    // One forbidden event refuses the whole batch.
    let batch = json!({"events": [event(&format!("{run}-b0"), "urn:openg2p:registry"), event(&format!("{run}-b1"), "urn:openg2p:payments")]});
    let answer = post(&mut client, Some(&sa), &batch).await;
    let (status, _, message) = code(&answer);
    assert_eq!(status, 403, "{message}");
    assert!(message.starts_with("events[1]: "), "{message}");

    // The local issuer (Keycloak's client-credentials tokens name the client in `azp`).
    let kc = first.sign(&keycloak_claims("registry-client"));
    let answer = post(
        &mut client,
        Some(&kc),
        &event(&format!("{run}-kc"), "urn:openg2p:portal/x"),
    )
    .await;
    assert_eq!(answer.status, 202, "{:?}", answer.json());

    // Forgeries and misfits: each 401 AUD-009, each with its reason.
    let now = jwt::now();
    let claims = keycloak_claims("registry-client");
    let with = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        c
    };
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "kc-1"});
    let valid_signature = kc.rsplit('.').next().unwrap_or_default().to_string();
    let refused = [
        ("expired", first.sign(&with("exp", json!(now - 60)))),
        ("not yet valid", first.sign(&with("nbf", json!(now + 600)))),
        ("wrong audience", first.sign(&with("aud", json!("account")))),
        (
            "wrong issuer",
            first.sign(&with("iss", json!("https://evil.test/realms/openg2p"))),
        ),
        ("unsigned", jwt::unsigned(&header, &claims, "")),
        (
            "alg none",
            jwt::unsigned(
                &json!({"alg": "none", "typ": "JWT", "kid": "kc-1"}),
                &claims,
                "",
            ),
        ),
        (
            "HS256 with the public key",
            jwt::hs256(&claims, &first.public_pem, "kc-1"),
        ),
        (
            "unknown kid",
            SigningKey::generate("kc-unknown")
                .expect("a key")
                .sign(&claims),
        ),
        (
            "another key's signature",
            jwt::unsigned(&header, &with("azp", json!("payments-x")), &valid_signature),
        ),
        ("not a JWT", "abc.def".to_string()),
    ];
    for (what, token) in &refused {
        let answer = post(
            &mut client,
            Some(token),
            &event(&format!("{run}-bad"), "urn:openg2p:registry"),
        )
        .await;
        let (status, c, message) = code(&answer);
        assert_eq!((status, c.as_str()), (401, "AUD-009"), "{what}: {message}");
        assert!(answer.headers.contains_key("www-authenticate"), "{what}");
        eprintln!("{what}: {message}");
    }

    // Rotation: a new key published in the JWK set is used without a restart.
    let second = SigningKey::generate("kc-2").expect("a key");
    jwks.publish(vec![first.jwk.clone(), second.jwk.clone()]);
    let rotated = second.sign(&keycloak_claims("registry-client"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = post(
            &mut client,
            Some(&rotated),
            &event(&format!("{run}-rot"), "urn:openg2p:registry"),
        )
        .await;
        if answer.status == 202 {
            break;
        }
        assert_eq!(answer.status, 401, "{:?}", answer.json());
        assert!(
            std::time::Instant::now() < deadline,
            "the new key was never read: {:?}",
            answer.json()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The principal is in every row: who sent it, beside what it claims to be.
    let pool = db.connect("reader").await;
    let query = format!("SELECT count(*) FROM audit_events WHERE id LIKE '{run}-%'");
    assert_eq!(
        wait_count(&pool, &query, 3, Duration::from_secs(60)).await,
        3
    );
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, source, principal FROM audit_events WHERE id LIKE '{run}-%' ORDER BY id"
    )))
    .fetch_all(&pool)
    .await
    .expect("rows");
    let principal = |suffix: &str| {
        rows.iter()
            .find(|r| r.0 == format!("{run}-{suffix}"))
            .and_then(|r| r.2.clone())
    };
    assert_eq!(
        principal("sa").as_deref(),
        Some("cluster/system:serviceaccount:registry:api"),
        "{rows:?}"
    );
    assert_eq!(
        principal("kc").as_deref(),
        Some("keycloak/registry-client"),
        "{rows:?}"
    );
    assert_eq!(
        principal("rot").as_deref(),
        Some("keycloak/registry-client"),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_emitter_over_its_share_gets_429_while_another_keeps_getting_202() {
    let kafka = audit_testenv::kafka();
    let topic = unique("events");
    create_topic(&kafka.bootstrap(), &topic, 1).await;
    let key = SigningKey::generate("kc-rate").expect("a key");
    let jwks = JwksServer::start(vec![key.jwk.clone()]).await;
    let mut env = common::ingest_only();
    env.push(("AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE", "10".into()));
    let yaml = auth_yaml(&jwks, "rate_per_second: 5\n  burst: 10");
    let runtime = start(kafka, &topic, &yaml, env);
    let mut client = HttpClient::connect(&runtime.address())
        .await
        .expect("connect");
    let noisy = key.sign(&keycloak_claims("payments-batch"));
    let quiet = key.sign(&keycloak_claims("registry-client"));
    let run = unique("rate");
    let (mut noisy_accepted, mut noisy_refused, mut quiet_accepted) = (0, 0, 0);
    for i in 0..40 {
        let answer = post(
            &mut client,
            Some(&noisy),
            &event(&format!("{run}-n{i}"), "urn:openg2p:payments"),
        )
        .await;
        match answer.status {
            202 => noisy_accepted += 1,
            429 => {
                noisy_refused += 1;
                let (_, c, message) = code(&answer);
                assert_eq!(c, "AUD-011", "{message}");
                assert!(
                    message.contains("keycloak/payments-batch is over its share"),
                    "{message}"
                );
                let retry = answer
                    .headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                assert!(retry.is_some_and(|s| (1..=2).contains(&s)), "{retry:?}");
            }
            other => panic!("{other}: {:?}", answer.json()),
        }
        if i % 4 == 0 {
            let answer = post(
                &mut client,
                Some(&quiet),
                &event(&format!("{run}-q{i}"), "urn:openg2p:registry"),
            )
            .await;
            assert_eq!(
                answer.status,
                202,
                "the other emitter keeps its share: {:?}",
                answer.json()
            );
            quiet_accepted += 1;
        }
    }
    eprintln!(
        "noisy: {noisy_accepted} accepted, {noisy_refused} refused; quiet: {quiet_accepted} accepted"
    );
    assert!(noisy_refused > 0, "the noisy emitter was never limited");
    assert!(
        (10..=20).contains(&noisy_accepted),
        "about the burst plus the rate: {noisy_accepted}"
    );
    assert_eq!(quiet_accepted, 10);
}
