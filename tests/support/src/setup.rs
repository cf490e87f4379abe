//! What every component shares: the error type, the cache of provisioned binaries, pinned
//! versions, and scratch directories removed at exit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

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

/// Writes `text` to `path`.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Creates each folder with its parents.
pub(crate) fn create_dirs(dirs: &[&Path]) -> Result<(), Error> {
    for d in dirs {
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
    }
    Ok(())
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
            // A killed run's node left its changes written down: put them back first.
            crate::undo::Undo::apply_file(&entry.path().join("undo.json"));
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
