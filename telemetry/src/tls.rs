//! TLS on every gRPC link: the same four flags on every binary, loaded once at startup into a
//! [`Tls`] that configures the servers the process runs and the connections it makes.
//!
//! One certificate authority signs every service's certificate (`splitinfer certs` makes them).
//! A process with `--tls-cert`/`--tls-key` serves TLS only; a process with `--tls-ca` dials
//! `https://` URLs and checks the server's certificate against that CA (and its name against the
//! URL's host). With `--tls-require-client-cert` its servers also demand a client certificate
//! signed by the CA (mutual TLS), and the process presents its own certificate when it dials.
//! Plaintext stays the default, for one machine's loopback.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// The TLS flags every splitinfer binary takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that peers' certificates must chain to. Needed to dial https://
    /// URLs; with --tls-require-client-cert it also checks clients. `splitinfer certs` writes one.
    #[arg(long, env = "TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM, chaining to the CA). With --tls-key, every server this
    /// process runs serves TLS only, and the certificate is presented when it dials a server.
    #[arg(long, env = "TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: this process's servers refuse clients without a certificate signed by
    /// --tls-ca. Needs --tls-ca, --tls-cert and --tls-key.
    // No clap `requires`: an environment variable set to "false" (compose does) counts as given.
    // `Tls::load` checks the combinations instead.
    #[arg(long, env = "TLS_REQUIRE_CLIENT_CERT")]
    pub tls_require_client_cert: bool,
}

/// Loaded and checked TLS settings. The default is plaintext: no CA, no identity.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
    require_client_cert: bool,
}

/// Why TLS settings or a URL were refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} holds no PEM {expected}")]
    NotPem { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("--tls-require-client-cert needs --tls-ca and --tls-cert/--tls-key")]
    MutualIncomplete,
    #[error("the TLS settings are not usable: {0}")]
    Invalid(String),
    #[error("{url:?} is not a URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url} is https:// but no CA is given to check the server with (--tls-ca / TLS_CA)")]
    HttpsWithoutCa { url: String },
    #[error("{url} is plaintext http:// but TLS is configured (--tls-ca): use https://")]
    PlaintextWithCa { url: String },
}

fn read_pem(what: &'static str, path: &Path, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })?;
    // rustls would say "no certificates found" later and without the file's name.
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN ") || !text.contains(expected) {
        return Err(TlsError::NotPem { what, path: path.to_path_buf(), expected });
    }
    Ok(pem)
}

impl Tls {
    /// Reads the files the flags name and checks that rustls accepts them, so a bad certificate
    /// stops the process at startup with the file's name rather than at the first connection.
    pub fn load(args: &TlsArgs) -> Result<Self, TlsError> {
        let ca = match &args.tls_ca {
            Some(path) => Some(Certificate::from_pem(read_pem("the CA certificate", path, "CERTIFICATE")?)),
            None => None,
        };
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read_pem("the certificate", cert, "CERTIFICATE")?,
                read_pem("the private key", key, "PRIVATE KEY")?,
            )),
            (None, None) => None,
            _ => return Err(TlsError::Invalid("--tls-cert and --tls-key go together".into())),
        };
        if args.tls_require_client_cert && (ca.is_none() || identity.is_none()) {
            return Err(TlsError::MutualIncomplete);
        }
        let tls = Self { ca, identity, require_client_cert: args.tls_require_client_cert };
        // Building the configurations is where rustls parses the key and the certificates.
        tls.server(Server::builder())?;
        if tls.ca.is_some() {
            tls.endpoint("https://localhost")?;
        }
        Ok(tls)
    }

    /// Whether the servers of this process serve TLS.
    pub fn serves_tls(&self) -> bool {
        self.identity.is_some()
    }

    /// Whether they also demand client certificates.
    pub fn requires_client_cert(&self) -> bool {
        self.require_client_cert
    }

    /// `builder` serving TLS with this process's certificate, or unchanged without one.
    pub fn server(&self, builder: Server) -> Result<Server, TlsError> {
        let Some(identity) = &self.identity else { return Ok(builder) };
        let mut config = ServerTlsConfig::new().identity(identity.clone());
        if self.require_client_cert
            && let Some(ca) = &self.ca
        {
            config = config.client_ca_root(ca.clone()).client_auth_optional(false);
        }
        builder.tls_config(config).map_err(|e| TlsError::Invalid(error_chain(&e)))
    }

    /// An endpoint for `url`: `https://` is checked against the CA (and presents this process's
    /// certificate, for servers that require one); `http://` is plaintext and allowed only when
    /// no CA is configured, so a TLS deployment cannot fall back to plaintext by a typo.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| TlsError::BadUrl { url: url.to_string(), reason: error_chain(&e) })?;
        let https = url.len() >= 8 && url[..8].eq_ignore_ascii_case("https://");
        match (&self.ca, https) {
            (None, false) => Ok(endpoint),
            (None, true) => Err(TlsError::HttpsWithoutCa { url: url.to_string() }),
            (Some(_), false) => Err(TlsError::PlaintextWithCa { url: url.to_string() }),
            (Some(ca), true) => {
                let mut config = ClientTlsConfig::new().ca_certificate(ca.clone());
                if let Some(identity) = &self.identity {
                    config = config.identity(identity.clone());
                }
                endpoint.tls_config(config).map_err(|e| TlsError::Invalid(error_chain(&e)))
            }
        }
    }
}

/// An error with its sources: tonic's transport errors say little at the top level.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_by_default_and_no_silent_fallback() {
        let plain = Tls::default();
        assert!(!plain.serves_tls());
        assert!(plain.endpoint("http://127.0.0.1:1").is_ok());
        assert!(matches!(plain.endpoint("https://127.0.0.1:1"), Err(TlsError::HttpsWithoutCa { .. })));
        assert!(matches!(plain.endpoint("not a url"), Err(TlsError::BadUrl { .. })));
    }

    #[test]
    fn missing_and_non_pem_files_are_named() {
        let dir = std::env::temp_dir().join(format!("splitinfer-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let e = Tls::load(&TlsArgs { tls_ca: Some(junk.clone()), ..Default::default() }).unwrap_err();
        assert!(matches!(e, TlsError::NotPem { .. }) && e.to_string().contains("junk.pem"), "{e}");
        let gone = dir.join("gone.pem");
        let e = Tls::load(&TlsArgs { tls_ca: Some(gone), ..Default::default() }).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }) && e.to_string().contains("gone.pem"), "{e}");
        let e = Tls::load(&TlsArgs { tls_require_client_cert: true, ..Default::default() }).unwrap_err();
        assert!(matches!(e, TlsError::MutualIncomplete), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
