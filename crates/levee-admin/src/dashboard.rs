//! The dashboard at the admin root: one page, its script, styles and icon,
//! compiled into the binary so that it works offline, from a CDN-less
//! network and without a build step. The page holds no data; it reads the
//! JSON API and the event stream (docs/api.md) like any other client, so
//! these routes need no state and no token (the API calls carry it).
//!
//! Every answer carries a strict Content-Security-Policy: scripts, styles
//! and connections from this origin only, nothing inline, no frames. A
//! value that reaches the page from the config (an upstream's name, an
//! alert's annotation) can therefore never run as script, even if escaping
//! in the page were wrong.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The policy sent with every dashboard file: the page's own script, styles,
/// icon and API calls, from this origin only; nothing inline, no fonts, no
/// frames, no form posting elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The page itself, served at `/`.
pub const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../assets/index.html"),
};

/// The files served under `/assets/`.
pub const ASSETS: [Asset; 3] = [
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../assets/favicon.svg"),
    },
];

/// The dashboard's routes: `/` and `/assets/{file}`. Generic over the
/// router's state so that it merges into the admin router before or after
/// its state is given.
pub fn dashboard<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index() -> Response {
    serve(&INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => serve(a),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

fn serve(asset: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            // The files change with the binary, not its uptime: always
            // revalidate, so an upgraded levee never runs yesterday's script.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> impl Iterator<Item = &'static Asset> {
        std::iter::once(&INDEX).chain(ASSETS.iter())
    }

    /// The page works offline and leaks nothing to third parties: no file
    /// names a URL outside this origin. The SVG namespace is an XML name,
    /// never fetched, and is the only `http` allowed.
    #[test]
    fn assets_reference_no_external_url() {
        for a in all() {
            for (i, line) in a.body.lines().enumerate() {
                let cleaned = line.replace("http://www.w3.org/2000/svg", "");
                for scheme in ["http://", "https://", "//cdn", "ws://", "wss://"] {
                    assert!(
                        !cleaned.contains(scheme),
                        "{}:{}: names an external URL: {line}",
                        a.name,
                        i + 1
                    );
                }
                if a.name.ends_with(".css") {
                    assert!(
                        !cleaned.contains("@import") && !cleaned.contains("url("),
                        "{}:{}: loads a resource from CSS: {line}",
                        a.name,
                        i + 1
                    );
                }
            }
        }
    }

    /// Everything the page links to is embedded, and nothing is inline
    /// (the policy would block it).
    #[test]
    fn the_page_links_only_embedded_files() {
        let page = INDEX.body;
        let mut linked = 0;
        for attr in ["src=\"", "href=\""] {
            for part in page.split(attr).skip(1) {
                let target = part.split('"').next().unwrap_or_default();
                let name = target
                    .strip_prefix("assets/")
                    .unwrap_or_else(|| panic!("index.html links {target:?}, not an embedded asset"));
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "index.html links {target:?}, which is not embedded"
                );
                linked += 1;
            }
        }
        assert_eq!(linked, ASSETS.len(), "every asset is used");
        assert!(!page.contains("<script>") && !page.contains("<style") && !page.contains("style="));
        let handler = page.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(handler.is_none(), "inline event handler: on{handler:?}");
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
