//! Careless and hostile clients (issue #9, section 5, the parts that need
//! no accounts): a body is taken only as JSON and with each key once,
//! `HEAD` answers where `GET` does, every error answer carries the JSON
//! error body, a garbage cursor is a 400 on both backends, and the CLI
//! never prints a database password.

use serde_json::{json, Value};

use crate::common::{assert_refused, diamond, spawn_app, Reply, TestApp};
use crate::on_both_backends;

/// A request as a careless client sends it: any content type (or none)
/// and raw bytes; the status, content type and body.
async fn raw(
    app: &TestApp,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Option<String>, Vec<u8>) {
    let mut request = app.client.request(
        method.parse().expect("method"),
        format!("{}{path}", app.address),
    );
    if let Some(content_type) = content_type {
        request = request.insert_header(("content-type", content_type));
    }
    let mut response = request.send_body(body).await.expect("the server answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = response.body().limit(1 << 24).await.expect("body");
    (status, content_type, bytes.to_vec())
}

fn as_reply((status, _, body): (u16, Option<String>, Vec<u8>)) -> Reply {
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

on_both_backends!(
    a_body_that_is_not_json_is_refused_with_415_and_records_nothing,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        // Manual mode: nothing moves unless asked, so any event is the
        // request's.
        let run = app.manual_run_id(&template, json!({})).await;
        let definition = json!({"name": "sneaky", "definition": diamond(0)}).to_string();
        // What another site's page can send without a preflight.
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            None,
        ] {
            let counts = app.counts().await;
            let (status, body) = as_reply(
                raw(
                    &app,
                    "POST",
                    "/api/templates",
                    content_type,
                    definition.clone().into_bytes(),
                )
                .await,
            );
            assert_eq!(status, 415, "{content_type:?}: {body}");
            assert_eq!(body["error"]["code"], "invalid_content_type", "{body}");
            assert_eq!(
                app.counts().await,
                counts,
                "{content_type:?} created something"
            );
            assert_refused(
                &app,
                &run,
                async {
                    as_reply(
                        raw(
                            &app,
                            "POST",
                            &format!("/api/runs/{run}/cancel"),
                            content_type,
                            br#"{"reason": "from another site"}"#.to_vec(),
                        )
                        .await,
                    )
                },
                415,
                "invalid_content_type",
            )
            .await;
        }
        // JSON with parameters is JSON; an empty body needs no content type.
        let (status, body) = as_reply(
            raw(
                &app,
                "POST",
                "/api/templates",
                Some("application/json; charset=utf-8"),
                definition.into_bytes(),
            )
            .await,
        );
        assert_eq!(status, 201, "{body}");
        let (status, body) = as_reply(
            raw(
                &app,
                "POST",
                &format!("/api/runs/{run}/pause"),
                None,
                Vec::new(),
            )
            .await,
        );
        assert_eq!(status, 200, "{body}");
    }
);

on_both_backends!(every_error_answer_is_the_json_error_body, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("diamond", diamond(2_000)).await;
    let run = app.run_id(&template, json!({"topic": "owls"})).await;
    // Endpoints whose body is optional read raw bytes: over the limit they
    // answered text/plain before.
    let huge = vec![b' '; 3 * 1024 * 1024];
    for path in [
        format!("/api/runs/{run}/cancel"),
        format!("/api/runs/{run}/steps/a/approve"),
        format!("/api/runs/{run}/steps/a/retry"),
        format!("/api/runs/{run}/steps/a/trigger"),
        "/api/templates".to_string(),
    ] {
        let (status, content_type, body) =
            raw(&app, "POST", &path, Some("application/json"), huge.clone()).await;
        assert_eq!(status, 413, "{path}");
        assert_eq!(content_type.as_deref(), Some("application/json"), "{path}");
        let body: Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(body["error"]["code"], "body_too_large", "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    assert_eq!(app.run(&run).await["status"], "running");
});

on_both_backends!(head_answers_where_get_does_without_a_body, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("diamond", diamond(0)).await;
    let run = app.run_id(&template, json!({"topic": "owls"})).await;
    for path in [
        "/api/runs".to_string(),
        format!("/api/runs/{run}"),
        format!("/api/runs/{run}/events"),
        "/api/templates".to_string(),
        format!("/api/templates/{template}"),
    ] {
        let (status, content_type, body) = raw(&app, "HEAD", &path, None, Vec::new()).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(content_type.as_deref(), Some("application/json"), "{path}");
        assert!(body.is_empty(), "{path}: a HEAD answer has no body");
    }
    let (status, _, body) = raw(
        &app,
        "HEAD",
        "/api/runs/0b6d2a1e-5d3c-4a35-9d6e-0c6a8e2b9f10",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(status, 404);
    assert!(body.is_empty());
});

on_both_backends!(a_garbage_cursor_is_a_400_on_both_backends, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for cursor in ["1_%00", "1_a%00b", "%00", "x_y", "1_%01", "1_"] {
        for list in ["/api/runs", "/api/templates"] {
            let (status, body) = app.get(&format!("{list}?cursor={cursor}")).await;
            assert_eq!(status, 400, "{list} cursor {cursor}: {body}");
            assert_eq!(body["error"]["code"], "invalid_cursor", "{body}");
        }
    }
});

