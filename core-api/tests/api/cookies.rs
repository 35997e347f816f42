//! The refresh token as an HttpOnly cookie (`Refresh-Token-Transport: cookie`): what is set,
//! where it is sent, rotation and reuse, logout, and what is ignored (docs/frontend.md).

use serde_json::json;

use crate::auth::email;
use crate::helpers::spawn_app;

const TRANSPORT: &str = "refresh-token-transport";
const COOKIE: &str = "__Secure-gatehouse_refresh";

/// The `Set-Cookie` values of a response.
fn set_cookies(r: &crate::helpers::Resp) -> Vec<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The token a response hands over in the cookie (the same on both paths).
fn cookie_token(r: &crate::helpers::Resp) -> String {
    let all = set_cookies(r);
    let values: Vec<&str> = all
        .iter()
        .map(|c| {
            c.strip_prefix(&format!("{COOKIE}="))
                .and_then(|rest| rest.split(';').next())
                .unwrap()
        })
        .collect();
    assert_eq!(values.len(), 2, "{all:?}");
    assert_eq!(values[0], values[1], "{all:?}");
    values[0].to_string()
}

/// The two `Set-Cookie` values that hand over `token` for `max_age` seconds (`""`, 0: remove it).
fn expected_cookies(token: &str, max_age: i64) -> [String; 2] {
    ["/auth/refresh", "/auth/logout"].map(|p| {
        format!("{COOKIE}={token}; Path={p}; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict")
    })
}

/// A new account signed in with the cookie transport: its e-mail and the login answer.
async fn cookie_login_as(app: &crate::helpers::TestApp) -> (String, crate::helpers::Resp) {
    let e = email();
    assert_eq!(app.register(&e, "correct horse battery").await.status, 201);
    let login = cookie_post(
        app,
        "/auth/login",
        None,
        json!({"email": e, "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.text);
    (e, login)
}

async fn cookie_login(app: &crate::helpers::TestApp) -> crate::helpers::Resp {
    cookie_login_as(app).await.1
}

async fn cookie_post(
    app: &crate::helpers::TestApp,
    path: &str,
    cookie: Option<&str>,
    body: serde_json::Value,
) -> crate::helpers::Resp {
    let mut r = app.http.post(app.url(path)).header(TRANSPORT, "cookie");
    if let Some(c) = cookie {
        r = r.header("cookie", format!("theme=dark; {COOKIE}={c}"));
    }
    app.send(r.json(&body)).await
}

#[tokio::test]
async fn cookie_transport_login_sets_an_httponly_cookie_for_refresh_and_logout_only() {
    let app = spawn_app().await;
    let (e, r) = cookie_login_as(&app).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The body has everything but the refresh token: page scripts never see it.
    let mut keys: Vec<_> = r.body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "access_token",
            "expires_in",
            "refresh_expires_in",
            "token_type"
        ]
    );
    let token = cookie_token(&r);
    assert_eq!(token.len(), 43);
    let max_age = r.body["refresh_expires_in"].as_i64().unwrap();
    assert_eq!(set_cookies(&r), expected_cookies(&token, max_age));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        app.get("/api/me", r.body["access_token"].as_str())
            .await
            .status,
        200
    );
    // Without the header, login answers as it always did and sets no cookie.
    let plain = app.login(&e, "correct horse battery").await;
    assert_eq!(plain.status, 200);
    assert!(plain.body["refresh_token"].is_string());
    assert!(set_cookies(&plain).is_empty());
}

