//! Accounts (issue #9, section 1): users, roles and tokens; who may call
//! what over HTTP and the WebSocket; refused account input changes
//! nothing; `--no-auth`.

use std::time::Duration;

use awc::ws::Frame;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::common::{
    diamond, expect_error, spawn_app, spawn_app_with_clock, spawn_app_with_options, AppOptions,
    TestApp,
};
use crate::on_both_backends;
use crate::ws::{recv, send};

/// Creates a user with `role`; returns their id.
pub(crate) async fn user(app: &TestApp, name: &str, role: &str) -> String {
    let (status, body) = app
        .post("/api/users", json!({"name": name, "role": role}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], name);
    assert_eq!(body["role"], role);
    body["id"].as_str().expect("id").to_string()
}

/// Issues a token to `user` (as the admin); returns the whole answer.
pub(crate) async fn token(app: &TestApp, user: &str, body: Value) -> Value {
    let (status, answer) = app.post(&format!("/api/users/{user}/tokens"), body).await;
    assert_eq!(status, 201, "{answer}");
    answer
}

/// Issues a token named `t` to `user`; returns the token itself.
pub(crate) async fn token_text(app: &TestApp, user: &str) -> String {
    token(app, user, json!({"name": "t"})).await["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// The 401 answer's `WWW-Authenticate`, and its code.
async fn unauthorized(app: &TestApp, authorization: Option<&str>, path: &str) -> String {
    let response = match authorization {
        Some(value) => {
            app.request_with_headers("GET", path, None, &[("Authorization", value)])
                .await
        }
        None => app.request_anonymous("GET", path, None).await,
    };
    assert!(
        response
            .header("WWW-Authenticate")
            .is_some_and(|h| h.starts_with("Bearer")),
        "{:?}",
        response.headers
    );
    let reply = response.reply();
    assert_eq!(reply.0, 401, "{}", reply.1);
    reply.1["error"]["code"].as_str().unwrap_or("").to_string()
}

on_both_backends!(
    a_missing_malformed_unknown_or_revoked_token_is_401_with_www_authenticate,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let ada = user(&app, "ada", "user").await;
        let issued = token(&app, &ada, json!({"name": "laptop"})).await;
        let text = issued["token"].as_str().expect("token").to_string();
        assert!(text.starts_with("rl_"), "{issued}");
        assert_eq!(
            app.request_as(Some(&text), "GET", "/api/me", None).await.0,
            200
        );

        assert_eq!(unauthorized(&app, None, "/api/runs").await, "missing_token");
        assert_eq!(
            unauthorized(&app, Some("Basic YWRhOnB3"), "/api/runs").await,
            "missing_token"
        );
        assert_eq!(
            unauthorized(&app, Some("Bearer not-a-token"), "/api/runs").await,
            "malformed_token"
        );
        // One character changed: the checksum catches it.
        let mut typo = text.clone().into_bytes();
        typo[5] = if typo[5] == b'a' { b'b' } else { b'a' };
        let typo = format!("Bearer {}", String::from_utf8(typo).expect("text"));
        assert_eq!(
            unauthorized(&app, Some(&typo), "/api/runs").await,
            "malformed_token"
        );
        // Well formed, but never issued.
        let stranger = runlog::domain::user::token::encode(&[9u8; 32]);
        assert_eq!(
            unauthorized(&app, Some(&format!("Bearer {stranger}")), "/api/runs").await,
            "invalid_token"
        );
        let other = token_text(&app, &ada).await;
        let (status, _) = app
            .request(
                "DELETE",
                &format!("/api/tokens/{}", issued["id"].as_str().expect("id")),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            unauthorized(&app, Some(&format!("Bearer {text}")), "/api/runs").await,
            "token_revoked"
        );
        // The user's other token still works.
        assert_eq!(
            app.request_as(Some(&other), "GET", "/api/me", None).await.0,
            200
        );
        // Revoked twice: refused, nothing recorded again.
        let (status, body) = app
            .request(
                "DELETE",
                &format!("/api/tokens/{}", issued["id"].as_str().expect("id")),
                None,
            )
            .await;
        expect_error(&(status, body), 409, "token_revoked");
    }
);

on_both_backends!(an_expired_token_is_401, |backend| {
    let clock =
        runlog::engine::ManualClock::starting_at(runlog::domain::ids::Timestamp(1_800_000_000_000));
    let Some(app) = spawn_app_with_clock(backend, clock.clone()).await else {
        return;
    };
    let ada = user(&app, "ada", "user").await;
    let issued = token(
        &app,
        &ada,
        json!({"name": "short", "expires_at": "2027-01-15T08:30:00Z"}),
    )
    .await;
    let text = issued["token"].as_str().expect("token").to_string();
    assert_eq!(issued["expires_at"], "2027-01-15T08:30:00.000Z");
    assert_eq!(
        app.request_as(Some(&text), "GET", "/api/me", None).await.0,
        200
    );
    clock.advance(Duration::from_secs(3_600));
    assert_eq!(
        unauthorized(&app, Some(&format!("Bearer {text}")), "/api/me").await,
        "token_expired"
    );
});

on_both_backends!(
    roles_read_only_tokens_and_the_worker_token_are_refused_with_403_and_change_nothing,
    |backend| {
        let Some(app) = spawn_app_with_options(
            backend,
            AppOptions {
                config: Some("worker_token = \"accounts-test-worker-token\"\n".into()),
                ..AppOptions::default()
            },
        )
        .await
        else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let ada = user(&app, "ada", "user").await;
        let ada_token = token_text(&app, &ada).await;
        let reader = token(&app, &ada, json!({"name": "ro", "read_only": true})).await["token"]
            .as_str()
            .expect("token")
            .to_string();
        let before = app.counts().await;
        let definition = json!({"name": "x", "definition": diamond(0)});
        for (method, path, body) in [
            (
                "POST",
                "/api/templates".to_string(),
                Some(definition.clone()),
            ),
            (
                "PUT",
                format!("/api/templates/{template}"),
                Some(json!({"definition": diamond(0)})),
            ),
            ("POST", format!("/api/templates/{template}/archive"), None),
            ("GET", "/api/users".to_string(), None),
            (
                "POST",
                "/api/users".to_string(),
                Some(json!({"name": "eve", "role": "admin"})),
            ),
            ("GET", "/api/admin/projections".to_string(), None),
        ] {
            let reply = app.request_as(Some(&ada_token), method, &path, body).await;
            expect_error(&reply, 403, "forbidden");
        }
        // A read-only token reads, and nothing else.
        assert_eq!(
            app.request_as(Some(&reader), "GET", "/api/runs", None)
                .await
                .0,
            200
        );
        let start = json!({"template_id": template, "input": {}});
        let reply = app
            .request_as(Some(&reader), "POST", "/api/runs", Some(start.clone()))
            .await;
        expect_error(&reply, 403, "read_only_token");
        // The worker token only claims and reports tasks.
        let reply = app
            .request_as(
                Some("accounts-test-worker-token"),
                "POST",
                "/api/runs",
                Some(start.clone()),
            )
            .await;
        expect_error(&reply, 403, "worker_token");
        assert_eq!(app.counts().await, before, "nothing was recorded");
        let (_, users) = app.get("/api/users").await;
        assert_eq!(users["items"].as_array().map_or(0, Vec::len), 2, "{users}");
        // What a user may do: start a run of any template.
        let reply = app
            .request_as(Some(&ada_token), "POST", "/api/runs", Some(start))
            .await;
        assert_eq!(reply.0, 201, "{}", reply.1);
        assert_eq!(reply.1["owner"], ada.as_str());
    }
);

on_both_backends!(
    a_user_sees_and_steers_only_their_own_runs_and_another_users_run_is_404,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "slow",
                json!({"steps": {"a": {"agent": "echo", "config": {"delay_ms": 60000, "comments": false}}}}),
            )
            .await;
        let ada = user(&app, "ada", "user").await;
        let bob = user(&app, "bob", "user").await;
        let (ada_token, bob_token) = (token_text(&app, &ada).await, token_text(&app, &bob).await);
        let start = json!({"template_id": template, "input": {}});
        let (status, run) = app
            .request_as(Some(&ada_token), "POST", "/api/runs", Some(start))
            .await;
        assert_eq!(status, 201, "{run}");
        let run = run["id"].as_str().expect("id").to_string();
        // Ada reads her run at once.
        let (status, detail) = app
            .request_as(Some(&ada_token), "GET", &format!("/api/runs/{run}"), None)
            .await;
        assert_eq!(status, 200, "{detail}");
        assert_eq!(detail["owner"], ada.as_str());
        let events_before = app.events(&run).await.len();

        let missing = "00000000-0000-4000-8000-000000000000";
        for path in [
            "".to_string(),
            "/events".into(),
            "/messages".into(),
            "/export".into(),
            "/artifacts/a.x".into(),
        ] {
            let theirs = app
                .request_as(
                    Some(&bob_token),
                    "GET",
                    &format!("/api/runs/{run}{path}"),
                    None,
                )
                .await;
            let none = app
                .request_as(
                    Some(&bob_token),
                    "GET",
                    &format!("/api/runs/{missing}{path}"),
                    None,
                )
                .await;
            expect_error(&theirs, 404, "run_not_found");
            expect_error(&none, 404, "run_not_found");
        }
        for (method, path, body) in [
            ("POST", "/pause", None),
            ("POST", "/resume", None),
            ("POST", "/cancel", None),
            ("POST", "/retry", None),
            ("POST", "/redirect", Some(json!({"instructions": "x"}))),
            ("POST", "/messages", Some(json!({"content": "hi"}))),
            ("PUT", "/auto-run", Some(json!({"enabled": false}))),
            ("POST", "/steps/a/approve", None),
            ("POST", "/steps/a/retry", None),
            ("POST", "/steps/a/trigger", None),
            (
                "POST",
                "/artifacts/a.x/rollback",
                Some(json!({"to_version": 1})),
            ),
        ] {
            let reply = app
                .request_as(
                    Some(&bob_token),
                    method,
                    &format!("/api/runs/{run}{path}"),
                    body,
                )
                .await;
            expect_error(&reply, 404, "run_not_found");
        }
        // Bob's list holds none of Ada's runs; he may not list hers.
        let (_, list) = app
            .request_as(Some(&bob_token), "GET", "/api/runs", None)
            .await;
        assert_eq!(list["items"], json!([]), "{list}");
        let reply = app
            .request_as(
                Some(&bob_token),
                "GET",
                &format!("/api/runs?owner={ada}"),
                None,
            )
            .await;
        expect_error(&reply, 403, "forbidden");
        let (_, mine) = app
            .request_as(Some(&ada_token), "GET", "/api/runs", None)
            .await;
        assert_eq!(mine["items"].as_array().map_or(0, Vec::len), 1, "{mine}");
        // Nothing Bob sent changed the run.
        assert_eq!(app.events(&run).await.len(), events_before);

        // Ada steers it, and the history says she did.
        let (status, body) = app
            .request_as(
                Some(&ada_token),
                "POST",
                &format!("/api/runs/{run}/cancel"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let events = app.events(&run).await;
        assert_eq!(events[0]["metadata"]["caused_by"], format!("user:{ada}"));
        let cancel = events
            .iter()
            .find(|e| e["event_type"] == "CancelRequested")
            .expect("CancelRequested");
        assert_eq!(cancel["metadata"]["caused_by"], format!("user:{ada}"));
    }
);

/// A WebSocket opened with `token` (none: no `Authorization`).
pub(crate) async fn ws_with(
    app: &TestApp,
    query: &str,
    token: Option<&str>,
) -> Result<
    impl futures::Stream<Item = Result<Frame, awc::error::WsProtocolError>>
        + futures::Sink<awc::ws::Message, Error = awc::error::WsProtocolError>
        + Unpin,
    u16,
> {
    let mut request = app
        .bare
        .ws(format!("ws://127.0.0.1:{}/api/ws{query}", app.port));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    match request.connect().await {
        Ok((_, framed)) => Ok(framed),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => Err(status.as_u16()),
        Err(e) => panic!("the handshake fails unexpectedly: {e}"),
    }
}

on_both_backends!(
    the_websocket_takes_a_token_or_a_single_use_ticket_and_hides_other_users_runs,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let ada = user(&app, "ada", "user").await;
        let bob = user(&app, "bob", "user").await;
        let (ada_token, bob_token) = (token_text(&app, &ada).await, token_text(&app, &bob).await);
        let start = json!({"template_id": template, "input": {"topic": "owls"}});
        let (_, run) = app
            .request_as(Some(&ada_token), "POST", "/api/runs", Some(start))
            .await;
        let run = run["id"].as_str().expect("id").to_string();

        assert_eq!(ws_with(&app, "", None).await.err(), Some(401));
        assert_eq!(
            ws_with(&app, "?ticket=wst_nope", None).await.err(),
            Some(401)
        );

        // Bob: Ada's run does not exist for him, and he may not follow
        // every run (the connection closes).
        let mut ws = ws_with(&app, "", Some(&bob_token)).await.expect("upgrade");
        send(
            &mut ws,
            json!({"type": "subscribe", "run_id": run, "after": 0}),
        )
        .await;
        let refused = recv(&mut ws).await;
        assert_eq!(refused["code"], "run_not_found", "{refused}");
        send(&mut ws, json!({"type": "subscribe_all"})).await;
        let refused = recv(&mut ws).await;
        assert_eq!(refused["code"], "forbidden", "{refused}");
        assert_eq!(refused["status"], 403, "{refused}");
        let closed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the server closes in time");
        assert!(
            matches!(closed, Some(Ok(Frame::Close(Some(ref r)))) if r.code == awc::ws::CloseCode::Policy),
            "{closed:?}"
        );

        // Ada, through a ticket (as a browser would): her run's events.
        let (status, ticket) = app
            .request_as(Some(&ada_token), "POST", "/api/ws/ticket", None)
            .await;
        assert_eq!(status, 200, "{ticket}");
        let ticket = ticket["ticket"].as_str().expect("ticket").to_string();
        let query = format!("?ticket={ticket}");
        let mut ws = ws_with(&app, &query, None).await.expect("upgrade");
        send(
            &mut ws,
            json!({"type": "subscribe", "run_id": run, "after": 0}),
        )
        .await;
        let subscribed = recv(&mut ws).await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        let first = recv(&mut ws).await;
        assert_eq!(first["event_type"], "RunStarted", "{first}");
        // A ticket is good once.
        assert_eq!(ws_with(&app, &query, None).await.err(), Some(401));

        // A read-only token follows runs (subscriptions only read) and is
        // refused, with the connection closed, once it is revoked while
        // the connection is open.
        let issued = token(&app, &ada, json!({"name": "viewer", "read_only": true})).await;
        let viewer = issued["token"].as_str().expect("token");
        let mut ws = ws_with(&app, "", Some(viewer)).await.expect("upgrade");
        send(
            &mut ws,
            json!({"type": "subscribe", "run_id": run, "after": 0}),
        )
        .await;
        let subscribed = recv(&mut ws).await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        let first = recv(&mut ws).await;
        assert_eq!(first["event_type"], "RunStarted", "{first}");
        send(&mut ws, json!({"type": "unsubscribe", "run_id": run})).await;
        let (status, revoked) = app
            .request(
                "DELETE",
                &format!("/api/tokens/{}", issued["id"].as_str().expect("id")),
                None,
            )
            .await;
        assert_eq!(status, 200, "{revoked}");
        send(
            &mut ws,
            json!({"type": "subscribe", "run_id": run, "after": 0}),
        )
        .await;
        let refused = loop {
            let message = recv(&mut ws).await;
            if message["type"] == "error" {
                break message;
            }
        };
        assert_eq!(refused["code"], "token_revoked", "{refused}");
        assert_eq!(refused["status"], 401, "{refused}");
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(Frame::Text(_))) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the server closes in time");
        assert!(
            matches!(closed, Some(Ok(Frame::Close(Some(ref r)))) if r.code == awc::ws::CloseCode::Policy),
            "{closed:?}"
        );
    }
);

