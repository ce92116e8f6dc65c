//! The JSON Schemas of `schema/events/` against what the store holds: events
//! of every type, written through the real store to a real SQLite file and
//! a real PostgreSQL database and read back from the `events` table, each
//! validated against the schema of its `event_type` and `event_version`;
//! the stored older versions of `tests/fixtures/events/older_versions.json`
//! against the schemas of those versions; and `schema/events/index.json`
//! against the files beside it and the versions the code writes, so that an
//! event type or version without a schema (or a schema of none) fails here.

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use common::Storage;
use cqrs_es::DomainEvent;
use runlog::db::Db;
use runlog::domain::definition::Definition;
use runlog::domain::ids::{
    ArtifactName, LeaseToken, RunId, StepId, TemplateId, Timestamp, TokenId, UserId,
};
use runlog::domain::prerequisites::Import;
use runlog::domain::run::{
    Action, ArtifactContent, ArtifactWritten, Author, Button, ImportedRead, MessageInput,
    MessageStatus, PurgedVersion, Run, RunEvent, Usage,
};
use runlog::domain::template::{Template, TemplateEvent};
use runlog::domain::user::{Role, User, UserEvent};
use runlog::store::{self, AggregateStore};
use serde_json::{json, Value};

/// Where the schemas live.
fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema")
}

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// `schema/events/index.json`.
fn index() -> Value {
    read_json(schema_dir().join("events/index.json"))
}

/// The compiled schema of every event type and version of the index.
struct EventSchemas {
    validators: BTreeMap<(String, String), jsonschema::Validator>,
}

impl EventSchemas {
    fn load() -> Self {
        let dir = schema_dir();
        // The files the event schemas refer to, by their `$id`.
        let shared = [
            read_json(dir.join("definition.schema.json")),
            read_json(dir.join("events/common.schema.json")),
        ];
        let registry = jsonschema::Registry::new()
            .extend(
                shared
                    .iter()
                    .map(|s| (s["$id"].as_str().unwrap().to_string(), s.clone())),
            )
            .expect("the shared schemas register")
            .prepare()
            .expect("the shared schemas resolve");
        let mut validators = BTreeMap::new();
        for (event_type, entry) in index()["events"].as_object().expect("events") {
            for (version, file) in entry["versions"].as_object().expect("versions") {
                let file = file.as_str().expect("a file name");
                let schema = read_json(dir.join("events").join(file));
                jsonschema::meta::validate(&schema)
                    .unwrap_or_else(|e| panic!("{file} is not a JSON Schema: {e}"));
                let validator = jsonschema::options()
                    .with_registry(&registry)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("{file} does not compile: {e}"));
                validators.insert((event_type.clone(), version.clone()), validator);
            }
        }
        Self { validators }
    }

    /// Checks a stored payload against the schema of its type and version.
    fn check(&self, event_type: &str, event_version: &str, payload: &Value) {
        let validator = self
            .validators
            .get(&(event_type.to_string(), event_version.to_string()))
            .unwrap_or_else(|| {
                panic!("no schema for {event_type} {event_version} in schema/events/index.json")
            });
        let errors: Vec<String> = validator
            .iter_errors(payload)
            .map(|e| format!("{} at '{}'", e, e.instance_path().as_str()))
            .collect();
        assert!(
            errors.is_empty(),
            "{event_type} {event_version} does not match its schema: {errors:?}\n{payload}"
        );
    }
}

fn step(name: &str) -> StepId {
    StepId::parse(name).unwrap()
}

fn artifact(name: &str) -> ArtifactName {
    ArtifactName::parse(name).unwrap()
}

fn run_id(id: &str) -> RunId {
    RunId::parse(id).unwrap()
}

