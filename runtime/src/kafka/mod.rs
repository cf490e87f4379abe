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
        // Each piece of material in memory (the operator's) or in a file (a mounted Secret).
        for (pem, file, pem_key, file_key) in [
            (
                &security.ssl_ca_pem,
                &security.ssl_ca_file,
                "ssl.ca.pem",
                "ssl.ca.location",
            ),
            (
                &security.ssl_cert_pem,
                &security.ssl_cert_file,
                "ssl.certificate.pem",
                "ssl.certificate.location",
            ),
            (
                &security.ssl_key_pem,
                &security.ssl_key_file,
                "ssl.key.pem",
                "ssl.key.location",
            ),
        ] {
            match (pem, file.as_str()) {
                (Some(pem), _) => c.set(pem_key, pem),
                (None, "") => &mut c,
                (None, file) => c.set(file_key, file),
            };
        }
        // No CA: the system trust store, wherever this image keeps it.
        if c.get("ssl.ca.pem").is_none() && c.get("ssl.ca.location").is_none() {
            c.set("ssl.ca.location", "probe");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(c: &ClientConfig) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = c
            .config_map()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn plaintext_sets_no_tls_or_sasl() {
        let c = client_config("b:9092", &KafkaSecurityConfig::default());
        assert_eq!(
            settings(&c),
            [
                ("bootstrap.servers".into(), "b:9092".into()),
                ("security.protocol".into(), "plaintext".into())
            ]
        );
        assert!(protection(&KafkaSecurityConfig::default()).contains("NOT encrypted"));
    }

    #[test]
    fn sasl_ssl_with_files_and_without_a_ca() {
        let mut s = KafkaSecurityConfig {
            protocol: "sasl_ssl".into(),
            sasl_mechanism: "SCRAM-SHA-256".into(),
            sasl_username: "audit".into(),
            sasl_password: "pw".into(),
            ..KafkaSecurityConfig::default()
        };
        let c = client_config("b:9093", &s);
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(c.get("sasl.password"), Some("pw"));
        // No CA: the system trust store, found wherever this image keeps it.
        assert_eq!(c.get("ssl.ca.location"), Some("probe"));
        assert_eq!(
            c.get("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        s.ssl_ca_file = "/ca.crt".into();
        s.ssl_cert_file = "/tls.crt".into();
        s.ssl_key_file = "/tls.key".into();
        let c = client_config("b:9093", &s);
        assert_eq!(c.get("ssl.ca.location"), Some("/ca.crt"));
        assert_eq!(c.get("ssl.certificate.location"), Some("/tls.crt"));
        assert_eq!(c.get("ssl.key.location"), Some("/tls.key"));
        // In-memory material (the operator's) wins over files.
        s.ssl_ca_pem = Some("PEM".into());
        let c = client_config("b:9093", &s);
        assert_eq!(c.get("ssl.ca.pem"), Some("PEM"));
        assert_eq!(c.get("ssl.ca.location"), None);
        assert!(protection(&s).starts_with("SASL_SSL: encrypted"));
    }
}
