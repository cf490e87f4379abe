//! The whole system on one machine: a cluster with a real node (kubelet + containerd running
//! the project's runtime image), the operator's controller loop, PostgreSQL and Kafka on the
//! node's bridge. With TLS everywhere (PostgreSQL verify-full with a CloudNativePG-style CA
//! Secret, Kafka SASL_SSL with SCRAM-SHA-512 from Strimzi-style Secrets, both verified
//! against the bridge address), events POSTed to a runtime pod become rows, the resource
//! turns Ready with lag 0, and deleting it tears everything down.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_manager_crds::AuditManager;
use audit_manager_operator::context::Ctx;
use audit_manager_operator::controller;
use audit_manager_operator::metrics::Metrics;
use common::{Fixture, condition};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_node_and_runtime_pods_store_posted_events() {
    let cluster = audit_testenv::cluster();
    let kube = &cluster.kube;
    let servers = common::Servers::on_node();
    let (pg, kafka) = (servers.pg, servers.kafka);
    let host = cluster.bridge.host.to_string();
    let images = audit_testenv::images::Images::open().expect("the image store");
    let runtime =
        audit_testenv::install::image(cluster, &images, audit_testenv::images::Image::Runtime)
            .expect("the runtime image in containerd");
    let name = common::unique("audit");
    let f = Fixture::on_node(
        &name,
        json!({"autoscaling": {"enabled": false}, "replicas": 2, "lagThreshold": 0,
        "image": {"repository": runtime.repository, "tag": runtime.tag},
        // Emitters prove who they are with ServiceAccount tokens of this cluster.
        "ingest": {"authentication": {"mode": "jwt",
            "issuers": [{"name": "cluster", "serviceAccountIssuer": true, "audiences": ["audit-manager"]}],
            "emitters": [{"principal": "system:serviceaccount:*:emitter", "issuer": "cluster", "sources": ["/e2e"]}]}},
        "database": {"host": host, "port": pg.port(), "adminSecretRef": {"name": "pg-admin"},
                     "sslMode": "verify-full", "caRef": {"name": "pg-cluster-ca"}},
        "kafka": {
            "bootstrapServers": kafka.bootstrap_sasl_ssl_on_node(),
            "eventsTopic": {"name": format!("{name}.events"), "partitions": 3},
            "dlqTopic": {"name": format!("{name}.dlq"), "partitions": 1},
            "consumerGroup": format!("{name}-group"),
            "security": {
                "protocol": "SASL_SSL",
                "sasl": {"mechanism": "SCRAM-SHA-512", "username": audit_testenv::SASL_USER,
                         "passwordSecretRef": {"name": "audit-kafka-user"}},
                "caRef": {"name": "my-cluster-cluster-ca-cert"},
            },
        }}),
    )
    .await;
    // What CloudNativePG and Strimzi create, by the names they give them.
    let ca = audit_testenv::pki::read(&audit_testenv::pki::pki().ca.cert());
    common::create_secret(&f, "pg-cluster-ca", json!({"ca.crt": ca})).await;
    common::create_secret(
        &f,
        "my-cluster-cluster-ca-cert",
        json!({"ca.crt": ca, "ca.p12": "", "ca.password": ""}),
    )
    .await;
    common::create_credentials(
        &f.client,
        &f.namespace,
        "audit-kafka-user",
        json!({"password": audit_testenv::SASL_PASSWORD, "sasl.jaas.config": "unused here"}),
        &servers.allowed_hosts,
    )
    .await;
    let ctx = Arc::new(Ctx::new(
        f.client.clone(),
        Arc::new(Metrics::default()),
        "e2e".into(),
    ));
    let operator = tokio::spawn(controller::run(ctx, None));

    // Two runtime pods come up Ready on the local node.
    let pods = f.api::<Pod>();
    let deadline = Instant::now() + Duration::from_secs(120);
    let ips = loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={}", f.name)))
            .await
            .expect("pods");
        let ready = audit_manager_operator::observe::ready_pod_ips(&list.items);
        if ready.len() == 2 {
            break ready;
        }
        assert!(
            Instant::now() < deadline,
            "runtime pods not ready: {:?}",
            list.items
                .iter()
                .map(|p| (
                    p.metadata.name.clone(),
                    p.status
                        .as_ref()
                        .map(|s| (s.phase.clone(), s.message.clone()))
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    // Events POSTed to a pod with a ServiceAccount token of an emitter become rows naming it;
    // without a token nothing is accepted.
    let mut client = audit_testenv::http::HttpClient::connect(&format!("{}:8000", ips[0]))
        .await
        .expect("connect to a pod");
    let token = kube
        .service_account_token(&f.namespace, "emitter", "audit-manager", 3600)
        .expect("TokenRequest");
    let bearer = format!("Bearer {token}");
    let anonymous = client
        .post(
            "/v1/auditmanager/events",
            "application/json",
            json!({"specversion": "1.0", "id": "anonymous", "source": "/e2e", "type": "t",
                   "data": {"actor": {"id": "u"}, "action": "a", "outcome": "success"}})
            .to_string(),
        )
        .await
        .expect("POST");
    assert_eq!(anonymous.status, 401, "{:?}", anonymous.json());
    let events: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("e2e-{i}"), "source": "/e2e", "type": "t",
            "time": k8s_openapi::jiff::Timestamp::now().to_string(),
            "data": {"actor": {"id": format!("u{}", i % 7)}, "action": "a", "outcome": "success"}})
        })
        .collect();
    let answer = client
        .send(
            "POST",
            "/v1/auditmanager/events/batch",
            &[
                ("content-type", "application/json"),
                ("authorization", &bearer),
            ],
            json!({"events": events}).to_string(),
        )
        .await
        .expect("POST");
    assert_eq!(answer.status, 202, "{:?}", answer.json());
    let reader = f
        .api::<Secret>()
        .get(&format!("{}-db-reader", f.name))
        .await
        .expect("reader secret");
    let password =
        String::from_utf8_lossy(&reader.data.unwrap_or_default()["password"].0).into_owned();
    let url = pg.url(
        &format!("{}_reader", f.database()),
        &password,
        &f.database(),
    );
    let pool = sqlx::PgPool::connect(&url).await.expect("reader");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
            .fetch_one(&pool)
            .await
            .expect("count");
        if n == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} of 200 rows");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let principals: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT principal, count(*) FROM audit_events GROUP BY 1")
            .fetch_all(&pool)
            .await
            .expect("principals");
    assert_eq!(
        principals,
        [(
            Some(format!(
                "cluster/system:serviceaccount:{}:emitter",
                f.namespace
            )),
            200
        )],
        "every row names its authenticated sender"
    );

    // The operator sees it all: Ready, lag 0, two ready replicas.
    let api = f.api::<AuditManager>();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let am = api.get(&f.name).await.expect("get");
        let lag = am
            .status
            .as_ref()
            .and_then(|s| s.consumer_lag.as_ref())
            .map(|l| l.total);
        if condition(&am, "Ready").0 == "True" && lag == Some(0) {
            assert_eq!(am.status.as_ref().and_then(|s| s.ready_replicas), Some(2));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not Ready: {:?}",
            am.status.map(|s| s
                .conditions
                .into_iter()
                .map(|c| format!("{} {} {}", c.type_, c.reason, c.message))
                .collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // The conditions say what protects each connection.
    let am = api.get(&f.name).await.expect("get");
    let (_, _, database) = condition(&am, "DatabaseReady");
    assert!(
        database.contains("verified against the CA and the host name"),
        "{database}"
    );
    let (_, _, topics) = condition(&am, "TopicsReady");
    assert!(
        topics.contains("SASL_SSL: encrypted") && topics.contains("SASL SCRAM-SHA-512 as audit"),
        "{topics}"
    );

    pod_deleted_while_events_are_posted(&f, &pods, &pool, &bearer).await;

    // Deleting the resource tears everything down over the same secured connections.
    pool.close().await;
    api.delete(&f.name, &Default::default())
        .await
        .expect("delete");
    let deadline = Instant::now() + Duration::from_secs(120);
    while api.get_opt(&f.name).await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "the resource was not gone in time"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let admin = sqlx::PgPool::connect(&pg.superuser_url("postgres"))
        .await
        .expect("superuser");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(f.database())
        .fetch_one(&admin)
        .await
        .expect("count");
    assert_eq!(left, 0, "the database was dropped");
    for topic in [format!("{name}.events"), format!("{name}.dlq")] {
        assert_eq!(
            common::partitions_on(&kafka.bootstrap(), &topic),
            0,
            "{topic} was deleted"
        );
    }
    operator.abort();
}

/// Issue 16, finding 3: a runtime pod deleted while events are posted drains (it sees SIGTERM),
/// is gone in seconds, and every event answered 202 becomes a row soon after.
async fn pod_deleted_while_events_are_posted(
    f: &Fixture,
    pods: &kube::Api<Pod>,
    pool: &sqlx::PgPool,
    bearer: &str,
) {
    let bearer = bearer.to_string();
    let selector = format!("app.kubernetes.io/instance={}", f.name);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("pods");
    let running: Vec<(String, String)> = list
        .items
        .iter()
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some((p.metadata.name.clone()?, ip))
        })
        .collect();
    assert_eq!(running.len(), 2, "{running:?}");
    // Through the Service's ClusterIP, as emitters post: kube-proxy sends each connection to
    // a pod, and stops sending new ones to a pod once it is terminating.
    let service = f
        .api::<k8s_openapi::api::core::v1::Service>()
        .get(&format!("{}-audit-manager", f.name))
        .await
        .expect("the runtime's Service");
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    let address = format!("{cluster_ip}:80");

    // An event is sent again, unchanged, when an attempt gets no answer or is refused. What
    // counts is every event answered 202.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poster = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut accepted: Vec<(String, chrono::DateTime<chrono::Utc>)> = Vec::new();
            let mut client: Option<audit_testenv::http::HttpClient> = None;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = format!("restart-{n}");
                n += 1;
                // One event, sent again as it was when an attempt gets no answer (as an
                // emitter retries): a pod stopping may have taken it before the connection
                // closed, and a retry with another time would be another event.
                let sent = chrono::Utc::now();
                let event = json!({"specversion": "1.0", "id": id, "source": "/e2e-restart",
                    "type": "t", "time": sent.to_rfc3339(),
                    "data": {"actor": {"id": "u1"}, "action": "a", "outcome": "success"}});
                for _attempt in 0..3 {
                    if client.is_none() {
                        client = audit_testenv::http::HttpClient::connect(&address)
                            .await
                            .ok();
                    }
                    let Some(connection) = client.as_mut() else {
                        continue;
                    };
                    match connection
                        .send(
                            "POST",
                            "/v1/auditmanager/events",
                            &[
                                ("content-type", "application/json"),
                                ("authorization", &bearer),
                            ],
                            event.to_string(),
                        )
                        .await
                    {
                        Ok(a) if a.status == 202 => {
                            accepted.push((id.clone(), sent));
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => client = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            accepted
        }
    });

    tokio::time::sleep(Duration::from_secs(3)).await;
    let (victim, _) = &running[1];
    let deleted = Instant::now();
    pods.delete(victim, &kube::api::DeleteParams::default())
        .await
        .expect("delete a runtime pod");
    let gone = loop {
        match pods.get_opt(victim).await.expect("get pod") {
            None => break deleted.elapsed(),
            Some(_) => {
                assert!(
                    deleted.elapsed() < Duration::from_secs(30),
                    "pod {victim} still exists 30 s after its deletion"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Keep posting through the replacement's start.
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let accepted = poster.await.expect("poster");
    assert!(
        accepted.len() > 200,
        "posting really ran: {}",
        accepted.len()
    );

    let ids: Vec<String> = accepted.iter().map(|(id, _)| id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> = loop {
        let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT id, ingested_at FROM audit_events WHERE source = '/e2e-restart' AND id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await
        .expect("rows");
        // Distinct ids: the loop must not end early on rows counted twice.
        let distinct: std::collections::HashSet<&String> = rows.iter().map(|(id, _)| id).collect();
        if distinct.len() >= ids.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let stored: std::collections::HashMap<String, chrono::DateTime<chrono::Utc>> =
        rows.into_iter().collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !stored.contains_key(*id)).collect();
    let worst = accepted
        .iter()
        .filter_map(|(id, sent)| Some(*stored.get(id)? - *sent))
        .max()
        .unwrap_or_default();
    eprintln!(
        "pod deleted while posting: gone after {} ms; {} events answered 202, {} missing; longest time to visible {} ms",
        gone.as_millis(),
        accepted.len(),
        missing.len(),
        worst.num_milliseconds()
    );
    if !missing.is_empty() {
        let am = f.current().await;
        let conditions: Vec<String> = am
            .status
            .iter()
            .flat_map(|s| s.conditions.iter())
            .map(|c| format!("{} {} {}: {}", c.type_, c.status, c.reason, c.message))
            .collect();
        let pods: Vec<String> = pods
            .list(&Default::default())
            .await
            .expect("pods")
            .items
            .iter()
            .map(|p| {
                format!(
                    "{} {:?}",
                    p.metadata.name.clone().unwrap_or_default(),
                    p.status.as_ref().and_then(|s| s.phase.clone())
                )
            })
            .collect();
        let logs = audit_testenv::cluster()
            .kube
            .kubectl()
            .args([
                "logs",
                "-n",
                f.namespace.as_str(),
                "-l",
                selector.as_str(),
                "--tail=40",
                "--prefix",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let lag = am.status.as_ref().and_then(|s| s.consumer_lag.clone());
        panic!(
            "202'd but never stored: {missing:?}\nconditions: {conditions:#?}\nlag: {lag:?}\npods: {pods:?}\n{logs}"
        );
    }
    assert!(gone < Duration::from_secs(10), "pod gone after {gone:?}");
    assert!(
        worst < chrono::Duration::seconds(5),
        "longest time to visible across the restart: {} ms",
        worst.num_milliseconds()
    );
}
