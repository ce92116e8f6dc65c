//! The API contract: the OpenAPI 3.1 document served at
//! `GET /api/openapi.json`, generated from the code.
//!
//! Each handler carries its operation (`#[utoipa::path]`: parameters,
//! request body, responses) beside it, and the bodies are the types the
//! handlers really read and write (`ToSchema`), so the document cannot
//! drift from them without a compile error or a failing contract test
//! (`tests/api/contract.rs` drives the running server from the document
//! with schemathesis). What holds for every operation is added once, by
//! [`Contract::modify`]: the bearer authentication, the 401/403 answers of
//! the authentication layer, the 400/413/415 answers of the JSON layer,
//! and the error body every 4xx carries.
//!
//! The WebSocket has no operations of its own in OpenAPI; its messages are
//! the components `WsClientMessage` and `WsServerMessage`, and
//! `GET /api/ws` (the upgrade) points at them.
//!
//! The domain stays free of this dependency: the schemas of the few domain
//! types that appear in answers (statuses, usage, conditions) are written
//! here by hand, as JSON Schema.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::{OpenApi, PartialSchema, ToSchema};

use crate::domain::definition::Condition;
use crate::domain::run::{RunStatus, StepStatus, Usage, UsageTotals};

/// The error body of every 4xx and 5xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorObject,
}

/// The error object: a stable `code` to act on, a `message` for people,
/// and, for some codes, structured detail beside them (`path` of
/// `invalid_input`, `unmet` of `prerequisites_not_met`).
#[derive(Debug, Serialize)]
pub struct ErrorObject {
    /// Machine-readable, stable (`run_not_found`, `invalid_body`, …).
    pub code: String,
    /// A sentence a person can act on.
    pub message: String,
    /// Structured detail, for some codes.
    #[serde(flatten)]
    pub detail: Map<String, Value>,
}

/// A list that is never paged: `{"items": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Items<T> {
    /// The items.
    pub items: Vec<T>,
}

/// Schemas written by hand, as JSON Schema, by name: utoipa sees a
/// placeholder (and makes references to the name), the document gets the
/// schema itself (see [`Contract::modify`]).
macro_rules! hand_written_schemas {
    ($($type:ty => $name:literal: $schema:expr,)*) => {
        $(
            impl PartialSchema for $type {
                fn schema() -> RefOr<Schema> {
                    RefOr::T(Schema::Object(Default::default()))
                }
            }
            impl ToSchema for $type {
                fn name() -> std::borrow::Cow<'static, str> {
                    std::borrow::Cow::Borrowed($name)
                }
            }
        )*
        /// The hand-written schemas, by name.
        fn hand_written() -> Vec<(&'static str, Value)> {
            vec![$(($name, $schema)),*]
        }
    };
}

/// A remote agent's task as a worker receives it (docs/agents.md).
pub struct Task;

