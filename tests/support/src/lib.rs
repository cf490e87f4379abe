//! The real test environment: PostgreSQL, Apache Kafka (KRaft) and a Kubernetes API server
//! (kube-apiserver + etcd), each started on 127.0.0.1 and free ports.
//!
//! `postgres()`, `kafka()` and `kube()` start a shared instance once per test binary; the
//! `start()` constructors give a test its own instance (for outage tests that stop and start
//! it). Every process is stopped when the test binary exits, passed or failed, and dies with it
//! if it is killed. A component that cannot start fails the test with a message naming it and
//! the end of its log: nothing is ever skipped.
//!
//! The binaries come from `tests/env/provision.sh` (run by `make test`), found in
//! `$AUDIT_MANAGER_CACHE` (default `~/.cache/audit-manager`) by the versions in
//! `tests/env/versions.env`.

mod build;
pub mod hostile;
pub mod http;
pub mod images;
pub mod install;
pub mod jwt;
mod kafka;
mod kube;
pub mod loadgen;
pub mod node;
pub mod pki;
mod postgres;
mod process;
mod runtime;
mod setup;
pub mod topics;
mod undo;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use build::workspace_binary;
pub use kafka::{Kafka, SASL_PASSWORD, SASL_USER};
pub use kube::{KUBERNETES_SERVICE_IP, Kube, SA_ISSUER};
pub use node::Cluster;
pub use postgres::{CERT_ROLE, Postgres, TLS_ONLY_ROLE};
pub use runtime::AuditManager;
pub use setup::{Error, cache_dir};

/// A long-running helper process (the local node, the operator in `make demo`): it dies with
/// this process and is stopped at exit like the components.
pub struct Process(process::Server);

impl Process {
    /// Starts `command` with its output appended to `log`; SIGTERM stops it.
    pub fn spawn(name: &str, command: std::process::Command, log: &Path) -> Result<Process, Error> {
        process::Server::spawn(name, command, log, libc::SIGTERM).map(Process)
    }

    pub fn is_running(&self) -> bool {
        self.0.is_running()
    }

    pub fn pid(&self) -> i32 {
        self.0.pid()
    }

    /// SIGTERM, SIGKILL after 15 s.
    pub fn stop(&self) {
        self.0.stop(std::time::Duration::from_secs(15));
    }
}

/// A scratch folder removed at exit (kept with `AUDIT_TESTENV_KEEP`).
pub fn scratch(component: &str) -> Result<PathBuf, Error> {
    setup::scratch_dir(component)
}

/// The shared PostgreSQL server of this test binary.
pub fn postgres() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    shared(&SHARED, Postgres::start)
}

/// The shared Kafka broker of this test binary.
pub fn kafka() -> &'static Kafka {
    static SHARED: OnceLock<Kafka> = OnceLock::new();
    shared(&SHARED, Kafka::start)
}

/// The shared Kubernetes API server of this test binary, with kube-controller-manager running
/// against it (Deployments, Jobs, namespace deletion and garbage collection work). A test
/// binary uses either this or [`kube`], not both.
pub fn kube_with_controllers() -> &'static Kube {
    static SHARED: OnceLock<Kube> = OnceLock::new();
    shared(&SHARED, || {
        let kube = Kube::start()?;
        kube.start_controller_manager()?;
        Ok(kube)
    })
}

/// The shared cluster of this test binary with a real node (containerd, kubelet, kube-proxy):
/// its API server listens on the node's bridge, with controllers and a scheduler. A test
/// binary uses this or [`kube`] / [`kube_with_controllers`], not several.
pub fn cluster() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    shared(&SHARED, Cluster::start)
}

/// The shared PostgreSQL of this test binary that pods of [`cluster`] reach: it listens also
/// on the node's bridge, with a certificate for that address. Starts the cluster first.
pub fn postgres_on_node() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    shared(&SHARED, || Postgres::start_also_on(cluster().bridge.host))
}

/// The shared Kafka broker of this test binary that pods of [`cluster`] reach (PLAINTEXT and
/// SASL_SSL listeners on the node's bridge). Starts the cluster first.
pub fn kafka_on_node() -> &'static Kafka {
    static SHARED: OnceLock<Kafka> = OnceLock::new();
    shared(&SHARED, || Kafka::start_also_on(cluster().bridge.host))
}

/// The shared Kubernetes API server of this test binary.
pub fn kube() -> &'static Kube {
    static SHARED: OnceLock<Kube> = OnceLock::new();
    shared(&SHARED, Kube::start)
}

fn shared<T>(cell: &'static OnceLock<T>, start: fn() -> Result<T, Error>) -> &'static T {
    // A start-up failure panics every test that asked for the component, with the reason.
    cell.get_or_init(|| start().unwrap_or_else(|e| panic!("testenv: {e}")))
}
