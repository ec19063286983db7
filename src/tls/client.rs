//! The relay's TLS client: trust anchors, certificate pinning, and the handshake.

use std::net::TcpStream;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
};

use crate::config::Smarthost;

/// What the relay needs to open TLS to the smarthost; built once at start.
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    /// SNI and the name checked in the certificate: the smarthost's host name or IP.
    server_name: ServerName<'static>,
    /// How the smarthost is trusted, for the start-up log line.
    pub trust: String,
    /// With `smarthost_auth xoauth2|oauthbearer`: where tokens come from, shared by
    /// every thread that connects to the smarthost.
    pub tokens: Option<Arc<crate::oauth::source::TokenSource>>,
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl TlsClient {
    pub fn new(config: &Smarthost) -> Result<TlsClient, String> {
        let provider = super::provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let (tls, trust) = if let Some(pin) = config.fingerprint {
            let v = Custom {
                trust: Trust::Pinned(pin),
                provider,
            };
            let trust = format!(
                "only the certificate with fingerprint sha256:{}",
                super::hex(&pin)
            );
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(v)),
                trust,
            )
        } else if !config.tls_verify {
            let v = Custom {
                trust: Trust::Anything,
                provider,
            };
            let trust =
                "ANY certificate (smarthost_tls_verify no: not verified, open to interception)"
                    .to_string();
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(v)),
                trust,
            )
        } else {
            let (roots, trust) = root_store(config)?;
            (builder.with_root_certificates(roots), trust)
        };
        let server_name = ServerName::try_from(config.address.host.clone()).map_err(|e| {
            format!(
                "smarthost '{}' is not a valid TLS server name: {e}",
                config.address.host
            )
        })?;
        let tokens = crate::oauth::source::TokenSource::new(config)?.map(Arc::new);
        Ok(TlsClient {
            config: Arc::new(tls.with_no_client_auth()),
            server_name,
            trust,
            tokens,
        })
    }

    /// Runs the handshake over `tcp` (whose timeouts bound it). The error says why in
    /// words a mail admin can act on.
    pub fn handshake(&self, tcp: TcpStream) -> Result<TlsStream, String> {
        handshake(&self.config, self.server_name.clone(), tcp)
    }
}

/// `TLSv1_3 TLS13_AES_256_GCM_SHA384; certificate sha256:HEX (chain of N)`, for
/// `smtp-relayd test`.
pub fn describe(s: &TlsStream) -> String {
    let version = s
        .conn
        .protocol_version()
        .map_or("?".to_string(), |v| format!("{v:?}"));
    let suite = s
        .conn
        .negotiated_cipher_suite()
        .map_or("?".to_string(), |c| format!("{:?}", c.suite()));
    let certs = s.conn.peer_certificates().unwrap_or_default();
    match certs.first() {
        Some(leaf) => format!(
            "{version} {suite}; certificate sha256:{} (chain of {})",
            super::hex(&super::fingerprint(leaf)),
            certs.len()
        ),
        None => format!("{version} {suite}"),
    }
}

/// TLS to an HTTPS endpoint (the OAuth2 token endpoint): the smarthost's trust
/// anchors, and always verified: certificate, name and dates. A fingerprint pin and
/// `smarthost_tls_verify no` are for the smarthost alone.
#[derive(Debug, Clone)]
pub struct Https {
    config: Arc<ClientConfig>,
    pub trust: String,
}

impl Https {
    pub fn new(config: &Smarthost) -> Result<Https, String> {
        let (roots, trust) = root_store(config)?;
        let tls = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Https {
            config: Arc::new(tls),
            trust,
        })
    }

    /// The handshake with `host` over `tcp`, whose timeouts bound it.
    pub fn handshake(&self, host: &str, tcp: TcpStream) -> Result<TlsStream, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("'{host}' is not a valid TLS server name: {e}"))?;
        handshake(&self.config, name, tcp)
    }
}

fn handshake(
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
    mut tcp: TcpStream,
) -> Result<TlsStream, String> {
    let mut conn = ClientConnection::new(Arc::clone(config), name)
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            let mut why = format!("TLS handshake failed: {e}");
            if why.contains("not valid yet") || why.contains("NotValidYet") {
                why.push_str(" (is the system clock set? the message stays queued)");
            }
            return Err(why);
        }
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// `smarthost_ca_file`, else the system bundle, else the compiled-in Mozilla roots.
fn root_store(config: &Smarthost) -> Result<(RootCertStore, String), String> {
    let mut roots = RootCertStore::empty();
    let mut from_file = |path: &std::path::Path| -> Result<String, String> {
        let certs = super::load_certs(path)?;
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "{}: no usable CA certificate in it",
                path.display()
            ));
        }
        Ok(format!("{added} CA(s) from {}", path.display()))
    };
    if let Some(path) = &config.ca_file {
        let trust = from_file(path)?;
        return Ok((roots, trust));
    }
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            ["/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/cert.pem"]
                .map(std::path::PathBuf::from),
        );
    for path in system {
        if path.is_file()
            && let Ok(trust) = from_file(&path)
        {
            return Ok((roots, trust));
        }
    }
    #[cfg(feature = "webpki-roots")]
    {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let n = roots.len();
        Ok((roots, format!("{n} compiled-in Mozilla roots")))
    }
    #[cfg(not(feature = "webpki-roots"))]
    Err("no CA bundle found (/etc/ssl/certs/ca-certificates.crt, /etc/ssl/cert.pem, SSL_CERT_FILE); \
         set smarthost_ca_file or smarthost_fingerprint"
        .to_string())
}

/// Trust without CAs: exactly one certificate by its SHA-256 (as dma's FINGERPRINT
/// does: no CA, no name check, no dates, so a self-signed smarthost works too), or
/// any certificate (`smarthost_tls_verify no`, logged loudly). Either way the
/// handshake signatures are verified.
#[derive(Debug)]
enum Trust {
    Pinned([u8; 32]),
    Anything,
}

#[derive(Debug)]
struct Custom {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Custom {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            Trust::Anything => Ok(ServerCertVerified::assertion()),
            Trust::Pinned(pin) => {
                let got = super::fingerprint(end_entity);
                if got == *pin {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "certificate fingerprint sha256:{} does not match smarthost_fingerprint",
                        super::hex(&got)
                    )))
                }
            }
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
