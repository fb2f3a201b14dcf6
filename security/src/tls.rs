//! TLS configurations from PEM files: rustls with the ring provider,
//! through tonic.
//!
//! - A server presents `cert` (the chain, leaf first) and `key`. Given a
//!   client CA it also requires every client to present a certificate that
//!   CA signed (mutual TLS, used between router and shards).
//! - A client (the router calling shards, the CLI, the tests) trusts the
//!   given CA only, not the system's roots: a cluster's own CA is the one
//!   issuer whose word counts. It may present a certificate of its own.
//!
//! Files are read once, at start-up: a renewed certificate takes effect at
//! the next restart (rolling restart after cert-manager renews it).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Longest a TLS handshake may take on a server: a client that opens
/// connections and never finishes its handshake must not hold them open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server configuration: our certificate and key, and the CA that must
/// have signed clients' certificates when `client_ca` is given.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<ServerTlsConfig> {
    let mut config = ServerTlsConfig::new().identity(identity(cert, key)?).timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = client_ca {
        config = config.client_ca_root(Certificate::from_pem(read_pem(ca, "client CA", CERTIFICATE)?));
    }
    Ok(config)
}

/// A client configuration that trusts `ca` only, presents `identity`
/// (certificate, key) when given, and expects the server's certificate to
/// name `domain` (default: the host of the address dialled).
pub fn client_config(
    ca: &Path,
    identity_files: Option<(&Path, &Path)>,
    domain: Option<&str>,
) -> anyhow::Result<ClientTlsConfig> {
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca, "CA", CERTIFICATE)?));
    if let Some((cert, key)) = identity_files {
        config = config.identity(identity(cert, key)?);
    }
    if let Some(domain) = domain {
        config = config.domain_name(domain);
    }
    Ok(config)
}

fn identity(cert: &Path, key: &Path) -> anyhow::Result<Identity> {
    Ok(Identity::from_pem(read_pem(cert, "certificate", CERTIFICATE)?, read_pem(key, "private key", PRIVATE_KEY)?))
}

const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----";
/// Ends `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` and `BEGIN EC PRIVATE KEY`.
const PRIVATE_KEY: &str = "PRIVATE KEY-----";

/// Reads a PEM file and checks it holds what it should, so that a swapped
/// certificate and key, or a DER file, fail at start-up with the file's
/// name rather than at the first handshake with rustls' words.
fn read_pem(path: &Path, what: &str, marker: &str) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("reading the TLS {what} {}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    anyhow::ensure!(text.contains(marker), "{}: not a PEM {what} (no `{marker}` in it)", path.display());
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_checked_for_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        assert!(identity(&cert, &key).is_ok());
        let swapped = identity(&key, &cert).unwrap_err().to_string();
        assert!(swapped.contains("tls.key: not a PEM certificate"), "{swapped}");
        let missing = client_config(&dir.path().join("ca.crt"), None, None).unwrap_err();
        assert!(format!("{missing:#}").contains("reading the TLS CA"), "{missing:#}");
    }
}
