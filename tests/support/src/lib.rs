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

pub mod http;
mod kafka;
mod kube;
pub mod loadgen;
mod postgres;
mod process;
mod runtime;
pub mod topics;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub use kafka::Kafka;
pub use kube::Kube;
pub use postgres::Postgres;
pub use runtime::AuditManager;

/// Why the test environment could not provide a component.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{component} is not provisioned: {missing} does not exist; run `make testenv` (tests/env/provision.sh) or `make test`"
    )]
    NotProvisioned { component: String, missing: PathBuf },
    #[error("{component} failed to start: {reason}\n--- end of its log ---\n{log}")]
    Start {
        component: String,
        reason: String,
        log: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: String, source: std::io::Error) -> Error {
        Error::Io { context, source }
    }
}

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

    /// SIGTERM, SIGKILL after 15 s.
    pub fn stop(&self) {
        self.0.stop(std::time::Duration::from_secs(15));
    }
}

/// A scratch folder removed at exit (kept with `AUDIT_TESTENV_KEEP`).
pub fn scratch(component: &str) -> Result<PathBuf, Error> {
    scratch_dir(component)
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

/// The shared Kubernetes API server of this test binary.
pub fn kube() -> &'static Kube {
    static SHARED: OnceLock<Kube> = OnceLock::new();
    shared(&SHARED, Kube::start)
}

fn shared<T>(cell: &'static OnceLock<T>, start: fn() -> Result<T, Error>) -> &'static T {
    // A start-up failure panics every test that asked for the component, with the reason.
    cell.get_or_init(|| start().unwrap_or_else(|e| panic!("testenv: {e}")))
}

/// Where provisioned components live.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AUDIT_MANAGER_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/audit-manager")
}

/// A pinned version from `tests/env/versions.env`.
pub(crate) fn pinned(key: &str) -> &'static str {
    include_str!("../../env/versions.env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("tests/env/versions.env has no {key}"))
}

pub(crate) fn require_file(component: &str, path: PathBuf) -> Result<PathBuf, Error> {
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::NotProvisioned {
            component: component.to_string(),
            missing: path,
        })
    }
}

/// Writes a line to the real stderr, past libtest's output capture, so versions and addresses
/// show in every test run's output.
pub(crate) fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "testenv: {line}");
}

fn scratch_dirs() -> &'static Mutex<Vec<PathBuf>> {
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    &DIRS
}

/// A fresh directory for one component instance, removed when the test binary exits (kept
/// when `AUDIT_TESTENV_KEEP` is set, for reading logs after a failure).
pub(crate) fn scratch_dir(component: &str) -> Result<PathBuf, Error> {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(sweep_stale_scratch_dirs);
    let dir = tempfile::Builder::new()
        .prefix(&format!(
            "audit-testenv-{}-{component}-",
            std::process::id()
        ))
        .tempdir()
        .map_err(|e| Error::io(format!("creating a scratch dir for {component}"), e))?
        .keep();
    scratch_dirs()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(dir.clone());
    Ok(dir)
}

/// Removes scratch dirs of test binaries that were killed before their exit hook ran.
fn sweep_stale_scratch_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("audit-testenv-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // kill(pid, 0) fails with ESRCH once the owner is gone.
        if unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub(crate) fn remove_scratch_dirs() {
    if std::env::var_os("AUDIT_TESTENV_KEEP").is_some() {
        return;
    }
    let dirs: Vec<PathBuf> = scratch_dirs()
        .lock()
        .map(|mut d| d.drain(..).collect())
        .unwrap_or_default();
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}
