//! The TLS server for devices: STARTTLS on every listener, implicit TLS on `tls` ones.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

pub type TlsStream = StreamOwned<ServerConnection, TcpStream>;

#[derive(Debug, Clone)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
}

impl TlsServer {
    /// From `tls_cert` (the chain, leaf first) and `tls_key` (PEM).
    pub fn new(cert: &Path, key: &Path) -> Result<TlsServer, String> {
        let chain = super::load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("{}: no usable private key: {e}", key.display()))?;
        let config = ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        Ok(TlsServer {
            config: Arc::new(config),
        })
    }

    /// Runs the handshake over `tcp`, bounded by its timeouts.
    pub fn handshake(&self, mut tcp: TcpStream) -> Result<TlsStream, String> {
        let mut conn = ServerConnection::new(Arc::clone(&self.config))
            .map_err(|e| format!("TLS setup failed: {e}"))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
        }
        Ok(StreamOwned::new(conn, tcp))
    }
}

/// `TLSv1_3 TLS13_AES_256_GCM_SHA384`, for the log.
pub fn describe(s: &TlsStream) -> String {
    let version = s
        .conn
        .protocol_version()
        .map_or("?".to_string(), |v| format!("{v:?}"));
    let suite = s
        .conn
        .negotiated_cipher_suite()
        .map_or("?".to_string(), |c| format!("{:?}", c.suite()));
    format!("{version} {suite}")
}
