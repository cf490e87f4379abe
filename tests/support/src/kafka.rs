//! Apache Kafka: a single-node KRaft broker (combined broker and controller) run with
//! `java -cp` from the jars Maven fetched.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::process::{self, Server};
use crate::setup::{Error, announce, cache_dir, pinned, require_file, scratch_dir};

const COMPONENT: &str = "Kafka";
/// The SASL user of the secured listeners (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512).
pub const SASL_USER: &str = "audit";
pub const SASL_PASSWORD: &str = "audit-secret";

/// The listeners on a node's bridge.
#[derive(Clone, Copy, Debug)]
struct NodePorts {
    address: Ipv4Addr,
    plaintext: u16,
    sasl_ssl: u16,
}

/// The broker's listeners besides the controller's, one per security protocol.
#[derive(Clone, Copy, Debug)]
struct Ports {
    plaintext: u16,
    sasl_ssl: u16,
    sasl_plaintext: u16,
    /// SSL with client certificates required.
    mtls: u16,
    controller: u16,
    /// PLAINTEXT and SASL_SSL listeners on a node's bridge ([`Kafka::start_also_on`]),
    /// advertised there.
    node: Option<NodePorts>,
}

/// A Kafka broker on 127.0.0.1. Dropping an instance from [`Kafka::start`] stops it.
pub struct Kafka {
    ports: Ports,
    /// The JVM's full JIT (C2), as a production broker runs; tests use C1 only (faster start).
    full_jit: bool,
    version: String,
    classpath: String,
    config: PathBuf,
    server: Mutex<Option<Server>>,
}

impl Kafka {
    /// Formats fresh storage and starts a broker on free ports.
    pub fn start() -> Result<Kafka, Error> {
        Kafka::start_with(false, None)
    }

    /// As [`Kafka::start`], with one more PLAINTEXT listener on `address` (the host's address
    /// on a node's bridge), advertised as that address so that pods reach the broker.
    pub fn start_also_on(address: Ipv4Addr) -> Result<Kafka, Error> {
        Kafka::start_with(false, Some(address))
    }

    /// A broker whose JVM compiles with C2, as in production (for `make bench`): without it,
    /// TLS in the broker runs AES-GCM in code the quick JIT leaves without its intrinsics, and a
    /// benchmark would measure that instead of the clients.
    pub fn start_like_production() -> Result<Kafka, Error> {
        Kafka::start_with(true, None)
    }

    fn start_with(full_jit: bool, also_on: Option<Ipv4Addr>) -> Result<Kafka, Error> {
        let version = pinned("KAFKA_VERSION").to_string();
        let libs = match std::env::var_os("AUDIT_TESTENV_KAFKA_LIBS") {
            Some(dir) => PathBuf::from(dir),
            None => cache_dir().join(format!("kafka-{version}/libs")),
        };
        require_file(COMPONENT, libs.join(format!("kafka_2.13-{version}.jar")))?;
        let classpath = format!("{}/*", libs.display());
        let dir = scratch_dir("kafka")?;
        let ports = Ports {
            plaintext: process::free_port()?,
            sasl_ssl: process::free_port()?,
            sasl_plaintext: process::free_port()?,
            mtls: process::free_port()?,
            controller: process::free_port()?,
            node: match also_on {
                Some(address) => Some(NodePorts {
                    address,
                    plaintext: process::free_port()?,
                    sasl_ssl: process::free_port()?,
                }),
                None => None,
            },
        };
        let pki = crate::pki::pki();
        // With a listener on a bridge, a certificate that names its address too.
        let on_node = match also_on {
            Some(address) => Some(crate::pki::server_also_for("kafka", address)?),
            None => None,
        };
        let server = on_node.as_ref().unwrap_or(&pki.server);
        let keystore = dir.join("server.pem");
        let pem = [&server.key, &server.cert]
            .iter()
            .map(std::fs::read_to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::io("reading the test PKI".into(), e))?
            .concat();
        std::fs::write(&keystore, pem).map_err(|e| Error::io("writing server.pem".into(), e))?;
        let config = dir.join("server.properties");
        std::fs::write(&config, properties(&dir, ports, &keystore, &pki.ca.cert()))
            .map_err(|e| Error::io("writing server.properties".into(), e))?;

        let cluster_id = process::run(
            COMPONENT,
            java(
                &classpath,
                &dir,
                "kafka.tools.StorageTool",
                &["random-uuid"],
                false,
            ),
        )?
        .trim()
        .to_string();
        let config_arg = config.display().to_string();
        process::run(
            COMPONENT,
            java(
                &classpath,
                &dir,
                "kafka.tools.StorageTool",
                &[
                    "format",
                    "-t",
                    &cluster_id,
                    "-c",
                    &config_arg,
                    "--standalone",
                    "--add-scram",
                    &format!("SCRAM-SHA-256=[name={SASL_USER},password={SASL_PASSWORD}]"),
                    "--add-scram",
                    &format!("SCRAM-SHA-512=[name={SASL_USER},password={SASL_PASSWORD}]"),
                ],
                false,
            ),
        )?;
        let kafka = Kafka {
            ports,
            full_jit,
            version,
            classpath,
            config,
            server: Mutex::new(None),
        };
        kafka.start_server()?;
        announce(&format!(
            "Apache Kafka {} (KRaft) on {}{}",
            kafka.version,
            kafka.bootstrap(),
            kafka
                .bootstrap_on_node()
                .map_or(String::new(), |b| format!(" and {b}"))
        ));
        Ok(kafka)
    }

