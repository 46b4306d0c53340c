//! The operator's web console (at `/`) and the browsable API docs (at
//! `/api/v0002/docs`): static files embedded in the binary, served by the
//! REST listener without credentials. The files hold no data: every call
//! they make goes to the REST API, which asks for credentials as always.
//!
//! The console is plain ES modules and CSS under `console/` (no build
//! step); the docs are the OpenAPI document rendered by a vendored,
//! pinned copy of swagger-ui-dist. Every response carries a strict
//! Content-Security-Policy (scripts from this origin only, no inline
//! scripts) and a validator, so a browser checks before reusing a file.

use std::sync::LazyLock;

use axum::{
    Router,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// The console's policy: nothing but this origin, no inline code or style.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The docs page's policy: as the console's, but Swagger UI sets inline
/// styles on the elements it draws (never inline scripts).
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The folder of the vendored Swagger UI, named for its version: its files
/// never change under that path, so browsers may keep them.
pub const SWAGGER_UI: &str = "/api/v0002/docs/swagger-ui-dist-5.35.0";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JSON: &str = "application/json";
const SVG: &str = "image/svg+xml";

/// How long a browser may reuse a file without asking.
#[derive(Clone, Copy)]
enum Caching {
    /// Ask every time (the answer is a 304 while the file is unchanged).
    Revalidate,
    /// Keep it: the path names the version.
    Immutable,
}

/// One embedded file.
#[derive(Clone, Copy)]
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    csp: &'static str,
    caching: Caching,
}

macro_rules! console_file {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../console/", $file)),
            csp: CONSOLE_CSP,
            caching: Caching::Revalidate,
        }
    };
}

/// Every file of the console and the docs, by path.
fn assets() -> Vec<Asset> {
    vec![
        console_file!("/", "index.html", HTML),
        console_file!("/console/style.css", "style.css", CSS),
        console_file!("/console/favicon.svg", "favicon.svg", SVG),
        console_file!("/console/app.js", "app.js", JS),
        console_file!("/console/api.js", "api.js", JS),
        console_file!("/console/charts.js", "charts.js", JS),
        console_file!("/console/dom.js", "dom.js", JS),
        console_file!("/console/overview.js", "overview.js", JS),
        console_file!("/console/clients.js", "clients.js", JS),
        console_file!("/console/client.js", "client.js", JS),
        Asset {
            csp: DOCS_CSP,
            ..console_file!("/api/v0002/docs", "docs.html", HTML)
        },
        Asset {
            csp: DOCS_CSP,
            ..console_file!("/api/v0002/docs/docs.js", "docs.js", JS)
        },
        Asset {
            path: "/api/v0002/docs/openapi.json",
            content_type: JSON,
            body: crate::api::rest::OPENAPI.as_bytes(),
            csp: DOCS_CSP,
            caching: Caching::Revalidate,
        },
        Asset {
            path: "/api/v0002/docs/swagger-ui-dist-5.35.0/swagger-ui-bundle.js",
            content_type: JS,
            body: include_bytes!(
                "../../console/vendor/swagger-ui-dist-5.35.0/swagger-ui-bundle.js"
            ),
            csp: DOCS_CSP,
            caching: Caching::Immutable,
        },
        Asset {
            path: "/api/v0002/docs/swagger-ui-dist-5.35.0/swagger-ui.css",
            content_type: CSS,
            body: include_bytes!("../../console/vendor/swagger-ui-dist-5.35.0/swagger-ui.css"),
            csp: DOCS_CSP,
            caching: Caching::Immutable,
        },
    ]
}

/// The paths the console and the docs serve (outside the API's
/// authentication).
pub fn paths() -> Vec<&'static str> {
    assets().into_iter().map(|a| a.path).collect()
}

/// A strong validator of `body`: FNV-1a over its bytes.
fn etag(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

/// The router of the embedded files; merged next to the API's router,
/// outside its authentication.
pub fn router() -> Router {
    static ETAGS: LazyLock<Vec<String>> =
        LazyLock::new(|| assets().iter().map(|a| etag(a.body)).collect());
    let mut router = Router::new();
    for (index, asset) in assets().into_iter().enumerate() {
        router = router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(&asset, &ETAGS[index], &headers) }),
        );
    }
    // Another method on these paths gets the API's error body.
    router.method_not_allowed_fallback(|method: axum::http::Method| async move {
        crate::api::rest::error::ApiError::MethodNotAllowed(method.to_string())
    })
}

fn serve(asset: &Asset, etag: &str, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let cache = match asset.caching {
        Caching::Revalidate => "no-cache",
        Caching::Immutable => "public, max-age=31536000, immutable",
    };
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, asset.content_type)],
            axum::body::Bytes::from_static(asset.body),
        )
            .into_response()
    };
    let headers = response.headers_mut();
    let mut put = |name, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    put(header::CACHE_CONTROL, cache);
    put(header::ETAG, etag);
    put(header::CONTENT_SECURITY_POLICY, asset.csp);
    put(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    put(header::REFERRER_POLICY, "no-referrer");
    put(header::X_FRAME_OPTIONS, "DENY");
    response
}
