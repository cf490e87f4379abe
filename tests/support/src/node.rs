//! A real Kubernetes node: containerd and runc, kubelet registered to the test API server, a
//! bridge CNI network for its pods, and kube-proxy for Service ClusterIPs.
//!
//! - **Network**: a bridge the environment creates (`amtest<N>`, host address `10.213.N.1/24`)
//!   is the only address besides 127.0.0.1 that anything listens on: the API server, and the
//!   node's kubelet, bind to it, so pods reach the API server. Pods get an address from the
//!   CNI `bridge` plugin (host-local IPAM, its state in the scratch folder), no NAT, and
//!   `ip_forward` is left as it is: nothing is routed off the machine.
//! - **Names never leave the machine**: kubelet gets `resolvConf: ""` (pods have no resolver),
//!   the API server reaches kubelets by InternalIP, and pods are given IP addresses.
//! - **Images** come from no registry: the pause image is built from `pause.c` in the Go
//!   module cache, the project's images by [`crate::images`], and both are imported into
//!   containerd from OCI archives.
//! - **The machine is left as found**: every root and state folder is in the scratch folder;
//!   what kubelet, containerd and the CNI plugins do outside it (kernel settings, mounts,
//!   `/run/containerd`, `/run/netns/cni-*`, `/var/lib/kubelet`, the `kubepods` cgroups,
//!   containerd's shims, kube-proxy's firewall rules, the bridge) is written down first
//!   ([`crate::undo`]) and put back when the node stops, at exit, or by the next run after a
//!   killed one.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::images::Images;
use crate::kube::Kube;
use crate::process::{self, Server};
use crate::setup::{Error, announce, create_dirs, require_file, scratch_dir, write_file};
use crate::undo::{self, Undo};

/// Kernel settings kubelet and kube-proxy change when they start.
const SYSCTLS: &[&str] = &[
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv4.ip_forward",
];
/// Folders the node's daemons write to whatever roots they are given (`/var/lib/cni`:
/// containerd's CNI library keeps its result cache there, whatever the IPAM `dataDir` says).
const OUTSIDE: &[&str] = &[
    "/run/containerd",
    "/run/netns",
    "/var/lib/kubelet",
    "/var/lib/cni",
];
/// The pause image containerd starts every pod sandbox from.
pub const PAUSE_IMAGE: &str = "localhost/pause:3.10-testenv";
/// The node's name (the API server never resolves it: kubelets are reached by InternalIP).
pub const NODE_NAME: &str = "audit-testenv-node";

/// The bridge pods are attached to.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub name: String,
    /// The host's address on it (`10.213.N.1`): where the API server, PostgreSQL and Kafka
    /// listen for pods.
    pub host: Ipv4Addr,
    /// `10.213.N.0/24`.
    pub subnet: String,
}

impl Bridge {
    /// Creates a bridge on the first `10.213.N.0/24` no interface of this machine uses; the
    /// creation is recorded in `undo` first.
    fn create(undo: &mut Undo, record: &Path) -> Result<Bridge, Error> {
        let used = process::run("ip", {
            let mut c = Command::new("ip");
            c.args(["-4", "-o", "addr", "show"]);
            c
        })?;
        let n = (0u8..=254)
            .find(|n| !used.contains(&format!(" 10.213.{n}.")))
            .ok_or_else(|| Error::Start {
                component: "node network".into(),
                reason: "every 10.213.N.0/24 is in use on this machine".into(),
                log: used.clone(),
            })?;
        let bridge = Bridge {
            name: format!("amtest{n}"),
            host: Ipv4Addr::new(10, 213, n, 1),
            subnet: format!("10.213.{n}.0/24"),
        };
        undo.bridge = Some(bridge.name.clone());
        save(undo, record)?;
        for args in [
            vec!["link", "add", &bridge.name, "type", "bridge"],
            vec![
                "addr",
                "add",
                &format!("{}/24", bridge.host),
                "dev",
                &bridge.name,
            ],
            vec!["link", "set", &bridge.name, "up"],
        ] {
            let mut c = Command::new("ip");
            c.args(&args);
            process::run("ip (node bridge)", c)?;
        }
        Ok(bridge)
    }
}

/// A control plane with a real node: the API server on the bridge, kube-controller-manager,
/// kube-scheduler, containerd, kubelet and kube-proxy.
pub struct Cluster {
    pub kube: Kube,
    pub bridge: Bridge,
    dir: PathBuf,
    socket: PathBuf,
    containerd: Server,
    kubelet: Server,
    proxy: Server,
    record: PathBuf,
}

fn save(undo: &Undo, record: &Path) -> Result<(), Error> {
    undo.save(record)
        .map_err(|e| Error::io(format!("writing {}", record.display()), e))
}

/// Starts one of the node's daemons with its output in `<name>.log` of the scratch folder.
fn daemon(dir: &Path, name: &str, command: Command) -> Result<Server, Error> {
    Server::spawn(
        name,
        command,
        &dir.join(format!("{name}.log")),
        libc::SIGTERM,
    )
}

