//! TLS checks at load time: the certificate and key files are read the way Pingora's rustls
//! listener will read them, so a bad pair is a config error with a readable message, not a
//! failed start. The one place in `config` that uses Pingora.

use std::path::Path;

use pingora_core::tls::{self, CertificateDer, PrivateKeyDer, ServerConfig};

/// The labels of the PEM blocks in a file (`CERTIFICATE`, `PRIVATE KEY`, ...).
fn pem_blocks(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&text);
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = after[..label_end].to_string();
        let end_marker = format!("-----END {label}-----");
        let Some(end) = after.find(&end_marker) else {
            return Err(format!(
                "{}: PEM block `{label}` has no END line",
                path.display()
            ));
        };
        out.push(label);
        rest = &after[end + end_marker.len()..];
    }
    Ok(out)
}

/// Number of certificates; an error when the file is unreadable or holds none.
pub fn certificates(path: &Path) -> Result<usize, String> {
    let blocks = pem_blocks(path)?;
    let n = blocks.iter().filter(|l| *l == "CERTIFICATE").count();
    if n == 0 {
        return Err(format!(
            "{} holds no PEM `CERTIFICATE` block (expected the certificate chain, leaf first)",
            path.display()
        ));
    }
    // The PEM parser Pingora uses must accept it too (base64 errors and the like).
    let file = path.to_string_lossy().to_string();
    match tls::load_pem_file_ca(&file) {
        Ok(first) if !first.is_empty() => Ok(n),
        Ok(_) => Err(format!("{}: no parsable certificate", path.display())),
        Err(e) => Err(format!(
            "{}: unreadable PEM certificate: {e}",
            path.display()
        )),
    }
}

pub fn private_key(path: &Path) -> Result<(), String> {
    let blocks = pem_blocks(path)?;
    if !blocks.iter().any(|l| {
        matches!(
            l.as_str(),
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY"
        )
    }) {
        return Err(format!(
            "{} holds no PEM private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`; \
             encrypted keys are not supported)",
            path.display()
        ));
    }
    match tls::load_pem_file_private_key(&path.to_string_lossy().to_string()) {
        Ok(der) if !der.is_empty() => Ok(()),
        Ok(_) => Err(format!("{}: no parsable private key", path.display())),
        Err(e) => Err(format!(
            "{}: unreadable PEM private key: {e}",
            path.display()
        )),
    }
}

/// The key must be usable and belong to the leaf certificate.
pub fn pair(cert: &Path, key: &Path) -> Result<(), String> {
    let loaded = tls::load_certs_and_key_files(&cert.to_string_lossy(), &key.to_string_lossy())
        .map_err(|e| format!("cannot load the certificate and key: {e}"))?;
    let Some((certs, key_der)): Option<(Vec<CertificateDer>, PrivateKeyDer)> = loaded else {
        return Err("no certificate / private key pair could be loaded".into());
    };
    tls::install_default_crypto_provider();
    ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{} does not fit the certificate in {}: {e}",
                key.display(),
                cert.display()
            )
        })
}
