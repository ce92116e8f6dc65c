//! Templates: create, list, read, revise, archive, and every way a template
//! can be refused (with the step at fault named and nothing created).

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::common::{diamond, expect_error, spawn_app, TestApp};
use crate::on_both_backends;

/// POSTs a template with `definition` and checks it is refused with this
/// status and code, that the message names `step` (when given), and that
/// nothing was created.
async fn refused(app: &TestApp, definition: Value, status: u16, code: &str, step: Option<&str>) {
    let before = app.counts().await;
    let reply = app.create_template("bad", definition.clone()).await;
    let message = expect_error(&reply, status, code);
    if let Some(step) = step {
        assert!(
            message.contains(&format!("'{step}'")),
            "the message does not name step '{step}': {message} (definition {definition})"
        );
    }
    assert_eq!(
        app.counts().await,
        before,
        "a refused template created something"
    );
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

on_both_backends!(creating_a_template_returns_it_at_version_one, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (status, body) = app
        .post(
            "/api/templates",
            json!({"name": "  blog post  ", "description": "writes posts", "definition": diamond(0)}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id");
    assert!(!id.is_empty());
    assert_eq!(body["name"], "blog post", "the name is trimmed: {body}");
    assert_eq!(body["description"], "writes posts");
    assert_eq!(body["version"], 1);
    assert_eq!(body["archived"], false);
    assert!(body["created_at"].is_string() && body["updated_at"].is_string());
    let steps = body["definition"]["steps"].as_object().expect("steps");
    assert_eq!(
        steps.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );
    assert_eq!(steps["a"]["agent"], "echo");
    assert_eq!(steps["d"]["depends_on"], json!(["b", "c"]));
    assert_eq!(steps["b"]["config"]["delay_ms"], 0);

    let (status, got) = app.get(&format!("/api/templates/{id}")).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, body, "GET returns what create returned");
});

on_both_backends!(creating_a_template_answers_with_its_location, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let response = app
        .client
        .post(format!("{}/api/templates", app.address))
        .insert_header(("content-type", "application/json"))
        .send_body(json!({"name": "t", "definition": diamond(0)}).to_string())
        .await
        .expect("request reaches the server");
    assert_eq!(response.status().as_u16(), 201);
    let location = response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_string();
    assert!(location.starts_with("/api/templates/"), "{location}");
    let (status, body) = app.get(&location).await;
    assert_eq!(status, 200, "{body}");
});

on_both_backends!(templates_are_listed_newest_first_in_pages, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (status, empty) = app.get("/api/templates").await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty, json!({"items": [], "next_cursor": null}));

    let mut created = BTreeSet::new();
    for n in 0..5 {
        created.insert(app.template_id(&format!("t{n}"), diamond(0)).await);
    }

    let (status, all) = app.get("/api/templates").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    assert!(all["next_cursor"].is_null(), "{all}");
    let created_at: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["created_at"].as_str().unwrap())
        .collect();
    assert!(
        created_at.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {created_at:?}"
    );

    let mut seen = Vec::new();
    let mut path = "/api/templates?limit=2".to_string();
    let mut pages = 0;
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let items = ids(&page);
        assert!(items.len() <= 2, "{page}");
        seen.extend(items);
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/templates?limit=2&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids(&all), "pages concatenate to the full list");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), created);
});

