//! `splitinfer certs`: a private certificate authority and one certificate per service, for the
//! services' `--tls-ca`, `--tls-cert` and `--tls-key`. Good for a testbed or a lab deployment;
//! a production deployment would use its own PKI, and the flags take any PEM files.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.pem, ca.key and NAME.pem, NAME.key per --name (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Services to issue certificates for. Each certificate is valid for its name as a host name
    /// (a compose service name, say), localhost, 127.0.0.1 and ::1, and every --san, and may be
    /// used as a server and as a client certificate (mutual TLS).
    #[arg(long = "name", value_delimiter = ',', default_value = "edge,emulator,agent,ue")]
    pub names: Vec<String>,
    /// Extra host names or IP addresses every certificate is valid for (repeat or comma-separate).
    #[arg(long = "san", value_delimiter = ',')]
    pub sans: Vec<String>,
    /// Years the certificates stay valid, from the start of this year.
    #[arg(long, default_value_t = 2)]
    pub years: u16,
    /// Overwrite files that already exist (otherwise nothing is written and the command fails).
    #[arg(long)]
    pub force: bool,
}

/// The files `run` writes for `args`, CA first.
fn targets(args: &CertsArgs) -> Vec<PathBuf> {
    let mut files = vec![args.out.join("ca.pem"), args.out.join("ca.key")];
    for name in &args.names {
        files.push(args.out.join(format!("{name}.pem")));
        files.push(args.out.join(format!("{name}.key")));
    }
    files
}

fn validity(params: &mut CertificateParams, years: u16) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // The calendar year is all the precision this needs (a cert valid from 1 January).
    let year = 1970 + (now / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + i32::from(years), 1, 1);
}

/// Private keys are readable by their owner only.
fn write(path: &Path, contents: &str, secret: bool) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn run(args: &CertsArgs) -> Result<()> {
    if args.names.is_empty() || args.names.iter().any(|n| n.is_empty() || n.contains(['/', '\\']) || n == "ca") {
        bail!("--name takes service names (no '/', not \"ca\"), e.g. --name edge,emulator,agent,ue");
    }
    if args.years == 0 {
        bail!("--years must be at least 1");
    }
    if !args.force {
        let existing: Vec<String> = targets(args).into_iter().filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
        if !existing.is_empty() {
            bail!("{} already exist(s); nothing written (--force overwrites)", existing.join(", "));
        }
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;

    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "splitinfer testbed CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut ca, args.years);
    let ca_cert = ca.self_signed(&ca_key).context("cannot sign the CA certificate")?;
    write(&args.out.join("ca.pem"), &ca_cert.pem(), false)?;
    write(&args.out.join("ca.key"), &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);

    for name in &args.names {
        let mut sans = vec![name.clone(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
        sans.extend(args.sans.iter().filter(|s| !s.is_empty()).cloned());
        sans.dedup();
        let mut params = CertificateParams::new(sans.clone()).with_context(|| format!("{name}: not a valid host name or address among {sans:?}"))?;
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, args.years);
        let key = KeyPair::generate().with_context(|| format!("cannot generate {name}'s key"))?;
        let cert = params.signed_by(&key, &issuer).with_context(|| format!("cannot sign {name}'s certificate"))?;
        write(&args.out.join(format!("{name}.pem")), &cert.pem(), false)?;
        write(&args.out.join(format!("{name}.key")), &key.serialize_pem(), true)?;
        eprintln!("certs: {name}: {} (valid for {})", args.out.join(format!("{name}.pem")).display(), sans.join(", "));
    }
    eprintln!(
        "certs: CA {} (its key ca.key signs more; keep it off the hosts). Give every service --tls-ca ca.pem, and each its own --tls-cert NAME.pem --tls-key NAME.key",
        args.out.join("ca.pem").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_a_pair_per_name_and_never_overwrites_without_force() {
        let out = std::env::temp_dir().join(format!("splitinfer-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let mut args = CertsArgs { out: out.clone(), names: vec!["edge".into(), "ue".into()], sans: vec!["10.0.0.2".into()], years: 1, force: false };
        run(&args).unwrap();
        for f in ["ca.pem", "ca.key", "edge.pem", "edge.key", "ue.pem", "ue.key"] {
            let text = std::fs::read_to_string(out.join(f)).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{f}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(out.join("edge.key")).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // The files load as a TLS identity and CA.
        let tls = splitinfer_telemetry::Tls::load(&splitinfer_telemetry::TlsArgs {
            tls_ca: Some(out.join("ca.pem")),
            tls_cert: Some(out.join("edge.pem")),
            tls_key: Some(out.join("edge.key")),
            tls_require_client_cert: true,
        })
        .unwrap();
        assert!(tls.serves_tls() && tls.requires_client_cert());
        let before = std::fs::read(out.join("ca.pem")).unwrap();
        let e = run(&args).unwrap_err().to_string();
        assert!(e.contains("already exist") && e.contains("ca.pem"), "{e}");
        assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), before, "a refused run wrote nothing");
        args.force = true;
        run(&args).unwrap();
        assert_ne!(std::fs::read(out.join("ca.pem")).unwrap(), before, "--force issues a new CA");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
