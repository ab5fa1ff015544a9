//! `kvs tls ca` and `kvs tls cert`: a CA and node certificates made with
//! rcgen, no OpenSSL. Keys are ECDSA P-256, written with mode 0600, and
//! no file is ever overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Files a command writes, under its directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

/// The civil date `days` days after 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Valid from yesterday (clocks of other hosts may lag) for `days` days.
fn validity(params: &mut CertificateParams, days: u32) {
    let today = crate::clock::now_ms() as i64 / 86_400_000;
    let (y, m, d) = civil(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil(today + i64::from(days));
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// Writes a new file (never an existing one) with `mode`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} exists: it is never overwritten (move it away first)",
                path.display()
            ),
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn refuse_existing(paths: &[&Path]) -> Result<(), String> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(format!(
            "{} exists: it is never overwritten (move it away first)",
            p.display()
        )),
        None => Ok(()),
    }
}

/// `kvs tls ca`: a self-signed CA; returns the files written.
pub fn make_ca(dir: &Path, days: u32) -> Result<(PathBuf, PathBuf), String> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    refuse_existing(&[&cert_path, &key_path])?;
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "kvs CA");
    name.push(DnType::OrganizationName, "kvs");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot make the CA certificate: {e}"))?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok((cert_path, key_path))
}

/// What `kvs tls cert` names in a certificate.
pub struct Names {
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
}

/// `kvs tls cert NAME`: a certificate for server and client use, signed by
/// the CA in `dir`; returns the files written.
pub fn make_cert(
    dir: &Path,
    name: &str,
    names: &Names,
    days: u32,
) -> Result<(PathBuf, PathBuf), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        return Err(format!(
            "{name:?} is not a certificate name: letters, digits, '-', '_' and '.' only"
        ));
    }
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    refuse_existing(&[&cert_path, &key_path])?;
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            format!(
                "{}: {e} (make the CA first with kvs tls ca --dir {})",
                p.display(),
                dir.display()
            )
        })
    };
    let ca_key = KeyPair::from_pem(&read(&ca_key)?)
        .map_err(|e| format!("{}: not a private key: {e}", ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_cert)?, ca_key)
        .map_err(|e| format!("{}: not a CA certificate: {e}", ca_cert.display()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let (ips, dns) = if names.ips.is_empty() && names.dns.is_empty() {
        (
            vec![IpAddr::from([127, 0, 0, 1])],
            vec!["localhost".to_string()],
        )
    } else {
        (names.ips.clone(), names.dns.clone())
    };
    for host in &dns {
        let ia5 = host
            .as_str()
            .try_into()
            .map_err(|e| format!("--dns {host}: {e}"))?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn a_ca_signs_a_certificate_that_names_its_hosts() {
        let dir = std::env::temp_dir().join(format!("kvs-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        make_ca(&dir, 30).unwrap();
        assert!(make_ca(&dir, 30).unwrap_err().contains("never overwritten"));
        let names = Names {
            ips: vec!["10.1.2.3".parse().unwrap()],
            dns: vec!["node1.example".into()],
        };
        let (cert, key) = make_cert(&dir, "node1", &names, 10).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let pem = std::fs::read(&cert).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        assert!(crate::tls::names_host(&der, "10.1.2.3"));
        assert!(crate::tls::names_host(&der, "node1.example"));
        assert!(!crate::tls::names_host(&der, "127.0.0.1"));
        let left = crate::tls::expiry_of(&der).unwrap() - crate::clock::now_ms() as i64 / 1000;
        assert!((9 * 86_400..=11 * 86_400).contains(&left), "{left}");
        assert!(make_cert(&dir, "node1", &names, 10)
            .unwrap_err()
            .contains("never overwritten"));
        assert!(make_cert(&dir, "../x", &names, 10).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