on_both_backends!(revising_a_template_makes_version_two, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (_, created) = app
        .post(
            "/api/templates",
            json!({"name": "t", "description": "first", "definition": diamond(0)}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let v2 = json!({"steps": {"only": {"agent": "template", "config": {"text": "hi"}}}});
    let (status, body) = app
        .put(&format!("/api/templates/{id}"), json!({"definition": v2}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id);
    assert_eq!(body["version"], 2);
    assert_eq!(body["name"], "t");
    assert_eq!(
        body["description"], "first",
        "a revise without description keeps it"
    );
    let steps = body["definition"]["steps"].as_object().unwrap();
    assert_eq!(steps.keys().collect::<Vec<_>>(), ["only"]);
    assert_eq!(steps["only"]["agent"], "template");

    let (status, body) = app
        .put(
            &format!("/api/templates/{id}"),
            json!({"definition": diamond(0), "description": "third"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 3);
    assert_eq!(body["description"], "third");

    let (_, got) = app.get(&format!("/api/templates/{id}")).await;
    assert_eq!(got["version"], 3);
    assert_eq!(
        app.counts().await,
        (1, 0),
        "a revision is not a new template"
    );
});

on_both_backends!(an_archived_template_starts_no_run, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let id = app.template_id("t", diamond(0)).await;
    let (status, body) = app
        .post(&format!("/api/templates/{id}/archive"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["archived"], true);
    assert_eq!(body["version"], 1);
    let (_, got) = app.get(&format!("/api/templates/{id}")).await;
    assert_eq!(got["archived"], true);

    let before = app.counts().await;
    let reply = app.start_run(&id, json!({})).await;
    expect_error(&reply, 409, "template_archived");
    assert_eq!(app.counts().await, before, "a refused start created a run");

    let reply = app
        .put(
            &format!("/api/templates/{id}"),
            json!({"definition": diamond(0)}),
        )
        .await;
    expect_error(&reply, 409, "template_archived");
    let reply = app
        .post(&format!("/api/templates/{id}/archive"), json!({}))
        .await;
    expect_error(&reply, 409, "template_archived");
    let (_, got) = app.get(&format!("/api/templates/{id}")).await;
    assert_eq!(got["version"], 1);
});

on_both_backends!(
    a_dependency_cycle_is_refused_naming_a_step_on_it,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let definition = json!({"steps": {
            "start": {"agent": "echo"},
            "loop_a": {"agent": "echo", "depends_on": ["start", "loop_b"]},
            "loop_b": {"agent": "echo", "depends_on": ["loop_a"]}
        }});
        let before = app.counts().await;
        let reply = app.create_template("bad", definition).await;
        let message = expect_error(&reply, 422, "dependency_cycle");
        assert!(
            message.contains("'loop_a'") || message.contains("'loop_b'"),
            "the message names no step on the cycle: {message}"
        );
        assert!(!message.contains("'start'"), "{message}");
        assert_eq!(app.counts().await, before);

        refused(
            &app,
            json!({"steps": {"selfish": {"agent": "echo", "depends_on": ["selfish"]}}}),
            422,
            "dependency_cycle",
            Some("selfish"),
        )
        .await;
    }
);

on_both_backends!(
    a_dependency_on_no_step_is_refused_naming_the_step,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        refused(
            &app,
            json!({"steps": {
                "a": {"agent": "echo"},
                "needy": {"agent": "echo", "depends_on": ["a", "ghost"]}
            }}),
            422,
            "unknown_dependency",
            Some("needy"),
        )
        .await;
    }
);

on_both_backends!(an_unknown_agent_is_refused_naming_the_step, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    refused(
        &app,
        json!({"steps": {
            "a": {"agent": "echo"},
            "mystery": {"agent": "gpt-17", "depends_on": ["a"]}
        }}),
        422,
        "unknown_agent",
        Some("mystery"),
    )
    .await;
});

on_both_backends!(
    an_agent_configuration_the_agent_refuses_is_refused_naming_the_step_and_the_field,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let cases = [
            (
                json!({"agent": "echo", "config": {"delay_ms": -1}}),
                "config.delay_ms",
            ),
            (
                json!({"agent": "echo", "config": {"dealy_ms": 5}}),
                "dealy_ms",
            ),
            (json!({"agent": "echo", "config": "fast"}), "'config'"),
            (json!({"agent": "template"}), "text"),
            (
                json!({"agent": "template", "config": {"text": 5}}),
                "config.text",
            ),
            (
                json!({"agent": "template", "config": {"text": "{% for x in %}"}}),
                "config.text",
            ),
        ];
        for (step, field) in cases {
            let definition = json!({"steps": {"a": {"agent": "echo"}, "badly": step}});
            refused(
                &app,
                definition.clone(),
                422,
                "invalid_agent_config",
                Some("badly"),
            )
            .await;
            let (_, body) = app.create_template("bad", definition).await;
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(field), "{field}: {message}");
        }
    }
);

on_both_backends!(an_empty_step_set_is_refused, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    refused(&app, json!({"steps": {}}), 422, "empty_definition", None).await;
});

