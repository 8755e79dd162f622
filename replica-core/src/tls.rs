//! TLS as libpq understands it: the `sslmode`s, the root and client
//! certificates, where a connection string gives them, and the rustls
//! configuration (certificate verifier) each mode asks for.
//!
//! | `sslmode` | encrypted | chain verified | host name verified |
//! |---|---|---|---|
//! | `disable` | never | | |
//! | `allow` | if the server refuses plaintext | when a root certificate is given | |
//! | `prefer` (default) | if the server supports it | when a root certificate is given | |
//! | `require` | always | when a root certificate is given | |
//! | `verify-ca` | always | always | |
//! | `verify-full` | always | always | always |

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext, then TLS if the server refuses plaintext.
    Allow,
    /// TLS if the server supports it, else plaintext.
    Prefer,
    /// TLS; the certificate is checked only against a root certificate
    /// when one is given.
    Require,
    /// TLS, with the certificate chain checked against the root
    /// certificate; any host name.
    VerifyCa,
    /// TLS, with the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where root certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RootCert {
    /// A PEM file (a bundle, e.g. RDS' `global-bundle.pem`).
    File(PathBuf),
    /// The platform's trusted roots: `sslrootcert=system`.
    System,
}

/// The TLS settings of one node, as given; what is not given takes
/// libpq's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub(crate) mode: Option<SslMode>,
    pub(crate) root: Option<RootCert>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

/// The connection-string parameters that are TLS settings.
const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl TlsSettings {
    /// The mode in force: as given, else `verify-full` with
    /// `sslrootcert=system` (as PostgreSQL 16), else `prefer`.
    pub(crate) fn mode(&self) -> SslMode {
        match (self.mode, &self.root) {
            (Some(mode), _) => mode,
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        }
    }

    /// Sets one parameter, `key` one of [`KEYS`].
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "sslmode" => {
                self.mode = Some(SslMode::parse(value).ok_or_else(|| {
                    format!(
                        "sslmode `{value}` is unknown; expected one of disable, allow, prefer, \
                         require, verify-ca, verify-full"
                    )
                })?);
            }
            "sslrootcert" => {
                self.root = Some(match value {
                    "system" => RootCert::System,
                    "" => return Err("sslrootcert is empty: give a file, or `system`".into()),
                    path => RootCert::File(path.into()),
                });
            }
            "sslcert" => self.cert = Some(value.into()),
            "sslkey" => self.key = Some(value.into()),
            other => unreachable!("`{other}` is not a TLS parameter"),
        }
        Ok(())
    }

    /// Fills what this node does not set from `defaults` (the
    /// `DATABASE_SSLMODE` / `DATABASE_SSLROOTCERT` settings).
    pub(crate) fn inherit(&mut self, defaults: &TlsSettings) {
        self.mode = self.mode.or(defaults.mode);
        if self.root.is_none() {
            self.root.clone_from(&defaults.root);
        }
    }

    /// The parameters as a query string, `sslmode=..&sslrootcert=..`, for
    /// `Display`; empty when nothing is set.
    pub(crate) fn query(&self) -> String {
        let mut pairs = Vec::new();
        if let Some(mode) = self.mode {
            pairs.push(format!("sslmode={mode}"));
        }
        match &self.root {
            Some(RootCert::System) => pairs.push("sslrootcert=system".into()),
            Some(RootCert::File(path)) => pairs.push(format!("sslrootcert={}", path.display())),
            None => {}
        }
        if let Some(cert) = &self.cert {
            pairs.push(format!("sslcert={}", cert.display()));
        }
        pairs.join("&")
    }

    /// The rustls configuration of this node's connections, `None` when
    /// they are never encrypted. Reads the certificate files, so a missing
    /// or malformed one is found before any connection is tried.
    pub(crate) fn client_config(&self) -> Result<Option<ClientConfig>, String> {
        let mode = self.mode();
        if mode == SslMode::Disable {
            return Ok(None);
        }
        if self.root == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full, not {mode}: the platform's roots \
                 vouch for host names"
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.root, mode) {
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
                return Err(format!(
                    "sslmode={mode} needs a root certificate: set sslrootcert to a PEM file \
                     (e.g. the RDS bundle) or to `system`"
                ));
            }
            (None, _) => Arc::new(Unverified(provider)),
            (Some(root), mode) => {
                let roots = Arc::new(root_store(root)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("TLS set-up: {e}"))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| format!("sslcert `{}`: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey `{}`: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert and sslkey: {e}"))?
            }
            _ => return Err("sslcert and sslkey go together: give both or neither".into()),
        };
        Ok(Some(config))
    }
}

fn root_store(root: &RootCert) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("sslrootcert `{}`: {e}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert `{}` holds no usable PEM certificate",
                    path.display()
                ));
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "sslrootcert=system: the platform has no trusted root certificates".into(),
                );
            }
        }
    }
    Ok(store)
}

