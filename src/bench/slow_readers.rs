//! `runlog bench --scenario slow-readers`: what WebSocket clients that stop
//! reading cost the server, with the outbound queue bounded (the default
//! `ws_outbound_queue`) and without (a queue no flood fills).
//!
//! For each of the two, a fresh server (its own process) gets a manual run
//! (nothing moves but what the bench does); `--slow-readers` raw sockets
//! (receive buffer 4 KiB) upgrade, subscribe to the run, read `subscribed`
//! and then stop reading; the bench posts `--flood-messages` messages to
//! the run's thread (8 at a time), each an event every socket follows. The
//! server's resident memory (VmRSS) is read before the sockets, after they
//! subscribed and after the flood (once it has settled). With the bound,
//! each socket is then read to its end: it should end with the close code
//! 4008 after a prefix of the stream.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    create_template, diamond, http_client, post, start_server, AgentsMode, BenchResult,
    BenchSettings, Processes, Server,
};

/// Bytes of each posted message's content.
const MESSAGE_BYTES: usize = 1024;
/// Messages posted at once.
const POST_CONCURRENCY: usize = 8;
/// Sockets opened at once.
const OPEN_CONCURRENCY: usize = 50;
/// Sockets read at once at the end.
const READ_CONCURRENCY: usize = 100;
/// How long the server gets to settle before memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// How long a socket may stay silent while it is read at the end.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The "unbounded" queue: more than any flood of this bench fills.
const UNBOUNDED: usize = 1_000_000_000;
/// The close code of a client that read too slowly.
const TOO_SLOW: u16 = 4008;

/// One server's figures.
#[derive(Debug, Clone)]
pub(super) struct Phase {
    /// `ws_outbound_queue` (None: the default).
    pub queue: Option<usize>,
    /// VmRSS in KiB: before the sockets, once they subscribed, after the
    /// flood.
    pub rss_kib: [u64; 3],
    /// Seconds the flood's posts took.
    pub flood_s: f64,
    /// Sockets that ended with 4008 when read at the end (bound only).
    pub closed_too_slow: Option<usize>,
}

/// What one repetition measured: the bounded server, then the unbounded.
#[derive(Debug, Clone)]
pub(super) struct SlowFigures {
    pub phases: Vec<Phase>,
}

/// The repetition (the caller made `dir` and stops what is left in
/// `processes`).
pub(super) async fn drive(
    settings: &BenchSettings,
    dir: &Path,
    database_url: Option<String>,
    processes: &mut Processes,
) -> BenchResult<SlowFigures> {
    let mut phases = Vec::new();
    for queue in [None, Some(UNBOUNDED)] {
        let phase_dir = dir.join(match queue {
            None => "bounded",
            Some(_) => "unbounded",
        });
        std::fs::create_dir_all(&phase_dir)
            .map_err(|e| format!("creating {}: {e}", phase_dir.display()))?;
        // The second server gets a database of its own on PostgreSQL too.
        let url = match (&settings.database_url, phases.len()) {
            (Some(base), 1) => Some(super::fresh_postgres(base).await?),
            _ => database_url.clone(),
        };
        let phase = one_server(settings, &phase_dir, url.clone(), queue, processes).await;
        for note in processes.stop().await {
            eprintln!("  note: {note}");
        }
        if let (Some(base), Some(url), 1) = (&settings.database_url, &url, phases.len()) {
            super::drop_postgres(base, url).await;
        }
        phases.push(phase?);
    }
    Ok(SlowFigures { phases })
}

