//! A Kubernetes control plane: etcd and kube-apiserver built from the Go module proxy, TLS from
//! a throwaway CA, a static admin token, and a kubeconfig for tests and for `kubectl`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{self, Server};
use crate::setup::{Error, announce, cache_dir, pinned, require_file, scratch_dir};

/// The ClusterIP of the `kubernetes` Service (the first of `--service-cluster-ip-range`).
pub const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";
/// The static bearer token of the `admin` user (group `system:masters`).
pub const ADMIN_TOKEN: &str = "testenv-admin-token";
/// The `iss` of the service-account tokens this API server issues.
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A kube-apiserver with its etcd on 127.0.0.1. Dropping an instance from [`Kube::start`]
/// stops both.
pub struct Kube {
    server_url: String,
    kubeconfig: PathBuf,
    bin_dir: PathBuf,
    dir: PathBuf,
    version: String,
    etcd_version: String,
    apiserver: Server,
    etcd: Server,
    controller_manager: std::sync::Mutex<Option<Server>>,
    scheduler: std::sync::Mutex<Option<Server>>,
}

/// How a control plane is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The address the API server binds and advertises: 127.0.0.1 unless pods of a real node
    /// must reach it (then the host's address on the node's bridge).
    pub address: Option<Ipv4Addr>,
    /// Serves a real node: the ServiceAccount admission plugin on (pods get projected tokens),
    /// a client certificate for reaching kubelets (`kubectl logs`, `exec`), and kubelets
    /// reached by their InternalIP (never a name lookup).
    pub node: bool,
}

impl Kube {
    /// Starts etcd and kube-apiserver on free ports of 127.0.0.1 and writes a kubeconfig.
    pub fn start() -> Result<Kube, Error> {
        Kube::start_with(&Options::default())
    }

    /// Starts etcd and kube-apiserver as `options` say.
    pub fn start_with(options: &Options) -> Result<Kube, Error> {
        let address = options.address.unwrap_or(Ipv4Addr::LOCALHOST);
        let bin_dir = match std::env::var_os("AUDIT_TESTENV_KUBE_BIN") {
            Some(d) => PathBuf::from(d),
            None => cache_dir().join(format!("k8s-{}/bin", pinned("KUBERNETES_VERSION"))),
        };
        let apiserver_bin = require_file("kube-apiserver", bin_dir.join("kube-apiserver"))?;
        require_file("kubectl", bin_dir.join("kubectl"))?;
        let etcd_bin = match std::env::var_os("AUDIT_TESTENV_ETCD") {
            Some(p) => PathBuf::from(p),
            None => cache_dir().join(format!("etcd-{}/bin/etcd", pinned("ETCD_VERSION"))),
        };
        let etcd_bin = require_file("etcd", etcd_bin)?;
        let dir = scratch_dir("kube")?;
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).map_err(|e| Error::io("creating pki dir".into(), e))?;
        make_pki(&pki, address, options.node)?;

        let (etcd, etcd_url, etcd_version) = start_etcd(&etcd_bin, &dir)?;

