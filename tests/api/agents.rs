//! The built-in agents that do real work, against local services and
//! scripts the tests start: `http` (success, retryable and final failures,
//! `Retry-After`, timeouts, secrets in headers), `command` (outputs, exit
//! codes, the error convention, timeouts, the filtered environment) and
//! `judge`; bad configurations refused at template creation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

use crate::common::{
    count_events, expect_error, spawn_app_with_options, types, unique_name, AppOptions, TestApp,
};
use crate::on_both_backends;

const WAIT: Duration = Duration::from_secs(30);

/// One scripted answer of a test service.
#[derive(Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
    pub delay_ms: u64,
}

impl Answer {
    pub fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body,
            headers: Vec::new(),
            delay_ms: 0,
        }
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: json!({"error": format!("status {status}")}),
            headers: Vec::new(),
            delay_ms: 0,
        }
    }
}

/// A request a test service received.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

/// A local HTTP service that answers from a script (the last answer
/// repeats) and keeps what it received.
pub struct Service {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for Service {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_web::rt::spawn(async move { handle.stop(false).await });
    }
}

impl Service {
    pub async fn start(script: Vec<Answer>) -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let state = (Arc::new(script), received.clone());
        let server = HttpServer::new(move || {
            let state = state.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (script, received) = state.clone();
                async move {
                    let n = {
                        let mut got = received.lock().unwrap();
                        got.push(Received {
                            headers: req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                                .collect(),
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        });
                        got.len() - 1
                    };
                    let answer = script[n.min(script.len() - 1)].clone();
                    if answer.delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(answer.delay_ms)).await;
                    }
                    let mut response = HttpResponse::build(
                        actix_web::http::StatusCode::from_u16(answer.status).unwrap(),
                    );
                    for (name, value) in &answer.headers {
                        response.insert_header((*name, value.clone()));
                    }
                    response.json(answer.body)
                }
            }))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .expect("bind the test service");
        let port = server.addrs()[0].port();
        let server = server.disable_signals().run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}/call"),
            received,
            handle,
        }
    }

    pub fn calls(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// A temp directory for scripts (removed when dropped).
pub struct Scripts(pub PathBuf);

impl Drop for Scripts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Scripts {
    pub fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("runlog-scripts-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// An executable shell script.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A one-step template of `step`, started; the finished run.
async fn run_one(app: &TestApp, step: Value, input: Value) -> (String, Value) {
    let template = app
        .template_id(&unique_name("one"), json!({"steps": {"s": step}}))
        .await;
    let run = app.run_id(&template, input).await;
    let done = app.wait_finished(&run, WAIT).await;
    (run, done)
}

on_both_backends!(
    the_http_agent_posts_the_task_and_its_json_answer_becomes_the_outputs,
    |backend| {
        let secret_var = format!("RUNLOG_TEST_SECRET_{}", uuid::Uuid::new_v4().simple());
        let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
        std::env::set_var(&secret_var, &secret);
        let Some(app) = spawn_app_with_options(
            backend,
            AppOptions {
                config: Some(format!("[secrets]\ncrm = {{ env = \"{secret_var}\" }}\n")),
                ..AppOptions::default()
            },
        )
        .await
        else {
            return;
        };
        let service = Service::start(vec![Answer::ok(json!({"summary": "short", "n": 3}))]).await;
        let step = json!({
            "agent": "http",
            "prompt": "Summarise",
            "config": {"url": service.url, "headers": {"Authorization": "Bearer {{ secrets.crm }}"}}
        });
        let (run, done) = run_one(&app, step, json!({"text": "long"})).await;
        assert_eq!(done["status"], "completed", "{done}");
        let calls = service.calls();
        assert_eq!(calls.len(), 1);
        let body = &calls[0].body;
        assert_eq!(body["run_id"], run.as_str());
        assert_eq!(body["step"], "s");
        assert_eq!(body["attempt"], 1);
        assert_eq!(body["inputs"], json!({"text": "long"}));
        assert_eq!(body["prompt"], "Summarise");
        assert!(body["config"].get("headers").is_none(), "{body}");
        let auth = calls[0]
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone());
        assert_eq!(auth, Some(format!("Bearer {secret}")));
        let (_, artifact) = app
            .get(&format!("/api/runs/{run}/artifacts/s.summary"))
            .await;
        assert_eq!(artifact["versions"][0]["content"], "short");
        // The secret is nowhere in what the server keeps or shows.
        let events = serde_json::to_string(&app.events(&run).await).unwrap();
        let detail = app.run(&run).await.to_string();
        let messages = serde_json::to_string(&app.messages(&run).await).unwrap();
        for text in [events, detail, messages] {
            assert!(!text.contains(&secret), "the secret leaked: {text}");
        }
    }
);

on_both_backends!(
    http_failures_are_retried_when_retryable_honouring_retry_after_and_not_otherwise,
    |backend| {
        let Some(app) = crate::common::spawn_app(backend).await else {
            return;
        };
        // 503, then 429 with Retry-After: 1, then 200.
        let mut throttled = Answer::status(429);
        throttled.headers.push(("Retry-After", "1".into()));
        let service = Service::start(vec![
            Answer::status(503),
            throttled,
            Answer::ok(json!({"ok": true})),
        ])
        .await;
        let step = json!({"agent": "http", "config": {"url": service.url, "comments": false},
                          "retry": {"max_attempts": 3, "backoff_ms": 10}});
        let (run, done) = run_one(&app, step, json!({})).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["steps"]["s"]["attempt"], 3);
        let events = app.events(&run).await;
        let delays: Vec<u64> = events
            .iter()
            .filter(|e| e["event_type"] == "StepRetryScheduled")
            .map(|e| e["payload"]["delay_ms"].as_u64().unwrap())
            .collect();
        assert_eq!(
            delays,
            [10, 1_000],
            "the second retry waits as Retry-After says"
        );

        // A 400 is final, whatever the retry policy.
        let refusing = Service::start(vec![Answer::status(400)]).await;
        let step = json!({"agent": "http", "config": {"url": refusing.url},
                          "retry": {"max_attempts": 3}});
        let (run, done) = run_one(&app, step, json!({})).await;
        assert_eq!(done["status"], "failed", "{done}");
        let error = done["steps"]["s"]["error"].as_str().unwrap();
        assert!(error.contains("answered 400"), "{error}");
        assert_eq!(
            count_events(&app.events(&run).await, "StepDispatched", None),
            1
        );
        assert_eq!(refusing.calls().len(), 1);

        // An answer that is not a JSON object is final too.
        let odd = Service::start(vec![Answer::ok(json!([1, 2]))]).await;
        let step =
            json!({"agent": "http", "config": {"url": odd.url}, "retry": {"max_attempts": 3}});
        let (_, done) = run_one(&app, step, json!({})).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert!(done["steps"]["s"]["error"]
            .as_str()
            .unwrap()
            .contains("JSON object"));
    }
);

on_both_backends!(
    an_http_call_past_its_timeout_fails_and_is_retried,
    |backend| {
        let Some(app) = crate::common::spawn_app(backend).await else {
            return;
        };
        let mut slow = Answer::ok(json!({"late": true}));
        slow.delay_ms = 3_000;
        let service = Service::start(vec![slow, Answer::ok(json!({"fast": true}))]).await;
        let step = json!({"agent": "http", "config": {"url": service.url, "timeout_ms": 200},
                          "retry": {"max_attempts": 2}});
        let (run, done) = run_one(&app, step, json!({})).await;
        assert_eq!(done["status"], "completed", "{done}");
        let attempts = done["steps"]["s"]["attempts"].as_array().unwrap();
        assert_eq!(attempts[0]["status"], "failed");
        assert!(
            attempts[0]["error"].as_str().unwrap().contains("failed"),
            "{done}"
        );
        let (_, artifact) = app.get(&format!("/api/runs/{run}/artifacts/s.fast")).await;
        assert_eq!(artifact["versions"][0]["content"], true);
    }
);

/// A configuration registering commands from `scripts`.
fn commands_config(scripts: &Scripts) -> String {
    let ok = scripts.script(
        "ok.sh",
        "input=$(cat)\nprintf '{\"length\": %s}' \"$(printf '%s' \"$input\" | wc -c)\"",
    );
    let env = scripts.script("env.sh", "cat > /dev/null\nprintf '{\"path\": \"%s\", \"extra\": \"%s\", \"secret\": \"%s\"}' \"$PATH\" \"$EXTRA\" \"$RUNLOG_TEST_LEAK\"");
    let boom = scripts.script("boom.sh", "cat > /dev/null\necho 'it broke' >&2\nexit 3");
    let refuse = scripts.script(
        "refuse.sh",
        "cat > /dev/null\necho '{\"error\": \"bad input\", \"retryable\": false}'",
    );
    let slow = scripts.script("slow.sh", "cat > /dev/null\nsleep 5\necho '{}'");
    format!(
        r#"
[commands.ok]
program = "{}"
[commands.env]
program = "{}"
env = {{ EXTRA = "given" }}
[commands.boom]
program = "{}"
[commands.refuse]
program = "{}"
[commands.slow]
program = "{}"
timeout_ms = 300
"#,
        path(&ok),
        path(&env),
        path(&boom),
        path(&refuse),
        path(&slow)
    )
}

on_both_backends!(
    the_command_agent_runs_registered_commands_with_the_task_on_stdin,
    |backend| {
        let scripts = Scripts::new();
        std::env::set_var("RUNLOG_TEST_LEAK", "should-not-pass");
        let Some(app) = spawn_app_with_options(
            backend,
            AppOptions {
                config: Some(commands_config(&scripts)),
                ..AppOptions::default()
            },
        )
        .await
        else {
            return;
        };
        let (run, done) = run_one(
            &app,
            json!({"agent": "command", "config": {"command": "ok"}}),
            json!({"a": 1}),
        )
        .await;
        assert_eq!(done["status"], "completed", "{done}");
        let (_, artifact) = app
            .get(&format!("/api/runs/{run}/artifacts/s.length"))
            .await;
        assert!(
            artifact["versions"][0]["content"].as_u64().unwrap() > 20,
            "{artifact}"
        );

        // Only PATH, HOME, LANG, TZ and the command's own variables.
        let (run, done) = run_one(
            &app,
            json!({"agent": "command", "config": {"command": "env"}}),
            json!({}),
        )
        .await;
        assert_eq!(done["status"], "completed", "{done}");
        let (_, extra) = app.get(&format!("/api/runs/{run}/artifacts/s.extra")).await;
        assert_eq!(extra["versions"][0]["content"], "given");
        let (_, leaked) = app
            .get(&format!("/api/runs/{run}/artifacts/s.secret"))
            .await;
        assert_eq!(leaked["versions"][0]["content"], "");
        let (_, path) = app.get(&format!("/api/runs/{run}/artifacts/s.path")).await;
        assert_eq!(
            path["versions"][0]["content"],
            std::env::var("PATH").unwrap()
        );

        // A non-zero exit is a retryable failure with the program's stderr.
        let step = json!({"agent": "command", "config": {"command": "boom"}, "retry": {"max_attempts": 2}});
        let (run, done) = run_one(&app, step, json!({})).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert_eq!(
            count_events(&app.events(&run).await, "StepDispatched", None),
            2
        );
        let error = done["steps"]["s"]["error"].as_str().unwrap();
        assert_eq!(error, "command 'boom' exited with code 3: it broke");

        // {"error", "retryable": false} fails without a retry.
        let step = json!({"agent": "command", "config": {"command": "refuse"}, "retry": {"max_attempts": 3}});
        let (run, done) = run_one(&app, step, json!({})).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert_eq!(done["steps"]["s"]["error"], "bad input");
        assert_eq!(
            count_events(&app.events(&run).await, "StepDispatched", None),
            1
        );

        // Past its timeout it is stopped.
        let (run, done) = run_one(
            &app,
            json!({"agent": "command", "config": {"command": "slow"}}),
            json!({}),
        )
        .await;
        assert_eq!(done["status"], "failed", "{done}");
        assert_eq!(
            done["steps"]["s"]["error"],
            "command 'slow' took longer than 300 ms and was stopped",
            "{:?}",
            types(&app.events(&run).await)
        );
    }
);

on_both_backends!(
    the_judge_scores_an_upstream_text_and_says_what_failed,
    |backend| {
        let Some(app) = crate::common::spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "judged",
                json!({"steps": {
                    "draft": {"agent": "template", "config": {"text": "Owls hunt at night.", "comments": false}},
                    "score": {"agent": "judge", "depends_on": ["draft"], "inputs": {"text": "draft.text"},
                              "config": {"keywords": ["owl", "mice"], "forbidden": ["day"], "max_chars": 100}}
                }}),
            )
            .await;
        let run = app.run_id(&template, json!({})).await;
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        let (_, score) = app
            .get(&format!("/api/runs/{run}/artifacts/score.score"))
            .await;
        assert_eq!(score["versions"][0]["content"], 0.75);
        let (_, feedback) = app
            .get(&format!("/api/runs/{run}/artifacts/score.feedback"))
            .await;
        assert_eq!(
            feedback["versions"][0]["content"],
            "1 of 4 checks failed: missing the keyword 'mice'."
        );
    }
);