hand_written_schemas! {
    ErrorObject => "ErrorObject": json!({
        "type": "object",
        "description": "A stable `code` to act on, a `message` for people, and, for some \
                        codes, structured detail beside them (`path` of `invalid_input`, \
                        `unmet` of `prerequisites_not_met`: an array of `UnmetRequirement`).",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "description": "Machine-readable and stable."},
            "message": {"type": "string", "description": "A sentence a person can act on."},
        },
        "additionalProperties": true,
    }),
    Task => "Task": json!({
        "type": "object",
        "description": "A remote agent's task: the run, the step, its inputs, prompt and \
                        configuration, and the lease (docs/agents.md).",
        "required": ["task_id", "lease_token", "lease_expires_at"],
        "properties": {
            "task_id": {"type": "string"},
            "lease_token": {"type": "string"},
            "lease_expires_at": {"type": "string", "format": "date-time"},
        },
        "additionalProperties": true,
    }),
    crate::domain::log::Position => "Position": json!({
        "type": "object",
        "description": "A place in the log: the writing transaction (0 on SQLite) and the \
                        event's place among those of its transaction and after.",
        "required": ["tx", "position"],
        "properties": {
            "tx": {"type": "integer", "minimum": 0},
            "position": {"type": "integer"},
        },
    }),
    RunStatus => "RunStatus": json!({
        "type": "string",
        "description": "A run's status.",
        "enum": ["queued", "running", "paused", "completed", "failed", "cancelled"],
    }),
    StepStatus => "StepStatus": json!({
        "type": "string",
        "description": "A step's status.",
        "enum": ["pending", "ready", "running", "awaiting_review", "awaiting_input", "completed", "failed", "skipped"],
    }),
    Usage => "Usage": json!({
        "type": "object",
        "description": "What one attempt's model calls used.",
        "required": ["model", "prompt_tokens", "completion_tokens"],
        "properties": {
            "model": {"type": "string"},
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "cost": {"type": "number"},
        },
    }),
    UsageTotals => "UsageTotals": json!({
        "type": "object",
        "description": "What a run's model calls used, every step together.",
        "required": ["prompt_tokens", "completion_tokens", "cost"],
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "cost": {"type": "number"},
        },
    }),
    Condition => "Condition": json!({
        "type": "object",
        "description": "A step runs only when this holds: an upstream output equals a value, \
                        or is one of several.",
        "required": ["step", "output"],
        "properties": {
            "step": {"type": "string"},
            "output": {"type": "string"},
            "equals": {},
            "in": {"type": "array"},
        },
    }),
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "runlog",
        description = "A durable, event-sourced workflow server for AI-agent DAGs. Every \
                       change is an event; see docs/api.md for the guide and docs/events.md \
                       for the event catalogue.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::openapi_document,
        super::templates::create,
        super::templates::list,
        super::templates::get,
        super::templates::revise,
        super::templates::archive,
        super::templates::available,
        super::runs::start,
        super::runs::list,
        super::runs::get,
        super::runs::retry,
        super::runs::pause,
        super::runs::resume,
        super::runs::cancel,
        super::runs::events,
        super::runs::export,
        super::runs::purge,
        super::runs::artifact,
        super::steering::redirect,
        super::steering::post_message,
        super::steering::messages,
        super::steering::auto_run,
        super::steering::approve,
        super::interactive::click,
        super::steering::retry_step,
        super::steering::trigger,
        super::steering::rollback,
        super::workers::agents,
        super::workers::claim,
        super::workers::heartbeat,
        super::workers::complete,
        super::workers::fail,
        super::workers::comment,
        super::workers::release,
        super::workers::peer_claim,
        super::admin::nodes,
        super::admin::projections,
        super::admin::rebuild,
        super::accounts::create_user,
        super::accounts::list_users,
        super::accounts::get_user,
        super::accounts::create_token,
        super::accounts::list_tokens,
        super::accounts::revoke_token,
        super::accounts::me,
        super::accounts::ws_ticket,
        super::ws::connect,
    ),
    components(schemas(ErrorBody, super::ws::ClientMessage, super::ws::ServerMessage)),
    tags(
        (name = "templates", description = "Workflow templates (admins create, revise and archive)."),
        (name = "runs", description = "Runs: start, read, follow, control."),
        (name = "steering", description = "Steering a live run: the thread, review gates, manual mode, retries, rollbacks."),
        (name = "workers", description = "The remote-worker protocol (worker token)."),
        (name = "admin", description = "Operators: nodes, projections and their rebuilds."),
        (name = "accounts", description = "Users, tokens and WebSocket tickets."),
        (name = "contract", description = "This document."),
    ),
)]
struct ApiDoc;

/// The document as this server answers it: the long-poll maxima are
/// settings, the agents a definition may name are this server's agents,
/// and the agents a worker may claim are the remote agents the
/// configuration declares.
pub fn document(
    bounds: &super::limits::InputLimits,
    max_steps: usize,
    agents: &[String],
    remote_agents: &[String],
) -> Value {
    let mut doc = generated().clone();
    let schemas = &mut doc["components"]["schemas"];
    schemas["Definition"]["properties"]["steps"]["maxProperties"] = json!(max_steps);
    enumerate(&mut schemas["DefinitionAgentName"], agents);
    enumerate(
        &mut schemas["Claim"]["properties"]["agents"]["items"],
        remote_agents,
    );
    if let Some(params) = doc["paths"]["/api/runs"]["post"]["parameters"].as_array_mut() {
        for p in params.iter_mut().filter(|p| p["name"] == "wait") {
            p["schema"]["maximum"] = json!(bounds.max_start_wait_seconds);
        }
    }
    doc["components"]["schemas"]["Claim"]["properties"]["wait_s"]["maximum"] =
        json!(bounds.max_claim_wait_seconds);
    doc
}

