//! `--web-config-file`: TLS and basic auth in the Prometheus exporter-toolkit format, so
//! the file node_exporter reads (and the scrape configs written for it) work unchanged.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};

use axum::http::{HeaderName, HeaderValue};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use serde::Deserialize;

/// A web config file holds a few keys; anything bigger is not one.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The response headers exporter-toolkit lets `http_server_config.headers` set.
const SETTABLE_HEADERS: [&str; 5] = [
    "Content-Security-Policy",
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the web config file {file}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("web config file {file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("web config file {file}: `{key}`: {message}")]
    Key {
        file: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// What the listener serves with: TLS when configured, and the users allowed in.
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    /// User name → bcrypt hash; empty means no authentication.
    pub users: BTreeMap<String, String>,
    /// Added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    #[serde(default)]
    http_server_config: HttpFile,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// Accepted as node_exporter files have it; the agent speaks HTTP/1.1 only.
    #[serde(rename = "http2")]
    _http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
}

impl WebConfig {
    /// No file: plain HTTP, no authentication.
    pub fn plain() -> WebConfig {
        WebConfig {
            tls: None,
            users: BTreeMap::new(),
            headers: Vec::new(),
        }
    }

    pub fn load(file: &Path) -> Result<WebConfig, Error> {
        let text = read_bounded(file).map_err(|source| Error::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let parsed: File = serde_saphyr::from_str(&text).map_err(|e| Error::Parse {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
        let key_error = |key, message: String| Error::Key {
            file: file.to_path_buf(),
            key,
            message,
        };
        for (user, hash) in &parsed.basic_auth_users {
            bcrypt::HashParts::from_str(hash).map_err(|e| {
                key_error(
                    "basic_auth_users",
                    format!("user {user:?}: not a bcrypt hash ({e})"),
                )
            })?;
        }
        let headers = parsed
            .http_server_config
            .headers
            .iter()
            .map(|(name, value)| header(name, value).map_err(|m| key_error("headers", m)))
            .collect::<Result<_, _>>()?;
        // Paths are relative to the file, as exporter-toolkit resolves them.
        let base = file.parent().unwrap_or(Path::new("."));
        let tls = parsed
            .tls_server_config
            .map(|tls| server_config(&tls, base).map_err(|(key, message)| key_error(key, message)))
            .transpose()?;
        Ok(WebConfig {
            tls: tls.map(Arc::new),
            users: parsed.basic_auth_users,
            headers,
        })
    }
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    if !SETTABLE_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
    {
        return Err(format!(
            "{name:?} cannot be set (only {})",
            SETTABLE_HEADERS.join(", ")
        ));
    }
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("{name}: {value:?} is not a header value"))?;
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name:?}: {e}"))?;
    Ok((name, value))
}

fn read_bounded(file: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)?
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut text)?;
    Ok(text)
}

type KeyError = (&'static str, String);

fn server_config(tls: &TlsFile, base: &Path) -> Result<ServerConfig, KeyError> {
    let required = |key, value: &Option<PathBuf>| {
        value
            .as_ref()
            .map(|path| base.join(path))
            .ok_or((key, "missing (required in tls_server_config)".to_string()))
    };
    let cert_file = required("cert_file", &tls.cert_file)?;
    let key_file = required("key_file", &tls.key_file)?;
    let certs = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ("cert_file", format!("{}: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err((
            "cert_file",
            format!("{}: no certificate in it", cert_file.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| ("key_file", format!("{}: {e}", key_file.display())))?;

    let versions = protocol_versions(tls.min_version.as_deref(), tls.max_version.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| ("min_version", e.to_string()))?;
    let auth_type = tls.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match auth_type {
        "NoClientCert" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            let ca_file = required("client_ca_file", &tls.client_ca_file)?;
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(&ca_file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ("client_ca_file", format!("{}: {e}", ca_file.display())))?;
            let (added, _) = roots.add_parsable_certificates(cas);
            if added == 0 {
                return Err((
                    "client_ca_file",
                    format!("{}: no usable CA certificate in it", ca_file.display()),
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth_type == "VerifyClientCertIfGiven" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| ("client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        other => {
            return Err((
                "client_auth_type",
                format!(
                    "{other:?} is not supported (use NoClientCert, VerifyClientCertIfGiven or \
                     RequireAndVerifyClientCert)"
                ),
            ))
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ("key_file", format!("does not match cert_file: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// rustls speaks TLS 1.2 and 1.3; an older minimum is met by 1.2.
fn protocol_versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, KeyError> {
    let rank = |key, value: &str| match value {
        "TLS10" | "TLS11" | "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        other => Err((
            key,
            format!("{other:?} is not a TLS version (TLS10, TLS11, TLS12, TLS13)"),
        )),
    };
    let min = min.map_or(Ok(12), |v| rank("min_version", v))?;
    let max = max.map_or(Ok(13), |v| rank("max_version", v))?;
    if min > max {
        return Err(("max_version", "is below min_version".to_string()));
    }
    Ok(
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(version, _)| (min..=max).contains(version))
            .map(|(_, version)| version)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<WebConfig, Error> {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("web.yml");
        std::fs::write(&file, yaml).expect("writing the config");
        WebConfig::load(&file)
    }

    #[test]
    fn users_without_tls() {
        let hash = bcrypt::hash("secret", 4).expect("hashing");
        let config = load(&format!("basic_auth_users:\n  alice: '{hash}'\n")).expect("valid");
        assert!(config.tls.is_none());
        assert_eq!(config.users.get("alice"), Some(&hash));
    }

    #[test]
    fn node_exporter_http_server_config() {
        let config =
            load("http_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n")
                .expect("valid");
        assert_eq!(config.headers.len(), 1);
        assert_eq!(config.headers[0].0, "x-frame-options");
        assert!(load("http_server_config:\n  headers:\n    Set-Cookie: x\n")
            .is_err_and(|e| e.to_string().contains("`headers`")));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let cases = [
            ("tls_server_config:\n  cert: x\n", "cert"),
            ("basic_auth_users:\n  alice: plain\n", "basic_auth_users"),
            ("tls_server_config:\n  key_file: k.pem\n", "cert_file"),
            (
                "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n",
                "c.pem",
            ),
            ("users: {}\n", "users"),
            ("basic_auth_users: [\n", "web.yml"),
        ];
        for (yaml, expected) in cases {
            let message = match load(yaml) {
                Ok(_) => panic!("{yaml:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(message.contains("web.yml"), "{yaml:?}: {message}");
            assert!(message.contains(expected), "{yaml:?}: {message}");
        }
    }

    #[test]
    fn the_deploy_example_is_a_valid_config() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/web-config.yml");
        let text = std::fs::read_to_string(&example).expect("reading deploy/web-config.yml");
        let parsed: File = serde_saphyr::from_str(&text).expect("the example parses");
        let hash = &parsed.basic_auth_users["prometheus"];
        assert_eq!(bcrypt::verify("change-me", hash).ok(), Some(true));
        // Only the certificate it names is missing here.
        let error = WebConfig::load(&example).err().map(|e| e.to_string());
        assert!(
            error
                .as_ref()
                .is_some_and(|e| e.contains("`cert_file`") && e.contains("exitwatch.crt")),
            "{error:?}"
        );
    }

    #[test]
    fn tls_versions() {
        assert_eq!(protocol_versions(None, None).expect("default").len(), 2);
        assert_eq!(
            protocol_versions(Some("TLS13"), None).expect("1.3 only"),
            vec![&rustls::version::TLS13]
        );
        assert!(protocol_versions(Some("TLS13"), Some("TLS12")).is_err());
        assert!(protocol_versions(Some("SSL3"), None).is_err());
    }
}
