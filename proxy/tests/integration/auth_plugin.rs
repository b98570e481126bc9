//! The `auth` plugin through the real proxy: API keys (clear and SHA-256 in config, from
//! `x-api-key` or `Authorization: Bearer`), JWTs (HS256, ES256; expired, not yet valid,
//! forged, `alg: none`, wrong audience or issuer, algorithm confusion), public paths, the
//! forwarded client id (a client's own copy stripped), 401s with a challenge, auth before cache.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::common::{start_counting_echo, Origin, Proxy};
use crate::shop::{self, in_both_shapes, Shape, DEV_KEY, ISSUER, PARTNER_KEY};

async fn echo_get(p: &Proxy, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = p.http.get(p.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The headers the echo upstream saw.
async fn seen(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["headers"].clone()
}

async fn assert_401(response: reqwest::Response, reason: &str) {
    assert_eq!(response.status(), 401, "{reason}");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer realm=\"catalog\""),
        "{challenge}"
    );
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{reason}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(reason),
        "`{message}` should say `{reason}`"
    );
}

async fn api_keys_clear_and_hashed_from_either_header(shape: Shape) {
    let (origin, echo) = (Origin::start(200, "").await, start_counting_echo().await);
    let p = shop::start(&origin, echo.addr, shape);
    let h = seen(echo_get(&p, "/echo/a", &[("x-api-key", DEV_KEY)]).await).await;
    assert_eq!(h["x-client-id"], "dev-local");
    assert!(
        h.get("x-api-key").is_none(),
        "credentials are not forwarded: {h}"
    );
    let bearer = format!("Bearer {DEV_KEY}");
    let h = seen(echo_get(&p, "/echo/a", &[("authorization", &bearer)]).await).await;
    assert_eq!(h["x-client-id"], "dev-local");
    assert!(h.get("authorization").is_none(), "{h}");
    // The partner's key is configured only as its SHA-256.
    let h = seen(echo_get(&p, "/echo/a", &[("x-api-key", PARTNER_KEY)]).await).await;
    assert_eq!(h["x-client-id"], "partner-acme");
    p.stop().await;
}

async fn missing_or_wrong_credentials_get_a_401_and_never_reach_the_origin(shape: Shape) {
    let (origin, echo) = (Origin::start(200, "").await, start_counting_echo().await);
    let p = shop::start(&origin, echo.addr, shape);
    let none = echo_get(&p, "/echo/a", &[]).await;
    assert_eq!(
        none.headers()["www-authenticate"],
        "Bearer realm=\"catalog\""
    );
    assert_401(none, "credentials required").await;
    let wrong = echo_get(&p, "/echo/a", &[("x-api-key", "dev-guess")]).await;
    assert!(wrong.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));
    assert_401(wrong, "unknown API key").await;
    assert_401(
        echo_get(&p, "/echo/a", &[("authorization", "Basic ZGV2OmRldg==")]).await,
        "Bearer",
    )
    .await;
    assert_eq!(echo.hits.load(Ordering::SeqCst), 0);
    p.stop().await;
}

async fn a_spoofed_client_id_header_is_stripped(shape: Shape) {
    let (origin, echo) = (Origin::start(200, "").await, start_counting_echo().await);
    let p = shop::start(&origin, echo.addr, shape);
    let spoof = [("x-api-key", DEV_KEY), ("x-client-id", "admin")];
    let h = seen(echo_get(&p, "/echo/a", &spoof).await).await;
    assert_eq!(h["x-client-id"], "dev-local");
    // On a public path nobody is authenticated, and the spoofed header still goes.
    let h = seen(echo_get(&p, "/echo/public/info", &[("x-client-id", "admin")]).await).await;
    assert!(h.get("x-client-id").is_none(), "{h}");
    p.stop().await;
}