/// Narrows a name schema to the names this server knows (their pattern
/// says nothing more once they are listed).
fn enumerate(schema: &mut Value, names: &[String]) {
    schema["enum"] = json!(names);
    if let Some(object) = schema.as_object_mut() {
        object.remove("pattern");
    }
}

/// The document as generated, built once.
fn generated() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
        Contract::modify(&mut doc);
        doc
    })
}

/// The definition schema (`schema/definition.schema.json`, what the
/// server checks definitions with), embedded: its `$defs` become
/// components named `Definition…` and its references follow them.
fn embed_definition(schemas: &mut Map<String, Value>) {
    let mut schema: Value = serde_json::from_str(super::contract::DEFINITION_SCHEMA)
        .expect("the definition schema is JSON");
    let object = schema
        .as_object_mut()
        .expect("the definition schema is an object");
    object.remove("$schema");
    object.remove("$id");
    let defs = object.remove("$defs").unwrap_or_default();
    let mut defs = match defs {
        Value::Object(defs) => defs,
        _ => Map::new(),
    };
    rewrite_refs(&mut schema);
    for (name, def) in defs.iter_mut() {
        rewrite_refs(def);
        schemas.insert(format!("Definition{name}"), def.clone());
    }
    schemas.insert("Definition".into(), schema);
}

/// `#/$defs/X` → `#/components/schemas/DefinitionX`, everywhere.
fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get_mut("$ref") {
                if let Some(name) = target.strip_prefix("#/$defs/") {
                    *target = format!("#/components/schemas/Definition{name}");
                }
            }
            map.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// The `Allow` header of a resource (`/api/runs/{id}`): its methods in
/// the contract, and HEAD where GET is.
pub fn allowed_methods(pattern: &str) -> Option<String> {
    let item = generated()["paths"].get(pattern)?.as_object()?;
    let mut methods: Vec<String> = item.keys().map(|m| m.to_uppercase()).collect();
    if item.contains_key("get") {
        methods.push("HEAD".into());
    }
    Some(methods.join(", "))
}

/// An id as the server makes and takes them (`RunId`, `StepId`, …).
const ID: &str = "^[A-Za-z0-9_-]{1,64}$";

/// The schema of each path parameter, by name (and by path where a name
/// means two things).
fn path_parameter(path: &str, name: &str) -> Value {
    match name {
        "task_id" => json!({"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"}),
        "message_id" => json!({"type": "integer", "minimum": 1, "maximum": u32::MAX}),
        "name" if path.contains("/artifacts/") => json!({
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{1,64}\\.[A-Za-z0-9_-]{1,64}$",
            "description": "`step.output`",
        }),
        "name" => json!({"type": "string", "pattern": ID}),
        _ => json!({"type": "string", "pattern": ID}),
    }
}

/// The schema of a list's `cursor`: the thread's is a message number, the
/// others `<created_at ms>_<id>`.
fn cursor(path: &str) -> Value {
    if path.ends_with("/messages") {
        json!({"type": "string", "pattern": "^[0-9]{1,9}$"})
    } else {
        json!({"type": "string", "pattern": "^[0-9]{1,15}_[A-Za-z0-9_-]{1,64}$"})
    }
}

/// Text the server stores: no NUL anywhere (PostgreSQL cannot store one).
const TEXT: &str = "^[^\\u0000]*$";
/// Text that must not be blank either: a character that is neither NUL
/// nor whitespace (Rust's `char::is_whitespace`, which the server trims).
const NON_BLANK: &str = "^[^\\u0000]*[^\\u0000\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000]*$";

/// A string property: `pattern`, at most `max` characters, null allowed
/// where the generated schema allowed it.
fn string(existing: &Value, pattern: &str, max: Option<u64>) -> Value {
    let mut schema = json!({"type": "string", "pattern": pattern});
    if existing["type"]
        .as_array()
        .is_some_and(|types| types.iter().any(|t| t == "null"))
    {
        schema["type"] = json!(["string", "null"]);
    }
    if let Some(max) = max {
        schema["maxLength"] = json!(max);
    }
    if let Some(description) = existing.get("description") {
        schema["description"] = description.clone();
    }
    schema
}

