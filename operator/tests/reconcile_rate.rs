//! (Its own test binary: the operator process here reconciles every resource of its API
//! server.) An idle resource whose consumer lag keeps moving is reconciled on the refresh
//! period, not once per status write: a status patch does not trigger a reconcile.

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, Operator, condition};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moving_lag_does_not_keep_the_operator_reconciling() {
    let f = Fixture::new(true, json!({})).await;
    let system = common::unique("operator-system");
    common::create_namespace(&f.client, &system).await;
    let operator = Operator::start("operator-rate", &system);
    let api = f.api::<audit_manager_crds::AuditManager>();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let am = api.get(&f.name).await.expect("get");
        if condition(&am, "TopicsReady").0 == "True"
            && am.status.as_ref().is_some_and(|s| s.consumer_lag.is_some())
        {
            break;
        }
        assert!(Instant::now() < deadline, "not reconciled: {:?}", am.status);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // No runtime consumes here: every record produced moves the lag.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", audit_testenv::kafka().bootstrap())
        .create()
        .expect("producer");
    let topic = f.resource.spec.kafka.events_topic.name.clone();
    let before = operator.metric("audit_operator_reconciles_total").await;
    let window = Duration::from_secs(60);
    let started = Instant::now();
    let mut produced = 0;
    while started.elapsed() < window {
        producer
            .send(BaseRecord::<(), str>::to(&topic).payload("{}"))
            .map_err(|(e, _)| e)
            .expect("produce");
        producer.flush(Duration::from_secs(5)).expect("flush");
        produced += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reconciles = operator.metric("audit_operator_reconciles_total").await - before;
    let lag = api
        .get(&f.name)
        .await
        .expect("get")
        .status
        .and_then(|s| s.consumer_lag)
        .map(|l| l.total)
        .unwrap_or_default();
    println!(
        "reconciles in {} s of a moving lag ({produced} records, status lag {lag}): {reconciles}",
        window.as_secs()
    );
    assert!(lag > 0, "the status shows the lag");
    // The refresh period is 30 s: two or three reconciles a minute, plus the odd event.
    assert!(
        reconciles <= 6.0,
        "{reconciles} reconciles in a minute of an idle resource"
    );
    drop(operator);
    f.delete_and_reconcile_until_gone().await;
}
