//! The workspace's own binaries for tests that run them as processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A binary of this workspace (`audit-manager`, `audit-manager-operator`, `demo`), built or
/// confirmed fresh once per test process. The build asks for the target set
/// of `cargo test --workspace`, hence its features: inside `make test` it compiles nothing
/// again, where a per-package build (`-p audit-testenv`) resolves other features and
/// compiles dependencies a second time.
///
/// From one of the workspace's own binaries (`demo`, whose make target builds what it runs),
/// its sibling, unbuilt.
pub fn workspace_binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .filter(|dir| !dir.ends_with("deps"))
    {
        let binary = dir.join(name);
        assert!(
            binary.exists(),
            "{} is missing: build it with `cargo build --bin {name}`",
            binary.display()
        );
        return binary;
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--locked",
                "--workspace",
                "--all-targets",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap_or_else(|e| panic!("running cargo build: {e}"));
        assert!(status.success(), "building the workspace failed");
        // A test executable lives in target/<profile>/deps; the binaries one folder up.
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("test executable: {e}"));
        exe.parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| panic!("no target folder above {}", exe.display()))
    });
    let binary = dir.join(name);
    assert!(binary.exists(), "{} was not built", binary.display());
    binary
}