on_both_backends!(
    an_input_mapping_to_a_step_not_upstream_is_refused,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        // b and c are siblings: c may not read b's output.
        refused(
            &app,
            json!({"steps": {
                "a": {"agent": "echo"},
                "b": {"agent": "echo", "depends_on": ["a"]},
                "c": {"agent": "echo", "depends_on": ["a"], "inputs": {"x": "b.value"}}
            }}),
            422,
            "invalid_input_mapping",
            Some("c"),
        )
        .await;
        // A source naming no step at all.
        refused(
            &app,
            json!({"steps": {
                "a": {"agent": "echo"},
                "reader": {"agent": "echo", "depends_on": ["a"], "inputs": {"x": "nobody.value"}}
            }}),
            422,
            "invalid_input_mapping",
            Some("reader"),
        )
        .await;
        // A source that is not <step>.<output>.
        refused(
            &app,
            json!({"steps": {
                "a": {"agent": "echo"},
                "reader": {"agent": "echo", "depends_on": ["a"], "inputs": {"x": "a"}}
            }}),
            422,
            "invalid_input_mapping",
            Some("reader"),
        )
        .await;
    }
);

on_both_backends!(a_malformed_step_is_refused_naming_the_step, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    refused(
        &app,
        json!({"steps": {
            "a": {"agent": "echo"},
            "typo": {"agent": "echo", "depends_on": ["a"], "dependson": ["a"]}
        }}),
        400,
        "malformed_definition",
        Some("typo"),
    )
    .await;
    refused(
        &app,
        json!({"steps": {"numeric": {"agent": 7}}}),
        400,
        "malformed_definition",
        Some("numeric"),
    )
    .await;
    refused(
        &app,
        json!({"steps": {"agentless": {"depends_on": []}}}),
        400,
        "malformed_definition",
        Some("agentless"),
    )
    .await;
    refused(
        &app,
        json!({"steps": {"lost": {"agent": "echo", "depends_on": "a"}}}),
        400,
        "malformed_definition",
        Some("lost"),
    )
    .await;
    refused(
        &app,
        json!({"steps": {"bad name": {"agent": "echo"}}}),
        400,
        "malformed_definition",
        Some("bad name"),
    )
    .await;
});

on_both_backends!(
    a_definition_without_the_shape_of_one_is_refused,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        for definition in [
            json!(null),
            json!([]),
            json!("steps"),
            json!({}),
            json!({"steps": []}),
            json!({"steps": {"a": {"agent": "echo"}}, "extra": true}),
        ] {
            refused(&app, definition, 400, "malformed_definition", None).await;
        }
    }
);

on_both_backends!(
    an_invalid_retry_policy_is_refused_naming_the_step,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        for retry in [
            json!({"max_attempts": 0}),
            json!({"max_attempts": 101}),
            json!({"max_attempts": 2, "backoff_ms": 3_600_001}),
        ] {
            refused(
                &app,
                json!({"steps": {
                    "a": {"agent": "echo"},
                    "retrier": {"agent": "echo", "depends_on": ["a"], "retry": retry}
                }}),
                422,
                "invalid_retry_policy",
                Some("retrier"),
            )
            .await;
        }
        for retry in [
            json!({"max_attempts": -1}),
            json!({"max_attempts": "3"}),
            json!({"max_attempts": 3, "jitter": true}),
            json!(3),
        ] {
            refused(
                &app,
                json!({"steps": {"retrier": {"agent": "echo", "retry": retry}}}),
                400,
                "malformed_definition",
                Some("retrier"),
            )
            .await;
        }
    }
);

on_both_backends!(a_template_needs_a_name, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let before = app.counts().await;
    let reply = app
        .post("/api/templates", json!({"definition": diamond(0)}))
        .await;
    expect_error(&reply, 400, "invalid_body");
    for name in ["", "   "] {
        let reply = app.create_template(name, diamond(0)).await;
        expect_error(&reply, 400, "invalid_name");
    }
    let reply = app.create_template(&"n".repeat(201), diamond(0)).await;
    expect_error(&reply, 400, "invalid_name");
    let reply = app
        .post(
            "/api/templates",
            json!({"name": 5, "definition": diamond(0)}),
        )
        .await;
    expect_error(&reply, 400, "invalid_body");
    let reply = app.post("/api/templates", json!({"name": "t"})).await;
    expect_error(&reply, 400, "invalid_body");
    assert_eq!(app.counts().await, before);
});