fn definition() -> Definition {
    Definition::parse(&json!({
        "budget": {"max_tokens": 100},
        "input_schema": {"type": "object"},
        "steps": {
            "a": {"agent": "echo", "prompt": "p", "config": {"delay_ms": 0}},
            "b": {"agent": "echo", "depends_on": ["a"], "review": true, "choices": ["x", "y"],
                  "inputs": {"in": "a.text"}, "retry": {"max_attempts": 2, "backoff_ms": 5},
                  "heartbeat_timeout_ms": 5000, "budget": {"max_cost": 0.5}},
            "c": {"agent": "echo", "depends_on": ["b"],
                  "when": {"step": "b", "output": "choice", "in": ["x"]},
                  "refine": {"evaluator": "judge", "max_attempts": 3, "pass_threshold": 0.8},
                  "inputs": {"plan": "generator: v2:plan.choice"}}
        },
        "requires": {
            "workflows": [{"template": "generator: v2", "reason": "needs files"},
                          {"template": "probe", "status": "failed", "reason": "after a failure"}],
            "artifacts": [{"template": "generator: v2", "artifact": "plan.choice",
                           "reason": "needs an approved plan"}]
        },
        "provides": {"artifacts": ["c.text"]}
    }))
    .unwrap()
}

fn usage(cost: Option<f64>) -> Usage {
    Usage {
        model: "fake".into(),
        prompt_tokens: 8,
        completion_tokens: 6,
        cost,
    }
}

fn written() -> Vec<ArtifactWritten> {
    vec![
        ArtifactWritten {
            name: artifact("a.text"),
            version: 1,
            content: ArtifactContent::Inline(json!({"any": ["json", 1, null]})),
        },
        ArtifactWritten {
            name: artifact("a.big"),
            version: 2,
            content: ArtifactContent::Blob {
                sha256: "4c392a7bdaae14653a367b946151467159adfc8c27169211a39a6f2c2538b0ee".into(),
                size: 10_002,
            },
        },
    ]
}

