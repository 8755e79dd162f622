//! The certificates of a TLS cluster, made fresh with rcgen for each cluster.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::{Error, io_err};

/// Where a TLS cluster's PEM files are, all in the cluster's temp dir.
#[derive(Debug)]
pub(crate) struct TlsFiles {
    /// The CA that signed the server certificate.
    pub(crate) ca: PathBuf,
    /// A CA that signed nothing the cluster uses.
    pub(crate) wrong_ca: PathBuf,
    /// The server certificate (SAN: the DNS name `localhost` only), shared by every node.
    pub(crate) server_cert: PathBuf,
    /// The server certificate's private key (mode 0600).
    pub(crate) server_key: PathBuf,
}

impl TlsFiles {
    /// Makes a CA, a server certificate it signs for the DNS name `localhost` (and no IP
    /// address), and an unrelated "wrong" CA, and writes them as PEM files into `dir`.
    ///
    /// The caller chowns the files to the server's user.
    pub(crate) fn generate(dir: &Path) -> Result<TlsFiles, Error> {
        let files = TlsFiles {
            ca: dir.join("ca.crt"),
            wrong_ca: dir.join("wrong-ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        };

        let (ca_params, ca_key) = new_ca("replica-testkit CA")?;
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(rcgen_err("the CA"))?;
        let (wrong_params, wrong_key) = new_ca("replica-testkit unrelated CA")?;
        let wrong_cert = wrong_params
            .self_signed(&wrong_key)
            .map_err(rcgen_err("the wrong CA"))?;

        // `CertificateParams::new` would turn an IP address into an IP SAN; "localhost" is
        // a DNS name, which is all the certificate names.
        let mut server_params = CertificateParams::new(vec!["localhost".to_owned()])
            .map_err(rcgen_err("the server certificate parameters"))?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate().map_err(rcgen_err("the server key"))?;
        let issuer = Issuer::new(ca_params, ca_key);
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .map_err(rcgen_err("the server certificate"))?;

        write_file(&files.ca, ca_cert.pem().as_bytes(), 0o644)?;
        write_file(&files.wrong_ca, wrong_cert.pem().as_bytes(), 0o644)?;
        write_file(&files.server_cert, server_cert.pem().as_bytes(), 0o644)?;
        // The server refuses a key that its own user owns unless only that user may read it.
        write_file(
            &files.server_key,
            server_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        Ok(files)
    }

    /// The `postgresql.conf` lines that turn TLS on with these files.
    pub(crate) fn server_conf(&self) -> String {
        format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            conf_quote(&self.server_cert),
            conf_quote(&self.server_key)
        )
    }
}

/// Parameters and key of a self-signed CA named `name`.
fn new_ca(name: &str) -> Result<(CertificateParams, KeyPair), Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(rcgen_err("a CA key"))?;
    Ok((params, key))
}

/// A path as the inside of a single-quoted `postgresql.conf` value.
pub(crate) fn conf_quote(path: &Path) -> String {
    path.display().to_string().replace('\'', "''")
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let context = format!("writing {}", path.display());
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(&context))?;
    file.write_all(contents).map_err(io_err(context))
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Certificate {
        what: what.to_owned(),
        source: Box::new(source),
    }
}
