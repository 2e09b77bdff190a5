//! The cluster key (SYSTEM.md §12): a self-signed cluster CA certificate and its private key in one file.
//!
//! `shoal keygen` writes the file ([`ClusterKey::generate`] + [`ClusterKey::write_new`]). At start every node loads it
//! ([`ClusterKey::load`]), issues itself a short-lived leaf certificate signed by the CA
//! ([`ClusterKey::issue_node_cert`]) and configures zenoh's TLS link inline ([`NodeTls::zenoh_tls_json`]) with mutual
//! TLS, so only holders of the key can join.
//!
//! The file is PEM: the CA certificate (`CERTIFICATE`) followed by its private key (`PRIVATE KEY`, PKCS#8, ECDSA
//! P-256). The CA's subject is fixed ([`CA_COMMON_NAME`], [`CA_ORGANIZATION`]) and checked on load: the issuer of every
//! leaf is rebuilt from those constants, and peers match a leaf's issuer against the CA's subject byte for byte.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};
use shoal_types::NodeId;

/// Common name of the cluster CA. Never change it: existing key files are checked against it.
pub const CA_COMMON_NAME: &str = "shoal cluster CA";
/// Organization of the cluster CA. Never change it: existing key files are checked against it.
pub const CA_ORGANIZATION: &str = "shoal";
/// Extra DNS name put in every node certificate next to the node id (names are not checked: peers are dialled by IP).
pub const NODE_DNS_NAME: &str = "shoal";

/// Validity of a node's leaf certificate; a node issues a fresh one at every start.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Validity of the cluster CA (there is no rotation: a new key means a new cluster).
const CA_VALIDITY: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
/// Certificates start this long before "now", so a peer whose clock runs behind still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);

const PEM_CERTIFICATE: &str = "CERTIFICATE";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating the cluster key: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("invalid cluster key: {0}")]
    Invalid(String),
    #[error("--cluster-key {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--cluster-key {path}: {reason}")]
    InvalidFile { path: PathBuf, reason: String },
    #[error("{path}: already exists; refusing to overwrite a cluster key (remove it first if you really mean to)")]
    Exists { path: PathBuf },
    #[error("{path}: cannot write the cluster key: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("issuing the node certificate: {0}")]
    Issue(#[source] rcgen::Error),
}

