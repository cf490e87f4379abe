//! Kafka: the producer that drains the ingest queue, and consumer-group lag.

pub mod headers;
pub mod lag;
pub mod producer;

use rdkafka::ClientConfig;

use crate::config::KafkaSecurityConfig;

/// The settings every Kafka client of this project starts from, the operator's included: the
/// brokers and the connection's security (protocol, SASL, TLS material).
pub fn client_config(bootstrap_servers: &str, security: &KafkaSecurityConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap_servers)
        .set("security.protocol", &security.protocol);
    if security.sasl() {
        c.set("sasl.mechanism", &security.sasl_mechanism)
            .set("sasl.username", &security.sasl_username)
            .set("sasl.password", &security.sasl_password);
    }
    if security.tls() {
        // The brokers' names are checked against their certificates.
        c.set("ssl.endpoint.identification.algorithm", "https");
        match (&security.ssl_ca_pem, security.ssl_ca_file.as_str()) {
            (Some(pem), _) => c.set("ssl.ca.pem", pem),
            (None, "") => c.set("ssl.ca.location", "probe"),
            (None, file) => c.set("ssl.ca.location", file),
        };
        match (&security.ssl_cert_pem, security.ssl_cert_file.as_str()) {
            (Some(pem), _) => {
                c.set("ssl.certificate.pem", pem);
            }
            (None, "") => {}
            (None, file) => {
                c.set("ssl.certificate.location", file);
            }
        }
        match (&security.ssl_key_pem, security.ssl_key_file.as_str()) {
            (Some(pem), _) => {
                c.set("ssl.key.pem", pem);
            }
            (None, "") => {}
            (None, file) => {
                c.set("ssl.key.location", file);
            }
        }
    }
    c
}

/// What a connection with `security` guarantees, for status messages and logs.
pub fn protection(security: &KafkaSecurityConfig) -> String {
    let auth = if security.sasl() {
        format!(
            "SASL {} as {}",
            security.sasl_mechanism, security.sasl_username
        )
    } else if security.ssl_cert_pem.is_some() || !security.ssl_cert_file.is_empty() {
        "a client certificate".into()
    } else {
        "no client authentication".into()
    };
    if security.tls() {
        format!(
            "{}: encrypted; the brokers' certificates are verified against {} and their host names; {auth}",
            security.protocol.to_ascii_uppercase(),
            if security.ssl_ca_pem.is_some() || !security.ssl_ca_file.is_empty() {
                "the referenced CA"
            } else {
                "the system trust store"
            }
        )
    } else {
        format!(
            "{}: NOT encrypted; {auth}",
            security.protocol.to_ascii_uppercase()
        )
    }
}