async fn one_server(
    settings: &BenchSettings,
    dir: &Path,
    database_url: Option<String>,
    queue: Option<usize>,
    processes: &mut Processes,
) -> BenchResult<Phase> {
    let config = dir.join("runlog.toml");
    let mut text = format!(
        "[limits]\nws_connections_per_token = {}\nmessages_per_run_per_minute = 100000000\n",
        settings.slow_readers + 16
    );
    if let Some(queue) = queue {
        text.push_str(&format!("ws_outbound_queue = {queue}\n"));
    }
    std::fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
    let (server, port) = start_server(settings, dir, database_url, Some(config), 1).await?;
    let pid = match &server {
        Server::Process(spawned) => spawned.child.id(),
        Server::InProcess { .. } => {
            return Err("--scenario slow-readers needs --server process".into())
        }
    };
    processes.server = Some(server);
    let base = format!("http://127.0.0.1:{port}");
    let client = http_client();
    let template = create_template(
        &client,
        &base,
        "slow-readers",
        diamond(AgentsMode::InProcess, false),
    )
    .await?;
    let run = post(
        &client,
        &format!("{base}/api/runs"),
        &json!({"template_id": template, "input": {"n": 1}, "auto_run": false}),
    )
    .await?;
    let run = run["id"]
        .as_str()
        .ok_or("POST /api/runs answered without an id")?
        .to_string();
    let token = super::bench_token();
    sleep_settle().await;
    let before = rss_kib(pid)?;

    let mut sockets = Vec::with_capacity(settings.slow_readers);
    let mut opening = futures::stream::iter(0..settings.slow_readers)
        .map(|_| subscribed(port, token.as_deref(), &run))
        .buffer_unordered(OPEN_CONCURRENCY);
    while let Some(socket) = opening.next().await {
        sockets.push(socket?);
    }
    drop(opening);
    sleep_settle().await;
    let open = rss_kib(pid)?;
    eprintln!(
        "  {} sockets subscribed; server RSS {} → {} MiB",
        sockets.len(),
        before / 1024,
        open / 1024
    );

    let content = "x".repeat(MESSAGE_BYTES);
    let url = format!("{base}/api/runs/{run}/messages");
    let started = Instant::now();
    let mut posts = futures::stream::iter(0..settings.flood_messages)
        .map(|i| {
            let body = json!({"content": format!("{i} {content}")});
            let client = &client;
            let url = &url;
            async move { post(client, url, &body).await }
        })
        .buffer_unordered(POST_CONCURRENCY);
    while let Some(posted) = posts.next().await {
        posted?;
    }
    drop(posts);
    let flood_s = started.elapsed().as_secs_f64();
    sleep_settle().await;
    let flooded = rss_kib(pid)?;
    eprintln!(
        "  {} messages posted in {flood_s:.1} s; server RSS {} MiB",
        settings.flood_messages,
        flooded / 1024
    );

    let closed_too_slow = if queue.is_none() {
        let mut ends = futures::stream::iter(sockets)
            .map(read_to_end)
            .buffer_unordered(READ_CONCURRENCY);
        let mut closed = 0;
        while let Some(end) = ends.next().await {
            if end == Some(TOO_SLOW) {
                closed += 1;
            }
        }
        Some(closed)
    } else {
        drop(sockets);
        None
    };
    Ok(Phase {
        queue,
        rss_kib: [before, open, flooded],
        flood_s,
        closed_too_slow,
    })
}

async fn sleep_settle() {
    actix_web::rt::time::sleep(SETTLE).await;
}

/// The server's resident memory, KiB.
fn rss_kib(pid: u32) -> BenchResult<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading the server's memory: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/PID/status".into())
}

/// A socket with a 4 KiB receive buffer, upgraded and subscribed to `run`
/// (it has read `subscribed`, and reads nothing more until the end).
async fn subscribed(port: u16, token: Option<&str>, run: &str) -> BenchResult<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
    let authorization = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{authorization}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!(
            "the upgrade was refused: {}",
            String::from_utf8_lossy(&head)
        )
        .into());
    }
    let subscribe = json!({"type": "subscribe", "run_id": run}).to_string();
    stream.write_all(&masked_text(subscribe.as_bytes())).await?;
    loop {
        match read_frame(&mut stream).await? {
            Frame::Text(text) => {
                let message: Value = serde_json::from_slice(&text)?;
                if message["type"] == "subscribed" {
                    return Ok(stream);
                }
                return Err(format!("subscribe answered {message}").into());
            }
            Frame::Close(code) => return Err(format!("closed ({code:?}) on subscribe").into()),
            Frame::Other => {}
        }
    }
}