/// The cluster CA: its certificate and private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ClusterKey {
    /// Creates a new cluster CA (ECDSA P-256, self-signed).
    pub fn generate() -> Result<ClusterKey, KeyError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(KeyError::Generate)?;
        let params = ca_params();
        let cert = params.self_signed(&key).map_err(KeyError::Generate)?;
        Ok(ClusterKey {
            cert_pem: pem_encode(PEM_CERTIFICATE, cert.der()),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The file form: the CA certificate PEM followed by its private key PEM.
    pub fn to_file_text(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    /// Parses the file form: exactly one `CERTIFICATE` block and one private key block; text outside the blocks is
    /// ignored. Checks that the key belongs to the certificate and that the certificate is a shoal cluster CA.
    pub fn parse(text: &str) -> Result<ClusterKey, KeyError> {
        let blocks = pem_blocks(text).map_err(KeyError::Invalid)?;
        let mut cert_der = None;
        let mut key_block = None;
        for block in blocks {
            if block.label == PEM_CERTIFICATE {
                if cert_der.replace(block.der).is_some() {
                    return Err(KeyError::Invalid("more than one CERTIFICATE block".into()));
                }
            } else if block.label.ends_with("PRIVATE KEY") {
                if key_block.replace(block).is_some() {
                    return Err(KeyError::Invalid("more than one PRIVATE KEY block".into()));
                }
            } else {
                return Err(KeyError::Invalid(format!("unexpected PEM block {:?}", block.label)));
            }
        }
        let cert_der = cert_der.ok_or_else(|| KeyError::Invalid("no CERTIFICATE block".into()))?;
        let key_block = key_block.ok_or_else(|| KeyError::Invalid("no PRIVATE KEY block".into()))?;
        let key = KeyPair::from_pem(&pem_encode(&key_block.label, &key_block.der))
            .map_err(|e| KeyError::Invalid(format!("unreadable private key: {e}")))?;

        // The certificate must carry the key's public key and shoal's CA subject: compare with a certificate rebuilt
        // from the same parameters and key (the issuer name of every leaf is built the same way).
        let (subject, spki) = cert_subject_and_spki(&cert_der)
            .ok_or_else(|| KeyError::Invalid("the CERTIFICATE block is not an X.509 certificate".into()))?;
        let rebuilt = ca_params()
            .self_signed(&key)
            .map_err(|e| KeyError::Invalid(format!("the private key cannot sign: {e}")))?;
        let (want_subject, want_spki) = cert_subject_and_spki(rebuilt.der())
            .ok_or_else(|| KeyError::Invalid("internal: rebuilt CA certificate does not parse".into()))?;
        if spki != want_spki {
            return Err(KeyError::Invalid(
                "the private key does not belong to the certificate".into(),
            ));
        }
        if subject != want_subject {
            return Err(KeyError::Invalid(format!(
                "the certificate is not a shoal cluster CA (subject is not CN={CA_COMMON_NAME}, O={CA_ORGANIZATION})"
            )));
        }
        Ok(ClusterKey {
            cert_pem: pem_encode(PEM_CERTIFICATE, &cert_der),
            cert_der,
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads and parses; errors name the file ("--cluster-key <path>: ..."). Warns when the file is readable by
    /// others (unix).
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let key = ClusterKey::parse(&text).map_err(|e| match e {
            KeyError::Invalid(reason) => KeyError::InvalidFile {
                path: path.to_owned(),
                reason: format!("invalid cluster key: {reason}"),
            },
            other => other,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "the cluster key file is readable by other users; chmod 600 it");
            }
        }
        Ok(key)
    }

    /// Writes a new key file; refuses to overwrite an existing file; file mode 0600 on unix. Creates missing parent
    /// directories.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let write_err = |source| KeyError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists { path: path.to_owned() }
            } else {
                write_err(source)
            }
        })?;
        let written = file
            .write_all(self.to_file_text().as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(source) = written {
            drop(file);
            // Best effort: do not leave a truncated key behind (a later write_new would refuse to replace it).
            let _ = std::fs::remove_file(path);
            return Err(write_err(source));
        }
        Ok(())
    }

    /// Short hex fingerprint (first 16 hex chars of sha256 of the CA cert DER) for logs.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(&self.cert_der);
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The CA certificate, PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf certificate for this node, signed by the CA: CN = node id, DNS names = node id and [`NODE_DNS_NAME`],
    /// usable as TLS server and client certificate, valid from a day ago for [`LEAF_VALIDITY`]. A fresh P-256 key per
    /// call.
    pub fn issue_node_cert(&self, node: NodeId) -> Result<NodeTls, KeyError> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(KeyError::Issue)?;
        let issuer = Issuer::new(ca_params(), ca_key);

        let node_hex = node.to_string();
        let mut params =
            CertificateParams::new(vec![node_hex.clone(), NODE_DNS_NAME.to_owned()]).map_err(KeyError::Issue)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, node_hex);
        name.push(DnType::OrganizationName, CA_ORGANIZATION);
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_VALIDITY);

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(KeyError::Issue)?;
        let cert = params.signed_by(&key, &issuer).map_err(KeyError::Issue)?;
        Ok(NodeTls {
            ca_pem: self.cert_pem.clone(),
            cert_pem: pem_encode(PEM_CERTIFICATE, cert.der()),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A node's TLS material: the cluster CA certificate, the node's leaf certificate and the leaf's private key, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// The JSON object to place at zenoh config path `transport/link/tls`: CA, certificate and key inline as base64 of
    /// their PEM text (zenoh-link-tls base64-decodes them and reads the result as PEM), mutual TLS on, server name
    /// check off (peers are dialled by IP; the chain to the cluster CA is still verified both ways).
    pub fn zenoh_tls_json(&self) -> serde_json::Value {
        let cert = BASE64.encode(&self.cert_pem);
        let key = BASE64.encode(&self.key_pem);
        serde_json::json!({
            "root_ca_certificate_base64": BASE64.encode(&self.ca_pem),
            "listen_certificate_base64": cert,
            "listen_private_key_base64": key,
            "connect_certificate_base64": cert,
            "connect_private_key_base64": key,
            "enable_mtls": true,
            "verify_name_on_connect": false,
        })
    }
}

/// The CA's parameters. Subject and key usages must stay the same forever: leaves' issuer names are built from them.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    name.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY);
    params
}

/// Sets `not_before` to `now - CLOCK_SKEW` and `not_after` to `now + validity` (rcgen's `time` dates, reached through
/// rcgen so this crate needs no direct `time` dependency).
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
}