        let port = process::free_port()?;
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{ADMIN_TOKEN},admin,admin-uid,system:masters\n"),
        )
        .map_err(|e| Error::io("writing the token file".into(), e))?;
        let mut cmd = Command::new(&apiserver_bin);
        cmd.arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg(format!(
                "--tls-cert-file={}",
                pki.join("server.crt").display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.join("server.key").display()
            ))
            .arg(format!("--client-ca-file={}", pki.join("ca.crt").display()))
            .arg(format!("--secure-port={port}"))
            .arg(format!("--bind-address={address}"))
            .arg(format!("--advertise-address={address}"))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true")
            .arg("--authorization-mode=RBAC")
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg(format!("--service-account-issuer={SA_ISSUER}"))
            .arg(format!(
                "--service-account-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg("--storage-backend=etcd3")
            .arg("--v=1");
        if options.node {
            cmd.arg(format!(
                "--kubelet-client-certificate={}",
                pki.join("kubelet-client.crt").display()
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                pki.join("kubelet-client.key").display()
            ))
            .arg("--kubelet-preferred-address-types=InternalIP");
        } else {
            // Pods need no ServiceAccount object here (no token controller runs by default).
            cmd.arg("--disable-admission-plugins=ServiceAccount");
        }
        let apiserver = Server::spawn(
            "kube-apiserver",
            cmd,
            &dir.join("kube-apiserver.log"),
            libc::SIGTERM,
        )?;
        let server_url = format!("https://{address}:{port}");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&server_url, &pki.join("ca.crt")),
        )
        .map_err(|e| Error::io("writing the kubeconfig".into(), e))?;
        let kubectl = bin_dir.join("kubectl");
        apiserver.wait_until(Duration::from_secs(120), "ready (/readyz)", || {
            Command::new(&kubectl)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["get", "--raw", "/readyz"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })?;
        let version = process::run("kube-apiserver", {
            let mut c = Command::new(&apiserver_bin);
            c.arg("--version");
            c
        })?
        .trim()
        .to_string();
        announce(&format!(
            "{version} (kube-apiserver) at {server_url}, etcd {etcd_version}, kubeconfig {}",
            kubeconfig.display()
        ));
        Ok(Kube {
            server_url,
            kubeconfig,
            bin_dir,
            dir,
            version,
            etcd_version,
            apiserver,
            etcd,
            controller_manager: std::sync::Mutex::new(None),
            scheduler: std::sync::Mutex::new(None),
        })
    }

    /// Starts kube-controller-manager (built with kube-apiserver) against this API server, so
    /// Deployments, ReplicaSets, Jobs, CronJobs, EndpointSlices, namespace deletion and
    /// garbage collection work for real; returns once its controllers act (the `default`
    /// ServiceAccount appears).
    pub fn start_controller_manager(&self) -> Result<(), Error> {
        let mut guard = self
            .controller_manager
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            return Ok(());
        }
        let bin = require_file(
            "kube-controller-manager",
            self.bin_dir.join("kube-controller-manager"),
        )?;
        let pki = self.dir.join("pki");
        let port = process::free_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                self.kubeconfig.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                self.kubeconfig.display()
            ))
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg(format!("--root-ca-file={}", pki.join("ca.crt").display()))
            .arg(format!(
                "--cert-dir={}",
                self.dir.join("kcm-certs").display()
            ))
            .arg(format!("--secure-port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--controllers=*",
            ])
            .arg("--use-service-account-credentials=false")
            .arg("--concurrent-gc-syncs=5")
            .arg("--v=1");
        let server = Server::spawn(
            "kube-controller-manager",
            cmd,
            &self.dir.join("kube-controller-manager.log"),
            libc::SIGTERM,
        )?;
        let kubectl = self.bin_dir.join("kubectl");
        let kubeconfig = self.kubeconfig.clone();
        server.wait_until(Duration::from_secs(120), "running controllers", || {
            Command::new(&kubectl)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["get", "serviceaccount", "default", "-n", "default"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })?;
        announce(&format!(
            "kube-controller-manager running (secure port {port})"
        ));
        *guard = Some(server);
        Ok(())
    }

    /// Starts kube-scheduler against this API server (pods of a real node are scheduled as
    /// in a cluster, not bound by hand).
    pub fn start_scheduler(&self) -> Result<(), Error> {
        let mut guard = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            return Ok(());
        }
        let bin = require_file("kube-scheduler", self.bin_dir.join("kube-scheduler"))?;
        let port = process::free_port()?;
        let mut cmd = Command::new(bin);
        for flag in [
            "kubeconfig",
            "authentication-kubeconfig",
            "authorization-kubeconfig",
        ] {
            cmd.arg(format!("--{flag}={}", self.kubeconfig.display()));
        }
        cmd.arg(format!("--secure-port={port}")).args([
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--v=1",
        ]);
        let server = Server::spawn(
            "kube-scheduler",
            cmd,
            &self.dir.join("kube-scheduler.log"),
            libc::SIGTERM,
        )?;
        server.wait_until(Duration::from_secs(60), "serving /healthz", || {
            process::accepts(port)
        })?;
        announce(&format!("kube-scheduler running (secure port {port})"));
        *guard = Some(server);
        Ok(())
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// A kubeconfig (admin token, the throwaway CA) for clients and `kubectl`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The folder holding kube-apiserver, kube-controller-manager and kubectl.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The scratch folder of this control plane (PKI, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What `kube-apiserver --version` printed, e.g. `Kubernetes v1.36.3`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// What `etcd --version` printed first.
    pub fn etcd_version(&self) -> &str {
        &self.etcd_version
    }

    /// A `kubectl` command pointed at this API server.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        cmd
    }

    /// A `helm` command (the pinned build) pointed at this API server; its cache, config and
    /// data stay in this server's scratch folder.
    pub fn helm(&self) -> Command {
        let helm = cache_dir().join(format!("helm-{}/bin/helm", pinned("HELM_VERSION")));
        let mut cmd = Command::new(helm);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        for (var, dir) in [
            ("HELM_CACHE_HOME", "helm-cache"),
            ("HELM_CONFIG_HOME", "helm-config"),
            ("HELM_DATA_HOME", "helm-data"),
        ] {
            cmd.env(var, self.dir.join(dir));
        }
        cmd
    }

    /// A ServiceAccount token from the TokenRequest API (`kubectl create token`), creating the
    /// namespace and the ServiceAccount when missing.
    pub fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
        seconds: u32,
    ) -> Result<String, Error> {
        for args in [
            vec!["create", "namespace", namespace],
            vec!["create", "serviceaccount", name, "-n", namespace],
        ] {
            // "already exists" is fine; anything else shows in `create token` below.
            let _ = self.kubectl().args(&args).output();
        }
        let mut cmd = self.kubectl();
        cmd.args(["create", "token", name, "-n", namespace])
            .arg(format!("--audience={audience}"))
            .arg(format!("--duration={seconds}s"));
        Ok(process::run("kubectl create token", cmd)?
            .trim()
            .to_string())
    }

    /// The API server's service-account issuer (`iss` of its tokens), JWK set URL, and the
    /// CA and a bearer token a client needs to read that URL.
    pub fn service_account_issuer(&self) -> (String, String, PathBuf, &'static str) {
        (
            SA_ISSUER.to_string(),
            format!("{}/openid/v1/jwks", self.server_url),
            self.dir.join("pki").join("ca.crt"),
            ADMIN_TOKEN,
        )
    }

    /// Installs Istio's CRDs with their published schemas (provisioned from istio.io/api) and
    /// waits until they are served.
    pub fn install_istio_crds(&self) -> Result<(), Error> {
        let dir = cache_dir().join(format!("istio-{}", pinned("ISTIO_API_VERSION")));
        self.install_crds(
            "Istio",
            &[require_file("istio CRDs", dir.join("crds.yaml"))?],
            &[
                "virtualservices.networking.istio.io",
                "authorizationpolicies.security.istio.io",
                "requestauthentications.security.istio.io",
            ],
        )
    }

    /// Installs the Prometheus Operator's PodMonitor and PrometheusRule CRDs, as they are
    /// published (full schemas).
    pub fn install_prometheus_operator_crds(&self) -> Result<(), Error> {
        let dir = cache_dir().join(format!(
            "prometheus-operator-{}",
            pinned("PROMETHEUS_OPERATOR_VERSION")
        ));
        let kinds = ["podmonitors", "prometheusrules"];
        let files = kinds
            .iter()
            .map(|k| {
                require_file(
                    "the Prometheus Operator's CRDs",
                    dir.join(format!("monitoring.coreos.com_{k}.yaml")),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let names = kinds.map(|k| format!("{k}.monitoring.coreos.com"));
        self.install_crds(
            "Prometheus Operator",
            &files,
            &names.each_ref().map(String::as_str),
        )
    }

    /// `kubectl apply --server-side` of CRD files, then waits until `names` are Established.
    fn install_crds(&self, what: &str, files: &[PathBuf], names: &[&str]) -> Result<(), Error> {
        let mut apply = self.kubectl();
        apply.args(["apply", "--server-side", "--force-conflicts"]);
        for file in files {
            apply.arg("-f").arg(file);
        }
        process::run(&format!("kubectl apply ({what} CRDs)"), apply)?;
        let mut wait = self.kubectl();
        wait.args(["wait", "--for=condition=Established", "--timeout=60s"]);
        wait.args(names.iter().map(|n| format!("crd/{n}")));
        process::run(&format!("kubectl wait ({what} CRDs)"), wait)?;
        Ok(())
    }

    /// A kube-rs client for the admin user.
    pub async fn client(&self) -> ::kube::Client {
        let kubeconfig = ::kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("testenv: reading {}: {e}", self.kubeconfig.display()));
        let config = ::kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("testenv: kubeconfig {}: {e}", self.kubeconfig.display()));
        ::kube::Client::try_from(config).unwrap_or_else(|e| panic!("testenv: kube client: {e}"))
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        for component in [&self.scheduler, &self.controller_manager] {
            if let Some(server) = component.lock().unwrap_or_else(|p| p.into_inner()).take() {
                server.stop(Duration::from_secs(10));
            }
        }
        self.apiserver.stop(Duration::from_secs(10));
        self.etcd.stop(Duration::from_secs(10));
    }
}

