//! Child processes of the test environment: spawned so they die with the test binary, stopped
//! at exit even when tests failed or panicked.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::setup::{Error, remove_scratch_dirs};

/// A running server process whose output goes to a log file.
pub(crate) struct Server {
    name: String,
    pid: i32,
    stop_signal: i32,
    log: PathBuf,
    exit: std::sync::Arc<Mutex<Option<std::process::ExitStatus>>>,
}

impl Server {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        name: &str,
        mut command: Command,
        log: &Path,
        stop_signal: i32,
    ) -> Result<Server, Error> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("opening log {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("duplicating a log handle".to_string(), e))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = spawn_from_keeper(command).map_err(|e| Error::Start {
            component: name.to_string(),
            reason: format!("cannot execute: {e}"),
            log: String::new(),
        })?;
        let pid = i32::try_from(child.id()).map_err(|_| Error::Start {
            component: name.to_string(),
            reason: "pid out of range".into(),
            log: String::new(),
        })?;
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Tracked { pid, stop_signal });
        // The keeper thread owns nothing after the spawn: reap the child from a small thread so
        // it never lingers as a zombie once it exits.
        let exit = std::sync::Arc::new(Mutex::new(None));
        let status = std::sync::Arc::clone(&exit);
        thread::spawn(move || {
            let mut child = child;
            if let Ok(s) = child.wait() {
                *status.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
            }
        });
        Ok(Server {
            name: name.to_string(),
            pid,
            stop_signal,
            log: log.to_path_buf(),
            exit,
        })
    }

    /// Sends `signal` to the process.
    pub(crate) fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.pid, signal) };
    }

    /// Waits up to `timeout` for the process to exit and returns how it ended.
    pub(crate) fn wait_exit(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = *self.exit.lock().unwrap_or_else(|p| p.into_inner()) {
                untrack(self.pid);
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// True while the process exists.
    pub(crate) fn is_running(&self) -> bool {
        // Signal 0 checks existence; a reaped child gives ESRCH.
        unsafe { libc::kill(self.pid, 0) == 0 }
    }

    /// A start-up failure carrying the end of this server's log.
    pub(crate) fn failed(&self, reason: impl Into<String>) -> Error {
        Error::Start {
            component: self.name.clone(),
            reason: reason.into(),
            log: tail(&self.log, 40),
        }
    }

    /// Polls `ready` until it holds, failing early when the process dies.
    pub(crate) fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if !self.is_running() {
                return Err(self.failed(format!("exited before {what}")));
            }
            if Instant::now() > deadline {
                return Err(self.failed(format!("not {what} after {}s", timeout.as_secs())));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the process (its stop signal, then SIGKILL after `grace`) and waits until it is gone.
    pub(crate) fn stop(&self, grace: Duration) {
        untrack(self.pid);
        terminate(self.pid, self.stop_signal, grace);
    }
}

struct Tracked {
    pid: i32,
    stop_signal: i32,
}

fn registry() -> &'static Mutex<Vec<Tracked>> {
    static REGISTRY: OnceLock<Mutex<Vec<Tracked>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        // Stops every server still running when the test binary exits, whether its tests
        // passed or not (libtest always ends through exit(3)).
        unsafe { libc::atexit(stop_all_at_exit) };
        Mutex::new(Vec::new())
    })
}

fn untrack(pid: i32) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|t| t.pid != pid);
}

extern "C" fn stop_all_at_exit() {
    let tracked: Vec<Tracked> = match registry().lock() {
        Ok(mut r) => r.drain(..).collect(),
        Err(p) => p.into_inner().drain(..).collect(),
    };
    for t in &tracked {
        unsafe { libc::kill(t.pid, t.stop_signal) };
    }
    for t in &tracked {
        terminate(t.pid, t.stop_signal, Duration::from_secs(5));
    }
    // What a real node changed outside its scratch folder (mounts, kernel settings, ...).
    crate::undo::apply_pending();
    remove_scratch_dirs();
}

fn terminate(pid: i32, signal: i32, grace: Duration) {
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + grace;
    while unsafe { libc::kill(pid, 0) } == 0 {
        if Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Makes `command` start with no signal blocked. A signal mask is inherited across fork and
/// exec, and `demo` and `testenv-up` block SIGINT and SIGTERM to `sigwait` for them: without
/// this every process they start (Kafka, PostgreSQL, the local node and the pods it runs)
/// would never see SIGTERM, and a pod would be killed at the end of its grace period instead
/// of draining its queue.
pub fn unblock_signals(command: &mut Command) {
    // SAFETY: sigemptyset and sigprocmask are async-signal-safe; nothing is allocated.
    unsafe {
        command.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns through one long-lived thread. The children ask the kernel for SIGKILL when their
/// parent thread ends (PR_SET_PDEATHSIG), and libtest's test threads end after every test, so
/// the parent has to be a thread that lives as long as the process.
fn spawn_from_keeper(command: Command) -> io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("testenv-keeper".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    unblock_signals(&mut command);
                    // SAFETY: only async-signal-safe calls between fork and exec.
                    unsafe {
                        command.pre_exec(|| {
                            // Runs after any uid change, which would otherwise clear it.
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| panic!("testenv: cannot start the keeper thread: {e}"));
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((command, tx))
        .map_err(|_| io::Error::other("keeper thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("keeper thread is gone"))?
}

/// Runs a short command to completion, returning its stdout or an error with its output.
pub(crate) fn run(component: &str, mut command: Command) -> Result<String, Error> {
    let shown = format!("{command:?}");
    unblock_signals(&mut command);
    let out = command.output().map_err(|e| Error::Start {
        component: component.to_string(),
        reason: format!("cannot execute {shown}: {e}"),
        log: String::new(),
    })?;
    if !out.status.success() {
        return Err(Error::Start {
            component: component.to_string(),
            reason: format!("{shown} failed with {}", out.status),
            log: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server about to start.
///
/// The port comes from below the kernel's ephemeral range (`ip_local_port_range`), never from
/// it: a port the kernel handed out by `bind(0)` is the next one it hands to some outgoing
/// connection too, and a broker that starts a second later finds it taken. Below the range only
/// explicit binds compete, and this process hands each port out once.
pub(crate) fn free_port() -> Result<u16, Error> {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let ceiling = ephemeral_floor().saturating_sub(1).max(LOWEST_PORT + 1000);
    let span = ceiling - LOWEST_PORT;
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    // Processes that pick ports at the same time (a test run beside `make demo`) start apart.
    let mut port = next.unwrap_or(LOWEST_PORT + (std::process::id() % u32::from(span)) as u16);
    for _ in 0..span {
        port = if port >= ceiling {
            LOWEST_PORT
        } else {
            port + 1
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(port);
            return Ok(port);
        }
    }
    Err(Error::io(
        format!("finding a free loopback port in {LOWEST_PORT}..={ceiling}"),
        io::Error::from(io::ErrorKind::AddrInUse),
    ))
}

/// The lowest port [`free_port`] hands out.
const LOWEST_PORT: u16 = 10_000;

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// The last `lines` lines of a log file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