on_both_backends!(
    agent_configurations_are_checked_at_template_creation_naming_the_step_and_the_field,
    |backend| {
        let scripts = Scripts::new();
        let Some(app) = spawn_app_with_options(
            backend,
            AppOptions {
                config: Some(format!(
                    "{}\n[secrets]\nknown = {{ env = \"PATH\" }}\n",
                    commands_config(&scripts)
                )),
                ..AppOptions::default()
            },
        )
        .await
        else {
            return;
        };
        for (step, field) in [
            (
                json!({"agent": "http", "config": {"url": "ftp://x"}}),
                "config.url",
            ),
            (
                json!({"agent": "http", "config": {"url": "not a url"}}),
                "config.url",
            ),
            (json!({"agent": "http", "config": {}}), "url"),
            (
                json!({"agent": "http", "config": {"url": "http://x", "timeout_ms": 0}}),
                "config.timeout_ms",
            ),
            (
                json!({"agent": "http", "config": {"url": "http://x", "headers": {"A": "{{ secrets.unknown }}"}}}),
                "config.headers.A",
            ),
            (
                json!({"agent": "http", "config": {"url": "http://x", "headers": {"bad header": "x"}}}),
                "config.headers.bad header",
            ),
            (
                json!({"agent": "http", "config": {"url": "http://x", "verb": "GET"}}),
                "verb",
            ),
            (
                json!({"agent": "command", "config": {"command": "rm"}}),
                "config.command",
            ),
            (json!({"agent": "command", "config": {}}), "command"),
            (json!({"agent": "judge", "config": {}}), "config"),
            (
                json!({"agent": "judge", "config": {"pattern": "(("}}),
                "config.pattern",
            ),
            (
                json!({"agent": "judge", "config": {"keywords": "owl"}}),
                "config.keywords",
            ),
        ] {
            let reply = app
                .create_template("bad", json!({"steps": {"s": step.clone()}}))
                .await;
            let message = expect_error(&reply, 422, "invalid_agent_config");
            assert!(message.contains("'s'"), "{message}");
            assert!(message.contains(field), "{field} in {message} ({step})");
        }
        // A known secret and a registered command are fine.
        let (status, body) = app
            .create_template(
                "good",
                json!({"steps": {
                    "h": {"agent": "http", "config": {"url": "https://example.test/x", "headers": {"A": "{{ secrets.known }}"}}},
                    "c": {"agent": "command", "config": {"command": "ok"}}
                }}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
);
