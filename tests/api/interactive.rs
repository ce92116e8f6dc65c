//! Agents' messages with buttons (issue #10, section 1): the engine posts
//! an agent's message to the thread, a user's click is recorded once, posts
//! the button's user message, writes `<step>.choice` and routes the run.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{expect_error, spawn_app, spawn_app_with_options, AppOptions, TestApp};
use crate::on_both_backends;

const WAIT: Duration = Duration::from_secs(15);

/// Seed 004: `track_actions` asks how the user wants their track, with a
/// button per way; each button runs its own step.
fn track_definition() -> Value {
    json!({"steps": {
        "track_actions": {"agent": "echo", "config": {"comments": false, "message": {
            "content": "How do you want your track?",
            "buttons": [
                {"id": "ai", "label": "Generate with AI", "value": "ai",
                 "user_message": "I want to generate an AI track",
                 "next_step": "track_ai_description"},
                {"id": "upload", "label": "Upload", "value": "upload", "next_step": "upload"}
            ]
        }}},
        "track_ai_description": {"agent": "echo", "depends_on": ["track_actions"],
                                 "config": {"comments": false}},
        "upload": {"agent": "echo", "depends_on": ["track_actions"],
                   "config": {"comments": false}}
    }})
}

/// Starts a run of the seed and waits until it asks.
async fn asking(app: &TestApp, template: &str) -> (String, u32) {
    let run = app.run_id(template, json!({"song": "owls"})).await;
    let detail = app
        .wait_run(&run, "track_actions awaits input", WAIT, |r| {
            r["steps"]["track_actions"]["status"] == "awaiting_input"
        })
        .await;
    assert_eq!(detail["status"], "running", "{detail}");
    let asked: Vec<Value> = app
        .messages(&run)
        .await
        .into_iter()
        .filter(|m| m["author"] == "agent")
        .collect();
    assert_eq!(asked.len(), 1, "one agent message: {asked:?}");
    let number = asked[0]["id"].as_u64().expect("id") as u32;
    (run, number)
}

async fn click(
    app: &TestApp,
    run: &str,
    message: u32,
    body: Value,
    key: Option<&str>,
) -> crate::common::Reply {
    let path = format!("/api/runs/{run}/messages/{message}/click");
    match key {
        Some(key) => app
            .request_with_headers("POST", &path, Some(body), &[("Idempotency-Key", key)])
            .await
            .reply(),
        None => app.post(&path, body).await,
    }
}

on_both_backends!(
    a_click_on_an_agents_button_posts_the_users_message_and_runs_the_step_it_names,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("track", track_definition()).await;
        let (run, asked) = asking(&app, &template).await;
        let message = app
            .messages(&run)
            .await
            .into_iter()
            .find(|m| m["id"] == asked)
            .expect("the question");
        assert_eq!(message["content"], "How do you want your track?");
        assert_eq!(message["step"], "track_actions");
        let ids: Vec<&str> = message["buttons"]
            .as_array()
            .expect("buttons")
            .iter()
            .map(|b| b["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, ["ai", "upload"]);

        let (status, body) = click(&app, &run, asked, json!({"button": "ai"}), Some("c1")).await;
        assert_eq!(status, 200, "{body}");
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["steps"]["track_actions"]["status"], "completed");
        assert_eq!(done["steps"]["track_actions"]["choice"], "ai");
        assert_eq!(done["steps"]["track_ai_description"]["status"], "completed");
        assert_eq!(done["steps"]["upload"]["status"], "skipped");
        let (_, choice) = app
            .get(&format!("/api/runs/{run}/artifacts/track_actions.choice"))
            .await;
        assert_eq!(choice["versions"][0]["content"], "ai", "{choice}");
        // The outputs of the attempt that asked are artifacts too.
        let (status, song) = app
            .get(&format!("/api/runs/{run}/artifacts/track_actions.song"))
            .await;
        assert_eq!(status, 200, "{song}");
        assert_eq!(song["versions"][0]["content"], "owls", "{song}");

        // The thread: the question once, the user's answer once.
        let thread = app.messages(&run).await;
        let count = |author: &str, content: &str| {
            thread
                .iter()
                .filter(|m| m["author"] == author && m["content"] == content)
                .count()
        };
        assert_eq!(
            count("agent", "How do you want your track?"),
            1,
            "{thread:?}"
        );
        assert_eq!(
            count("user", "I want to generate an AI track"),
            1,
            "{thread:?}"
        );
        let events = app.events(&run).await;
        let clicks = events
            .iter()
            .filter(|e| e["event_type"] == "ButtonClicked")
            .count();
        assert_eq!(clicks, 1);

        // The same click under its key again: the run as it is, nothing
        // recorded; another click: refused.
        let before = app.events(&run).await;
        let (status, body) = click(&app, &run, asked, json!({"button": "ai"}), Some("c1")).await;
        assert_eq!(status, 200, "{body}");
        let reply = click(&app, &run, asked, json!({"button": "upload"}), None).await;
        let message = expect_error(&reply, 409, "message_already_clicked");
        assert!(message.contains("'ai'"), "{message}");
        assert_eq!(app.events(&run).await, before, "nothing recorded");
    }
);