/// What the server checks beyond the types, written into the request
/// schemas: lengths, patterns, text without NUL, text that is not blank.
/// (Attributes cannot share these patterns, so they are applied here, by
/// schema and property.)
fn refine_requests(schemas: &mut Map<String, Value>) {
    const NB: u8 = 0;
    const TX: u8 = 1;
    const PAT: u8 = 2;
    let rules: &[(&str, &str, u8, &str, Option<u64>)] = &[
        ("CreateTemplate", "name", NB, "", Some(200)),
        ("CreateTemplate", "description", TX, "", Some(10_000)),
        ("ReviseTemplate", "description", TX, "", Some(10_000)),
        ("Redirect", "instructions", NB, "", Some(32_000)),
        ("PromptOverride", "prompt_override", NB, "", Some(32_000)),
        ("Approve", "choice", TX, "", None),
        ("CancelBody", "reason", TX, "", Some(2_000)),
        ("CreateToken", "name", NB, "", Some(100)),
        ("CreateUser", "name", PAT, "^[A-Za-z0-9._@-]{1,64}$", None),
        ("Claim", "worker_id", PAT, "^[A-Za-z0-9._:@-]{1,128}$", None),
        ("Fail", "error", NB, "", Some(32_000)),
        ("Comment", "text", NB, "", Some(32_000)),
        ("PeerClaim", "step", PAT, ID, None),
        ("PeerClaim", "worker_id", NB, "", Some(32_000)),
        ("PeerClaim", "lease_token", PAT, LEASE, None),
        ("Lease", "lease_token", PAT, LEASE, None),
        ("Complete", "lease_token", PAT, LEASE, None),
        ("Fail", "lease_token", PAT, LEASE, None),
        ("Comment", "lease_token", PAT, LEASE, None),
        ("StartRun", "template_id", PAT, ID, None),
    ];
    for (schema, property, kind, pattern, max) in rules {
        let Some(slot) = schemas
            .get_mut(*schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(*property))
        else {
            panic!("no property {schema}.{property} to refine");
        };
        let pattern = match *kind {
            NB => NON_BLANK,
            TX => TEXT,
            _ => pattern,
        };
        *slot = string(slot, pattern, *max);
    }
    schemas["CreateUser"]["properties"]["role"] =
        json!({"type": "string", "enum": ["admin", "user"]});
    schemas["Claim"]["properties"]["agents"]["items"] = json!({"type": "string", "pattern": ID});
    // Free-form JSON (inputs, outputs, metadata): anything without a NUL.
    schemas.insert(
        "Json".into(),
        json!({
            "description": "Any JSON value without a NUL character in its strings or keys.",
            "anyOf": [
                {"type": ["null", "boolean", "number"]},
                {"type": "string", "pattern": TEXT},
                {"type": "array", "items": {"$ref": "#/components/schemas/Json"}},
                {"type": "object", "propertyNames": {"pattern": TEXT},
                 "additionalProperties": {"$ref": "#/components/schemas/Json"}},
            ],
        }),
    );
    let json_object = json!({
        "type": "object",
        "propertyNames": {"pattern": TEXT},
        "additionalProperties": {"$ref": "#/components/schemas/Json"},
    });
    schemas["StartRun"]["properties"]["input"] = json!({"$ref": "#/components/schemas/Json"});
    schemas["Complete"]["properties"]["outputs"] = json_object.clone();
    // A message: blank content is a comment's, an instruction's or a
    // redirect's fault only; a cancel's content is its reason.
    let message = &mut schemas["PostMessage"];
    message["properties"]["action"] = json!({
        "type": ["string", "null"],
        "enum": ["comment", "instruction", "pause", "resume", "cancel", "redirect", null],
        "description": "What it asks (default `comment`).",
    });
    message["properties"]["metadata"] = json!({"anyOf": [{"type": "null"}, json_object]});
    message["properties"]["content"] =
        string(&message["properties"]["content"], TEXT, Some(32_000));
    message["allOf"] = json!([
        {
            "if": {"properties": {"action": {"const": "cancel"}}, "required": ["action"]},
            "then": {"properties": {"content": {"maxLength": 2_000}}},
        },
        {
            "if": {"properties": {"action": {"enum": ["pause", "resume", "cancel"]}}, "required": ["action"]},
            "else": {"properties": {"content": {"pattern": NON_BLANK}}},
        },
    ]);
    // A definition has the definition's shape, and no NUL (it is stored).
    for body in ["CreateTemplate", "ReviseTemplate"] {
        let field = &mut schemas[body]["properties"]["definition"];
        let description = field["description"].clone();
        *field = json!({
            "description": description,
            "allOf": [
                {"$ref": "#/components/schemas/Definition"},
                {"$ref": "#/components/schemas/Json"},
            ],
        });
    }
}

