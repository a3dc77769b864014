//! TLS of the OTLP exports (`https://` endpoints, gRPC and HTTP): rustls with the
//! ring provider, no system OpenSSL.
//!
//! * Trust: the PEM file of `OTEL_EXPORTER_OTLP_CERTIFICATE` (or its `_TRACES_` /
//!   `_METRICS_` form) when given — only those certificates are trusted, as the
//!   OpenTelemetry SDKs do — else the system's roots (`rustls-native-certs`: the
//!   `SSL_CERT_FILE`/`SSL_CERT_DIR` variables, else the distribution's bundle).
//! * Client authentication (mTLS): `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and
//!   `OTEL_EXPORTER_OTLP_CLIENT_KEY` (PEM; both or neither).
//! * `insecure_skip_verify` / `OTEL_EBPF_INSECURE_SKIP_VERIFY`: the server's
//!   certificate is not verified (its signature over the handshake still is); for
//!   tests and self-signed collectors only, logged as a warning.
//!
//! ALPN (set by the connector): `h2` for gRPC, `http/1.1` for HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The TLS settings of one signal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client's certificate chain (mTLS).
    pub client_certificate: Option<PathBuf>,
    /// PEM file of the client's private key (mTLS).
    pub client_key: Option<PathBuf>,
    /// Do not verify the server's certificate.
    pub insecure_skip_verify: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The rustls configuration for `s` (ALPN is set by the connector: `h2` for gRPC,
/// `http/1.1` for HTTP). Errors name the file and what is wrong with it.
pub fn client_config(s: &TlsSettings) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if s.insecure_skip_verify {
        tracing::warn!(
            "insecure_skip_verify: the collector's TLS certificate is not verified (anyone on \
             the path can read and change the telemetry); use OTEL_EXPORTER_OTLP_CERTIFICATE"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        match &s.ca_file {
            Some(path) => {
                for cert in read_certificates(path, "CA certificate file")? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("CA certificate file {}: {e}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(format!(
                        "no system root certificate could be loaded ({}); install the \
                         ca-certificates package or set OTEL_EXPORTER_OTLP_CERTIFICATE",
                        found
                            .errors
                            .first()
                            .map_or("none found".to_string(), |e| e.to_string())
                    ));
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&s.client_certificate, &s.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certificates(cert, "client certificate file")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("client key file {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key: {e}"))?
        }
        (Some(_), None) => {
            return Err("a client certificate without its key (set \
                        OTEL_EXPORTER_OTLP_CLIENT_KEY too)"
                .into())
        }
        (None, Some(_)) => {
            return Err("a client key without its certificate (set \
                        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE too)"
                .into())
        }
    };
    Ok(config)
}

/// `insecure_skip_verify`: any certificate is accepted; the handshake signatures are
/// still checked with the provider's algorithms.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().expect("dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let s = TlsSettings {
            ca_file: Some(empty.clone()),
            ..TlsSettings::default()
        };
        let e = client_config(&s).expect_err("no certificate");
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let s = TlsSettings {
            ca_file: Some(dir.path().join("missing.pem")),
            ..TlsSettings::default()
        };
        let e = client_config(&s).expect_err("missing");
        assert!(e.contains("missing.pem"), "{e}");
        let s = TlsSettings {
            client_certificate: Some(empty),
            ..TlsSettings::default()
        };
        let e = client_config(&s).expect_err("half of mTLS");
        assert!(e.contains("without its key"), "{e}");
        let ok = client_config(&TlsSettings {
            insecure_skip_verify: true,
            ..TlsSettings::default()
        })
        .expect("insecure needs no roots");
        assert!(ok.alpn_protocols.is_empty(), "the connector sets ALPN");
    }
}