/// Every run event variant, each with its optional fields set and unset.
fn run_events() -> Vec<RunEvent> {
    let at = Timestamp(1_795_250_849_204);
    let a = step("a");
    let lease = LeaseToken::new("17616e51fd3341098971000a7cf76b6b.1");
    let reads = BTreeMap::from([(artifact("a.text"), 1)]);
    let started = |retry_of, redirected_from, owner, imports| RunEvent::RunStarted {
        run_id: run_id("r1"),
        template_id: TemplateId::parse("t1").unwrap(),
        template_version: 3,
        definition: definition(),
        input: json!({"topic": "owls"}),
        ready: vec![a.clone()],
        retry_of,
        redirected_from,
        auto_run: false,
        owner,
        imports,
        at,
    };
    let imports = vec![
        Import {
            template: "generator: v2".into(),
            artifact: artifact("plan.choice"),
            run_id: run_id("r-1"),
            version: 2,
            content: ArtifactContent::Inline(json!("approved")),
        },
        Import {
            template: "generator: v2".into(),
            artifact: artifact("files.all"),
            run_id: run_id("r-1"),
            version: 1,
            content: written()[1].content.clone(),
        },
    ];
    let posted = |metadata, step, idempotency_key, reason| RunEvent::MessagePosted {
        message: 1,
        author: Author::User,
        action: Action::Instruction,
        content: "Write about barn owls".into(),
        metadata,
        step,
        idempotency_key,
        status: MessageStatus::Ignored,
        reason,
        buttons: Vec::new(),
        input: None,
        at,
    };
    vec![
        started(None, None, None, Vec::new()),
        started(
            Some(run_id("r0")),
            Some(run_id("r00")),
            Some(UserId::parse("u1").unwrap()),
            imports,
        ),
        RunEvent::StepDispatched {
            step: a.clone(),
            attempt: 1,
            lease: lease.clone(),
            reads: BTreeMap::new(),
            recovered: false,
            prompt_override: None,
            instructions: Vec::new(),
            evaluating: false,
            imports: BTreeMap::new(),
            at,
        },
        RunEvent::StepDispatched {
            step: a.clone(),
            attempt: 2,
            lease: lease.clone(),
            reads: reads.clone(),
            recovered: true,
            prompt_override: Some("Write about barn owls".into()),
            instructions: vec![1, 2],
            evaluating: true,
            imports: BTreeMap::from([(
                "generator: v2:plan.choice".to_string(),
                ImportedRead {
                    run_id: run_id("r-1"),
                    version: 2,
                },
            )]),
            at,
        },
        RunEvent::StepCompleted {
            step: a.clone(),
            attempt: 1,
            artifacts: Vec::new(),
            ready: Vec::new(),
            skipped: Vec::new(),
            usage: None,
            latest: BTreeMap::new(),
            final_score: None,
            at,
        },
        RunEvent::StepCompleted {
            step: a.clone(),
            attempt: 1,
            artifacts: written(),
            ready: vec![step("b")],
            skipped: vec![step("c")],
            usage: Some(usage(Some(2e-5))),
            latest: reads.clone(),
            final_score: Some(0.9),
            at,
        },
        RunEvent::StepFailed {
            step: a.clone(),
            attempt: 1,
            error: "boom".into(),
            will_retry: true,
            fails_run: false,
            retryable: true,
            at,
        },
        RunEvent::StepRetryScheduled {
            step: a.clone(),
            next_attempt: 2,
            delay_ms: 200,
            due_at: at.plus_millis(200),
            at,
        },
        RunEvent::RunCompleted { at },
        RunEvent::RunFailed {
            step: a.clone(),
            error: "boom".into(),
            at,
        },
        RunEvent::PauseRequested { at },
        RunEvent::RunPaused { at },
        RunEvent::RunResumed { at },
        RunEvent::CancelRequested {
            reason: None,
            grace_until: None,
            at,
        },
        RunEvent::CancelRequested {
            reason: Some("no longer needed".into()),
            grace_until: Some(at.plus_millis(5000)),
            at,
        },
        RunEvent::RunCancelled { reason: None, at },
        RunEvent::RunCancelled {
            reason: Some("no longer needed".into()),
            at,
        },
        posted(Value::Null, None, None, None),
        posted(
            json!({"client": "cli"}),
            Some(a.clone()),
            Some("key-1".into()),
            Some("the run has finished".into()),
        ),
        RunEvent::MessageStatusChanged {
            message: 1,
            status: MessageStatus::Acknowledged,
            step: None,
            reason: None,
            at,
        },
        RunEvent::MessageStatusChanged {
            message: 1,
            status: MessageStatus::Ignored,
            step: Some(a.clone()),
            reason: Some("the run ended".into()),
            at,
        },
        RunEvent::StepAwaitingReview {
            step: a.clone(),
            attempt: 1,
            artifacts: written(),
            usage: None,
            at,
        },
        RunEvent::StepAwaitingReview {
            step: a.clone(),
            attempt: 1,
            artifacts: Vec::new(),
            usage: Some(usage(None)),
            at,
        },
        RunEvent::StepApproved {
            step: a.clone(),
            attempt: 1,
            choice: None,
            at,
        },
        RunEvent::MessagePosted {
            message: 2,
            author: Author::Agent,
            action: Action::Comment,
            content: "How do you want your track?".into(),
            metadata: Value::Null,
            step: Some(a.clone()),
            idempotency_key: None,
            status: MessageStatus::Processed,
            reason: None,
            buttons: vec![
                Button {
                    id: "ai".into(),
                    label: "Generate with AI".into(),
                    value: "ai".into(),
                    user_message: Some("I want to generate an AI track".into()),
                    next_step: Some(a.clone()),
                },
                Button {
                    id: "upload".into(),
                    label: "Upload".into(),
                    value: "upload".into(),
                    user_message: None,
                    next_step: None,
                },
            ],
            input: Some(MessageInput {
                file: true,
                prompt: false,
            }),
            at,
        },
        RunEvent::StepAwaitingInput {
            step: a.clone(),
            attempt: 1,
            artifacts: written(),
            usage: Some(usage(None)),
            message: 2,
            at,
        },
        RunEvent::ButtonClicked {
            message: 2,
            button: "ai".into(),
            value: "ai".into(),
            step: a.clone(),
            idempotency_key: Some("click-1".into()),
            at,
        },
        RunEvent::StepApproved {
            step: a.clone(),
            attempt: 1,
            choice: Some("x".into()),
            at,
        },
        RunEvent::StepInterrupted {
            step: a.clone(),
            attempt: 1,
            at,
        },
        RunEvent::AutoRunChanged { enabled: true, at },
        RunEvent::StepRetryRequested {
            step: a.clone(),
            prompt_override: None,
            invalidated: Vec::new(),
            reopens_run: false,
            at,
        },
        RunEvent::StepRetryRequested {
            step: a.clone(),
            prompt_override: Some("again".into()),
            invalidated: vec![step("b")],
            reopens_run: true,
            at,
        },
        RunEvent::ArtifactRolledBack {
            name: artifact("a.text"),
            from_version: 2,
            to_version: 1,
            invalidated: vec![step("b")],
            ready: vec![step("b")],
            skipped: Vec::new(),
            reopens_run: true,
            at,
        },
        RunEvent::RunRedirected {
            to: run_id("r2"),
            instructions: "focus on barn owls".into(),
            at,
        },
        RunEvent::StepProduced {
            step: a.clone(),
            attempt: 1,
            artifacts: written(),
            usage: None,
            at,
        },
        RunEvent::StepProduced {
            step: a.clone(),
            attempt: 1,
            artifacts: Vec::new(),
            usage: Some(usage(Some(0.0))),
            at,
        },
        RunEvent::StepEvaluated {
            step: a.clone(),
            attempt: 1,
            score: 0.25,
            feedback: "longer".into(),
            passed: false,
            usage: None,
            at,
        },
        RunEvent::StepEvaluated {
            step: a.clone(),
            attempt: 1,
            score: 1.0,
            feedback: String::new(),
            passed: true,
            usage: Some(usage(None)),
            at,
        },
        RunEvent::StepClaimed {
            step: a.clone(),
            attempt: 1,
            worker: "w1".into(),
            lease_expires_at: at.plus_millis(9000),
            at,
        },
        RunEvent::StepHeartbeat {
            step: a.clone(),
            attempt: 1,
            lease_expires_at: at.plus_millis(9000),
            at,
        },
        RunEvent::StepLeaseExpired {
            step: a.clone(),
            attempt: 1,
            worker: "w1".into(),
            expiries: 2,
            at,
        },
        RunEvent::StepReleased {
            step: a.clone(),
            attempt: 1,
            at,
        },
        RunEvent::ArtifactsPurged {
            versions: Vec::new(),
            finished_before: at,
            at,
        },
        RunEvent::ArtifactsPurged {
            versions: vec![PurgedVersion {
                name: artifact("a.big"),
                version: 2,
                sha256: "4c392a7bdaae14653a367b946151467159adfc8c27169211a39a6f2c2538b0ee".into(),
                size: 10_002,
            }],
            finished_before: at,
            at,
        },
        RunEvent::StepLeaseRevoked {
            step: a,
            attempt: 1,
            at,
        },
    ]
}