on_both_backends!(
    refused_account_input_is_a_clear_4xx_and_records_nothing,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let ada = user(&app, "ada", "user").await;
        let (_, before) = app.get("/api/users").await;
        for (body, status, code) in [
            (json!({"name": "eve", "role": "root"}), 400, "invalid_role"),
            (json!({"name": "e v", "role": "user"}), 400, "invalid_name"),
            (json!({"name": "", "role": "user"}), 400, "invalid_name"),
            (json!({"name": "ada", "role": "admin"}), 409, "user_exists"),
            (json!({"name": "eve"}), 400, "invalid_body"),
            (
                json!({"name": "eve", "role": "user", "x": 1}),
                400,
                "invalid_body",
            ),
        ] {
            expect_error(&app.post("/api/users", body).await, status, code);
        }
        let (_, after) = app.get("/api/users").await;
        assert_eq!(after, before, "no user was created");

        let tokens = format!("/api/users/{ada}/tokens");
        for (body, status, code) in [
            (
                json!({"name": "t", "expires_at": "tomorrow"}),
                400,
                "invalid_expiry",
            ),
            (
                json!({"name": "t", "expires_at": "2001-01-01T00:00:00Z"}),
                400,
                "invalid_expiry",
            ),
            (json!({"name": "  "}), 400, "invalid_name"),
            (
                json!({"name": "t", "read_only": "yes"}),
                400,
                "invalid_body",
            ),
        ] {
            expect_error(&app.post(&tokens, body).await, status, code);
        }
        expect_error(
            &app.post("/api/users/nobody/tokens", json!({"name": "t"}))
                .await,
            404,
            "user_not_found",
        );
        expect_error(
            &app.request("DELETE", "/api/tokens/nothing-here", None)
                .await,
            404,
            "token_not_found",
        );
        let (_, listed) = app.get(&tokens).await;
        assert_eq!(listed["items"], json!([]), "no token was issued: {listed}");
    }
);