#[test]
fn the_command_line_never_prints_a_database_password() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args([
            "migrate",
            "--database-url",
            "mysql://runlog:hunter2@db.internal/runlog",
        ])
        .output()
        .expect("the runlog binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(
        stderr.contains("mysql://runlog:***@db.internal/runlog"),
        "{stderr}"
    );
}

on_both_backends!(a_json_body_that_gives_a_key_twice_is_refused, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("diamond", diamond(0)).await;
    let run = app.manual_run_id(&template, json!({})).await;
    let counts = app.counts().await;
    let ambiguous = r#"{"name": "twice", "definition": {"steps": {"a": {"agent": "echo"}},
        "steps": {"b": {"agent": "echo"}}}}"#;
    let (status, body) = as_reply(
        raw(
            &app,
            "POST",
            "/api/templates",
            Some("application/json"),
            ambiguous.as_bytes().to_vec(),
        )
        .await,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_body", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(r#""steps" is given twice"#), "{message}");
    assert_eq!(app.counts().await, counts);
    assert_refused(
        &app,
        &run,
        async {
            as_reply(
                raw(
                    &app,
                    "POST",
                    &format!("/api/runs/{run}/messages"),
                    Some("application/json"),
                    br#"{"content": "hi", "metadata": {"k": 1, "k": 2}}"#.to_vec(),
                )
                .await,
            )
        },
        400,
        "invalid_body",
    )
    .await;
});