/// Which variant an event is. No wildcard: a new variant does not compile
/// until it is listed here, and then fails `every_variant_is_sampled` until
/// `run_events` holds one (and the index a schema for it).
fn variant(event: &RunEvent) -> &'static str {
    match event {
        RunEvent::RunStarted { .. } => "RunStarted",
        RunEvent::StepDispatched { .. } => "StepDispatched",
        RunEvent::StepCompleted { .. } => "StepCompleted",
        RunEvent::StepFailed { .. } => "StepFailed",
        RunEvent::StepRetryScheduled { .. } => "StepRetryScheduled",
        RunEvent::RunCompleted { .. } => "RunCompleted",
        RunEvent::RunFailed { .. } => "RunFailed",
        RunEvent::PauseRequested { .. } => "PauseRequested",
        RunEvent::RunPaused { .. } => "RunPaused",
        RunEvent::RunResumed { .. } => "RunResumed",
        RunEvent::CancelRequested { .. } => "CancelRequested",
        RunEvent::RunCancelled { .. } => "RunCancelled",
        RunEvent::MessagePosted { .. } => "MessagePosted",
        RunEvent::StepAwaitingInput { .. } => "StepAwaitingInput",
        RunEvent::ButtonClicked { .. } => "ButtonClicked",
        RunEvent::MessageStatusChanged { .. } => "MessageStatusChanged",
        RunEvent::StepAwaitingReview { .. } => "StepAwaitingReview",
        RunEvent::StepApproved { .. } => "StepApproved",
        RunEvent::StepInterrupted { .. } => "StepInterrupted",
        RunEvent::AutoRunChanged { .. } => "AutoRunChanged",
        RunEvent::StepRetryRequested { .. } => "StepRetryRequested",
        RunEvent::ArtifactRolledBack { .. } => "ArtifactRolledBack",
        RunEvent::RunRedirected { .. } => "RunRedirected",
        RunEvent::StepClaimed { .. } => "StepClaimed",
        RunEvent::StepHeartbeat { .. } => "StepHeartbeat",
        RunEvent::StepLeaseExpired { .. } => "StepLeaseExpired",
        RunEvent::StepReleased { .. } => "StepReleased",
        RunEvent::StepLeaseRevoked { .. } => "StepLeaseRevoked",
        RunEvent::StepProduced { .. } => "StepProduced",
        RunEvent::StepEvaluated { .. } => "StepEvaluated",
        RunEvent::ArtifactsPurged { .. } => "ArtifactsPurged",
    }
}