    fn start_server(&self) -> Result<(), Error> {
        let mut guard = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            return Ok(());
        }
        let dir = self.config.parent().unwrap_or(Path::new("/tmp"));
        let config = self.config.display().to_string();
        let mut cmd = java(
            &self.classpath,
            dir,
            "kafka.Kafka",
            &[&config],
            self.full_jit,
        );
        cmd.env("KAFKA_HEAP_OPTS", "-Xmx768m");
        let server = Server::spawn(COMPONENT, cmd, &dir.join("kafka.log"), libc::SIGTERM)?;
        let log = dir.join("kafka.log");
        let port = self.ports.plaintext;
        server.wait_until(Duration::from_secs(90), "started", || {
            process::accepts(port)
                && std::fs::read_to_string(&log)
                    .map(|l| l.contains("Kafka Server started"))
                    .unwrap_or(false)
        })?;
        *guard = Some(server);
        Ok(())
    }

    /// Stops the broker; its data stays for [`Kafka::resume`].
    pub fn stop(&self) {
        if let Some(server) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            server.stop(Duration::from_secs(30));
        }
    }

    /// Starts a stopped broker again on the same ports with the same data.
    pub fn resume(&self) -> Result<(), Error> {
        // The log is appended to; the readiness check must only see the new start.
        let log = self.config.with_file_name("kafka.log");
        if log.exists() {
            let old = log.with_file_name(format!(
                "kafka.{}.log",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
            ));
            std::fs::rename(&log, old).map_err(|e| Error::io("rotating kafka.log".into(), e))?;
        }
        self.start_server()
    }

    /// `127.0.0.1:PORT` of the PLAINTEXT listener, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.ports.plaintext)
    }

    /// The SASL_SSL listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; the test PKI's server
    /// certificate).
    pub fn bootstrap_sasl_ssl(&self) -> String {
        format!("127.0.0.1:{}", self.ports.sasl_ssl)
    }

    /// The SASL_PLAINTEXT listener (the same mechanisms, no TLS).
    pub fn bootstrap_sasl_plaintext(&self) -> String {
        format!("127.0.0.1:{}", self.ports.sasl_plaintext)
    }

    /// The SSL listener that requires a client certificate of the test PKI's CA.
    pub fn bootstrap_mtls(&self) -> String {
        format!("127.0.0.1:{}", self.ports.mtls)
    }

    /// `ADDRESS:PORT` of the listener on a node's bridge ([`Kafka::start_also_on`]).
    pub fn bootstrap_on_node(&self) -> Option<String> {
        self.ports
            .node
            .map(|n| format!("{}:{}", n.address, n.plaintext))
    }

    /// The SASL_SSL listener on a node's bridge (as [`Kafka::bootstrap_sasl_ssl`]; the
    /// certificate names the bridge address).
    pub fn bootstrap_sasl_ssl_on_node(&self) -> Option<String> {
        self.ports
            .node
            .map(|n| format!("{}:{}", n.address, n.sasl_ssl))
    }

    /// The Kafka release the broker runs.
    pub fn version(&self) -> &str {
        &self.version
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `java -cp` with a small heap; the quick JIT only (C1) unless `full_jit`.
fn java(classpath: &str, dir: &Path, main: &str, args: &[&str], full_jit: bool) -> Command {
    let mut cmd = Command::new("java");
    cmd.args(["-Xms128m", "-Xmx768m", "-XX:+UseSerialGC"]);
    if !full_jit {
        cmd.arg("-XX:TieredStopAtLevel=1");
    }
    cmd.arg("-cp")
        .arg(classpath)
        .arg(main)
        .args(args)
        .current_dir(dir);
    cmd
}

fn properties(dir: &Path, ports: Ports, keystore: &Path, ca: &Path) -> String {
    let Ports {
        plaintext,
        sasl_ssl,
        sasl_plaintext,
        mtls,
        controller,
        node,
    } = ports;
    let (node_listener, node_protocol) = match node {
        Some(NodePorts {
            address,
            plaintext,
            sasl_ssl,
        }) => (
            format!(",NODE://{address}:{plaintext},NODE_SASL_SSL://{address}:{sasl_ssl}"),
            ",NODE:PLAINTEXT,NODE_SASL_SSL:SASL_SSL",
        ),
        None => (String::new(), ""),
    };
    let plain_users = format!(
        "org.apache.kafka.common.security.plain.PlainLoginModule required \
         username=\"{SASL_USER}\" password=\"{SASL_PASSWORD}\" \
         user_{SASL_USER}=\"{SASL_PASSWORD}\";"
    );
    let scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
    let mut sasl = String::new();
    for listener in ["sasl_ssl", "sasl_plaintext", "node_sasl_ssl"] {
        sasl.push_str(&format!(
            "listener.name.{listener}.plain.sasl.jaas.config={plain_users}\n\
             listener.name.{listener}.scram-sha-256.sasl.jaas.config={scram}\n\
             listener.name.{listener}.scram-sha-512.sasl.jaas.config={scram}\n"
        ));
    }
    format!(
        "process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:{plaintext},SASL_SSL://127.0.0.1:{sasl_ssl},SASL_PLAINTEXT://127.0.0.1:{sasl_plaintext},MTLS://127.0.0.1:{mtls},CONTROLLER://127.0.0.1:{controller}{node_listener}
advertised.listeners=PLAINTEXT://127.0.0.1:{plaintext},SASL_SSL://127.0.0.1:{sasl_ssl},SASL_PLAINTEXT://127.0.0.1:{sasl_plaintext},MTLS://127.0.0.1:{mtls}{node_listener}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,MTLS:SSL{node_protocol}
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
{sasl}ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
listener.name.mtls.ssl.client.auth=required
log.dirs={logs}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
",
        keystore = keystore.display(),
        ca = ca.display(),
        logs = dir.join("data").display()
    )
}
