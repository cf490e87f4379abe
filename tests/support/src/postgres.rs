//! PostgreSQL from the Debian package: a throwaway cluster in a scratch dir, run as the
//! unprivileged `postgres` user when the tests run as root (initdb refuses root).

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::process::{self, Server};
use crate::setup::{Error, announce, require_file, scratch_dir};

const COMPONENT: &str = "PostgreSQL";
/// The superuser's name and password (password auth over TCP, as in a real deployment).
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "testenv-superuser";
/// A role `pg_hba.conf` admits only over TLS (tests create it; plaintext is rejected).
pub const TLS_ONLY_ROLE: &str = "audit_tls";
/// A role admitted only over TLS with a client certificate whose common name is the role
/// ([`crate::pki::CLIENT_CN`]), PostgreSQL's `cert` method.
pub const CERT_ROLE: &str = crate::pki::CLIENT_CN;

/// A PostgreSQL server on 127.0.0.1. Dropping an instance from [`Postgres::start`] stops it.
pub struct Postgres {
    port: u16,
    /// A second address it listens on (a node's bridge), if any.
    also_on: Option<Ipv4Addr>,
    version: String,
    bin: PathBuf,
    data: PathBuf,
    run_as: Option<(u32, u32)>,
    server: Mutex<Option<Server>>,
}

impl Postgres {
    /// Creates a new cluster and starts it on a free port, serving TLS with the test PKI's
    /// certificate for 127.0.0.1 and localhost.
    pub fn start() -> Result<Postgres, Error> {
        Postgres::start_with_cert(&crate::pki::pki().server)
    }

    /// As [`Postgres::start`], serving `server` (a certificate of the test PKI's CA): a
    /// certificate for another name shows what a client does when the host name is wrong.
    pub fn start_with_cert(server: &crate::pki::Issued) -> Result<Postgres, Error> {
        Postgres::create(server, None)
    }

    /// As [`Postgres::start`], listening also on `address` (the host's address on a node's
    /// bridge, so that pods reach it), which admits password logins from its /24; its
    /// certificate names that address too.
    pub fn start_also_on(address: Ipv4Addr) -> Result<Postgres, Error> {
        let server = crate::pki::server_also_for("postgres", address)?;
        Postgres::create(&server, Some(address))
    }

    fn create(server: &crate::pki::Issued, also_on: Option<Ipv4Addr>) -> Result<Postgres, Error> {
        let bin = find_bin_dir()?;
        let run_as = unprivileged_user()?;
        let dir = scratch_dir("postgres")?;
        // The server user must reach its data dir inside the scratch dir.
        set_mode(&dir, 0o755)?;
        if let Some((uid, gid)) = run_as {
            chown(&dir, uid, gid)?;
        }
        let data = dir.join("data");
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)
            .map_err(|e| Error::io("writing the superuser password file".into(), e))?;
        if let Some((uid, gid)) = run_as {
            chown(&pwfile, uid, gid)?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .current_dir(&dir);
        as_user(&mut initdb, run_as);
        process::run(COMPONENT, initdb)?;
        tls_files(&data, server, run_as, also_on)?;
        let version = process::run(COMPONENT, {
            let mut c = Command::new(bin.join("postgres"));
            c.arg("--version");
            c
        })?
        .trim()
        .to_string();

        let pg = Postgres {
            port: process::free_port()?,
            also_on,
            version,
            bin,
            data,
            run_as,
            server: Mutex::new(None),
        };
        pg.start_server()?;
        let also = also_on.map_or(String::new(), |a| format!(" and {a}:{}", pg.port));
        announce(&format!("{} on {}{also}", pg.version, pg.address()));
        Ok(pg)
    }

