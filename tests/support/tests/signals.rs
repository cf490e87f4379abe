//! Processes the test environment starts see SIGTERM even when their starter blocks it (as
//! `demo` and `testenv-up` do, to `sigwait` for Ctrl-C): a pod that never sees SIGTERM is
//! killed at the end of its grace period without draining its queue.
//!
//! Its own test binary: the process-wide keeper thread that spawns children must be created
//! by a thread with the signals blocked, as in `demo`.

use std::process::Command;

/// The blocked-signal mask of a process, from /proc.
fn blocked(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .expect("SigBlk line");
    u64::from_str_radix(line.trim(), 16).expect("hex mask")
}

#[test]
fn children_start_with_no_signal_blocked_whatever_their_starter_blocks() {
    // SAFETY: plain libc calls on a local set.
    unsafe {
        let mut stop: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut stop);
        libc::sigaddset(&mut stop, libc::SIGTERM);
        libc::sigaddset(&mut stop, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &stop, std::ptr::null_mut());
    }
    let me = unsafe { libc::getpid() };
    let this_thread = std::fs::read_to_string("/proc/thread-self/status").expect("status");
    assert!(
        this_thread.contains("SigBlk:\t0000000000004002"),
        "the starter blocks SIGINT and SIGTERM: {this_thread}"
    );
    let dir = audit_testenv::scratch("signals").expect("scratch dir");
    let mut sleeper = Command::new("sleep");
    sleeper.arg("60");
    let child =
        audit_testenv::Process::spawn("sleeper", sleeper, &dir.join("sleeper.log")).expect("spawn");
    assert_ne!(child.pid(), me);
    assert_eq!(blocked(child.pid()), 0, "the child blocks no signal");
    let asked = std::time::Instant::now();
    child.stop();
    assert!(!child.is_running());
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(5),
        "SIGTERM stopped it, not the SIGKILL that follows 15 s later"
    );
}