#[tokio::test]
async fn cookie_transport_refresh_rotates_the_cookie_and_reuse_revokes_the_family() {
    let app = spawn_app().await;
    let u = app.user().await;
    // A body-transport token can be moved into the cookie by one refresh.
    let first = cookie_post(
        &app,
        "/auth/refresh",
        None,
        json!({"refresh_token": u.refresh}),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(first.body.get("refresh_token").is_none());
    let current = cookie_token(&first);
    // The next refresh sends no token in the body: the cookie is read.
    let second = cookie_post(&app, "/auth/refresh", Some(&current), json!({})).await;
    assert_eq!(second.status, 200, "{}", second.text);
    let next = cookie_token(&second);
    assert_ne!(next, current);
    assert_eq!(
        app.get("/api/me", second.body["access_token"].as_str())
            .await
            .status,
        200
    );
    // A stolen, spent cookie presented again: the family is revoked, the answer removes the
    // cookie, and the holder's current token is dead too.
    let replay = cookie_post(&app, "/auth/refresh", Some(&current), json!({})).await;
    assert_eq!(replay.status, 401);
    assert_eq!(replay.problem()["type"], "invalid_refresh_token");
    assert_eq!(set_cookies(&replay), expected_cookies("", 0));
    let after = cookie_post(&app, "/auth/refresh", Some(&next), json!({})).await;
    assert_eq!(after.status, 401);
    // No cookie at all: 401, and the (absent) cookie is cleared all the same.
    let none = cookie_post(&app, "/auth/refresh", None, json!({})).await;
    assert_eq!(none.status, 401);
    assert_eq!(set_cookies(&none), expected_cookies("", 0));
}

/// CSRF: the cookie alone never works. Without the transport header (which a cross-origin
/// page can only send after a CORS preflight) or without a JSON body, nothing is spent.
#[tokio::test]
async fn the_refresh_cookie_is_ignored_without_the_transport_header() {
    let app = spawn_app().await;
    let login = cookie_login(&app).await;
    let token = cookie_token(&login);
    let cookie = format!("{COOKIE}={token}");
    let no_header = app
        .send(
            app.http
                .post(app.url("/auth/refresh"))
                .header("cookie", &cookie)
                .json(&json!({})),
        )
        .await;
    assert_eq!(no_header.status, 401);
    assert!(set_cookies(&no_header).is_empty());
    // What an HTML form can send: a simple content type. Refused before anything is read.
    let form = app
        .send(
            app.http
                .post(app.url("/auth/refresh"))
                .header("cookie", &cookie)
                .header(TRANSPORT, "cookie")
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(form.status, 415);
    let logout = app
        .send(
            app.http
                .post(app.url("/auth/logout"))
                .header("cookie", &cookie)
                .json(&json!({})),
        )
        .await;
    assert_eq!(logout.status, 204);
    // The token was neither spent nor revoked by any of that.
    let r = cookie_post(&app, "/auth/refresh", Some(&token), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // An unknown transport is an error, never a silent fallback to the body.
    let typo = app
        .send(
            app.http
                .post(app.url("/auth/refresh"))
                .header(TRANSPORT, "cookies")
                .json(&json!({})),
        )
        .await;
    assert_eq!(typo.status, 422);
    assert_eq!(
        typo.problem()["errors"],
        json!([{"field": "Refresh-Token-Transport", "message": "must be cookie or body"}])
    );
}

#[tokio::test]
async fn cookie_transport_logout_revokes_the_family_and_clears_the_cookie() {
    let app = spawn_app().await;
    let login = cookie_login(&app).await;
    let token = cookie_token(&login);
    let r = cookie_post(&app, "/auth/logout", Some(&token), json!({})).await;
    assert_eq!(r.status, 204);
    assert_eq!(set_cookies(&r), expected_cookies("", 0));
    assert_eq!(
        cookie_post(&app, "/auth/refresh", Some(&token), json!({}))
            .await
            .status,
        401
    );
    // Logging out without any token is still 204 (it never tells whether a token existed).
    assert_eq!(
        cookie_post(&app, "/auth/logout", None, json!({}))
            .await
            .status,
        204
    );
}

/// Cookie tossing: a second cookie of the same name (set by a sibling subdomain for the whole
/// site) must not make the API use an attacker's token. Two cookies are no token at all.
#[tokio::test]
async fn two_refresh_cookies_are_refused_and_neither_is_spent() {
    let app = spawn_app().await;
    let victim = app.user().await;
    let attacker = app.user().await;
    let r = app
        .send(
            app.http
                .post(app.url("/auth/refresh"))
                .header(TRANSPORT, "cookie")
                .header(
                    "cookie",
                    format!("{COOKIE}={}; {COOKIE}={}", attacker.refresh, victim.refresh),
                )
                .json(&json!({})),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.problem()["type"], "invalid_refresh_token");
    for token in [&attacker.refresh, &victim.refresh] {
        assert_eq!(
            app.post("/auth/refresh", json!({"refresh_token": token}), None)
                .await
                .status,
            200
        );
    }
}