on_both_backends!(a_malformed_or_unexpected_body_is_refused, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let before = app.counts().await;
    for raw in [
        "{",
        "{\"name\": \"t\", \"definition\": }",
        "not json",
        "",
        "[]",
    ] {
        let reply = app.post_raw("/api/templates", raw).await;
        expect_error(&reply, 400, "invalid_body");
    }
    let reply = app
        .post(
            "/api/templates",
            json!({"name": "t", "definition": diamond(0), "owner": "me"}),
        )
        .await;
    expect_error(&reply, 400, "invalid_body");
    assert_eq!(app.counts().await, before);
});

on_both_backends!(
    a_revise_with_a_bad_definition_leaves_the_template_unchanged,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let (_, original) = app.create_template("t", diamond(0)).await;
        let id = original["id"].as_str().unwrap();
        let path = format!("/api/templates/{id}");
        let bad = [
            (
                json!({"steps": {"x": {"agent": "echo", "depends_on": ["x"]}}}),
                422,
                "dependency_cycle",
            ),
            (json!({"steps": {}}), 422, "empty_definition"),
            (
                json!({"steps": {"x": {"agent": "nope"}}}),
                422,
                "unknown_agent",
            ),
            (
                json!({"steps": {"x": {"agent": 7}}}),
                400,
                "malformed_definition",
            ),
        ];
        for (definition, status, code) in bad {
            let reply = app.put(&path, json!({"definition": definition})).await;
            let message = expect_error(&reply, status, code);
            if code != "empty_definition" {
                assert!(message.contains("'x'"), "{message}");
            }
        }
        let reply = app
            .put(&path, json!({"definition": diamond(0), "name": "renamed"}))
            .await;
        expect_error(&reply, 400, "invalid_body");
        let reply = app.put(&path, json!({})).await;
        expect_error(&reply, 400, "invalid_body");
        let reply = app.request("PUT", &path, None).await;
        expect_error(&reply, 400, "invalid_body");

        let (status, got) = app.get(&path).await;
        assert_eq!(status, 200);
        assert_eq!(got["version"], 1, "{got}");
        assert_eq!(got["definition"], original["definition"]);
        assert_eq!(got, original);
        assert_eq!(app.counts().await, (1, 0));
    }
);

on_both_backends!(an_unknown_template_is_not_found, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let _existing = app.template_id("t", diamond(0)).await;
    let before = app.counts().await;
    let path = "/api/templates/0b6d2a1e-5d3c-4a35-9d6e-0c6a8e2b9f10";
    expect_error(&app.get(path).await, 404, "template_not_found");
    expect_error(
        &app.put(path, json!({"definition": diamond(0)})).await,
        404,
        "template_not_found",
    );
    expect_error(
        &app.post(&format!("{path}/archive"), json!({})).await,
        404,
        "template_not_found",
    );
    assert_eq!(
        app.counts().await,
        before,
        "a PUT on no template created one"
    );
});

on_both_backends!(an_invalid_template_id_is_a_bad_request, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let before = app.counts().await;
    for id in ["bad%20id", "semi%3Bcolon", "dot.ted", &"x".repeat(65)] {
        let path = format!("/api/templates/{id}");
        expect_error(&app.get(&path).await, 400, "invalid_template_id");
        expect_error(
            &app.put(&path, json!({"definition": diamond(0)})).await,
            400,
            "invalid_template_id",
        );
        expect_error(
            &app.post(&format!("{path}/archive"), json!({})).await,
            400,
            "invalid_template_id",
        );
    }
    assert_eq!(app.counts().await, before);
});

on_both_backends!(listing_templates_checks_its_query, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=100000", "invalid_limit"),
        ("limit=501", "invalid_limit"),
        ("limit=-1", "invalid_query"),
        ("limit=ten", "invalid_query"),
        ("cursor=bogus", "invalid_cursor"),
        ("cursor=abc_def", "invalid_cursor"),
        ("sort=name", "invalid_query"),
    ] {
        let reply = app.get(&format!("/api/templates?{query}")).await;
        expect_error(&reply, 400, code);
    }
    let (status, page) = app.get("/api/templates?limit=500").await;
    assert_eq!(status, 200, "{page}");
});

