//! The `audit-manager` binary as a child process of a test or the benchmark.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::process::{Server, free_port, tail};
use crate::setup::{Error, scratch_dir};

/// A running `audit-manager` process listening on 127.0.0.1 and a free port.
pub struct AuditManager {
    server: Server,
    port: u16,
    admin_port: u16,
}

impl AuditManager {
    /// Starts `binary args...` with `env` on top of a clean environment, and waits until
    /// `/health/ready` answers 200.
    pub fn start<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        binary: &Path,
        args: &[&str],
        env: &[(K, V)],
    ) -> Result<AuditManager, Error> {
        let port = free_port()?;
        let admin_port = free_port()?;
        let dir = scratch_dir("audit-manager")?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AUDIT_MANAGER__SERVER__HOST", "127.0.0.1")
            .env("AUDIT_MANAGER__SERVER__PORT", port.to_string())
            .env("AUDIT_MANAGER__SERVER__ADMIN_PORT", admin_port.to_string())
            .env("AUDIT_MANAGER__LOG__LEVEL", "info");
        for (k, v) in env {
            command.env(k, v);
        }
        let server = Server::spawn(
            "audit-manager",
            command,
            &dir.join("audit-manager.log"),
            libc::SIGTERM,
        )?;
        server.wait_until(Duration::from_secs(60), "ready", || {
            http_status(port, "/v1/auditmanager/health/ready") == Some(200)
        })?;
        Ok(AuditManager {
            server,
            port,
            admin_port,
        })
    }

    /// `127.0.0.1:PORT` of the admin listener (`/config`).
    pub fn admin_address(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.server.pid()
    }

    /// Resident memory in bytes (VmRSS), if the process still exists.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.status_bytes("VmRSS:")
    }

    /// The most resident memory it has had so far (VmHWM), if the process still exists.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.status_bytes("VmHWM:")
    }

    /// The CPU time it has used so far (user and system, all threads), if it still exists.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // The fields after the command name (which may hold spaces) in parentheses: utime and
        // stime are the 12th and 13th of them.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (per_second > 0).then(|| ticks as f64 / per_second as f64)
    }

    /// A size in kB from `/proc/PID/status`, in bytes.
    fn status_bytes(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// Sends SIGTERM (graceful drain).
    pub fn terminate(&self) {
        self.server.signal(libc::SIGTERM);
    }

    /// Sends SIGKILL.
    pub fn kill(&self) {
        self.server.signal(libc::SIGKILL);
    }

    /// Waits for the process to end.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        self.server.wait_exit(timeout)
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(self.server.log(), lines)
    }

    /// Its whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.server.log()).unwrap_or_default()
    }
}

impl Drop for AuditManager {
    fn drop(&mut self) {
        if self.server.is_running() {
            self.server.stop(Duration::from_secs(30));
        }
    }
}

/// The status of a GET on 127.0.0.1:`port`, or None when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
