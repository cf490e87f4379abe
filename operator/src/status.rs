//! The status, as a pure function: what a reconcile observed in, conditions out. Every
//! condition says what is wrong in a CamelCase reason and a message that says what to do.

use std::collections::BTreeMap;

use audit_manager::db::partitions::{self, Month};
use audit_manager_crds::{AuditManager, AuditManagerStatus, AuthenticationMode, ConsumerLag};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A failed step: a CamelCase reason and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: String) -> Problem {
        Problem { reason, message }
    }

    /// The same problem with every one of `secrets` cut out of its message, also where a
    /// server echoed only its first 63 bytes (PostgreSQL cuts identifiers there): messages
    /// end up in the status, Events and logs, and a server's error may quote a user name.
    pub fn redacted<S: AsRef<str>>(mut self, secrets: &[S]) -> Problem {
        for secret in secrets.iter().map(AsRef::as_ref).filter(|s| !s.is_empty()) {
            let mut cut = secret.len().min(63);
            while !secret.is_char_boundary(cut) {
                cut -= 1;
            }
            for form in [secret, &secret[..cut]] {
                if !form.is_empty() && self.message.contains(form) {
                    self.message = self.message.replace(form, "[redacted]");
                }
            }
        }
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// A step's outcome: the message of a True condition, or why it is False.
pub type Outcome = Result<String, Problem>;

/// The runtime Deployment as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub message: String,
    pub desired: i32,
    pub ready: i32,
}

/// Everything one reconcile found out, each from its own step.
#[derive(Debug, Clone)]
pub struct Observed {
    pub database: Outcome,
    pub topics: Outcome,
    pub workload: Result<Workload, Problem>,
    /// The runtime's own `/health` report from its ready pods.
    pub health: Outcome,
    /// Consumer lag per partition of the events topic.
    pub lag: Result<BTreeMap<i32, i64>, Problem>,
    /// The monthly partitions `audit_events` has, or why they could not be listed.
    pub partitions: Result<Vec<Month>, Problem>,
    /// The CRDs of children that should exist but cannot (Istio's kinds, when Istio is not
    /// installed).
    pub missing_crds: Vec<String>,
    /// Where emitters POST (from the spec).
    pub endpoint: String,
    /// Topics this resource created (recorded for teardown).
    pub owned_topics: Vec<String>,
    /// `status.teardownPreview`, when the resource asks for it.
    pub teardown_preview: Option<Vec<String>>,
}

/// Whether the lag is within `spec.lagThreshold`.
pub fn lag_within_threshold(
    am: &AuditManager,
    lag: &Result<BTreeMap<i32, i64>, Problem>,
) -> Outcome {
    let lag = lag.as_ref().map_err(Clone::clone)?;
    let total: i64 = lag.values().sum();
    let threshold = am.spec.lag_threshold;
    if total <= threshold {
        Ok(format!(
            "consumer lag is within spec.lagThreshold {threshold} (status.consumerLag has the figures)"
        ))
    } else {
        Err(Problem::new(
            "ConsumerLagging",
            format!(
                "consumer lag exceeds spec.lagThreshold {threshold} (status.consumerLag has the figures): check Healthy and DatabaseReady, or add replicas (up to the {} partitions)",
                am.spec.kafka.events_topic.partitions
            ),
        ))
    }
}

/// Whether the current month and the `retention.preCreateMonths` after it have their
/// partitions: an event of a month without one cannot be stored (it goes to the DLQ).
pub fn partitions_ready(
    am: &AuditManager,
    existing: &Result<Vec<Month>, Problem>,
    now: DateTime<Utc>,
) -> Outcome {
    let existing = existing.as_ref().map_err(Clone::clone)?;
    let ahead = u32::try_from(am.spec.retention.pre_create_months).unwrap_or(0);
    let wanted = partitions::plan(now, 0, ahead).ensure;
    let missing: Vec<String> = wanted
        .iter()
        .filter(|m| !existing.contains(m))
        .map(|m| m.table())
        .collect();
    match missing.is_empty() {
        true => Ok(format!(
            "partitions exist from {} through {}",
            wanted.first().map(|m| m.table()).unwrap_or_default(),
            wanted.last().map(|m| m.table()).unwrap_or_default()
        )),
        false => Err(Problem::new(
            "PartitionsMissing",
            format!(
                "audit_events has no partition {}: events of those months cannot be stored and go to the DLQ (replay them once the partition exists); the maintenance CronJob creates them (check its last Jobs, or `kubectl create job --from=cronjob/{}-maintenance`)",
                missing.join(", "),
                am.metadata.name.as_deref().unwrap_or_default()
            ),
        )),
    }
}