fn template_events() -> Vec<TemplateEvent> {
    let at = Timestamp(1_795_244_323_182);
    vec![
        TemplateEvent::TemplateCreated {
            template_id: TemplateId::parse("t1").unwrap(),
            name: "big".into(),
            description: None,
            version: 1,
            definition: definition(),
            at,
        },
        TemplateEvent::TemplateRevised {
            version: 2,
            definition: definition(),
            description: Some("v2".into()),
            at,
        },
        TemplateEvent::TemplateArchived { at },
    ]
}

fn template_variant(event: &TemplateEvent) -> &'static str {
    match event {
        TemplateEvent::TemplateCreated { .. } => "TemplateCreated",
        TemplateEvent::TemplateRevised { .. } => "TemplateRevised",
        TemplateEvent::TemplateArchived { .. } => "TemplateArchived",
    }
}

fn user_events() -> Vec<UserEvent> {
    let at = Timestamp(1_795_244_323_182);
    let token = |expires_at| UserEvent::TokenIssued {
        token_id: TokenId::parse("k1").unwrap(),
        name: "laptop".into(),
        digest: "4c392a7bdaae14653a367b946151467159adfc8c27169211a39a6f2c2538b0ee".into(),
        read_only: true,
        expires_at,
        at,
    };
    vec![
        UserEvent::UserCreated {
            user_id: UserId::parse("admin").unwrap(),
            name: "admin".into(),
            role: Role::Admin,
            at,
        },
        UserEvent::UserCreated {
            user_id: UserId::parse("u1").unwrap(),
            name: "ada@example".into(),
            role: Role::User,
            at,
        },
        token(None),
        token(Some(at.plus_millis(60_000))),
        UserEvent::TokenRevoked {
            token_id: TokenId::parse("k1").unwrap(),
            at,
        },
    ]
}

fn user_variant(event: &UserEvent) -> &'static str {
    match event {
        UserEvent::UserCreated { .. } => "UserCreated",
        UserEvent::TokenIssued { .. } => "TokenIssued",
        UserEvent::TokenRevoked { .. } => "TokenRevoked",
    }
}

