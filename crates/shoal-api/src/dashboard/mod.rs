//! The dashboard (issue 16): a page every node serves at `GET /`, and the live stream it reads.
//!
//! The page is plain HTML, CSS and ES-module JavaScript with no build step, embedded in the binary
//! ([`ASSETS`]), so `cargo build` alone produces it and the browser fetches nothing from outside the node. The static
//! files hold no data and load without `--api-key`; every data call (the live stream, `/models`, placement, chat)
//! needs the key, which the page asks for once when a call answers 401 and keeps in `sessionStorage`.
//!
//! Routes: `GET /` (index.html for a request that accepts HTML; Ollama's "Ollama is running" for others, since
//! Ollama's clients probe the same path), `GET /dashboard/{file}` (the assets), `GET /state/stream` (server-sent events,
//! see [`live`]). Every asset is served with its content type, `Cache-Control: no-cache` plus an `ETag` (a reload
//! revalidates, a 304 costs nothing), and a strict `Content-Security-Policy`: scripts, styles and connections from
//! this origin only, no inline script or style, no frames, no plugins.

pub mod live;
mod summary;

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Api;

/// The policy for every dashboard response. `img-src data:` lets the page draw nothing but its own SVG and icons.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";

/// Where the assets live under the API port.
pub const ASSET_PREFIX: &str = "/dashboard/";

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub body: &'static str,
}

macro_rules! assets {
    ($($name:literal),* $(,)?) => {
        &[$(Asset { name: $name, body: include_str!(concat!("assets/", $name)) }),*]
    };
}

/// Every file of the page. `index.html` is served at `/`, the rest under [`ASSET_PREFIX`].
pub const ASSETS: &[Asset] = assets!(
    "index.html",
    "style.css",
    "icon.svg",
    "app.js",
    "api.js",
    "live.js",
    "util.js",
    "topology.js",
    "models.js",
    "instances.js",
    "chat.js",
    "markdown.js",
    "events.js",
    "health.js",
    "charts.js",
);

/// The content type of a file, by its extension.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// A strong validator of a file's bytes (FNV-1a, 64 bits): the files only change with the binary.
fn etag_of(body: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}

static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| ASSETS.iter().map(|a| etag_of(a.body)).collect());

/// Whether `path` is part of the page itself, which loads without the API key (it holds no data).
pub fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && (path == "/" || path.starts_with(ASSET_PREFIX))
}

/// The dashboard's routes, merged into the node's router.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/", get(root).head(crate::ollama::models::running))
        .route("/dashboard/{file}", get(asset))
        .route("/state/stream", get(live::stream))
}

/// `GET /`: the page for a browser (it asks for HTML); Ollama's "Ollama is running" for its clients, which probe
/// the same path.
async fn root(headers: HeaderMap) -> Response {
    if wants_html(&headers) {
        serve("index.html", &headers)
    } else {
        crate::ollama::models::running().await.into_response()
    }
}

/// Whether the request's `Accept` names HTML (every browser's navigation does; API clients do not).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/html")))
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(&file, &headers)
}

/// The headers every dashboard response carries.
pub fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        let mut response = (StatusCode::NOT_FOUND, "no such dashboard file").into_response();
        security_headers(response.headers_mut());
        return response;
    };
    let etag = &ETAGS[i];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ASSETS[i].body.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    security_headers(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `src`/`href` of index.html and every module a script imports names an embedded file.
    #[test]
    fn every_file_the_page_references_is_served() {
        let mut referenced = Vec::new();
        for asset in ASSETS {
            let text = asset.body;
            // The page's tags in HTML, static imports in modules (template strings in scripts are not references).
            let markers: &[&str] = if asset.name.ends_with(".html") {
                &["src=\"", "href=\""]
            } else {
                &["from './"]
            };
            for marker in markers {
                for (at, _) in text.match_indices(marker) {
                    let rest = &text[at + marker.len()..];
                    let end = rest.find(['"', '\'']).unwrap_or(rest.len());
                    let target = &rest[..end];
                    if target.starts_with("http") || target.starts_with('#') || target.is_empty() {
                        continue;
                    }
                    referenced.push((asset.name, target.trim_start_matches(ASSET_PREFIX).to_owned()));
                }
            }
        }
        assert!(referenced.len() >= 5, "found too few references: {referenced:?}");
        for (from, name) in &referenced {
            assert!(
                ASSETS.iter().any(|a| a.name == name.as_str()),
                "{from} references {name}, which is not embedded"
            );
        }
        // And nothing embedded is unused.
        for asset in ASSETS.iter().filter(|a| a.name != "index.html") {
            assert!(
                referenced.iter().any(|(_, n)| n == asset.name),
                "{} is embedded but nothing references it",
                asset.name
            );
        }
    }

    #[test]
    fn content_types_and_names_are_sound() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("icon.svg"), "image/svg+xml");
        assert_eq!(content_type("noext"), "application/octet-stream");
        for asset in ASSETS {
            assert_ne!(content_type(asset.name), "application/octet-stream", "{}", asset.name);
            assert!(!asset.body.is_empty(), "{} is empty", asset.name);
        }
    }

    /// The page must run under its own policy: no inline script, no inline style attribute, nothing from outside.
    #[test]
    fn the_page_obeys_its_policy() {
        for asset in ASSETS {
            let text = asset.body;
            assert!(
                !text.contains("style=\""),
                "{} has an inline style attribute",
                asset.name
            );
            assert!(!text.contains(" onclick="), "{} has an inline handler", asset.name);
            for outside in ["https://", "//cdn", "fonts.googleapis"] {
                let hits: Vec<_> = text
                    .match_indices(outside)
                    .filter(|(at, _)| !text[..*at].ends_with("xmlns=\"http:") && !text[..*at].ends_with("'http:"))
                    .collect();
                assert!(hits.is_empty(), "{} refers to {outside}", asset.name);
            }
        }
        let index = ASSETS[0].body;
        assert!(index.contains("<script type=\"module\" src=\"/dashboard/app.js\"></script>"));
        assert!(!index.contains("<script>"), "no inline script");
    }

    #[test]
    fn the_page_and_its_assets_are_public_and_nothing_else_is() {
        assert!(is_public(&Method::GET, "/"));
        assert!(is_public(&Method::GET, "/dashboard/app.js"));
        assert!(!is_public(&Method::POST, "/"));
        assert!(!is_public(&Method::GET, "/state"));
        assert!(!is_public(&Method::GET, "/state/stream"));
        assert!(!is_public(&Method::GET, "/dashboardx"));
    }

    #[test]
    fn browsers_get_the_page_and_ollama_clients_their_probe() {
        let mut browser = HeaderMap::new();
        browser.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        );
        assert!(wants_html(&browser));
        assert!(!wants_html(&HeaderMap::new()));
        let mut client = HeaderMap::new();
        client.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_html(&client));
    }

    #[test]
    fn a_known_etag_is_a_304() {
        let first = serve("app.js", &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        assert!(
            first.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .is_ok_and(|v| v.contains("default-src 'self'"))
        );
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("app.js", &again).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve("nope.js", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("../lib.rs", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
    }
}