/// The reasons that mean the database, a topic or the consumer group is someone else's.
pub const CONFLICTS: [&str; 3] = ["DatabaseConflict", "TopicConflict", "ConsumerGroupConflict"];

/// Why no workload may run: a conflict stands on the database or the topics step. The
/// workload would otherwise write to, and consume from, someone else's database, topics or
/// consumer group.
pub fn held(database: &Outcome, topics: &Outcome) -> Option<Problem> {
    [database, topics]
        .into_iter()
        .filter_map(|o| o.as_ref().err())
        .find(|p| CONFLICTS.contains(&p.reason))
        .map(|p| {
            Problem::new(
                "WorkloadHeld",
                format!(
                    "no runtime runs while {} stands (the Deployment, its HPA and the CronJob are removed): {}",
                    p.reason, p.message
                ),
            )
        })
}

/// A note when more replicas can run than the events topic has partitions: the extra ones
/// only ingest, none of them consumes.
pub fn replicas_note(am: &AuditManager) -> Option<String> {
    let spec = &am.spec;
    let (most, field) = if spec.autoscaling.enabled {
        (spec.autoscaling.max_replicas, "autoscaling.maxReplicas")
    } else {
        (spec.replicas, "replicas")
    };
    let partitions = spec.kafka.events_topic.partitions;
    (most > partitions).then(|| {
        format!(
            "{field} {most} exceeds the events topic's {partitions} partitions: at most {partitions} replicas consume, the others only ingest (raise kafka.eventsTopic.partitions to spread the writing)"
        )
    })
}

/// Each condition type with its outcome, in the order they are reported: DatabaseReady,
/// TopicsReady, WorkloadAvailable, Healthy, LagWithinThreshold, Ready (False with reason
/// NotReady listing the failing conditions), and IstioReady only when Istio is asked for but
/// not installed.
pub fn outcomes(am: &AuditManager, observed: &Observed) -> Vec<(&'static str, Outcome)> {
    let mut states = vec![
        ("DatabaseReady", observed.database.clone()),
        ("TopicsReady", observed.topics.clone()),
        (
            "WorkloadAvailable",
            observed
                .workload
                .as_ref()
                .map(|w| match replicas_note(am) {
                    Some(note) => format!("{}; {note}", w.message),
                    None => w.message.clone(),
                })
                .map_err(Clone::clone),
        ),
        ("Healthy", observed.health.clone()),
        (
            "LagWithinThreshold",
            lag_within_threshold(am, &observed.lag),
        ),
        (
            "PartitionsReady",
            partitions_ready(am, &observed.partitions, Utc::now()),
        ),
    ];
    let failing: Vec<String> = states
        .iter()
        .filter_map(|(k, s)| s.as_ref().err().map(|p| format!("{k}: {}", p.reason)))
        .collect();
    let ready = if failing.is_empty() {
        Ok(format!("serving at {}", observed.endpoint))
    } else {
        Err(Problem::new("NotReady", failing.join(", ")))
    };
    states.push(("Ready", ready));
    states.push(("EmittersAuthenticated", emitters_authenticated(am)));
    if am.spec.istio.enabled && !observed.missing_crds.is_empty() {
        states.push((
            "IstioReady",
            Err(Problem::new(
                "IstioNotInstalled",
                format!(
                    "spec.istio.enabled is true but Istio's CRDs {} are not installed; the Service is reachable in the cluster",
                    observed.missing_crds.join(", ")
                ),
            )),
        ));
    }
    states
}