    fn start_server(&self) -> Result<(), Error> {
        let mut guard = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            return Ok(());
        }
        let dir = self.data.parent().unwrap_or(Path::new("/tmp"));
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(match self.also_on {
                Some(address) => format!("listen_addresses=127.0.0.1,{address}"),
                None => "listen_addresses=127.0.0.1".to_string(),
            })
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            // TLS on, with the test PKI's server certificate (127.0.0.1, localhost).
            .args(["-c", "ssl=on", "-c", "ssl_cert_file=server.crt"])
            .args(["-c", "ssl_key_file=server.key", "-c", "ssl_ca_file=ca.crt"])
            .current_dir(dir);
        as_user(&mut cmd, self.run_as);
        // SIGINT is PostgreSQL's fast shutdown: sessions end, the cluster stays consistent.
        let server = Server::spawn(COMPONENT, cmd, &dir.join("postgres.log"), libc::SIGINT)?;
        let isready = self.bin.join("pg_isready");
        let port = self.port.to_string();
        server.wait_until(Duration::from_secs(60), "accepting connections", || {
            Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })?;
        *guard = Some(server);
        Ok(())
    }

    /// Stops the server (fast shutdown); the data stays for [`Postgres::resume`].
    pub fn stop(&self) {
        if let Some(server) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            server.stop(Duration::from_secs(30));
        }
    }

    /// Starts a stopped server again on the same port with the same data.
    pub fn resume(&self) -> Result<(), Error> {
        self.start_server()
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The address on a node's bridge it also listens on ([`Postgres::start_also_on`]).
    pub fn also_on(&self) -> Option<Ipv4Addr> {
        self.also_on
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What `postgres --version` printed.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The superuser's name and password.
    pub fn superuser(&self) -> (&'static str, &'static str) {
        (SUPERUSER, SUPERUSER_PASSWORD)
    }

    /// A connection URL for the superuser to `database`.
    pub fn superuser_url(&self, database: &str) -> String {
        self.url(SUPERUSER, SUPERUSER_PASSWORD, database)
    }

    /// A connection URL for `user` to `database`.
    pub fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies the test PKI's server certificate, key and CA into the data directory (the key
/// readable by the server's user only, as PostgreSQL demands), and puts the TLS-only rules at
/// the top of `pg_hba.conf`.
fn tls_files(
    data: &Path,
    server: &crate::pki::Issued,
    run_as: Option<(u32, u32)>,
    also_on: Option<Ipv4Addr>,
) -> Result<(), Error> {
    let pki = crate::pki::pki();
    for (from, to, mode) in [
        (&server.cert, "server.crt", 0o644),
        (&server.key, "server.key", 0o600),
        (&pki.ca.cert(), "ca.crt", 0o644),
    ] {
        let dest = data.join(to);
        std::fs::copy(from, &dest).map_err(|e| Error::io(format!("copying {to}"), e))?;
        set_mode(&dest, mode)?;
        if let Some((uid, gid)) = run_as {
            chown(&dest, uid, gid)?;
        }
    }
    let hba = data.join("pg_hba.conf");
    let rest =
        std::fs::read_to_string(&hba).map_err(|e| Error::io("reading pg_hba.conf".into(), e))?;
    let rules = format!(
        "hostnossl all {TLS_ONLY_ROLE} 127.0.0.1/32 reject\n\
         hostssl all {CERT_ROLE} 127.0.0.1/32 cert\n\
         host all {CERT_ROLE} 127.0.0.1/32 reject\n"
    );
    // Pods on the node's bridge log in with passwords, as the operator and the runtime do.
    let rest = match also_on {
        Some(address) => {
            let network = Ipv4Addr::from(u32::from(address) & 0xffff_ff00);
            format!("{rest}host all all {network}/24 scram-sha-256\n")
        }
        None => rest,
    };
    std::fs::write(&hba, rules + &rest).map_err(|e| Error::io("writing pg_hba.conf".into(), e))?;
    Ok(())
}

fn find_bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("AUDIT_TESTENV_PG_BIN") {
        return require_file(COMPONENT, PathBuf::from(dir).join("initdb"))
            .map(|p| p.with_file_name(""));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| Error::NotProvisioned {
            component: COMPONENT.into(),
            missing: "/usr/lib/postgresql/<major>/bin/initdb".into(),
        })
}

/// `Some((uid, gid))` of the `postgres` user when running as root.
fn unprivileged_user() -> Result<Option<(u32, u32)>, Error> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").map_err(|_| Error::Start {
        component: COMPONENT.into(),
        reason: "bad user name".into(),
        log: String::new(),
    })?;
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(Error::NotProvisioned {
            component: "the unprivileged user 'postgres' (initdb refuses to run as root)".into(),
            missing: "/etc/passwd entry 'postgres'".into(),
        });
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn as_user(cmd: &mut Command, run_as: Option<(u32, u32)>) {
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid)
            .gid(gid)
            .env("HOME", "/tmp")
            .env("USER", "postgres");
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("chown {}", path.display()), e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))
}