/// A lease token: what the server hands out is visible ASCII.
const LEASE: &str = "^[!-~]{1,256}$";

/// Operations whose body may be left out.
const OPTIONAL_BODIES: &[&str] = &[
    "runs_cancel",
    "steering_approve",
    "steering_retry_step",
    "steering_trigger",
    "accounts_ws_ticket",
];

/// What every operation shares, added to the generated document.
struct Contract;

/// Operations anyone may call (no token).
const PUBLIC: &[&str] = &["/api/openapi.json"];

impl Contract {
    fn modify(doc: &mut Value) {
        let components = doc["components"].as_object_mut().expect("components");
        let schemas = components["schemas"].as_object_mut().expect("schemas");
        embed_definition(schemas);
        for (name, schema) in hand_written() {
            schemas.insert(name.into(), schema);
        }
        refine_requests(schemas);
        components.insert(
            "securitySchemes".into(),
            json!({
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (`rl_…`): `Authorization: Bearer rl_…`.",
                },
                "workerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The worker token (`--worker-token`), on the worker protocol.",
                },
            }),
        );
        components.insert(
            "responses".into(),
            json!({
                "Error": {
                    "description": "Refused: `{\"error\": {\"code\", \"message\"}}`.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                },
            }),
        );
        let error = json!({"$ref": "#/components/responses/Error"});
        let paths = doc["paths"].as_object_mut().expect("paths");
        for (path, item) in paths.iter_mut() {
            let public = PUBLIC.contains(&path.as_str());
            let has_path_params = path.contains('{');
            for (_method, operation) in item.as_object_mut().expect("a path item").iter_mut() {
                let Some(operation) = operation.as_object_mut() else {
                    continue;
                };
                // Function names repeat across modules (`get`, `list`):
                // the tag makes them unique.
                if let Some(params) = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                {
                    for p in params.iter_mut() {
                        let name = p["name"].as_str().unwrap_or_default().to_string();
                        if p["in"] == "path" {
                            p["schema"] = path_parameter(path, &name);
                        } else if p["in"] == "query" && name == "cursor" {
                            p["schema"] = cursor(path);
                        }
                    }
                }
                if let (Some(Value::String(id)), Some(tag)) = (
                    operation.get("operationId").cloned(),
                    operation["tags"][0].as_str().map(str::to_string),
                ) {
                    operation.insert("operationId".into(), json!(format!("{tag}_{id}")));
                }
                let id = operation["operationId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if OPTIONAL_BODIES.contains(&id.as_str()) {
                    operation["requestBody"]["required"] = json!(false);
                }
                for p in operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                    .filter(|p| p["name"] == "Idempotency-Key")
                {
                    p["schema"] = json!({"type": "string", "pattern": "^[!-~]{1,255}$"});
                }
                let has_body = operation.contains_key("requestBody");
                let has_query = operation
                    .get("parameters")
                    .and_then(Value::as_array)
                    .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query" || p["in"] == "header"));
                let responses = operation
                    .entry("responses")
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("responses");
                let mut add = |status: &str| {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| error.clone());
                };
                if !public {
                    add("401");
                    add("403");
                }
                if has_body || has_query || has_path_params {
                    add("400");
                }
                if has_body {
                    add("413");
                    add("415");
                }
                // Every answer may be an error of the server (5xx), with the
                // error body.
                add("500");
                // A client too slow to send its request is cut off (after
                // 5 s) by the HTTP layer, before any handler: no body.
                responses.entry("408").or_insert_with(|| {
                    json!({"description": "The request did not arrive in time (the server \
                        cuts off a client that takes more than 5 s to send it); no body."})
                });
                if !public && !operation.contains_key("security") {
                    operation.insert("security".into(), json!([{"token": []}]));
                }
            }
        }
    }
}

/// Serves the document.
pub(super) fn serve(
    bounds: &super::limits::InputLimits,
    max_steps: usize,
    agents: &[String],
    remote_agents: &[String],
) -> HttpResponse {
    HttpResponse::Ok().json(document(bounds, max_steps, agents, remote_agents))
}