#[test]
fn every_variant_is_sampled_and_the_index_lists_exactly_the_versions_the_code_writes() {
    let runs = run_events();
    let sampled: BTreeSet<&str> = runs.iter().map(variant).collect();
    assert_eq!(
        sampled,
        RunEvent::TYPES.into_iter().collect(),
        "run_events() lacks a variant"
    );
    let mut written: BTreeMap<String, (String, &str)> = BTreeMap::new();
    for event in &runs {
        assert_eq!(event.event_type(), variant(event));
        written.insert(event.event_type(), (event.event_version(), "Run"));
    }
    for event in template_events() {
        assert_eq!(event.event_type(), template_variant(&event));
        written.insert(event.event_type(), (event.event_version(), "Template"));
    }
    for event in user_events() {
        assert_eq!(event.event_type(), user_variant(&event));
        written.insert(event.event_type(), (event.event_version(), "User"));
    }
    let index = index();
    let listed = index["events"].as_object().unwrap();
    assert_eq!(
        listed.keys().collect::<BTreeSet<_>>(),
        written.keys().collect::<BTreeSet<_>>(),
        "schema/events/index.json lists other event types than the code has"
    );
    for (event_type, (version, aggregate)) in &written {
        let entry = &listed[event_type];
        assert_eq!(entry["current"], json!(version), "{event_type}");
        assert_eq!(entry["aggregate"], json!(aggregate), "{event_type}");
        assert!(
            entry["versions"].get(version).is_some(),
            "{event_type} {version} has no schema"
        );
    }
}

#[test]
fn the_index_names_every_event_schema_file_and_each_file_names_itself() {
    let dir = schema_dir().join("events");
    let mut listed = BTreeSet::new();
    for (event_type, entry) in index()["events"].as_object().unwrap() {
        for (version, file) in entry["versions"].as_object().unwrap() {
            let file = file.as_str().unwrap();
            assert_eq!(file, format!("{event_type}.v{version}.json"));
            let schema = read_json(dir.join(file));
            assert_eq!(
                schema["$id"],
                json!(format!("https://runlog.invalid/schema/events/{file}"))
            );
            assert_eq!(schema["required"], json!([event_type]), "{file}");
            listed.insert(file.to_string());
        }
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "index.json" && name != "common.schema.json")
        .collect();
    assert_eq!(
        on_disk, listed,
        "files in schema/events/ that the index does not list, or the reverse"
    );
}

#[test]
fn older_event_payloads_match_the_schemas_of_their_versions() {
    let schemas = EventSchemas::load();
    let fixture = read_json(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events/older_versions.json"),
    );
    let index = index();
    let mut older_in_fixture = BTreeSet::new();
    for run in fixture["runs"].as_array().unwrap() {
        for entry in run["events"].as_array().unwrap() {
            let event_type = entry["event_type"].as_str().unwrap();
            let version = entry["event_version"].as_str().unwrap();
            let current = index["events"][event_type]["current"].as_str().unwrap();
            // The store keeps payloads tagged by variant.
            schemas.check(event_type, version, &json!({ event_type: entry["stored"] }));
            // What the upcasters make of it is today's version.
            schemas.check(
                event_type,
                current,
                &json!({ event_type: entry["expected"] }),
            );
            if version != current {
                older_in_fixture.insert(format!("{event_type} {version}"));
            }
        }
    }
    let older_in_index: BTreeSet<String> = index["events"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(event_type, entry)| {
            let current = entry["current"].as_str().unwrap().to_string();
            entry["versions"]
                .as_object()
                .unwrap()
                .keys()
                .filter(move |v| **v != current)
                .map(move |v| format!("{event_type} {v}"))
        })
        .collect();
    assert_eq!(
        older_in_index, older_in_fixture,
        "every older version with a schema has a stored example, and the reverse"
    );
}

