//! The web assets herald serves itself, embedded in the binary (no CDN,
//! works with no internet): the admin dashboard at `/admin`, the API
//! reference at `/docs` (a page rendering `/openapi.json`) and the browser
//! client at `/herald.js`. Their sources are in `web/`.

use actix_web::http::header;
use actix_web::HttpResponse;

use crate::error::ApiError;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Every file served, by the path it is served at.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/admin",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/admin/index.html"),
    },
    Asset {
        path: "/admin/admin.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/admin/admin.js"),
    },
    Asset {
        path: "/admin/admin.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/admin/admin.css"),
    },
    Asset {
        path: "/docs",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/docs/index.html"),
    },
    Asset {
        path: "/docs/docs.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/docs/docs.js"),
    },
    Asset {
        path: "/docs/docs.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/docs/docs.css"),
    },
    Asset {
        path: "/herald.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/herald.js"),
    },
];

/// The page may load only herald's own scripts and styles and talk only
/// to herald: an injected script could not send the admin token elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Serves the embedded file at the request's path: the admin dashboard at
/// `/admin`, the API reference at `/docs`, and the files they load.
///
/// # Errors
/// `NOT_FOUND` for a path that is not an asset.
#[utoipa::path(
    get,
    path = "/admin",
    tag = "operations",
    responses((status = 200, description = "the admin dashboard: a page that asks for the admin token and uses the admin API", content_type = "text/html"))
)]
pub async fn serve(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    let path = req.path().trim_end_matches('/');
    let asset = ASSETS
        .iter()
        .find(|a| a.path == path)
        .ok_or(ApiError::NotFound)?;
    let mut response = HttpResponse::Ok();
    response
        .content_type(asset.content_type)
        // Small files that change with the binary: always revalidated.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"));
    if asset.path.starts_with("/admin") || asset.path.starts_with("/docs") {
        response
            .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
            .insert_header(("Referrer-Policy", "no-referrer"));
    }
    Ok(response.body(asset.body))
}

/// `GET /`: the dashboard.
pub async fn root() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/admin"))
        .finish()
}

/// The paths assets are served at.
pub fn paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.path)
}
