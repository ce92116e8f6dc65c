//! `runlog fake-llm`: a small, deterministic stand-in for an
//! OpenAI-compatible chat-completions server, to try the `llm` and
//! `llm_judge` agents without a model, and for runlog's own tests. It is a
//! test double, not a model.
//!
//! `POST /v1/chat/completions` (or `/chat/completions`) answers `Echo: `
//! and the last user message. Usage counts whitespace-separated words
//! (prompt: every message; completion: the answer). With `stream: true`
//! the answer comes as server-sent events, a word a chunk, then the usage
//! when `stream_options.include_usage` asks for it. With `response_format:
//! {"type": "json_object"}` it judges: the score is the fraction of the
//! words of four letters or more under `Criteria:` that appear under `Text
//! to score:` (the shape of `llm_judge`'s prompt), and the feedback names
//! those missing.
//!
//! Models named `fake-status-NNN` answer with that status (`Retry-After: 1`
//! for 429 and 503); `fake-flaky-NNN` answers NNN to the first request of
//! each conversation and then normally; `fake-slow-MS` waits MS first.
//! `GET /stats` says how many requests came and how many were in flight at
//! most.

use std::collections::{BTreeSet, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};

/// Settings of `runlog fake-llm`.
#[derive(Debug, Clone, Args)]
pub struct FakeLlmSettings {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub bind: String,
}

#[derive(Default)]
struct Stats {
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Conversations a flaky model failed once already.
    failed_once: Mutex<HashSet<String>>,
}

/// A running fake server.
pub struct FakeLlm {
    /// Its port.
    pub port: u16,
    handle: actix_web::dev::ServerHandle,
}

impl FakeLlm {
    /// Starts the fake on `bind` (port 0: a free port) in the current actix
    /// system.
    pub fn start(bind: &str) -> std::io::Result<Self> {
        let stats = web::Data::new(Stats::default());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(stats.clone())
                .app_data(web::JsonConfig::default().limit(16 * 1024 * 1024))
                .route("/v1/chat/completions", web::post().to(completions))
                .route("/chat/completions", web::post().to(completions))
                .route("/stats", web::get().to(stats_of))
        })
        .workers(2)
        .bind(bind)?;
        let port = server.addrs()[0].port();
        let server = server.disable_signals().run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Ok(Self { port, handle })
    }

    /// The base URL the `llm` agent is configured with.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Stops the server.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// `runlog fake-llm`.
pub async fn run(settings: FakeLlmSettings) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let fake = FakeLlm::start(&settings.bind)?;
    eprintln!(
        "fake-llm listening: point the llm agent at {} (this is a test double, not a model)",
        fake.base_url().replace(
            "127.0.0.1",
            settings.bind.split(':').next().unwrap_or("127.0.0.1")
        )
    );
    let _ = tokio::signal::ctrl_c().await;
    fake.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn stats_of(stats: web::Data<Stats>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "requests": stats.requests.load(Ordering::SeqCst),
        "in_flight": stats.in_flight.load(Ordering::SeqCst),
        "max_in_flight": stats.max_in_flight.load(Ordering::SeqCst),
    }))
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The judgement of the text after `Text to score:` by the words after
/// `Criteria:`.
fn judge(prompt: &str) -> Value {
    let criteria = prompt
        .split("Criteria:")
        .nth(1)
        .and_then(|rest| rest.split("Text to score:").next())
        .unwrap_or_default();
    let text = prompt
        .split("Text to score:")
        .nth(1)
        .unwrap_or(prompt)
        .to_lowercase();
    let wanted: BTreeSet<String> = criteria
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 4)
        .map(str::to_lowercase)
        .collect();
    if wanted.is_empty() {
        return json!({"score": 0.5, "feedback": "no criteria to judge by"});
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !text.contains(w.as_str()))
        .collect();
    let score = (wanted.len() - missing.len()) as f64 / wanted.len() as f64;
    let feedback = if missing.is_empty() {
        "meets every criterion".to_string()
    } else {
        format!(
            "mention {}",
            missing
                .iter()
                .map(|w| w.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    json!({"score": score, "feedback": feedback})
}

async fn completions(stats: web::Data<Stats>, body: web::Json<Value>) -> HttpResponse {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let response = answer(&stats, &body).await;
    stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

async fn answer(stats: &Stats, body: &Value) -> HttpResponse {
    let model = body["model"].as_str().unwrap_or("fake").to_string();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let conversation = serde_json::to_string(&messages).unwrap_or_default();
    let status_of = |prefix: &str| {
        model
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<u16>().ok())
    };
    let failure = |status: u16| {
        let mut response = HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
        );
        if matches!(status, 429 | 503) {
            response.insert_header(("Retry-After", "1"));
        }
        response.json(json!({"error": {"message": format!("fake status {status}")}}))
    };
    if let Some(status) = status_of("fake-status-") {
        return failure(status);
    }
    if let Some(status) = status_of("fake-flaky-") {
        let first = stats
            .failed_once
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conversation.clone());
        if first {
            return failure(status);
        }
    }
    if let Some(ms) = model
        .strip_prefix("fake-slow-")
        .and_then(|n| n.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let json_mode = body["response_format"]["type"] == "json_object";
    let text = if json_mode {
        judge(&last_user).to_string()
    } else {
        format!("Echo: {last_user}")
    };
    let prompt_tokens: u64 = messages
        .iter()
        .map(|m| words(m["content"].as_str().unwrap_or_default()))
        .sum();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": words(&text),
        "total_tokens": prompt_tokens + words(&text),
    });
    if body["stream"] == true {
        let include_usage = body["stream_options"]["include_usage"] == true;
        let mut chunks: Vec<String> = text
            .split_inclusive(' ')
            .map(|piece| {
                let chunk =
                    json!({"model": model, "choices": [{"index": 0, "delta": {"content": piece}}]});
                format!("data: {chunk}\n\n")
            })
            .collect();
        if include_usage {
            chunks.push(format!(
                "data: {}\n\n",
                json!({"model": model, "choices": [], "usage": usage})
            ));
        }
        chunks.push("data: [DONE]\n\n".to_string());
        let stream = futures::stream::iter(chunks).then(|chunk| async move {
            // A little apart, as a model's tokens come.
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, actix_web::Error>(web::Bytes::from(chunk))
        });
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(stream);
    }
    HttpResponse::Ok().json(json!({
        "id": "fake",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage,
    }))
}