/// The rows of the `events` table, in the order they were written.
async fn stored_rows(db: &Db) -> Vec<(String, String, String, Value)> {
    runlog::with_pool!(db, pool => {
        sqlx::query_as::<_, (String, String, String, Value)>(
            "SELECT aggregate_type, event_type, event_version, payload FROM events \
             ORDER BY aggregate_type, aggregate_id, sequence",
        )
        .fetch_all(pool)
        .await
        .expect("read the events table")
    })
}

async fn commit<A: store::Snapshotted + 'static>(db: &Db, id: &str, events: Vec<A::Event>) {
    AggregateStore::<A>::new(db, 0)
        .commit(
            id,
            A::default(),
            0,
            None,
            events,
            HashMap::from([("recorded_at".to_string(), "test".to_string())]),
            None,
        )
        .await
        .expect("commit");
}

on_both_backends!(every_stored_event_matches_its_schema, |backend| {
    let Some(storage) = Storage::new(backend).await else {
        return;
    };
    let db = Db::connect(storage.database_url.as_deref(), &storage.data_dir)
        .await
        .expect("connect to the test database");
    store::migrate(&db).await.expect("migrate");
    let schemas = EventSchemas::load();
    // Each event in a run of its own, so that no fold is needed.
    let runs = run_events();
    for (i, event) in runs.iter().enumerate() {
        commit::<Run>(&db, &format!("run-{i}"), vec![event.clone()]).await;
    }
    commit::<Template>(&db, "t1", template_events()).await;
    commit::<User>(&db, "u1", user_events()).await;

    let rows = stored_rows(&db).await;
    assert_eq!(
        rows.len(),
        runs.len() + template_events().len() + user_events().len()
    );
    let mut seen = BTreeSet::new();
    for (aggregate, event_type, version, payload) in &rows {
        schemas.check(event_type, version, payload);
        seen.insert((aggregate.clone(), event_type.clone()));
    }
    let expected: BTreeSet<(String, String)> = runs
        .iter()
        .map(|e| ("Run".to_string(), e.event_type()))
        .chain(
            template_events()
                .iter()
                .map(|e| ("Template".to_string(), e.event_type())),
        )
        .chain(
            user_events()
                .iter()
                .map(|e| ("User".to_string(), e.event_type())),
        )
        .collect();
    assert_eq!(seen, expected);
});

#[test]
fn the_schemas_refuse_payloads_the_code_does_not_write() {
    let schemas = EventSchemas::load();
    let valid = |event_type: &str, version: &str, payload: &Value| {
        schemas.validators[&(event_type.to_string(), version.to_string())].is_valid(payload)
    };
    let completed = serde_json::to_value(&run_events()[5]).unwrap();
    assert!(valid("StepCompleted", "1.2", &completed));
    // Untagged, a field the version does not have, a field missing.
    assert!(!valid("StepCompleted", "1.2", &completed["StepCompleted"]));
    assert!(!valid("StepCompleted", "1.0", &completed));
    let mut missing = completed.clone();
    missing["StepCompleted"]
        .as_object_mut()
        .unwrap()
        .remove("attempt");
    assert!(!valid("StepCompleted", "1.2", &missing));
    let mut extra = completed.clone();
    extra["StepCompleted"]["colour"] = json!("red");
    assert!(!valid("StepCompleted", "1.2", &extra));
    let mut blob = completed;
    blob["StepCompleted"]["artifacts"][1]["content"]["blob"]["sha256"] = json!("XYZ");
    assert!(!valid("StepCompleted", "1.2", &blob));
    // The copied definition is checked against schema/definition.schema.json.
    let mut started = serde_json::to_value(&run_events()[0]).unwrap();
    assert!(valid("RunStarted", "1.3", &started));
    started["RunStarted"]["definition"]["steps"]["a"]["retry"] = json!({"max_attempts": 0});
    assert!(!valid("RunStarted", "1.3", &started));
    // 1.2 added auto_run, which 1.1 did not have.
    let started = serde_json::to_value(&run_events()[0]).unwrap();
    assert!(!valid("RunStarted", "1.1", &started));
}
