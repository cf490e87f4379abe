//! Every path the runtime serves: the operator renders probes and routes from these.

/// The prefix of every endpoint.
pub const PREFIX: &str = "/v1/auditmanager";
/// `POST`: one CloudEvent.
pub const EVENTS: &str = "/v1/auditmanager/events";
/// `POST`: a batch of CloudEvents.
pub const BATCH: &str = "/v1/auditmanager/events/batch";
/// The component report (200 when every enabled component is healthy).
pub const HEALTH: &str = "/v1/auditmanager/health";
/// Liveness: the process's own tasks run.
pub const LIVE: &str = "/v1/auditmanager/health/live";
/// Readiness: started and not draining.
pub const READY: &str = "/v1/auditmanager/health/ready";
pub const VERSION: &str = "/v1/auditmanager/version";
pub const CONFIG: &str = "/v1/auditmanager/config";
pub const METRICS: &str = "/v1/auditmanager/metrics";
pub const OPENAPI: &str = "/v1/auditmanager/openapi.json";
/// The API reference page, rendered in the browser from `openapi.json` by the two assets below
/// (all served from the binary: the page needs no internet access).
pub const DOCS: &str = "/v1/auditmanager/docs";
pub const DOCS_SCRIPT: &str = "/v1/auditmanager/docs.js";
pub const DOCS_STYLE: &str = "/v1/auditmanager/docs.css";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_under_the_prefix() {
        for path in [
            EVENTS,
            BATCH,
            HEALTH,
            LIVE,
            READY,
            VERSION,
            CONFIG,
            METRICS,
            OPENAPI,
            DOCS,
            DOCS_SCRIPT,
            DOCS_STYLE,
        ] {
            assert!(path.starts_with(&format!("{PREFIX}/")), "{path}");
        }
    }
}
