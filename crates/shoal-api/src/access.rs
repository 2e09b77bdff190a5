//! Who may call the node: `--api-key` (every endpoint but `GET /health`, the dashboard's page and assets (they hold
//! no data) and CORS preflights needs the key, as
//! `Authorization: Bearer <key>` or `x-api-key: <key>`, compared in constant time; a refusal is a 401 in the
//! dialect's error shape) and CORS (open to every origin unless `--cors-origin` names the allowed ones).

use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::Api;
use crate::error::{ApiError, Dialect};

/// Paths open without the key: probes must reach them.
const OPEN_PATHS: [&str; 1] = ["/health"];

/// The node's access settings.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// `--api-key`: `None` leaves the node open.
    pub api_key: Option<String>,
    /// `--cors-origin`: empty allows every origin.
    pub cors_origins: Vec<String>,
}

impl Access {
    /// Whether `headers` carry the key (always, when the node has none).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
        [bearer, x_api_key]
            .into_iter()
            .flatten()
            .any(|given| bool::from(given.as_bytes().ct_eq(key.as_bytes())))
    }

    /// The CORS layer: any origin, or exactly the configured ones.
    pub fn cors(&self) -> CorsLayer {
        let origins = if self.cors_origins.is_empty() {
            AllowOrigin::from(Any)
        } else {
            AllowOrigin::list(
                self.cors_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect::<Vec<_>>(),
            )
        };
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods(Any)
            .allow_headers(Any)
            .expose_headers(Any)
    }
}

/// The key check, in front of every route.
pub async fn require_key(AxumState(api): AxumState<Api>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if request.method() == Method::OPTIONS
        || OPEN_PATHS.contains(&path)
        || crate::dashboard::is_public(request.method(), path)
        || api.access.allows(request.headers())
    {
        return next.run(request).await;
    }
    Dialect::of_path(path).error_response(&ApiError::unauthorized())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(
                *name,
                HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    #[test]
    fn either_header_carries_the_key() {
        let access = Access {
            api_key: Some("s3cret".into()),
            ..Access::default()
        };
        assert!(access.allows(&headers(&[("authorization", "Bearer s3cret")])));
        assert!(access.allows(&headers(&[("x-api-key", "s3cret")])));
        assert!(!access.allows(&headers(&[])));
        assert!(!access.allows(&headers(&[("authorization", "Bearer s3cre")])));
        assert!(!access.allows(&headers(&[("authorization", "s3cret")])));
        assert!(!access.allows(&headers(&[("x-api-key", "s3cret-and-more")])));
        assert!(Access::default().allows(&headers(&[])), "no key: open");
    }

    /// The `Access-Control-Allow-Origin` a preflight from `origin` gets.
    async fn preflight(access: &Access, origin: &'static str) -> Option<String> {
        use tower::ServiceExt as _;
        let app = axum::Router::new()
            .route("/v1/models", axum::routing::get(|| async { "ok" }))
            .layer(access.cors());
        let request = axum::http::Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/models")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .body(axum::body::Body::empty())
            .ok()?;
        let response = app.oneshot(request).await.ok()?;
        response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn cors_is_open_unless_origins_are_named() {
        let open = Access::default();
        assert_eq!(preflight(&open, "http://anywhere.example").await.as_deref(), Some("*"));
        let narrowed = Access {
            cors_origins: vec!["http://localhost:3000".into()],
            ..Access::default()
        };
        assert_eq!(
            preflight(&narrowed, "http://localhost:3000").await.as_deref(),
            Some("http://localhost:3000")
        );
        assert_eq!(preflight(&narrowed, "http://evil.example").await, None);
    }
}
