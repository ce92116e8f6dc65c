//! What a node does to be one of many on one PostgreSQL (docs/adr/0007),
//! each in a task of its own:
//!
//! - **Heartbeat** (in [`Cluster`], from the moment the node joins):
//!   every [`HEARTBEAT_EVERY`]; a node silent for [`DEAD_AFTER`] is dead.
//!   When this node's own heartbeats fail for nearly that long, it gives up
//!   the runs it holds (their actors stop; the next command takes the run
//!   again, here or elsewhere).
//! - **Takeover** every [`TAKEOVER_EVERY`]: the runs of dead nodes are
//!   taken (one node wins each, by epoch) and recovered, several at a time.
//!   Bound: a node killed outright is dead [`DEAD_AFTER`] after its last
//!   heartbeat, and its runs are taken at the next pass, so within about
//!   7 s.
//!   Every 5 looks it also gives back to the queue the tasks whose claim
//!   no run recorded for 10 s: a node that took a task row for a worker
//!   and stopped before recording the claim on the run's host (another
//!   node) leaves the task claimed by no one, and the run waiting.
//! - **Log tail**: while other nodes are alive, the live hub also follows
//!   the log by position (woken by `LISTEN`, polling as a fallback) and
//!   delivers the events other nodes committed to this node's WebSocket
//!   subscribers, in log order. Its own events it skips (their metadata
//!   names the node); a session drops what it has already sent and fills a
//!   gap from the log, so a subscriber sees each event once, in order.

use std::time::Duration;

use tokio::sync::watch;

use super::{Engine, EventView};
use crate::domain::ids::RunId;
use crate::domain::log::Position;
use crate::store::{Cluster, EventLog, LogWakeups};
pub use crate::store::{DEAD_AFTER, HEARTBEAT_EVERY};

/// How often a node looks for the runs of dead nodes.
pub const TAKEOVER_EVERY: Duration = Duration::from_secs(1);
/// How long the log tail waits for a notification before it reads anyway.
const TAIL_POLL: Duration = Duration::from_millis(500);
/// Events the log tail reads at a time.
const TAIL_PAGE: i64 = 1000;
/// Every how many takeover looks a node looks for claims nobody recorded.
const CLAIMS_LOOK_EVERY: u32 = 5;
/// How old a claim with no `StepClaimed` must be to be given back.
const UNRECORDED_AFTER: Duration = Duration::from_secs(10);

/// The running node tasks: stopped in two steps, [`NodeTasks::stop_taking`]
/// before the engine stops (no run is taken over by a node that is
/// stopping) and [`NodeTasks::leave`] after it (the node's row goes, so its
/// peers take its runs at once).
pub struct NodeTasks {
    cluster: Cluster,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NodeTasks {
    /// Starts the takeover, the log tail and the watch on this node's own
    /// heartbeats. `None` when the engine has no cluster (SQLite).
    pub fn start(engine: &Engine, log: EventLog) -> Option<Self> {
        let cluster = engine.cluster()?.clone();
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            actix_web::rt::spawn(takeover(engine.clone(), stopped.clone())),
            actix_web::rt::spawn(tail(engine.clone(), cluster.clone(), log, stopped.clone())),
            actix_web::rt::spawn(give_up_when_lost(engine.clone(), cluster.clone(), stopped)),
        ];
        Some(Self {
            cluster,
            stop,
            tasks,
        })
    }

    /// Stops taking runs over and following the log.
    pub async fn stop_taking(&mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// Stops the heartbeat and removes this node's row, so that its peers
    /// take its runs over at once.
    pub async fn leave(mut self) {
        self.stop_taking().await;
        if let Err(e) = self.cluster.leave().await {
            tracing::warn!(error = %e, "cannot leave the cluster; peers take over after the node is dead");
        }
    }
}

/// Sleeps `period` unless told to stop; returns whether to go on.
async fn tick(stopped: &mut watch::Receiver<bool>, period: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(period) => !*stopped.borrow(),
        _ = stopped.changed() => false,
    }
}