struct PemBlock {
    label: String,
    der: Vec<u8>,
}

/// Splits PEM text into its blocks; text between blocks is ignored.
fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        match &mut current {
            None => {
                if let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) {
                    current = Some((label.to_owned(), String::new()));
                }
            }
            Some((label, body)) => {
                if let Some(end) = line.strip_prefix("-----END ").and_then(|l| l.strip_suffix("-----")) {
                    if end != label {
                        return Err(format!("PEM block BEGIN {label} ends with END {end}"));
                    }
                    let der = BASE64
                        .decode(body.as_bytes())
                        .map_err(|e| format!("PEM block {label}: bad base64: {e}"))?;
                    if der.is_empty() {
                        return Err(format!("PEM block {label} is empty"));
                    }
                    blocks.push(PemBlock {
                        label: std::mem::take(label),
                        der,
                    });
                    current = None;
                } else if line.starts_with("-----") {
                    return Err(format!("PEM block {label} is not terminated"));
                } else {
                    body.push_str(line);
                }
            }
        }
    }
    if let Some((label, _)) = current {
        return Err(format!("PEM block {label} is truncated (no END line)"));
    }
    if blocks.is_empty() {
        return Err("no PEM blocks found".into());
    }
    Ok(blocks)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// One DER element and what follows it.
struct Tlv<'a> {
    tag: u8,
    /// The whole element: tag, length and contents.
    whole: &'a [u8],
    contents: &'a [u8],
    rest: &'a [u8],
}

/// Reads one DER element (definite lengths only, at most 4 length bytes).
fn der_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some(Tlv {
        tag,
        whole: &input[..header + len],
        contents: &rest[..len],
        rest: &rest[len..],
    })
}

