//! The fake's side of registry auth: the challenge it sends and its token endpoint.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use serde_json::json;

use super::serve::{Target, oci_error};
use super::{Route, State};

pub(super) fn challenge(st: &State, t: &Target) -> Response {
    let realm = format!("http://127.0.0.1:{}/token", st.port);
    let scope = match t.route {
        Route::Manifest | Route::Blob | Route::Tags | Route::Referrers => {
            format!("repository:{}:pull", t.name)
        }
        _ => String::new(),
    };
    let custom = st.auth.lock().unwrap().challenges.clone();
    let values = if custom.is_empty() {
        let mut v = format!("Bearer realm=\"{realm}\",service=\"fake\"");
        if !scope.is_empty() {
            v += &format!(",scope=\"{scope}\"");
        }
        vec![v]
    } else {
        custom
            .iter()
            .map(|c| c.replace("{realm}", &realm).replace("{scope}", &scope))
            .collect()
    };
    let mut r = oci_error(401, "UNAUTHORIZED");
    for v in values {
        r.headers_mut()
            .append("www-authenticate", v.parse().unwrap());
    }
    r
}

pub(super) async fn token(st: &State, req: Request) -> Response {
    st.token_requests.fetch_add(1, Ordering::SeqCst);
    let Some((u, p)) = st.auth.lock().unwrap().bearer.clone() else {
        return oci_error(404, "NOT_FOUND");
    };
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let method = req.method().clone();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let basic_ok =
        auth.as_deref() == Some(&format!("Basic {}", b64(format!("{u}:{p}").as_bytes())));
    let form_ok = method == "POST" && {
        let f: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        f.get("username") == Some(&u) && f.get("password") == Some(&p)
    };
    if !(basic_ok || form_ok) {
        return oci_error(401, "UNAUTHORIZED");
    }
    let token = st.token.lock().unwrap().clone();
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"token": token, "access_token": token, "expires_in": 300}).to_string(),
        ))
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