on_both_backends!(
    a_user_manages_their_own_tokens_and_me_says_who_they_are,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let ada = user(&app, "ada", "user").await;
        let bob = user(&app, "bob", "user").await;
        let ada_token = token_text(&app, &ada).await;
        let (status, me) = app
            .request_as(Some(&ada_token), "GET", "/api/me", None)
            .await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(
            (me["id"].as_str(), me["role"].as_str()),
            (Some(ada.as_str()), Some("user"))
        );
        assert_eq!(me["token"]["name"], "t", "{me}");
        assert!(me["token"].get("digest").is_none(), "{me}");
        // Her own: allowed; Bob's: not hers to see.
        let (status, mine) = app
            .request_as(
                Some(&ada_token),
                "POST",
                &format!("/api/users/{ada}/tokens"),
                Some(json!({"name": "ci"})),
            )
            .await;
        assert_eq!(status, 201, "{mine}");
        let reply = app
            .request_as(
                Some(&ada_token),
                "POST",
                &format!("/api/users/{bob}/tokens"),
                Some(json!({"name": "x"})),
            )
            .await;
        expect_error(&reply, 403, "forbidden");
        let reply = app
            .request_as(Some(&ada_token), "GET", &format!("/api/users/{bob}"), None)
            .await;
        expect_error(&reply, 404, "user_not_found");
        let (_, listed) = app
            .request_as(
                Some(&ada_token),
                "GET",
                &format!("/api/users/{ada}/tokens"),
                None,
            )
            .await;
        let listed = listed["items"].as_array().expect("items").clone();
        assert_eq!(listed.len(), 2);
        assert!(listed
            .iter()
            .all(|t| t.get("token").is_none() && t.get("digest").is_none()));
    }
);

on_both_backends!(without_accounts_every_caller_is_anonymous, |backend| {
    let Some(app) = spawn_app_with_options(
        backend,
        AppOptions {
            no_auth: true,
            ..AppOptions::default()
        },
    )
    .await
    else {
        return;
    };
    assert!(!app.storage.data_dir.join("admin.token").exists());
    let template = app.template_id("diamond", diamond(0)).await;
    let run = app.run_id(&template, json!({})).await;
    let (_, me) = app.get("/api/me").await;
    assert_eq!(me["auth"], false, "{me}");
    let events = app.events(&run).await;
    assert_eq!(events[0]["metadata"]["caused_by"], "anonymous");
    assert_eq!(events[0]["payload"].get("owner"), None, "{}", events[0]);
});