impl Cluster {
    /// Starts everything, returning once the node is Ready.
    pub fn start() -> Result<Cluster, Error> {
        let containerd_bin = require_file("containerd", PathBuf::from("/usr/bin/containerd"))?;
        require_file("runc", PathBuf::from("/usr/sbin/runc"))?;
        require_file("CNI plugins", PathBuf::from("/usr/lib/cni/bridge"))?;
        let dir = scratch_dir("node")?;
        let record = dir.join("undo.json");
        let mut undo = Undo::default();
        let bridge = Bridge::create(&mut undo, &record)?;

        let kube = Kube::start_with(&crate::kube::Options {
            address: Some(bridge.host),
            node: true,
        })?;
        kube.start_controller_manager()?;
        kube.start_scheduler()?;
        let kubelet_bin = require_file("kubelet", kube.bin_dir().join("kubelet"))?;
        let proxy_bin = require_file("kube-proxy", kube.bin_dir().join("kube-proxy"))?;

        // What the node will change outside its scratch folder, before it does.
        undo.sysctls = SYSCTLS
            .iter()
            .filter_map(|s| undo::sysctl(s).map(|v| (s.to_string(), v)))
            .collect();
        undo.netns_before = undo::netns_entries();
        for outside in OUTSIDE {
            if !Path::new(outside).exists() {
                undo.created.push(outside.into());
            }
            undo.mounts_below.push(outside.into());
        }
        undo.mounts_below.push(dir.clone());
        undo.cgroups = vec!["kubepods".into()];
        let socket = dir.join("containerd.sock");
        undo.processes_with = vec![socket.display().to_string()];
        undo.firewall_cleanup = vec![
            proxy_bin.display().to_string(),
            "--cleanup".into(),
            "--v=0".into(),
        ];
        undo.firewall_chains_before = undo::firewall_chains();
        save(&undo, &record)?;

        let containerd = start_containerd(&containerd_bin, &dir, &socket, &bridge)?;
        let images = Images::open()?;
        let pause = images.pause()?;
        import(&dir, &socket, &pause)?;
        let kubelet = start_kubelet(&kubelet_bin, &kube, &dir, &socket, &bridge)?;
        let proxy = start_proxy(&proxy_bin, &kube, &dir, &bridge)?;
        announce(&format!(
            "node {NODE_NAME} Ready: containerd and kubelet, pods on {} ({})",
            bridge.name, bridge.subnet
        ));
        Ok(Cluster {
            kube,
            bridge,
            dir,
            socket,
            containerd,
            kubelet,
            proxy,
            record,
        })
    }

    /// Imports an image (an OCI archive, `podman save --format oci-archive`) into containerd,
    /// where kubelet finds it (`imagePullPolicy: Never` or `IfNotPresent`).
    pub fn import(&self, archive: &Path) -> Result<(), Error> {
        import(&self.dir, &self.socket, archive)
    }

    /// The scratch folder (containerd's and kubelet's roots and logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops kube-proxy, kubelet and containerd, then puts back everything they changed.
    pub fn stop(&self) {
        self.proxy.stop(Duration::from_secs(5));
        self.kubelet.stop(Duration::from_secs(10));
        self.containerd.stop(Duration::from_secs(10));
        Undo::apply_file(&self.record);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn import(dir: &Path, socket: &Path, archive: &Path) -> Result<(), Error> {
    let mut c = Command::new("ctr");
    c.arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io", "images", "import", "--no-unpack=false"])
        .arg(archive)
        .current_dir(dir);
    process::run("ctr images import", c).map(|_| ())
}

fn start_containerd(
    bin: &Path,
    dir: &Path,
    socket: &Path,
    bridge: &Bridge,
) -> Result<Server, Error> {
    let (root, state, opt, cni_conf, cni_data) = (
        dir.join("containerd/root"),
        dir.join("containerd/state"),
        dir.join("containerd/opt"),
        dir.join("cni/net.d"),
        dir.join("cni/data"),
    );
    create_dirs(&[&root, &state, &opt, &cni_conf, &cni_data])?;
    // No IP masquerade and no gateway role for the bridge plugin: it would turn on
    // ip_forward. Pods route through the host's bridge address, which forwards nothing.
    write_file(
        &cni_conf.join("10-audit-testenv.conflist"),
        &serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "audit-testenv",
            "plugins": [
                {"type": "bridge", "bridge": bridge.name, "isGateway": false, "ipMasq": false,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local", "dataDir": cni_data,
                          "ranges": [[{"subnet": bridge.subnet, "gateway": bridge.host.to_string()}]],
                          "routes": [{"dst": "0.0.0.0/0", "gw": bridge.host.to_string()}]}},
                {"type": "loopback"}
            ]
        })
        .to_string(),
    )?;
    let config = dir.join("containerd.toml");
    write_file(
        &config,
        &format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE on this machine: without this every pod sandbox fails.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"#,
            root = root.display(),
            state = state.display(),
            socket = socket.display(),
            opt = opt.display(),
            cni_conf = cni_conf.display(),
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&config);
    let server = daemon(dir, "containerd", cmd)?;
    let socket = socket.to_path_buf();
    server.wait_until(Duration::from_secs(30), "serving its socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })?;
    Ok(server)
}