fn start_etcd(bin: &Path, dir: &Path) -> Result<(Server, String, String), Error> {
    let client_port = process::free_port()?;
    let peer_port = process::free_port()?;
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .args(["--unsafe-no-fsync", "--log-level=warn"])
        .current_dir(dir);
    let etcd = Server::spawn("etcd", cmd, &dir.join("etcd.log"), libc::SIGTERM)?;
    etcd.wait_until(Duration::from_secs(60), "accepting clients", || {
        process::accepts(client_port)
    })?;
    let version = process::run("etcd", {
        let mut c = Command::new(bin);
        c.arg("--version");
        c
    })?
    .lines()
    .next()
    .unwrap_or_default()
    .trim()
    .to_string();
    Ok((etcd, client_url, version))
}

/// A throwaway CA, a serving certificate for 127.0.0.1 (and `address`, and the `kubernetes`
/// Service's ClusterIP), the service-account signing key and, for a real node, the client
/// certificate the API server shows kubelets (group `system:masters`).
fn make_pki(pki: &Path, address: Ipv4Addr, node: bool) -> Result<(), Error> {
    let ca = crate::pki::Ca::create(pki, "audit-testenv-ca")?;
    ca.server(
        "server",
        &format!(
            "IP:127.0.0.1,IP:{address},IP:{KUBERNETES_SERVICE_IP},DNS:localhost,DNS:kubernetes.default.svc"
        ),
    )?;
    if node {
        // openssl's -subj takes the organization after the common name.
        ca.client(
            "kubelet-client",
            "kube-apiserver-kubelet-client/O=system:masters",
        )?;
    }
    let mut genrsa = Command::new("openssl");
    genrsa
        .args(["genrsa", "-out", "sa.key", "2048"])
        .current_dir(pki);
    process::run("openssl (test PKI)", genrsa)?;
    Ok(())
}

fn kubeconfig_yaml(server: &str, ca: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {ADMIN_TOKEN}
contexts:
- name: testenv
  context:
    cluster: testenv
    user: admin
    namespace: default
current-context: testenv
",
        ca = ca.display()
    )
}