/// The raw DER of an X.509 certificate's subject name and subject public key info.
fn cert_subject_and_spki(cert_der: &[u8]) -> Option<(&[u8], &[u8])> {
    const SEQUENCE: u8 = 0x30;
    let cert = der_tlv(cert_der)?;
    if cert.tag != SEQUENCE || !cert.rest.is_empty() {
        return None;
    }
    let tbs = der_tlv(cert.contents)?;
    if tbs.tag != SEQUENCE {
        return None;
    }
    let mut field = der_tlv(tbs.contents)?;
    if field.tag == 0xa0 {
        // Explicit version; the serial number follows.
        field = der_tlv(field.rest)?;
    }
    // Serial number -> signature algorithm -> issuer -> validity -> subject.
    for _ in 0..4 {
        field = der_tlv(field.rest)?;
    }
    let subject = field;
    let spki = der_tlv(subject.rest)?;
    if subject.tag != SEQUENCE || spki.tag != SEQUENCE {
        return None;
    }
    Some((subject.whole, spki.whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId::from_random([b; 16]).expect("valid node id")
    }

    /// The raw DER of a certificate's issuer name.
    fn cert_issuer(cert_der: &[u8]) -> Vec<u8> {
        let cert = der_tlv(cert_der).expect("cert");
        let tbs = der_tlv(cert.contents).expect("tbs");
        let version = der_tlv(tbs.contents).expect("version");
        assert_eq!(version.tag, 0xa0);
        let serial = der_tlv(version.rest).expect("serial");
        let sig_alg = der_tlv(serial.rest).expect("sig alg");
        der_tlv(sig_alg.rest).expect("issuer").whole.to_vec()
    }

    fn first_der(pem: &str) -> Vec<u8> {
        pem_blocks(pem).expect("pem").remove(0).der
    }

    #[test]
    fn round_trip_keeps_fingerprint() {
        let key = ClusterKey::generate().expect("generate");
        let text = key.to_file_text();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(text.contains("-----BEGIN PRIVATE KEY-----\n"));
        let parsed = ClusterKey::parse(&text).expect("parse");
        assert_eq!(parsed.fingerprint(), key.fingerprint());
        assert_eq!(parsed.to_file_text(), text);
        assert_eq!(key.fingerprint().len(), 16);
        assert!(
            key.fingerprint()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // Comments around the blocks and CRLF line ends are fine.
        let decorated = format!("# shoal cluster key\r\n{}\r\n", text.replace('\n', "\r\n"));
        assert_eq!(
            ClusterKey::parse(&decorated).expect("parse decorated").fingerprint(),
            key.fingerprint()
        );
        // Two keys differ.
        assert_ne!(
            ClusterKey::generate().expect("generate").fingerprint(),
            key.fingerprint()
        );
        // Debug never shows the private key.
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn bad_text_is_rejected() {
        let key = ClusterKey::generate().expect("generate");
        let other = ClusterKey::generate().expect("generate");
        let text = key.to_file_text();
        let cert_only = key.ca_cert_pem().to_owned();
        let key_only = text[cert_only.len()..].to_owned();
        let cases = [
            ("empty", String::new()),
            ("garbage", "hello world\n".to_owned()),
            ("truncated", text[..text.len() / 2].to_owned()),
            ("truncated in cert", text[..cert_only.len() / 2].to_owned()),
            ("cert without key", cert_only.clone()),
            ("key without cert", key_only.clone()),
            (
                "mismatched key",
                format!("{cert_only}{}", &other.to_file_text()[other.ca_cert_pem().len()..]),
            ),
            ("two certs", format!("{cert_only}{cert_only}{key_only}")),
            ("bad base64", text.replacen("MI", "!!", 1)),
            (
                "not a cert",
                format!("-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n{key_only}"),
            ),
        ];
        for (what, case) in cases {
            match ClusterKey::parse(&case) {
                Err(KeyError::Invalid(_)) => {}
                other => panic!("{what}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn leaf_is_issued_by_the_ca() {
        let key = ClusterKey::generate().expect("generate");
        let id = node(0xab);
        let tls = key.issue_node_cert(id).expect("issue");
        assert_eq!(tls.ca_pem, key.ca_cert_pem());
        let leaf = first_der(&tls.cert_pem);
        let (ca_subject, ca_spki) = cert_subject_and_spki(&key.cert_der).expect("ca");
        assert_eq!(
            cert_issuer(&leaf),
            ca_subject,
            "leaf issuer must equal the CA subject byte for byte"
        );
        let (_, leaf_spki) = cert_subject_and_spki(&leaf).expect("leaf");
        assert_ne!(leaf_spki, ca_spki);
        // CN and DNS SAN carry the node id.
        let hex = id.to_string();
        assert!(leaf.windows(hex.len()).any(|w| w == hex.as_bytes()));
        assert!(tls.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        // A reloaded key issues leaves with the same issuer.
        let reloaded = ClusterKey::parse(&key.to_file_text()).expect("parse");
        let leaf2 = first_der(&reloaded.issue_node_cert(id).expect("issue").cert_pem);
        assert_eq!(cert_issuer(&leaf2), ca_subject);
    }

    #[test]
    fn zenoh_json_is_base64_of_pem() {
        let key = ClusterKey::generate().expect("generate");
        let tls = key.issue_node_cert(node(0x42)).expect("issue");
        let json = tls.zenoh_tls_json();
        let decode = |k: &str| {
            let s = json[k].as_str().expect("string");
            String::from_utf8(BASE64.decode(s).expect("base64")).expect("utf8")
        };
        assert_eq!(decode("root_ca_certificate_base64"), tls.ca_pem);
        assert_eq!(decode("listen_certificate_base64"), tls.cert_pem);
        assert_eq!(decode("connect_certificate_base64"), tls.cert_pem);
        assert_eq!(decode("listen_private_key_base64"), tls.key_pem);
        assert_eq!(decode("connect_private_key_base64"), tls.key_pem);
        assert_eq!(json["enable_mtls"], true);
        assert_eq!(json["verify_name_on_connect"], false);
        assert_eq!(json.as_object().expect("object").len(), 7);
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }

    #[test]
    fn load_missing_file_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.key");
        let err = ClusterKey::load(&path).expect_err("missing");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("--cluster-key {}", path.display())), "{msg}");
    }

    #[test]
    fn load_invalid_file_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "garbage").expect("write");
        let msg = ClusterKey::load(&path).expect_err("invalid").to_string();
        assert!(
            msg.starts_with(&format!("--cluster-key {}: invalid cluster key", path.display())),
            "{msg}"
        );
    }

    #[test]
    fn write_new_then_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("cluster.key");
        let key = ClusterKey::generate().expect("generate");
        key.write_new(&path).expect("write");
        assert_eq!(ClusterKey::load(&path).expect("load").fingerprint(), key.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second write refuses and leaves the first key alone.
        let other = ClusterKey::generate().expect("generate");
        let err = other.write_new(&path).expect_err("must refuse");
        assert!(matches!(err, KeyError::Exists { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(ClusterKey::load(&path).expect("load").fingerprint(), key.fingerprint());
    }
}