/// Whether emitters must prove who they are: a warning (False, `AuthenticationOff`) while
/// anyone who reaches the Service may write; not part of Ready (the original's behaviour is a
/// choice, not a failure).
pub fn emitters_authenticated(am: &AuditManager) -> Outcome {
    let auth = &am.spec.ingest.authentication;
    match auth.mode {
        AuthenticationMode::None => Err(Problem::new(
            "AuthenticationOff",
            "spec.ingest.authentication.mode is none: any workload that reaches the Service can write rows under any source; turn on jwt (docs/security.md, Authenticated emitters)".into(),
        )),
        AuthenticationMode::Jwt => {
            let issuers: Vec<&str> = auth.issuers.iter().map(|i| i.name.as_str()).collect();
            let share = match &auth.rate_limit {
                Some(r) => format!(
                    "; each principal at most {} events/s (burst {})",
                    r.events_per_second, r.burst
                ),
                None => String::new(),
            };
            Ok(format!(
                "bearer tokens of {} verified; {} emitter entries name the sources each may write{share}",
                issuers.join(", "),
                auth.emitters.len()
            ))
        }
    }
}

/// The whole status for this generation.
pub fn status(
    am: &AuditManager,
    previous: &AuditManagerStatus,
    observed: Observed,
    now: &Time,
) -> AuditManagerStatus {
    let generation = am.metadata.generation.unwrap_or(0);
    let conditions = merge(
        &previous.conditions,
        outcomes(am, &observed),
        Some(generation),
        now,
    );
    AuditManagerStatus {
        observed_generation: Some(generation),
        conditions,
        endpoint: Some(observed.endpoint),
        consumer_lag: observed.lag.ok().map(|l| ConsumerLag {
            total: l.values().sum(),
            partitions: l.iter().map(|(p, v)| (p.to_string(), *v)).collect(),
            measured_at: Some(now.clone()),
        }),
        replicas: observed.workload.as_ref().ok().map(|w| w.desired),
        ready_replicas: observed.workload.as_ref().ok().map(|w| w.ready),
        owned_topics: observed.owned_topics,
        teardown_preview: observed.teardown_preview,
    }
}

/// Equal but for timestamps that move on every measurement.
pub fn changed(old: &AuditManagerStatus, new: &AuditManagerStatus) -> bool {
    let strip = |s: &AuditManagerStatus| {
        let mut s = s.clone();
        if let Some(l) = s.consumer_lag.as_mut() {
            l.measured_at = None;
        }
        s
    };
    strip(old) != strip(new)
}

/// Whether `new` should be written over `old`: something besides the timestamps changed, and
/// when only the consumer lag moved, the last measurement written is at least `refresh` old.
/// A status write triggers the next reconcile, so writing every lag that moves would keep the
/// operator reconciling as long as events flow.
pub fn worth_writing(
    old: &AuditManagerStatus,
    new: &AuditManagerStatus,
    now: &Time,
    refresh: std::time::Duration,
) -> bool {
    if !changed(old, new) {
        return false;
    }
    let without_lag = |s: &AuditManagerStatus| AuditManagerStatus {
        consumer_lag: None,
        ..s.clone()
    };
    if changed(&without_lag(old), &without_lag(new)) {
        return true;
    }
    let written = old
        .consumer_lag
        .as_ref()
        .and_then(|l| l.measured_at.as_ref());
    match written {
        Some(at) => {
            let age = now.0.as_second() - at.0.as_second();
            age < 0 || age as u64 >= refresh.as_secs()
        }
        None => true,
    }
}

/// The conditions while deletion waits: the others as they were, and `Terminating` True with
/// the reason and message of what it waits for.
pub fn terminating(
    previous: &[Condition],
    waiting: &Problem,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut conditions: Vec<Condition> = previous
        .iter()
        .filter(|c| c.type_ != "Terminating")
        .cloned()
        .collect();
    let terminating = merge(
        previous,
        vec![("Terminating", Err(waiting.clone()))],
        generation,
        now,
    );
    conditions.extend(terminating.into_iter().map(|mut c| {
        c.status = "True".into();
        c
    }));
    conditions
}

