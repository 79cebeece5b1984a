//! Who is asking, and whether a request may come from where it comes from. A token
//! arrives as `Authorization: Bearer <token>` (API clients) or in the dashboard's
//! cookie (HttpOnly, SameSite=Strict, set by `POST /login`); it is checked against the
//! configured `[[auth.tokens]]` (`crate::auth`). Any valid token may read; actions need
//! the admin role; tokens limited to queue prefixes see only those queues.
//! State-changing requests are refused when the browser says they come from another
//! site (`Sec-Fetch-Site`, `Origin`), and API actions must carry a JSON body, which a
//! cross-site form cannot send.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use squall_proto::ErrorCode;

use super::error::ApiError;
use super::App;
use crate::auth::{ops, Grant};

/// Name of the dashboard's cookie.
pub(crate) const COOKIE_NAME: &str = "squall_token";
/// Longest token looked at (configured tokens are short; this bounds the hashing).
const MAX_TOKEN: usize = 4096;

/// The token a request presents: the bearer header first, else the cookie.
pub(crate) fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    bearer.or_else(|| cookie(headers, COOKIE_NAME))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The grant of a request: everything without configured tokens, else the presented
/// token's, else `UNAUTHENTICATED`.
pub(crate) fn grant(app: &App, headers: &HeaderMap) -> Result<Grant, ApiError> {
    if !app.auth.is_enabled() {
        return Ok(Grant::all());
    }
    let Some(token) = presented_token(headers).filter(|t| !t.is_empty()) else {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "a token is required: send `Authorization: Bearer <token>`",
        ));
    };
    if token.len() > MAX_TOKEN {
        return Err(ApiError::new(ErrorCode::Unauthenticated, "token refused"));
    }
    app.auth
        .authenticate(token)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "token refused"))
}

/// A caller with a valid token (or anyone, without configured tokens).
pub(crate) struct Reader(pub(crate) Grant);

impl Reader {
    /// `FORBIDDEN` unless the grant covers `queue`.
    pub(crate) fn check_queue(&self, queue: &str) -> Result<(), ApiError> {
        if self.0.allows_queue(queue) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this token does not cover queue {queue:?}"),
            ))
        }
    }
}

impl FromRequestParts<Arc<App>> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        grant(app, &parts.headers).map(Reader)
    }
}

/// A caller whose token has the admin role.
pub(crate) struct Admin(pub(crate) Reader);

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let grant = grant(app, &parts.headers)?;
        if !grant.allows(ops::ADMIN) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "actions need a token with the admin role",
            ));
        }
        Ok(Admin(Reader(grant)))
    }
}

/// Refuses state-changing requests that a browser marks as cross-site, and API
/// actions without a JSON body.
pub(crate) async fn refuse_cross_site(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    if let Err(e) = same_origin(req.headers()) {
        return e.into_response();
    }
    if req.uri().path().starts_with("/api/") && !is_json(req.headers()) {
        return ApiError::bad_request(
            "actions take a JSON body with `Content-Type: application/json` (`{}` when empty)",
        )
        .into_response();
    }
    next.run(req).await
}

fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let refused = |why: &str| {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("cross-site request refused ({why})"),
        ))
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return refused("Sec-Fetch-Site");
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let host = headers.get(HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, h)| h);
        if host.is_none() || origin_host != host {
            return refused("Origin");
        }
    }
    Ok(())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// The `Set-Cookie` value that keeps `token` for the dashboard.
pub(crate) fn set_cookie(token: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that forgets the token.
pub(crate) fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// Whether `token` may go into a cookie as it is (no separators or controls).
pub(crate) fn cookie_safe(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'))
}