/// Takes the TLS parameters out of a connection string, a URL's query or
/// libpq `key=value` pairs, and returns the rest as it was written: the
/// parser of the rest (tokio-postgres) knows only some of them.
pub(crate) fn extract(input: &str) -> Result<(String, TlsSettings), String> {
    let mut tls = TlsSettings::default();
    if input.contains("://") {
        let Some((base, query)) = input.split_once('?') else {
            return Ok((input.to_owned(), tls));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode_str(key).decode_utf8_lossy();
            if KEYS.contains(&key.as_ref()) {
                let value = percent_decode_str(value).decode_utf8_lossy();
                tls.set(&key, &value)?;
            } else {
                kept.push(pair);
            }
        }
        let rest = match kept.as_slice() {
            [] => base.to_owned(),
            kept => format!("{base}?{}", kept.join("&")),
        };
        return Ok((rest, tls));
    }
    let mut kept = Vec::new();
    let pairs = pairs(input).map_err(|e| format!("invalid connection string: {e}"))?;
    for (raw, key, value) in pairs {
        if KEYS.contains(&key) {
            tls.set(key, &value)?;
        } else {
            kept.push(raw);
        }
    }
    Ok((kept.join(" "), tls))
}

/// libpq `key = value` pairs: each as written, its key, and its value
/// unquoted (`'...'` with `\` escapes, or a bare word with `\` escapes).
fn pairs(input: &str) -> Result<Vec<(&str, &str, String)>, String> {
    let mut out = Vec::new();
    let mut rest = input.trim_start();
    while !rest.is_empty() {
        let start = rest;
        let key_len = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let key = &rest[..key_len];
        rest = rest[key_len..].trim_start();
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("`{key}` has no `=` and value"))?
            .trim_start();
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = rest.len();
        if rest.starts_with('\'') {
            chars.next();
            let mut closed = false;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '\'' => {
                        end = i + 1;
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("the value of `{key}` lacks its closing quote"));
            }
        } else {
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    c if c.is_whitespace() => {
                        end = i;
                        break;
                    }
                    c => value.push(c),
                }
            }
        }
        let consumed = start.len() - rest.len() + end;
        out.push((&start[..consumed], key, value));
        rest = start[consumed..].trim_start();
    }
    Ok(out)
}

/// `require`, `prefer` and `allow` without a root certificate: encrypted,
/// not authenticated (as libpq). Handshake signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// `verify-ca`, and weaker modes given a root certificate: the chain must
/// lead to the root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_a_url_and_the_rest_stays_as_written() {
        let (rest, tls) = extract(
            "postgres://u:p@h/db?options=-c%20a%3Db&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@h/db?options=-c%20a%3Db&application_name=x"
        );
        assert_eq!(tls.mode(), SslMode::VerifyFull);
        assert_eq!(tls.root, Some(RootCert::File("/tmp/ca.pem".into())));
        let (rest, tls) = extract("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), tls.mode()),
            ("postgres://h/db", SslMode::Require)
        );
    }

    #[test]
    fn tls_parameters_leave_key_value_strings() {
        let (rest, tls) = extract(
            "host=h password='a b\\'c' sslmode = verify-ca sslrootcert='/tmp/my ca.pem' dbname=d",
        )
        .unwrap();
        assert_eq!(rest, "host=h password='a b\\'c' dbname=d");
        assert_eq!(tls.mode(), SslMode::VerifyCa);
        assert_eq!(tls.root, Some(RootCert::File("/tmp/my ca.pem".into())));
        assert!(
            extract("host=h sslmode='x")
                .unwrap_err()
                .starts_with("invalid connection string")
        );
        assert!(
            extract("host=h sslmode=maybe")
                .unwrap_err()
                .contains("unknown")
        );
    }

    #[test]
    fn system_roots_mean_verify_full() {
        let mut tls = TlsSettings::default();
        tls.set("sslrootcert", "system").unwrap();
        assert_eq!(tls.mode(), SslMode::VerifyFull);
        tls.set("sslmode", "require").unwrap();
        assert!(tls.client_config().unwrap_err().contains("verify-full"));
    }

    #[test]
    fn verification_needs_a_root_and_readable_files() {
        let mut tls = TlsSettings::default();
        tls.set("sslmode", "verify-full").unwrap();
        assert!(
            tls.client_config()
                .unwrap_err()
                .contains("needs a root certificate")
        );
        tls.set("sslrootcert", "/nonexistent/ca.pem").unwrap();
        assert!(
            tls.client_config()
                .unwrap_err()
                .contains("/nonexistent/ca.pem")
        );
        let mut tls = TlsSettings::default();
        tls.set("sslmode", "require").unwrap();
        assert!(tls.client_config().unwrap().is_some());
        tls.set("sslmode", "disable").unwrap();
        assert!(tls.client_config().unwrap().is_none());
    }
}