async fn jwts_valid_and_every_kind_of_invalid(shape: Shape) {
    let (origin, echo) = (Origin::start(200, "").await, start_counting_echo().await);
    let p = shop::start(&origin, echo.addr, shape);
    let bearer = |token: String| format!("Bearer {token}");
    let call = |token: String| {
        let p = &p;
        async move { echo_get(p, "/echo/jwt", &[("authorization", &bearer(token))]).await }
    };
    let h = seen(call(shop::hs256(&shop::good_claims("hs-client"))).await).await;
    assert_eq!(h["x-client-id"], "hs-client");
    let h = seen(call(shop::es256(&shop::good_claims("es-client"))).await).await;
    assert_eq!(h["x-client-id"], "es-client");

    let mut expired = shop::good_claims("c");
    expired["exp"] = json!(shop::now() - 120); // beyond the 30 s leeway
    assert_401(call(shop::hs256(&expired)).await, "expired").await;
    let mut early = shop::good_claims("c");
    early["nbf"] = json!(shop::now() + 600);
    assert_401(call(shop::es256(&early)).await, "not valid yet").await;
    let mut audience = shop::good_claims("c");
    audience["aud"] = json!("billing");
    assert_401(call(shop::hs256(&audience)).await, "audience").await;
    let mut issuer = shop::good_claims("c");
    issuer["iss"] = json!("https://evil.test");
    assert_401(call(shop::es256(&issuer)).await, "issuer").await;
    assert_eq!(shop::good_claims("c")["iss"], ISSUER);

    // Forged: signed with another secret; tampered: claims changed after signing.
    let forged = shop::hs256_with(
        b"not-the-secret-not-the-secret-!!",
        json!({"alg": "HS256", "kid": "hs-1"}),
        &shop::good_claims("c"),
    );
    assert_401(call(forged).await, "signature").await;
    let good = shop::es256(&shop::good_claims("c"));
    let parts: Vec<&str> = good.split('.').collect();
    let admin = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        shop::good_claims("admin").to_string(),
    );
    assert_401(
        call(format!("{}.{admin}.{}", parts[0], parts[2])).await,
        "signature",
    )
    .await;
    // alg none, unsigned.
    let none = format!(
        "{}.{}.",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            r#"{"alg":"none","typ":"JWT"}"#
        ),
        parts[1]
    );
    assert_401(call(none).await, "`none` is not accepted").await;
    // Algorithm confusion: HS256 "signed" with the EC public key, naming the EC key.
    let confused = shop::hs256_with(
        &shop::ec_public_point(),
        json!({"alg": "HS256", "kid": "es-1"}),
        &shop::good_claims("admin"),
    );
    assert_401(call(confused).await, "no key").await;
    assert_eq!(
        echo.hits.load(Ordering::SeqCst),
        2,
        "only the two valid tokens got through"
    );
    p.stop().await;
}

async fn auth_runs_before_the_cache_and_jwt_users_still_get_hits(shape: Shape) {
    let (origin, echo) = (Origin::start(200, "").await, start_counting_echo().await);
    let p = shop::start(&origin, echo.addr, shape);
    let path = "/api/v1/products?category=polo&limit=5";
    let token = format!("Bearer {}", shop::hs256(&shop::good_claims("jwt-user")));
    let first = echo_get(&p, path, &[("authorization", &token)]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "MISS");
    // The verified Authorization is not forwarded, so the response is shareable.
    let second = echo_get(&p, path, &[("x-api-key", DEV_KEY)]).await;
    assert_eq!(second.headers()["x-cache"], "HIT");
    // An API key sent as `Authorization: Bearer` is verified and removed too: a hit.
    let bearer_key = format!("Bearer {DEV_KEY}");
    let third = echo_get(&p, path, &[("authorization", &bearer_key)]).await;
    assert_eq!(third.headers()["x-cache"], "HIT");
    // A cached page is still refused without credentials, or with a wrong one.
    assert_401(echo_get(&p, path, &[]).await, "credentials required").await;
    let wrong = echo_get(
        &p,
        path,
        &[("authorization", "Bearer not-a-key-0123456789")],
    )
    .await;
    assert_eq!(wrong.status(), 401);
    // Public catalog paths need none.
    let categories = echo_get(&p, "/api/v1/categories", &[]).await;
    assert_eq!(categories.status(), 200);
    p.stop().await;
}

in_both_shapes!(
    api_keys_clear_and_hashed_from_either_header,
    missing_or_wrong_credentials_get_a_401_and_never_reach_the_origin,
    a_spoofed_client_id_header_is_stripped,
    jwts_valid_and_every_kind_of_invalid,
    auth_runs_before_the_cache_and_jwt_users_still_get_hits
);