/// Gives up every run held here when this node's heartbeats have failed
/// for too long (its peers may be taking them over).
async fn give_up_when_lost(engine: Engine, cluster: Cluster, mut stopped: watch::Receiver<bool>) {
    let mut lost = cluster.lost();
    loop {
        tokio::select! {
            changed = lost.changed() => {
                if changed.is_err() {
                    return;
                }
                let given_up = engine.give_up_runs();
                tracing::warn!(runs = given_up.len(), "gave up the runs held here");
                // Once its peers had time to take them, those they did not
                // (this node's heartbeats came back first; or it is alone)
                // come back up here: a run waiting on a timer has no
                // message to bring it back.
                let engine = engine.clone();
                actix_web::rt::spawn(async move {
                    tokio::time::sleep(DEAD_AFTER + TAKEOVER_EVERY * 2).await;
                    let mut back = 0;
                    for id in given_up {
                        if engine.activate(&id).await {
                            back += 1;
                        }
                    }
                    if back > 0 {
                        tracing::info!(runs = back, "took back runs given up here that nobody took");
                    }
                });
            }
            _ = stopped.changed() => return,
        }
    }
}

async fn takeover(engine: Engine, mut stopped: watch::Receiver<bool>) {
    let mut looks = 0u32;
    while tick(&mut stopped, TAKEOVER_EVERY).await {
        // A full page means more are waiting: look again at once.
        while engine.take_over_orphans().await > 0 && !*stopped.borrow() {}
        looks += 1;
        if looks.is_multiple_of(CLAIMS_LOOK_EVERY) {
            engine.requeue_unrecorded_claims(UNRECORDED_AFTER).await;
        }
    }
}

async fn tail(engine: Engine, cluster: Cluster, log: EventLog, mut stopped: watch::Receiver<bool>) {
    let mut wakeups = None;
    // Where the tail has read to. While no other node is alive it only
    // keeps up with the log's readable head (read before the look at the
    // nodes: a node that joins afterwards commits after it).
    let mut position: Option<Position> = None;
    let mut following = false;
    loop {
        if *stopped.borrow() {
            break;
        }
        if !following {
            let head = log.head().await;
            match (head, cluster.peers().await) {
                (Ok(head), Ok(0)) => position = Some(head),
                (Ok(head), Ok(_)) => {
                    following = true;
                    let from = *position.get_or_insert(head);
                    tracing::info!(position = %from,
                        "other nodes are alive: following the log for their events");
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot look at the log or the nodes");
                }
            }
            if !following {
                if !tick(&mut stopped, HEARTBEAT_EVERY).await {
                    break;
                }
                continue;
            }
        }
        if wakeups.is_none() {
            match LogWakeups::listen(log.db()).await {
                Ok(listening) => wakeups = listening,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for log notifications; polling")
                }
            }
        }
        let Some(mut at) = position else {
            following = false;
            continue;
        };
        match log.read_after(at, TAIL_PAGE).await {
            Ok(page) => {
                let full = page.len() as i64 == TAIL_PAGE;
                at = page.last().map_or(at, |e| e.position);
                deliver(&engine, cluster.node(), page);
                engine.tail_read(at);
                position = Some(at);
                if full {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the log for other nodes' events"),
        }
        let wait = async {
            match wakeups.as_mut() {
                Some(w) => w.wait(TAIL_POLL).await,
                None => tokio::time::sleep(TAIL_POLL).await,
            }
        };
        tokio::select! {
            () = wait => {}
            _ = stopped.changed() => break,
        }
    }
    if let Some(wakeups) = wakeups {
        wakeups.close();
    }
}

/// Hands the runs' events another node committed to their subscribers
/// here, run by run in log order.
fn deliver(engine: &Engine, node: &str, page: Vec<crate::store::LogEntry>) {
    let mut batch: Vec<EventView> = Vec::new();
    let mut current: Option<RunId> = None;
    for entry in page {
        let mine = entry.event.metadata.get("node").and_then(|n| n.as_str()) == Some(node);
        if entry.aggregate_type != "Run" || mine {
            continue;
        }
        let Ok(run) = RunId::parse(entry.aggregate_id.as_str()) else {
            continue;
        };
        if current.as_ref() != Some(&run) {
            if let Some(done) = current.take() {
                engine
                    .hub()
                    .publish_recorded(&done, std::mem::take(&mut batch));
            }
            if !engine.hub().followed(&run) {
                continue;
            }
            current = Some(run.clone());
        }
        batch.push(EventView::from_recorded(run.as_str(), entry.event));
    }
    if let Some(done) = current {
        engine.hub().publish_recorded(&done, batch);
    }
}
