//! Throwaway certificate authorities for the test environment, made with the `openssl` command:
//! a CA, server certificates for 127.0.0.1 and localhost, and client certificates.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::process;
use crate::setup::{Error, scratch_dir};

/// A CA in a directory: `ca.crt`, `ca.key`, and the certificates it issued.
pub struct Ca {
    dir: PathBuf,
}

/// A certificate and its unencrypted PKCS#8 key, both PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// A new self-signed CA named `name` in `dir`.
    pub fn create(dir: &Path, name: &str) -> Result<Ca, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {name}"), e))?;
        let ca = Ca { dir: dir.into() };
        ca.openssl(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "3650", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .run()?;
        Ok(ca)
    }

    /// The CA certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A server certificate named `name` for the subject alternative names `sans`
    /// (`IP:127.0.0.1,DNS:localhost`).
    pub fn server(&self, name: &str, sans: &str) -> Result<Issued, Error> {
        self.issue(
            name,
            name,
            &format!("subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"),
        )
    }

    /// A client certificate with common name `cn` (the user name PostgreSQL's `cert` method
    /// and Kafka's mTLS principal see).
    pub fn client(&self, name: &str, cn: &str) -> Result<Issued, Error> {
        self.issue(name, cn, "extendedKeyUsage=clientAuth\n")
    }

    fn issue(&self, name: &str, cn: &str, ext: &str) -> Result<Issued, Error> {
        let ext_file = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext_file),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n{ext}"),
        )
        .map_err(|e| Error::io(format!("writing {ext_file}"), e))?;
        let (crt, key, csr) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
        );
        self.openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key])
            .args(&["-out", &csr, "-subj"])
            .arg(format!("/CN={cn}"))
            .run()?;
        self.openssl(&[
            "x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key",
        ])
        .args(&[
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "3650",
            "-extfile",
            &ext_file,
        ])
        .run()?;
        Ok(Issued {
            cert: self.dir.join(crt),
            key: self.dir.join(key),
        })
    }

    fn openssl(&self, args: &[&str]) -> OpenSsl {
        let mut c = Command::new("openssl");
        c.args(args).current_dir(&self.dir);
        OpenSsl(c)
    }
}

struct OpenSsl(Command);

impl OpenSsl {
    fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.0.arg(a);
        self
    }
    fn args(mut self, a: &[&str]) -> Self {
        self.0.args(a);
        self
    }
    fn run(self) -> Result<String, Error> {
        process::run("openssl (test PKI)", self.0)
    }
}

/// The PKI every TLS server of a test binary uses, and a second CA that signed nothing the
/// servers present (for "wrong CA" tests).
pub struct TestPki {
    pub ca: Ca,
    /// Serves 127.0.0.1 and localhost.
    pub server: Issued,
    /// Common name `audit_cert`: a PostgreSQL role and a Kafka principal.
    pub client: Issued,
    pub other_ca: Ca,
}

/// The client certificate's common name.
pub const CLIENT_CN: &str = "audit_cert";

/// The shared test PKI of this test binary.
pub fn pki() -> &'static TestPki {
    static SHARED: OnceLock<TestPki> = OnceLock::new();
    SHARED.get_or_init(|| make().unwrap_or_else(|e| panic!("testenv: {e}")))
}

fn make() -> Result<TestPki, Error> {
    let dir = scratch_dir("pki")?;
    let ca = Ca::create(&dir.join("ca"), "audit-testenv-ca")?;
    let server = ca.server("server", "IP:127.0.0.1,DNS:localhost")?;
    let client = ca.client("client", CLIENT_CN)?;
    let other_ca = Ca::create(&dir.join("other"), "audit-testenv-other-ca")?;
    Ok(TestPki {
        ca,
        server,
        client,
        other_ca,
    })
}

/// A server certificate of the test CA for 127.0.0.1, localhost and `address` (a node's
/// bridge, where pods reach the servers), named after `component`.
pub fn server_also_for(component: &str, address: std::net::Ipv4Addr) -> Result<Issued, Error> {
    pki().ca.server(
        &format!("{component}-{address}"),
        &format!("IP:127.0.0.1,DNS:localhost,IP:{address}"),
    )
}

/// Reads a PEM file the PKI wrote.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
