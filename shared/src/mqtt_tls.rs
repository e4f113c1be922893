//! TLS to the MQTT broker: the `[mqtt.tls]` section both daemons read, and the rumqttc
//! transport built from it.
//!
//! This module owns what the files mean (the broker's certificate authority, and the client
//! certificate and key for brokers that authenticate clients) and reading them. The rustls
//! crypto provider is the process's default, installed by [`install_crypto_provider`] before
//! the first connection. Which host, port and credentials a daemon uses stay with the daemon.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// TLS to the broker (`[mqtt.tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file of the certificate authority that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate, for brokers that require client authentication.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl TlsSection {
    /// The section's problem, with the key it is about: a client certificate without its key,
    /// or a key without its certificate.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        (self.client_cert.is_some() != self.client_key.is_some()).then_some((
            "mqtt.tls.client_cert",
            "client_cert and client_key go together",
        ))
    }

    /// Every file the section names, for checks that they exist and can be read.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = vec![("mqtt.tls.ca_file", self.ca_file.as_path())];
        if let Some(cert) = &self.client_cert {
            files.push(("mqtt.tls.client_cert", cert.as_path()));
        }
        if let Some(key) = &self.client_key {
            files.push(("mqtt.tls.client_key", key.as_path()));
        }
        files
    }
}

/// A file of the TLS section could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}", path.display())]
pub struct TlsFileError {
    /// The file named in the configuration.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Installs rustls's ring provider as the process default, once; later calls do nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The transport for `tls`: plain TCP without a section, TLS with its files read.
pub fn transport(tls: Option<&TlsSection>) -> Result<rumqttc::Transport, TlsFileError> {
    let Some(tls) = tls else {
        return Ok(rumqttc::Transport::Tcp);
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsFileError {
            path: path.to_owned(),
            source,
        })
    };
    let ca = read(&tls.ca_file)?;
    let client_auth = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    install_crypto_provider();
    Ok(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_section_the_link_is_plain_tcp_and_a_missing_file_is_named() {
        assert!(matches!(transport(None), Ok(rumqttc::Transport::Tcp)));
        let tls = TlsSection {
            ca_file: PathBuf::from("/nonexistent/ca.pem"),
            client_cert: None,
            client_key: None,
        };
        let Err(error) = transport(Some(&tls)) else {
            panic!("a missing CA file must be an error");
        };
        assert_eq!(error.path, PathBuf::from("/nonexistent/ca.pem"));
        assert_eq!(error.to_string(), "cannot read /nonexistent/ca.pem");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let tls = TlsSection {
            ca_file: PathBuf::from("ca.pem"),
            client_cert: Some(PathBuf::from("c.pem")),
            client_key: None,
        };
        assert_eq!(
            tls.problem().map(|(key, _)| key),
            Some("mqtt.tls.client_cert")
        );
        assert_eq!(tls.files().len(), 2);
    }
}