on_both_backends!(names_are_unique_among_live_templates, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let first = app.template_id("report", diamond(0)).await;
    let before = app.counts().await;
    let reply = app.create_template("report", diamond(0)).await;
    let message = expect_error(&reply, 409, "template_name_taken");
    assert!(message.contains(&first), "{message}");
    assert_eq!(app.counts().await, before, "nothing was created");
    // Another name is fine; so is the name once its template is archived.
    app.template_id("report-2", diamond(0)).await;
    let (status, body) = app
        .post(&format!("/api/templates/{first}/archive"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let second = app.template_id("report", diamond(0)).await;
    assert_ne!(second, first);
    let reply = app.create_template("report", diamond(0)).await;
    let message = expect_error(&reply, 409, "template_name_taken");
    assert!(message.contains(&second), "{message}");
});

/// A template whose input must be `{"topic": string of at most 10}`.
fn with_input_schema() -> Value {
    let mut definition = diamond(0);
    definition["input_schema"] = json!({
        "type": "object",
        "required": ["topic"],
        "properties": {"topic": {"type": "string", "maxLength": 10}},
        "additionalProperties": false
    });
    definition
}

on_both_backends!(a_run_input_is_checked_against_the_input_schema, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let id = app.template_id("schema", with_input_schema()).await;
    let (_, template) = app.get(&format!("/api/templates/{id}")).await;
    assert_eq!(
        template["definition"]["input_schema"],
        with_input_schema()["input_schema"],
        "{template}"
    );
    let before = app.counts().await;
    for (input, path) in [
        (json!({"topic": 5}), "input.topic"),
        (json!({"topic": "far too long a topic"}), "input.topic"),
        (json!({}), "input"),
        (json!({"topic": "owls", "extra": 1}), "input"),
        (json!("owls"), "input"),
    ] {
        let (status, body) = app.start_run(&id, input.clone()).await;
        assert_eq!(status, 422, "{input}: {body}");
        assert_eq!(body["error"]["code"], "invalid_input", "{body}");
        assert_eq!(body["error"]["path"], path, "{input}: {body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(path), "{message}");
    }
    assert_eq!(app.counts().await, before, "no run was started");
    let (status, body) = app.start_run(&id, json!({"topic": "owls"})).await;
    assert_eq!(status, 201, "{body}");
    // `false` takes no input at all.
    let mut closed = diamond(0);
    closed["input_schema"] = json!(false);
    let closed = app.template_id("closed", closed).await;
    let (status, body) = app.start_run(&closed, json!({})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["path"], "input", "{body}");
});

on_both_backends!(an_unusable_input_schema_is_refused, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for (schema, status, code) in [
        (json!(5), 400, "malformed_definition"),
        (json!("object"), 400, "malformed_definition"),
        (json!({"type": "nonsense"}), 422, "invalid_input_schema"),
        (json!({"minLength": -1}), 422, "invalid_input_schema"),
    ] {
        let mut definition = diamond(0);
        definition["input_schema"] = schema;
        refused(&app, definition, status, code, None).await;
    }
});

on_both_backends!(
    a_definition_the_schema_refuses_names_the_failing_spot,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let before = app.counts().await;
        for (definition, status, code, path) in [
            (
                json!({"steps": {"a": {"agent": "echo", "retry": {"max_attempts": 0}}}}),
                422,
                "invalid_retry_policy",
                "/definition/steps/a/retry/max_attempts",
            ),
            (
                json!({"steps": {"a": {"agent": "echo", "dependson": []}}}),
                400,
                "malformed_definition",
                "/definition/steps/a/dependson",
            ),
            (
                json!({"steps": {"a": {"agent": "echo", "heartbeat_timeout_ms": 10}}}),
                422,
                "invalid_step_field",
                "/definition/steps/a/heartbeat_timeout_ms",
            ),
            (
                json!({"steps": {}}),
                422,
                "empty_definition",
                "/definition/steps",
            ),
        ] {
            let (got, body) = app.create_template("bad", definition.clone()).await;
            assert_eq!(got, status, "{definition}: {body}");
            assert_eq!(body["error"]["code"], code, "{body}");
            assert_eq!(body["error"]["path"], path, "{body}");
        }
        let id = app.template_id("good", diamond(0)).await;
        let (got, body) = app
            .put(
                &format!("/api/templates/{id}"),
                json!({"definition": {"steps": {"a": {"agent": "echo", "review": true, "choices": ["x", "x"]}}}}),
            )
            .await;
        assert_eq!(got, 422, "{body}");
        assert_eq!(body["error"]["code"], "invalid_choices", "{body}");
        assert_eq!(
            body["error"]["path"], "/definition/steps/a/choices",
            "{body}"
        );
        assert_eq!(app.counts().await, (before.0 + 1, before.1));
    }
);
