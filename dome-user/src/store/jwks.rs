//! Identity providers' keys, fetched: JWKS files read at start and URLs
//! fetched and refreshed. Verifying tokens is `dome_core::identity::jwt`'s
//! work.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use jsonwebtoken::jwk::JwkSet;

use dome_core::identity::jwt::{Provider, Verifier};

/// Why an identity provider's keys were not had: each names the URL or
/// file, with what failed under it as the source.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("{url}")]
    BadUrl {
        url: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    #[error("{url}: timed out")]
    Timeout { url: String },
    /// The request failed (connecting, TLS, HTTP).
    #[error("{url}")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: HTTP {status}")]
    Status {
        url: String,
        status: hyper::StatusCode,
    },
    /// The body did not arrive whole (or is over 1 MiB).
    #[error("{url}")]
    Body {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A JWKS file that does not read.
    #[error("{}", path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// What was fetched or read is not a JWKS document (`from` is the URL
    /// or the file).
    #[error("{from}: not a JWKS")]
    NotJwks {
        from: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Fetches a JWKS document over HTTP(S).
pub async fn fetch(url: &str) -> Result<JwkSet, JwksError> {
    use http_body_util::BodyExt;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let url_of = || url.to_string();
    let uri: hyper::Uri = url.parse().map_err(|source| JwksError::BadUrl {
        url: url_of(),
        source,
    })?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| JwksError::Timeout { url: url_of() })?
        .map_err(|source| JwksError::Request {
            url: url_of(),
            source,
        })?;
    if !resp.status().is_success() {
        return Err(JwksError::Status {
            url: url_of(),
            status: resp.status(),
        });
    }
    let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|source| JwksError::Body {
            url: url_of(),
            source,
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|source| JwksError::NotJwks {
        from: url_of(),
        source,
    })
}

/// Fetches `provider`'s keys again (URL providers), at most once per
/// `min_gap_s`.
pub async fn refresh(provider: &Provider, now_unix_s: u64, min_gap_s: u64) {
    let Some(url) = &provider.config.jwks_url else {
        return;
    };
    let last = provider.fetched_unix_s.load(Ordering::Relaxed);
    if last != 0 && now_unix_s < last + min_gap_s {
        return;
    }
    provider.fetched_unix_s.store(now_unix_s, Ordering::Relaxed);
    match fetch(url).await {
        Ok(set) => {
            tracing::info!(tenant = %provider.tenant, keys = set.keys.len(), "identity provider keys fetched");
            provider.set_keys(Arc::new(set));
        }
        Err(e) => {
            tracing::warn!(tenant = %provider.tenant, error = %crate::error_chain(&e), "fetching the identity provider's keys failed")
        }
    }
}

/// Builds the providers of `tenants` (JWKS files read now; URL key sets
/// start empty until fetched).
pub fn providers(
    tenants: &[crate::identity::config::TenantConfig],
    default_audience: &str,
    config_dir: &std::path::Path,
) -> Result<Verifier, JwksError> {
    let mut by_issuer = HashMap::new();
    for t in tenants {
        let Some(j) = &t.jwt else { continue };
        let keys = match &j.jwks_file {
            Some(f) => {
                let path = if f.is_absolute() {
                    f.clone()
                } else {
                    config_dir.join(f)
                };
                let text = std::fs::read_to_string(&path).map_err(|source| JwksError::File {
                    path: path.clone(),
                    source,
                })?;
                serde_json::from_str(&text).map_err(|source| JwksError::NotJwks {
                    from: path.display().to_string(),
                    source,
                })?
            }
            None => JwkSet { keys: Vec::new() },
        };
        let audience = j
            .audience
            .clone()
            .unwrap_or_else(|| default_audience.to_string());
        by_issuer.insert(
            j.issuer.clone(),
            Arc::new(Provider::new(t.name.clone(), j.clone(), audience, keys)),
        );
    }
    Ok(Verifier { by_issuer })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::config::TenantConfig;

    fn tenant(jwks_file: &str) -> TenantConfig {
        toml::from_str(&format!(
            "name = \"acme\"\n[jwt]\nissuer = \"https://idp.test\"\njwks_file = \"{jwks_file}\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_jwks_file_that_does_not_load_is_named_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("dome-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = providers(&[tenant("missing.json")], "aud", &dir)
            .err()
            .unwrap();
        assert!(matches!(missing, JwksError::File { .. }), "{missing:?}");
        assert_eq!(
            crate::error_chain(&missing),
            format!(
                "{}: No such file or directory (os error 2)",
                dir.join("missing.json").display()
            )
        );
        std::fs::write(dir.join("bad.json"), "{").unwrap();
        let bad = providers(&[tenant("bad.json")], "aud", &dir).err().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            crate::error_chain(&bad),
            format!(
                "{}: not a JWKS: EOF while parsing an object at line 1 column 1",
                dir.join("bad.json").display()
            )
        );
    }
}