fn start_kubelet(
    bin: &Path,
    kube: &Kube,
    dir: &Path,
    socket: &Path,
    bridge: &Bridge,
) -> Result<Server, Error> {
    let (port, healthz) = (process::free_port()?, process::free_port()?);
    let root = dir.join("kubelet");
    create_dirs(&[&root, &dir.join("pod-logs"), &dir.join("volume-plugins")])?;
    let config = dir.join("kubelet.yaml");
    write_file(
        &config,
        &format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The API server reaches this kubelet on the bridge (kubectl logs, exec); health on loopback.
address: {host}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
# No systemd here, and cgroups v1.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# Pods get no resolver: no name lookup may leave the machine.
resolvConf: ""
clusterDomain: cluster.local
containerRuntimeEndpoint: unix://{socket}
volumePluginDir: {plugins}
podLogsDir: {logs}
makeIPTablesUtilChains: false
rotateCertificates: false
serializeImagePulls: false
# The images are imported, never pulled: never collect them, and evict only when truly short.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
"#,
            host = bridge.host,
            ca = kube.dir().join("pki/ca.crt").display(),
            socket = socket.display(),
            plugins = dir.join("volume-plugins").display(),
            logs = dir.join("pod-logs").display(),
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--config={}", config.display()))
        .arg(format!("--kubeconfig={}", kube.kubeconfig().display()))
        .arg(format!("--root-dir={}", root.display()))
        .arg(format!("--cert-dir={}", dir.join("kubelet-pki").display()))
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg(format!("--node-ip={}", bridge.host))
        .arg("--v=1");
    let server = daemon(dir, "kubelet", cmd)?;
    server.wait_until(Duration::from_secs(60), "node Ready", || {
        let mut c = kube.kubectl();
        c.args([
            "get",
            "node",
            NODE_NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        c.output().is_ok_and(|o| o.stdout == b"True")
    })?;
    Ok(server)
}

fn start_proxy(bin: &Path, kube: &Kube, dir: &Path, bridge: &Bridge) -> Result<Server, Error> {
    let (healthz, metrics) = (process::free_port()?, process::free_port()?);
    let config = dir.join("kube-proxy.yaml");
    write_file(
        &config,
        &format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {{kubeconfig: {kubeconfig}}}
hostnameOverride: {NODE_NAME}
bindAddress: {host}
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
clusterCIDR: {subnet}
# Leave the kernel's connection tracking settings and route_localnet as they are.
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
iptables: {{localhostNodePorts: false, masqueradeAll: false}}
"#,
            kubeconfig = kube.kubeconfig().display(),
            host = bridge.host,
            subnet = bridge.subnet,
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--config={}", config.display()))
        .arg("--v=1");
    let server = daemon(dir, "kube-proxy", cmd)?;
    server.wait_until(Duration::from_secs(60), "healthy", || {
        process::accepts(healthz)
    })?;
    Ok(server)
}

/// What a node may change on the machine, read off it: compared before a node starts and
/// after it stops, it shows anything left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineState {
    pub mounts: Vec<PathBuf>,
    pub netns: Vec<String>,
    pub links: Vec<String>,
    pub kubepods_cgroups: Vec<PathBuf>,
    pub sysctls: Vec<(String, String)>,
    pub paths: Vec<(String, bool)>,
    pub firewall_chains: Vec<String>,
}

impl MachineState {
    pub fn read() -> MachineState {
        let mut mounts = undo::mount_points();
        mounts.sort();
        let mut netns = undo::netns_entries();
        netns.sort();
        let links = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.split(": ").nth(1))
                    .map(|n| n.split('@').next().unwrap_or(n).to_string())
                    .collect()
            })
            .unwrap_or_default();
        let kubepods_cgroups = std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| {
                d.flatten()
                    .map(|h| h.path().join("kubepods"))
                    .filter(|p| p.exists())
                    .collect()
            })
            .unwrap_or_default();
        let sysctls = SYSCTLS
            .iter()
            .map(|s| (s.to_string(), undo::sysctl(s).unwrap_or_default()))
            .collect();
        let paths = OUTSIDE
            .iter()
            .map(|p| (p.to_string(), Path::new(p).exists()))
            .collect();
        let firewall_chains = undo::firewall_chains();
        MachineState {
            mounts,
            netns,
            links,
            kubepods_cgroups,
            sysctls,
            paths,
            firewall_chains,
        }
    }
}
