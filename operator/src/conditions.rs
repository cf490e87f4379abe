//! Status conditions: what is wrong, in a reason and a message that says what to do.

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
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// Condition types, in the order they are reported.
pub const TYPES: [&str; 6] = [
    "DatabaseReady",
    "TopicsReady",
    "WorkloadAvailable",
    "Healthy",
    "LagWithinThreshold",
    "Ready",
];

/// Builds the conditions for this generation, keeping `lastTransitionTime` of conditions whose
/// status did not change.
pub fn merge(
    previous: &[Condition],
    next: Vec<(&'static str, Result<String, Problem>)>,
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

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).expect("time"));
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).expect("time"));
        let first = merge(
            &[],
            vec![("DatabaseReady", Ok("ready".into()))],
            Some(1),
            &t0,
        );
        let same = merge(
            &first,
            vec![("DatabaseReady", Ok("still".into()))],
            Some(2),
            &t1,
        );
        assert_eq!(same[0].last_transition_time, t0);
        let changed = merge(
            &same,
            vec![(
                "DatabaseReady",
                Err(Problem::new("DatabaseUnreachable", "down".into())),
            )],
            Some(2),
            &t1,
        );
        assert_eq!(changed[0].last_transition_time, t1);
        assert_eq!(changed[0].reason, "DatabaseUnreachable");
        assert_eq!(changed[0].status, "False");
    }
}
