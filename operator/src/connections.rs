//! The TLS and SASL material the spec references, read from Secrets and ConfigMaps of the
//! resource's namespace. The operator's own connections (provisioning, topic admin, lag,
//! teardown) use it in memory with the runtime's settings (`build::runtime_config`); runtime
//! pods and the CronJob mount the same objects read-only (`build::tls_volumes`), and its
//! checksum in the pod template rolls them when a referenced Secret changes.

use std::collections::BTreeMap;

use audit_manager::config::{DatabaseConfig, KafkaSecurityConfig};
use audit_manager_crds::{AuditManager, CaRef, CaSource, CertSecretRef};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::build;
use crate::credentials::{self, Server};
use crate::status::Problem;

/// The settings of the operator's own connections, with the referenced material in memory.
#[derive(Clone, Debug)]
pub struct Connections {
    /// Server, port and TLS (no user or password).
    pub database: DatabaseConfig,
    pub kafka_bootstrap: String,
    pub kafka: KafkaSecurityConfig,
    /// A checksum of every referenced key's content.
    pub hash: String,
}

/// Reads everything the spec references; a missing object or key is named in the Problem.
pub async fn resolve(client: &Client, am: &AuditManager) -> Result<Connections, Problem> {
    let mut r = Reader {
        client,
        namespace: am.namespace().unwrap_or_default(),
        read: BTreeMap::new(),
    };
    let config = build::runtime_config(am);
    let spec = &am.spec;
    let database_server = [(spec.database.host.clone(), spec.database.port as u16)];
    let kafka_servers = credentials::kafka_servers(&spec.kafka.bootstrap_servers);
    let mut database = config.database.clone();
    database.sslrootcert.clear();
    database.sslcert.clear();
    database.sslkey.clear();
    database.user.clear();
    database.password.clear();
    if let Some(ca) = &spec.database.ca_ref {
        database.sslrootcert_pem = Some(r.ca(ca, "spec.database.caRef").await?);
    }
    if let Some(cert) = &spec.database.client_cert_secret_ref {
        let (crt, key) = r
            .cert(cert, "spec.database.clientCertSecretRef", &database_server)
            .await?;
        database.sslcert_pem = Some(crt);
        database.sslkey_pem = Some(key);
    }
    let mut kafka = config.kafka.security.clone();
    kafka.sasl_password_file.clear();
    kafka.ssl_ca_file.clear();
    kafka.ssl_cert_file.clear();
    kafka.ssl_key_file.clear();
    let security = &spec.kafka.security;
    if let Some(sasl) = &security.sasl {
        let p = &sasl.password_secret_ref;
        let field = "spec.kafka.security.sasl.passwordSecretRef";
        let secret = r.credential(&p.name, field, &kafka_servers).await?;
        kafka.sasl_password = r.value(&secret, &p.key, field)?;
    }
    if let Some(ca) = &security.ca_ref {
        kafka.ssl_ca_pem = Some(r.ca(ca, "spec.kafka.security.caRef").await?);
    }
    if let Some(cert) = &security.client_cert_secret_ref {
        let (crt, key) = r
            .cert(
                cert,
                "spec.kafka.security.clientCertSecretRef",
                &kafka_servers,
            )
            .await?;
        kafka.ssl_cert_pem = Some(crt);
        kafka.ssl_key_pem = Some(key);
    }
    Ok(Connections {
        database,
        kafka_bootstrap: spec.kafka.bootstrap_servers.clone(),
        kafka,
        hash: build::hash(format!("{:?}", r.read).as_bytes()),
    })
}

/// Reads keys of Secrets and ConfigMaps, remembering what it read for the checksum.
struct Reader<'a> {
    client: &'a Client,
    namespace: String,
    read: BTreeMap<String, String>,
}

impl Reader<'_> {
    async fn ca(&mut self, r: &CaRef, field: &str) -> Result<String, Problem> {
        self.key(r.kind, &r.name, &r.key, field).await
    }

    /// A client certificate and its key, from a Secret marked as credentials for `servers`.
    async fn cert(
        &mut self,
        r: &CertSecretRef,
        field: &str,
        servers: &[Server],
    ) -> Result<(String, String), Problem> {
        let secret = self.credential(&r.name, field, servers).await?;
        Ok((
            self.value(&secret, &r.cert_key, field)?,
            self.value(&secret, &r.key_key, field)?,
        ))
    }

    /// A Secret that may be sent to `servers` (`credentials::permitted_secret`).
    async fn credential(
        &mut self,
        name: &str,
        field: &str,
        servers: &[Server],
    ) -> Result<Secret, Problem> {
        credentials::permitted_secret(self.client, &self.namespace, name, field, servers)
            .await
            .map_err(|p| match p.reason {
                "CredentialsMissing" => Problem::new("ConnectionSecretMissing", p.message),
                _ => p,
            })
    }

    /// One key of a Secret already read.
    fn value(&mut self, secret: &Secret, key: &str, field: &str) -> Result<String, Problem> {
        let data = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        self.pick("Secret", &secret.name_any(), data, key, field)
    }

    /// One key of a Secret or ConfigMap; `field` is the spec field that names it.
    async fn key(
        &mut self,
        source: CaSource,
        name: &str,
        key: &str,
        field: &str,
    ) -> Result<String, Problem> {
        let kind = format!("{source:?}");
        let data: Option<BTreeMap<String, String>> = match source {
            CaSource::Secret => Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
                .get_opt(name)
                .await
                .map_err(|e| api_error(&kind, name, e))?
                .map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .collect()
                }),
            CaSource::ConfigMap => {
                Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace)
                    .get_opt(name)
                    .await
                    .map_err(|e| api_error(&kind, name, e))?
                    .map(|m| m.data.unwrap_or_default())
            }
        };
        let ns = &self.namespace;
        let data = data.ok_or_else(|| {
            Problem::new(
                "ConnectionSecretMissing",
                format!("{kind} {ns}/{name} ({field}) does not exist"),
            )
        })?;
        self.pick(&kind, name, data, key, field)
    }

    /// `key` of an object's data, remembered for the checksum; a missing or empty key is named.
    fn pick(
        &mut self,
        kind: &str,
        name: &str,
        data: BTreeMap<String, String>,
        key: &str,
        field: &str,
    ) -> Result<String, Problem> {
        let ns = &self.namespace;
        let value = data
            .get(key)
            .filter(|v| !v.trim().is_empty())
            .cloned()
            .ok_or_else(|| {
                Problem::new(
                    "ConnectionSecretMissing",
                    format!("{kind} {ns}/{name} ({field}) has no key `{key}`"),
                )
            })?;
        self.read
            .insert(format!("{kind}/{name}/{key}"), value.clone());
        Ok(value)
    }
}

fn api_error(kind: &str, name: &str, e: kube::Error) -> Problem {
    Problem::new("KubernetesApiError", format!("reading {kind} {name}: {e}"))
}
