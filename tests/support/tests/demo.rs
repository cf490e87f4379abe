//! `make demo DEMO_EXIT=1` as a test: the whole flow must succeed, and leave nothing running.

use std::process::Command;

/// Processes whose command line is `.../audit-manager serve` (read from /proc: procps may be
/// missing on a fresh machine).
fn runtime_processes() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"/audit-manager"))
                && args.get(1).is_some_and(|a| *a == b"serve")
        })
        .count()
}

#[test]
fn make_demo_runs_every_step_and_leaves_nothing_running() {
    for needed in ["audit-manager", "audit-manager-operator"] {
        audit_testenv::workspace_binary(needed);
    }
    let demo = audit_testenv::workspace_binary("demo");
    let before = runtime_processes();
    let out = Command::new(demo)
        .env("DEMO_EXIT", "1")
        .output()
        .expect("running the demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the demo failed:\n{text}");
    for line in [
        "ok: Ready",
        "kubectl logs works",
        "every accepted event is a row",
        "ok: lag 0",
        "Ready=True",
        "every step succeeded",
    ] {
        assert!(text.contains(line), "demo output lacks `{line}`:\n{text}");
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        runtime_processes(),
        before,
        "the demo left runtime processes running"
    );
}