/// Builds the conditions for this generation, keeping `lastTransitionTime` of conditions whose
/// status did not change.
pub fn merge(
    previous: &[Condition],
    next: Vec<(&'static str, Outcome)>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    next.into_iter()
        .map(|(kind, outcome)| {
            let (status, reason, message) = match outcome {
                Ok(message) => ("True", "Ok".to_string(), message),
                Err(p) => ("False", p.reason.to_string(), p.message),
            };
            let since = previous
                .iter()
                .find(|c| c.type_ == kind && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: kind.to_string(),
                status: status.to_string(),
                reason,
                message,
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn am(spec: serde_json::Value) -> AuditManager {
        let mut base = json!({
            "database": {"host": "pg", "adminSecretRef": {"name": "admin"}},
            "kafka": {"bootstrapServers": "k:9092"},
            "lagThreshold": 100
        });
        if let (Some(b), serde_json::Value::Object(extra)) = (base.as_object_mut(), spec) {
            b.extend(extra);
        }
        serde_json::from_value(json!({
            "apiVersion": "audit.openg2p.org/v1alpha1", "kind": "AuditManager",
            "metadata": {"name": "a", "namespace": "n", "generation": 3},
            "spec": base
        }))
        .expect("valid resource")
    }

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).expect("time"))
    }

    fn healthy() -> Observed {
        Observed {
            database: Ok("database a and its roles are provisioned".into()),
            topics: Ok("topics are provisioned".into()),
            workload: Ok(Workload {
                message: "2 of 2 replicas available".into(),
                desired: 2,
                ready: 2,
            }),
            health: Ok("2 ready pod(s) report healthy".into()),
            lag: Ok(BTreeMap::from([(0, 5), (1, 7)])),
            partitions: Ok((0..=3).map(|i| Month::of(Utc::now()).plus(i)).collect()),
            missing_crds: Vec::new(),
            endpoint: "http://a-audit-manager.n.svc/v1/auditmanager/events".into(),
            owned_topics: vec!["t".into()],
            teardown_preview: None,
        }
    }

    fn condition<'a>(status: &'a AuditManagerStatus, kind: &str) -> Option<&'a Condition> {
        status.conditions.iter().find(|c| c.type_ == kind)
    }

    fn problem(reason: &'static str) -> Problem {
        Problem::new(reason, format!("{reason} happened"))
    }

    #[test]
    fn all_well_is_ready_with_the_endpoint_and_every_condition_true() {
        let a = am(json!({}));
        let s = status(&a, &AuditManagerStatus::default(), healthy(), &at(1));
        let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            [
                "DatabaseReady",
                "TopicsReady",
                "WorkloadAvailable",
                "Healthy",
                "LagWithinThreshold",
                "PartitionsReady",
                "Ready",
                "EmittersAuthenticated"
            ]
        );
        assert!(
            s.conditions
                .iter()
                .filter(|c| c.type_ != "EmittersAuthenticated")
                .all(|c| c.status == "True" && c.reason == "Ok")
        );
        let open = condition(&s, "EmittersAuthenticated").expect("the warning");
        assert_eq!(
            (open.status.as_str(), open.reason.as_str()),
            ("False", "AuthenticationOff")
        );
        assert_eq!(condition(&s, "Ready").expect("Ready").status, "True");
        let ready = condition(&s, "Ready").expect("Ready");
        assert!(
            ready
                .message
                .contains("serving at http://a-audit-manager.n.svc"),
            "{}",
            ready.message
        );
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(s.observed_generation, Some(3));
        let lag = s.consumer_lag.expect("lag");
        assert_eq!(lag.total, 12);
        assert_eq!(lag.partitions.get("1"), Some(&7));
        assert_eq!((s.replicas, s.ready_replicas), (Some(2), Some(2)));
        assert_eq!(s.owned_topics, ["t"]);
    }

    #[test]
    fn authenticated_emitters_are_said_with_their_issuers_and_share() {
        let a = am(json!({"ingest": {"authentication": {"mode": "jwt",
            "issuers": [{"name": "cluster", "serviceAccountIssuer": true, "audiences": ["audit-manager"]},
                        {"name": "keycloak", "issuer": "https://kc/realms/r", "jwksUri": "https://kc/certs",
                         "audiences": ["audit-manager"], "principalClaim": "azp"}],
            "emitters": [{"principal": "system:serviceaccount:registry:*", "sources": ["urn:openg2p:registry"]}],
            "rateLimit": {"eventsPerSecond": 100, "burst": 500}}}}));
        let s = status(&a, &AuditManagerStatus::default(), healthy(), &at(1));
        let c = condition(&s, "EmittersAuthenticated").expect("condition");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Ok"));
        assert_eq!(
            c.message,
            "bearer tokens of cluster, keycloak verified; 1 emitter entries name the sources each may write; each principal at most 100 events/s (burst 500)"
        );
    }

    #[test]
    fn every_failing_step_carries_its_reason_and_ready_lists_them() {
        type Break = fn(&mut Observed, Problem);
        let cases: [(&str, &'static str, Break); 14] = [
            ("DatabaseReady", "AdminSecretMissing", |o, p| {
                o.database = Err(p)
            }),
            ("DatabaseReady", "AdminSecretIncomplete", |o, p| {
                o.database = Err(p)
            }),
            ("DatabaseReady", "DatabaseUnreachable", |o, p| {
                o.database = Err(p)
            }),
            ("DatabaseReady", "DatabaseConflict", |o, p| {
                o.database = Err(p)
            }),
            ("DatabaseReady", "DatabaseProvisioningFailed", |o, p| {
                o.database = Err(p)
            }),
            ("TopicsReady", "KafkaUnreachable", |o, p| o.topics = Err(p)),
            ("TopicsReady", "TopicConflict", |o, p| o.topics = Err(p)),
            ("TopicsReady", "TopicProvisioningFailed", |o, p| {
                o.topics = Err(p)
            }),
            ("WorkloadAvailable", "WorkloadMissing", |o, p| {
                o.workload = Err(p)
            }),
            ("WorkloadAvailable", "WorkloadUnavailable", |o, p| {
                o.workload = Err(p)
            }),
            ("Healthy", "NoReadyPods", |o, p| o.health = Err(p)),
            ("Healthy", "Unhealthy", |o, p| o.health = Err(p)),
            ("LagWithinThreshold", "KafkaUnreachable", |o, p| {
                o.lag = Err(p)
            }),
            ("PartitionsReady", "PartitionsUnknown", |o, p| {
                o.partitions = Err(p)
            }),
        ];
        let a = am(json!({}));
        for (kind, reason, break_it) in cases {
            let mut observed = healthy();
            break_it(&mut observed, problem(reason));
            let s = status(&a, &AuditManagerStatus::default(), observed, &at(1));
            let c = condition(&s, kind).expect("condition");
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", reason),
                "{kind}"
            );
            assert_eq!(c.message, format!("{reason} happened"));
            let ready = condition(&s, "Ready").expect("Ready");
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", "NotReady")
            );
            assert_eq!(ready.message, format!("{kind}: {reason}"));
        }
    }

    #[test]
    fn not_ready_lists_every_failing_condition_in_order() {
        let mut observed = healthy();
        observed.database = Err(problem("DatabaseUnreachable"));
        observed.health = Err(problem("NoReadyPods"));
        let s = status(
            &am(json!({})),
            &AuditManagerStatus::default(),
            observed,
            &at(1),
        );
        let ready = condition(&s, "Ready").expect("Ready");
        assert_eq!(
            ready.message,
            "DatabaseReady: DatabaseUnreachable, Healthy: NoReadyPods"
        );
    }

    #[test]
    fn secrets_are_cut_out_of_messages_also_where_a_server_echoed_63_bytes() {
        let user = format!("tenant-{}", "x".repeat(70));
        let echoed = &user[..63];
        let p = Problem::new(
            "DatabaseUnreachable",
            format!("password authentication failed for user \"{echoed}\"; password s3cret"),
        )
        .redacted(&[user.as_str(), "s3cret", ""]);
        assert!(!p.message.contains("tenant-x"), "{}", p.message);
        assert!(!p.message.contains("s3cret"), "{}", p.message);
        assert_eq!(
            p.message,
            "password authentication failed for user \"[redacted]\"; password [redacted]"
        );
    }

    #[test]
    fn a_conflict_holds_the_workload_and_nothing_else_does() {
        for reason in CONFLICTS {
            let p = held(&Ok("fine".into()), &Err(problem(reason))).expect("held");
            assert_eq!(p.reason, "WorkloadHeld");
            assert!(p.message.contains(reason), "{}", p.message);
            assert!(held(&Err(problem(reason)), &Ok("fine".into())).is_some());
        }
        for reason in [
            "DatabaseUnreachable",
            "KafkaUnreachable",
            "CredentialsNotPermitted",
        ] {
            assert_eq!(held(&Err(problem(reason)), &Err(problem(reason))), None);
        }
    }

    #[test]
    fn more_replicas_than_partitions_is_said_on_workload_available() {
        let now = at(0);
        let more = am(
            json!({"autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 12},
                   "kafka": {"bootstrapServers": "k:9092", "eventsTopic": {"name": "e", "partitions": 6}}}),
        );
        let s = status(&more, &Default::default(), healthy(), &now);
        let c = condition(&s, "WorkloadAvailable").expect("condition");
        assert_eq!(c.status, "True");
        assert!(
            c.message
                .contains("autoscaling.maxReplicas 12 exceeds the events topic's 6 partitions"),
            "{}",
            c.message
        );
        assert_eq!(condition(&s, "Ready").expect("Ready").status, "True");
        let enough = am(json!({"autoscaling": {"enabled": false}, "replicas": 6,
                   "kafka": {"bootstrapServers": "k:9092", "eventsTopic": {"name": "e", "partitions": 6}}}));
        assert_eq!(replicas_note(&enough), None);
    }

    #[test]
    fn lag_over_the_threshold_is_consumer_lagging() {
        let a = am(json!({"lagThreshold": 10}));
        let within = lag_within_threshold(&a, &Ok(BTreeMap::from([(0, 4), (1, 6)])));
        assert_eq!(
            within,
            Ok(
                "consumer lag is within spec.lagThreshold 10 (status.consumerLag has the figures)"
                    .into()
            )
        );
        let over = lag_within_threshold(&a, &Ok(BTreeMap::from([(0, 11)])));
        let p = over.expect_err("over the threshold");
        assert_eq!(p.reason, "ConsumerLagging");
        assert!(
            p.message.contains("exceeds spec.lagThreshold 10"),
            "{}",
            p.message
        );
        let mut observed = healthy();
        observed.lag = Ok(BTreeMap::from([(0, 11)]));
        let s = status(&a, &AuditManagerStatus::default(), observed, &at(1));
        assert_eq!(s.consumer_lag.as_ref().map(|l| l.total), Some(11));
        assert_eq!(
            condition(&s, "Ready").map(|c| c.message.as_str()),
            Some("LagWithinThreshold: ConsumerLagging")
        );
    }

    #[test]
    fn a_missing_partition_of_the_coming_months_is_partitions_missing() {
        let now = DateTime::parse_from_rfc3339("2026-11-20T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let a = am(json!({"retention": {"preCreateMonths": 2}}));
        let month = |year, month| Month { year, month };
        let all = vec![
            month(2026, 10),
            month(2026, 11),
            month(2026, 12),
            month(2027, 1),
        ];
        assert_eq!(
            partitions_ready(&a, &Ok(all.clone()), now),
            Ok("partitions exist from audit_events_2026_11 through audit_events_2027_01".into())
        );
        let without_january = all[..3].to_vec();
        let p = partitions_ready(&a, &Ok(without_january), now).expect_err("missing");
        assert_eq!(p.reason, "PartitionsMissing");
        assert!(
            p.message.contains("no partition audit_events_2027_01:"),
            "{}",
            p.message
        );
        assert!(p.message.contains("cronjob/a-maintenance"), "{}", p.message);
        // The past does not matter: October may have been dropped by retention.
        let p = partitions_ready(&a, &Ok(all[1..].to_vec()), now);
        assert!(p.is_ok(), "{p:?}");
    }

    #[test]
    fn istio_ready_appears_only_when_asked_for_but_not_installed() {
        let plain = status(
            &am(json!({})),
            &AuditManagerStatus::default(),
            healthy(),
            &at(1),
        );
        assert!(condition(&plain, "IstioReady").is_none());
        let wants = am(json!({"istio": {"enabled": true, "hostname": "h"}}));
        let mut absent = healthy();
        absent.missing_crds = vec!["virtualservices.networking.istio.io".into()];
        let missing = status(&wants, &AuditManagerStatus::default(), absent, &at(1));
        let c = condition(&missing, "IstioReady").expect("IstioReady");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "IstioNotInstalled")
        );
        assert!(
            c.message.contains("virtualservices.networking.istio.io"),
            "{}",
            c.message
        );
        assert_eq!(
            condition(&missing, "Ready").map(|c| c.status.as_str()),
            Some("True")
        );
        let fine = status(&wants, &AuditManagerStatus::default(), healthy(), &at(1));
        assert!(condition(&fine, "IstioReady").is_none());
    }

    #[test]
    fn terminating_is_true_with_what_deletion_waits_for() {
        let before = status(
            &am(json!({})),
            &AuditManagerStatus::default(),
            healthy(),
            &at(1),
        );
        let waiting = problem("DeletingWorkload");
        let conditions = terminating(&before.conditions, &waiting, Some(3), &at(2));
        let c = conditions
            .iter()
            .find(|c| c.type_ == "Terminating")
            .expect("Terminating");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "DeletingWorkload")
        );
        assert_eq!(c.message, "DeletingWorkload happened");
        assert_eq!(conditions.len(), before.conditions.len() + 1);
        let again = terminating(
            &conditions,
            &problem("DatabaseTeardownFailed"),
            Some(3),
            &at(3),
        );
        assert_eq!(again.iter().filter(|c| c.type_ == "Terminating").count(), 1);
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let first = merge(
            &[],
            vec![("DatabaseReady", Ok("ready".into()))],
            Some(1),
            &at(1_000),
        );
        let same = merge(
            &first,
            vec![("DatabaseReady", Ok("still".into()))],
            Some(2),
            &at(2_000),
        );
        assert_eq!(same[0].last_transition_time, at(1_000));
        let changed = merge(
            &same,
            vec![("DatabaseReady", Err(problem("DatabaseUnreachable")))],
            Some(2),
            &at(2_000),
        );
        assert_eq!(changed[0].last_transition_time, at(2_000));
        assert_eq!(changed[0].reason, "DatabaseUnreachable");
        assert_eq!(changed[0].status, "False");
    }

    #[test]
    fn a_moving_lag_is_written_once_per_refresh_and_a_crossed_threshold_at_once() {
        let refresh = std::time::Duration::from_secs(30);
        let a = am(json!({}));
        let lagging = |n: i64| {
            let mut o = healthy();
            o.lag = Ok(BTreeMap::from([(0, n)]));
            o
        };
        let first = status(&a, &AuditManagerStatus::default(), lagging(5), &at(100));
        // 10 s later the lag moved: not written yet.
        let soon = status(&a, &first, lagging(7), &at(110));
        assert!(changed(&first, &soon));
        assert!(!worth_writing(&first, &soon, &at(110), refresh));
        // A refresh period later: written.
        let later = status(&a, &first, lagging(9), &at(130));
        assert!(worth_writing(&first, &later, &at(130), refresh));
        // Over the threshold (100): a condition changes, written at once.
        let over = status(&a, &first, lagging(500), &at(105));
        assert!(worth_writing(&first, &over, &at(105), refresh));
        // Nothing changed: never written.
        let same = status(&a, &first, lagging(5), &at(200));
        assert!(!worth_writing(&first, &same, &at(200), refresh));
    }

    #[test]
    fn a_new_lag_measurement_alone_is_not_a_change() {
        let a = am(json!({}));
        let first = status(&a, &AuditManagerStatus::default(), healthy(), &at(1));
        let later = status(&a, &first, healthy(), &at(60));
        assert!(!changed(&first, &later));
        let mut worse = healthy();
        worse.lag = Ok(BTreeMap::from([(0, 500)]));
        assert!(changed(&first, &status(&a, &first, worse, &at(60))));
    }
}
