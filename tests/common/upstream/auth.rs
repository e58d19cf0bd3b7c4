//! The fake's side of registry auth: the challenge it sends and its token endpoint.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use serde_json::json;

use super::serve::{Target, oci_error};
use super::{Route, State};

/// Whether a request to `t` carrying `authorization` may be answered.
pub(super) fn authorized(st: &State, t: &Target, authorization: Option<&str>) -> bool {
    let auth = st.auth.lock().unwrap().clone();
    if let Some((u, p)) = &auth.basic {
        return authorization == Some(&basic(u, p));
    }
    if !auth.bearer_flow() {
        return true;
    }
    let token = st.token.lock().unwrap().clone();
    authorization == Some(&format!("Bearer {token}"))
        || (authorization == Some(&format!("Bearer anon-{token}")) && auth.public.contains(&t.name))
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", b64(format!("{user}:{password}").as_bytes()))
}

pub(super) fn challenge(st: &State, t: &Target) -> Response {
    let realm = format!("http://127.0.0.1:{}/token", st.port);
    let scope = match t.route {
        Route::Manifest | Route::Blob | Route::Tags | Route::Referrers => {
            format!("repository:{}:pull", t.name)
        }
        _ => String::new(),
    };
    let auth = st.auth.lock().unwrap().clone();
    let values = if !auth.challenges.is_empty() {
        auth.challenges
            .iter()
            .map(|c| c.replace("{realm}", &realm).replace("{scope}", &scope))
            .collect()
    } else if auth.basic.is_some() {
        vec!["Basic realm=\"fake registry\"".to_string()]
    } else {
        let mut v = format!("Bearer realm=\"{realm}\",service=\"fake\"");
        if !scope.is_empty() {
            v += &format!(",scope=\"{scope}\"");
        }
        vec![v]
    };
    let mut r = oci_error(401, "UNAUTHORIZED");
    for v in values {
        r.headers_mut()
            .append("www-authenticate", v.parse().unwrap());
    }
    r
}

/// The token endpoint: a token for the configured credentials (Basic header or an OAuth2
/// password-grant POST), an anonymous one for a public repository, 401 otherwise.
pub(super) async fn token(st: &State, req: Request) -> Response {
    st.token_requests.fetch_add(1, Ordering::SeqCst);
    let auth = st.auth.lock().unwrap().clone();
    if !auth.bearer_flow() {
        return oci_error(404, "NOT_FOUND");
    }
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let scope = req
        .uri()
        .query()
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "scope")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    let method = req.method().clone();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let presented = header.is_some() || (method == "POST" && form.contains_key("username"));
    let token = st.token.lock().unwrap().clone();
    let granted = match (&auth.bearer, presented) {
        (Some((u, p)), true) => {
            let basic_ok = header.as_deref() == Some(&basic(u, p));
            let form_ok = method == "POST"
                && form.get("username") == Some(u)
                && form.get("password") == Some(p);
            (basic_ok || form_ok).then(|| token.clone())
        }
        (None, true) => None,
        (_, false) => {
            let repo = scope.split(':').nth(1).unwrap_or_default();
            auth.public
                .iter()
                .any(|n| n == repo)
                .then(|| format!("anon-{token}"))
        }
    };
    let Some(granted) = granted else {
        let mut r = oci_error(401, "UNAUTHORIZED");
        *r.body_mut() = Body::from(
            json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
                .to_string(),
        );
        return r;
    };
    let body = match &auth.token_json {
        Some(t) => t.replace("{token}", &granted),
        None => json!({"token": granted, "access_token": granted, "expires_in": 300}).to_string(),
    };
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// Standard base64 (for comparing Basic credentials).
fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
