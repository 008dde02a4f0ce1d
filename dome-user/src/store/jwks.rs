//! Identity providers' keys, fetched: JWKS files read at start and URLs
//! fetched and refreshed. Verifying tokens is `dome_core::identity::jwt`'s
//! work.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use jsonwebtoken::jwk::JwkSet;

use dome_core::identity::jwt::{Provider, Verifier};

/// Fetches a JWKS document over HTTP(S).
pub async fn fetch(url: &str) -> Result<JwkSet, String> {
    use http_body_util::BodyExt;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| format!("{url}: {}", crate::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not a JWKS: {e}"))
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
            tracing::warn!(tenant = %provider.tenant, error = %e, "fetching the identity provider's keys failed")
        }
    }
}

/// Builds the providers of `tenants` (JWKS files read now; URL key sets
/// start empty until fetched).
pub fn providers(
    tenants: &[crate::identity::config::TenantConfig],
    default_audience: &str,
    config_dir: &std::path::Path,
) -> Result<Verifier, String> {
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
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("{}: not a JWKS: {e}", path.display()))?
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