/// Reads a socket until its close frame (its code), end of stream or
/// silence (None).
async fn read_to_end(mut stream: TcpStream) -> Option<u16> {
    loop {
        match actix_web::rt::time::timeout(READ_TIMEOUT, read_frame(&mut stream)).await {
            Ok(Ok(Frame::Close(code))) => return code,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// A frame from the server.
enum Frame {
    Text(Vec<u8>),
    Close(Option<u16>),
    Other,
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Frame> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    let len = match head[1] & 0x7f {
        126 => u64::from(stream.read_u16().await?),
        127 => stream.read_u64().await?,
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    stream.read_exact(&mut payload).await?;
    Ok(match head[0] & 0x0f {
        0x1 => Frame::Text(payload),
        0x8 => {
            Frame::Close((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])))
        }
        _ => Frame::Other,
    })
}

/// A client's text frame (masked, as clients must), for a short payload.
fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x13, 0xc7, 0x01];
    let mut frame = vec![0x81];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The report's section.
pub(super) fn section(settings: &BenchSettings, key: &str, all: &[SlowFigures]) -> String {
    let mut out = format!("### WebSocket clients that stop reading, on {key}\n\n");
    out.push_str(super::preamble(settings).trim_end());
    out.push_str(&format!(
        ".\n\n{} raw sockets (receive buffer 4 KiB) subscribed to one manual run and then \
         stopped reading; {} messages of {MESSAGE_BYTES} bytes were posted to the run's \
         thread ({POST_CONCURRENCY} at a time), an event each that every socket follows. \
         Server resident memory (VmRSS of its process), {} s after each stage; median of {} \
         repetition(s), (min–max). Without the bound means `ws_outbound_queue = {UNBOUNDED}`, \
         which no flood here fills: the server keeps every event for every socket, as it did \
         before the bound.\n\n",
        settings.slow_readers,
        settings.flood_messages,
        SETTLE.as_secs(),
        all.len()
    ));
    out.push_str(
        "| `ws_outbound_queue` | before the sockets | subscribed | after the flood | growth in the flood | flood | closed with 4008 |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    let spread = |values: Vec<f64>, digits: usize| {
        let median = super::median(values.clone());
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        format!("{median:.digits$} ({min:.digits$}–{max:.digits$})")
    };
    for (i, label) in [
        format!(
            "{} (default, bounded)",
            crate::api::limits::DEFAULT_WS_OUTBOUND_QUEUE
        ),
        "unbounded".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let phases: Vec<&Phase> = all.iter().filter_map(|f| f.phases.get(i)).collect();
        let mib = |stage: usize| {
            spread(
                phases
                    .iter()
                    .map(|p| p.rss_kib[stage] as f64 / 1024.0)
                    .collect(),
                0,
            )
        };
        let growth = spread(
            phases
                .iter()
                .map(|p| (p.rss_kib[2] as f64 - p.rss_kib[1] as f64) / 1024.0)
                .collect(),
            0,
        );
        let flood = spread(phases.iter().map(|p| p.flood_s).collect(), 1);
        let closed = match phases.first().and_then(|p| p.closed_too_slow) {
            Some(_) => {
                let closed: Vec<String> = phases
                    .iter()
                    .filter_map(|p| p.closed_too_slow)
                    .map(|n| n.to_string())
                    .collect();
                format!("{} of {}", closed.join(", "), settings.slow_readers)
            }
            None => "n/a (never closed)".to_string(),
        };
        out.push_str(&format!(
            "| {label} | {} MiB | {} MiB | {} MiB | {growth} MiB | {flood} s | {closed} |\n",
            mib(0),
            mib(1),
            mib(2)
        ));
    }
    out.push_str(&format!("\n`{}`\n", super::command_line(settings).trim()));
    out
}