on_both_backends!(
    refused_clicks_get_their_code_and_record_nothing,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("track", track_definition()).await;
        let (run, asked) = asking(&app, &template).await;
        let (status, comment) = app
            .post_message(&run, json!({"content": "just a remark"}))
            .await;
        assert_eq!(status, 201, "{comment}");
        let remark = comment["id"].as_u64().expect("id") as u32;
        let before = app.events(&run).await;

        let reply = click(&app, &run, asked, json!({"button": "maybe"}), None).await;
        let message = expect_error(&reply, 422, "unknown_button");
        assert!(message.contains("ai, upload"), "{message}");
        expect_error(
            &click(&app, &run, 99, json!({"button": "ai"}), None).await,
            404,
            "message_not_found",
        );
        expect_error(
            &click(&app, &run, remark, json!({"button": "ai"}), None).await,
            409,
            "message_has_no_buttons",
        );
        expect_error(
            &click(&app, &run, asked, json!({"button": "no spaces"}), None).await,
            400,
            "invalid_button",
        );
        let (status, body) = app
            .post(
                &format!("/api/runs/{run}/messages/zero/click"),
                json!({"button": "ai"}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_message_id");
        expect_error(
            &click(&app, &run, 0, json!({"button": "ai"}), None).await,
            404,
            "message_not_found",
        );
        let (status, body) = app
            .post(
                &format!("/api/runs/{run}/messages/{asked}/click"),
                json!({"button": "ai", "extra": 1}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        // Another user's run does not exist for them.
        let bob = crate::accounts::user(&app, "bob", "user").await;
        let bob = crate::accounts::token_text(&app, &bob).await;
        let (status, body) = app
            .request_as(
                Some(&bob),
                "POST",
                &format!("/api/runs/{run}/messages/{asked}/click"),
                Some(json!({"button": "ai"})),
            )
            .await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "run_not_found");
        assert_eq!(app.events(&run).await, before, "nothing recorded");

        // A cancelled run takes no click.
        let (status, body) = app
            .post(&format!("/api/runs/{run}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        app.wait_run(&run, "cancelled", WAIT, |r| r["status"] == "cancelled")
            .await;
        let before = app.events(&run).await;
        expect_error(
            &click(&app, &run, asked, json!({"button": "ai"}), None).await,
            409,
            "run_finished",
        );
        assert_eq!(app.events(&run).await, before, "nothing recorded");
    }
);

on_both_backends!(
    a_template_whose_buttons_route_to_a_step_that_does_not_depend_on_the_asker_is_refused,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let before = app.counts().await;
        let mut wrong = track_definition();
        wrong["steps"]["track_actions"]["config"]["message"]["buttons"][1]["next_step"] =
            json!("track_actions");
        let reply = app.create_template("track", wrong).await;
        let message = expect_error(&reply, 422, "invalid_agent_config");
        assert!(message.contains("routes to 'track_actions'"), "{message}");
        let mut waiting = track_definition();
        waiting["steps"]["upload"]["wait_for_click"] = json!(true);
        waiting["steps"]["upload"]["review"] = json!(true);
        let reply = app.create_template("track", waiting).await;
        expect_error(&reply, 422, "invalid_step_field");
        assert_eq!(app.counts().await, before, "nothing saved");
    }
);

on_both_backends!(
    a_worker_returns_a_message_with_buttons_and_the_step_waits_for_the_click,
    |backend| {
        let Some(app) = spawn_app_with_options(
            backend,
            AppOptions {
                config: Some(crate::workers::config()),
                ..Default::default()
            },
        )
        .await
        else {
            return;
        };
        let template = app
            .template_id(
                "remote-ask",
                json!({"steps": {
                    "ask": {"agent": "summarize"},
                    "yes": {"agent": "echo", "depends_on": ["ask"], "config": {"comments": false}},
                    "no": {"agent": "echo", "depends_on": ["ask"], "config": {"comments": false}}
                }}),
            )
            .await;
        let run = app.run_id(&template, json!({"text": "owls"})).await;
        let task = app.claim_one("w1", &["summarize"]).await;
        let before = app.events(&run).await;
        // A message that routes to a step that does not depend on `ask`:
        // refused, nothing recorded, the attempt goes on.
        let (status, body) = app
            .task_call(
                &task,
                "complete",
                json!({"outputs": {"summary": "owls"}, "message": {
                    "content": "Publish?",
                    "buttons": [{"id": "y", "label": "Yes", "value": "yes", "next_step": "ask"}]
                }}),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["code"], "invalid_agent_message", "{body}");
        assert_eq!(app.events(&run).await, before, "nothing recorded");
        // Text the store cannot keep (a NUL), and a next_step that is not a
        // step id: 400, nothing recorded.
        for message in [
            json!({"content": "Pub\u{0}lish?"}),
            json!({"content": "Publish?",
                   "buttons": [{"id": "y", "label": "Yes", "value": "yes", "next_step": "not a step"}]}),
        ] {
            let (status, body) = app
                .task_call(
                    &task,
                    "complete",
                    json!({"outputs": {"summary": "owls"}, "message": message}),
                )
                .await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(app.events(&run).await, before, "nothing recorded");
        }
        let (status, body) = app
            .task_call(
                &task,
                "complete",
                json!({"outputs": {"summary": "owls"}, "message": {
                    "content": "Publish?",
                    "buttons": [
                        {"id": "y", "label": "Yes", "value": "yes", "next_step": "yes"},
                        {"id": "n", "label": "No", "value": "no", "next_step": "no",
                         "user_message": "Not now"}
                    ]
                }}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        app.wait_run(&run, "ask awaits input", WAIT, |r| {
            r["steps"]["ask"]["status"] == "awaiting_input"
        })
        .await;
        let asked = app
            .messages(&run)
            .await
            .into_iter()
            .find(|m| m["author"] == "agent" && m["content"] == "Publish?")
            .expect("the question");
        let number = asked["id"].as_u64().expect("id") as u32;
        let (status, body) = click(&app, &run, number, json!({"button": "n"}), None).await;
        assert_eq!(status, 200, "{body}");
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["steps"]["no"]["status"], "completed", "{done}");
        assert_eq!(done["steps"]["yes"]["status"], "skipped", "{done}");
        assert!(app
            .messages(&run)
            .await
            .iter()
            .any(|m| m["author"] == "user" && m["content"] == "Not now"));
    }
);