/// The close frame that ends `ws`, skipping other frames.
async fn close_code<S>(ws: &mut S) -> u16
where
    S: futures::Stream<Item = Result<awc::ws::Frame, awc::error::WsProtocolError>> + Unpin,
{
    use futures::StreamExt;
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time");
        match frame {
            Some(Ok(awc::ws::Frame::Close(reason))) => {
                return reason.map_or(0, |r| u16::from(r.code));
            }
            Some(Ok(_)) => continue,
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

on_both_backends!(
    a_fragmented_websocket_message_is_assembled_or_refused_with_a_close_code,
    |backend| {
        use actix_http::ws::Item;
        use awc::ws::Message;
        use futures::SinkExt;

        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let subscribe = json!({"type": "subscribe", "run_id": run, "after": 0}).to_string();
        let (head, tail) = subscribe.split_at(subscribe.len() / 2);

        // In three fragments: handled as the whole message.
        let mut ws = crate::ws::connect(&app).await;
        let (a, b) = head.split_at(5);
        for item in [
            Item::FirstText(a.to_string().into()),
            Item::Continue(b.to_string().into()),
            Item::Last(tail.to_string().into()),
        ] {
            ws.send(Message::Continuation(item)).await.expect("sent");
        }
        let reply = crate::ws::recv(&mut ws).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        let event = crate::ws::recv(&mut ws).await;
        assert_eq!(event["sequence"], 1, "{event}");

        // Fragments past the largest message: too big.
        let mut ws = crate::ws::connect(&app).await;
        ws.send(Message::Continuation(Item::FirstText(
            "[".to_string().into(),
        )))
        .await
        .expect("sent");
        let chunk = " ".repeat(16 * 1024);
        for _ in 0..5 {
            if ws
                .send(Message::Continuation(Item::Continue(chunk.clone().into())))
                .await
                .is_err()
            {
                break;
            }
        }
        assert_eq!(close_code(&mut ws).await, 1009);
    }
);

/// A request with the admin's token and these extra headers; the status,
/// the headers and the body.
async fn with_headers(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> crate::common::Response {
    app.request_with_headers(method, path, body, headers).await
}

on_both_backends!(
    a_page_on_another_origin_may_not_act_or_open_a_websocket_and_nothing_is_recorded,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let start = json!({"template_id": template, "input": {}});
        let evil = [("Origin", "https://evil.example")];
        let before = app.counts().await;

        // A cross-origin POST (the token is the admin's: a page that got
        // hold of one still may not use it from its origin).
        let refused = with_headers(&app, "POST", "/api/runs", Some(start.clone()), &evil).await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert_eq!(refused.body["error"]["code"], "origin_not_allowed");
        assert!(refused.header("access-control-allow-origin").is_none());
        // `null` (a sandboxed frame, a file) is foreign too.
        let refused = with_headers(
            &app,
            "POST",
            "/api/runs",
            Some(start.clone()),
            &[("Origin", "null")],
        )
        .await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        // Every changing method.
        for (method, path) in [
            ("PUT", format!("/api/templates/{template}")),
            ("DELETE", "/api/tokens/x".to_string()),
            ("POST", format!("/api/templates/{template}/archive")),
        ] {
            let refused = with_headers(&app, method, &path, Some(json!({})), &evil).await;
            assert_eq!(refused.status, 403, "{method} {path}: {}", refused.body);
            assert_eq!(refused.body["error"]["code"], "origin_not_allowed");
        }
        // A preflight from it: refused, no CORS headers.
        let preflight = with_headers(
            &app,
            "OPTIONS",
            "/api/runs",
            None,
            &[
                ("Origin", "https://evil.example"),
                ("Access-Control-Request-Method", "POST"),
            ],
        )
        .await;
        assert_eq!(preflight.status, 403, "{}", preflight.body);
        assert!(preflight.header("access-control-allow-origin").is_none());
        // A read answers, but without CORS headers the page cannot see it.
        let read = with_headers(&app, "GET", "/api/runs", None, &evil).await;
        assert_eq!(read.status, 200);
        assert!(read.header("access-control-allow-origin").is_none());
        // A WebSocket upgrade from it is refused before it opens.
        let upgrade = app
            .client
            .ws(format!("ws://127.0.0.1:{}/api/ws", app.port))
            .origin("https://evil.example")
            .connect()
            .await;
        match upgrade {
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                assert_eq!(status.as_u16(), 403)
            }
            Err(e) => panic!("unexpected handshake error: {e}"),
            Ok(_) => panic!("a cross-origin WebSocket opened"),
        }
        // And a text/plain body from it (a form a page may post without a
        // preflight) is refused too.
        let refused = app
            .client
            .post(format!("{}/api/runs", app.address))
            .insert_header(("origin", "https://evil.example"))
            .insert_header(("content-type", "text/plain"))
            .send_body(start.to_string())
            .await
            .expect("the server answers");
        assert_eq!(refused.status().as_u16(), 403);
        let (status, _, _) = raw(
            &app,
            "POST",
            "/api/runs",
            Some("text/plain"),
            start.to_string().into_bytes(),
        )
        .await;
        assert_eq!(status, 415);
        // A page whose name was pointed at this server (DNS rebinding) is
        // same-origin by its Host, and still foreign.
        let rebound = format!("evil.example:{}", app.port);
        let rebound_origin = format!("http://{rebound}");
        let refused = with_headers(
            &app,
            "POST",
            "/api/runs",
            Some(start.clone()),
            &[
                ("Origin", rebound_origin.as_str()),
                ("Host", rebound.as_str()),
            ],
        )
        .await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert_eq!(refused.body["error"]["code"], "origin_not_allowed");
        // The same host on another port is another origin.
        let refused = with_headers(
            &app,
            "POST",
            "/api/runs",
            Some(start.clone()),
            &[("Origin", "http://127.0.0.1:1")],
        )
        .await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert_eq!(app.counts().await, before, "nothing was recorded");

        // The server's own origin (the dashboard's) may act.
        let own = format!("http://127.0.0.1:{}", app.port);
        let started = with_headers(
            &app,
            "POST",
            "/api/runs",
            Some(start),
            &[("Origin", own.as_str())],
        )
        .await;
        assert_eq!(started.status, 201, "{}", started.body);
        let opened = app
            .client
            .ws(format!("ws://127.0.0.1:{}/api/ws", app.port))
            .origin(own.as_str())
            .connect()
            .await;
        assert!(opened.is_ok(), "a same-origin WebSocket opens");
    }
);

on_both_backends!(an_allowed_origin_gets_cors_answers_and_may_act, |backend| {
    let Some(storage) = crate::common::Storage::new(backend).await else {
        return;
    };
    let app = crate::common::spawn_app_with(
        storage,
        crate::common::AppOptions {
            allowed_origins: Some("https://app.example.com, http://localhost:3000".into()),
            ..Default::default()
        },
    )
    .await;
    let template = app.template_id("diamond", diamond(0)).await;
    let preflight = with_headers(
        &app,
        "OPTIONS",
        "/api/runs",
        None,
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
    )
    .await;
    assert_eq!(preflight.status, 204, "{}", preflight.body);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let methods = preflight
        .header("access-control-allow-methods")
        .expect("methods");
    assert!(methods.contains("POST"), "{methods}");
    let headers = preflight
        .header("access-control-allow-headers")
        .expect("headers");
    assert!(headers.contains("authorization"), "{headers}");
    assert_eq!(preflight.header("vary"), Some("Origin"));

    let started = with_headers(
        &app,
        "POST",
        "/api/runs",
        Some(json!({"template_id": template})),
        &[("Origin", "http://localhost:3000")],
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.body);
    assert_eq!(
        started.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let exposed = started
        .header("access-control-expose-headers")
        .expect("exposed");
    assert!(exposed.contains("location"), "{exposed}");
    // Refusals reach the page too: a bad token's 401 has the CORS headers.
    let refused = with_headers(
        &app,
        "GET",
        "/api/runs",
        None,
        &[
            ("Origin", "https://app.example.com"),
            ("Authorization", "Bearer rl_nope"),
        ],
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // And it may open a WebSocket.
    let opened = app
        .client
        .ws(format!("ws://127.0.0.1:{}/api/ws", app.port))
        .origin("https://app.example.com")
        .connect()
        .await;
    assert!(opened.is_ok(), "an allowed origin's WebSocket opens");
    // Others are still refused.
    let refused = with_headers(
        &app,
        "POST",
        "/api/runs",
        Some(json!({"template_id": template})),
        &[("Origin", "https://app.example.com.evil.test")],
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
});
