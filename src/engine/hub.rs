//! The live hub: fans committed run events out to WebSocket sessions.
//! Side effects only; never part of a replay or a rebuild.
//!
//! Delivery never waits and never grows a subscriber's mailbox past its
//! capacity: a subscriber whose mailbox is full (a WebSocket whose peer
//! stopped reading: its session is not polled while the connection's write
//! buffer is full) is taken out of every room and sent one last
//! [`Live::Lagged`]; it may subscribe again from its last sequence.
//! Progress chunks are ephemeral and not replayable, so a full mailbox
//! drops a chunk instead: a burst of an `llm` step's tokens never closes a
//! client that keeps up with the run's events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use actix::dev::SendError;
use actix::{Message, Recipient};
use cqrs_es::{DomainEvent, EventEnvelope};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::domain::ids::RunId;
use crate::domain::run::{Run, RunEvent};
use crate::store::RecordedEvent;

/// What the hub sends to a subscriber.
#[derive(Debug, Clone, PartialEq, Message)]
#[rtype(result = "()")]
pub enum Live {
    /// A committed event (shared by every recipient of one delivery).
    Event(Arc<EventView>),
    /// Ephemeral progress of a running attempt (an `llm` step's tokens as
    /// they stream). Not an event: never stored, not replayed.
    Progress(Progress),
    /// The last message a subscriber gets when its mailbox was full: the
    /// hub has taken it out of every room (it missed what came next).
    Lagged,
}

/// Ephemeral progress of a running attempt.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// The run.
    pub run_id: String,
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// The text that came (a chunk, not the whole so far).
    pub text: String,
}

/// One event as clients see it (API and WebSocket).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// The run it belongs to.
    pub run_id: String,
    /// Its sequence within the run, from 1.
    pub sequence: i64,
    /// The variant name, e.g. `StepCompleted`.
    pub event_type: String,
    /// The payload shape's version.
    pub event_version: String,
    /// When it was committed (RFC 3339).
    pub recorded_at: Option<String>,
    /// The metadata stored with it.
    pub metadata: Value,
    /// The event's fields (step events have a top-level `step`).
    pub payload: Value,
}

/// Stored payloads are tagged by variant (`{"StepCompleted": {…}}`); clients
/// get the fields.
fn untag(payload: Value, event_type: &str) -> Value {
    match payload {
        Value::Object(mut map) if map.len() == 1 && map.contains_key(event_type) => {
            map.remove(event_type).unwrap_or(Value::Null)
        }
        other => other,
    }
}

impl EventView {
    /// From an event read back from the log.
    pub fn from_recorded(run_id: &str, event: RecordedEvent) -> Self {
        let recorded_at = event
            .metadata
            .get("recorded_at")
            .and_then(Value::as_str)
            .map(str::to_string);
        Self {
            run_id: run_id.to_string(),
            sequence: event.sequence,
            payload: untag(event.payload, &event.event_type),
            event_type: event.event_type,
            event_version: event.event_version,
            recorded_at,
            metadata: event.metadata,
        }
    }

    /// From an event just committed.
    pub fn from_envelope(envelope: &EventEnvelope<Run>) -> Self {
        let event_type = envelope.payload.event_type();
        let payload = serde_json::to_value(&envelope.payload).unwrap_or(Value::Null);
        Self {
            run_id: envelope.aggregate_id.clone(),
            sequence: envelope.sequence as i64,
            payload: untag(payload, &event_type),
            event_version: envelope.payload.event_version(),
            recorded_at: envelope.metadata.get("recorded_at").cloned(),
            metadata: serde_json::to_value(&envelope.metadata).unwrap_or(Value::Null),
            event_type,
        }
    }
}

/// Subscribers by run, and subscribers to every run.
#[derive(Default)]
pub struct Hub {
    rooms: RwLock<HashMap<RunId, Vec<Recipient<Live>>>>,
    everything: RwLock<Vec<Recipient<Live>>>,
    /// Who waits for a run to finish (start-and-wait requests).
    finishing: Mutex<HashMap<RunId, Vec<oneshot::Sender<()>>>>,
}

/// The event types that finish a run.
const FINISHING: [&str; 3] = ["RunCompleted", "RunFailed", "RunCancelled"];

impl Hub {
    /// Resolves when this node commits or hears of an event that finishes
    /// `run` (the waiter checks the run's state itself first, and again
    /// after: this is a wake-up, not the truth).
    pub fn when_finished(&self, run: &RunId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut finishing = self.finishing.lock().unwrap_or_else(|e| e.into_inner());
        let waiters = finishing.entry(run.clone()).or_default();
        // Waiters whose request went away (a client that hung up).
        waiters.retain(|w| !w.is_closed());
        waiters.push(tx);
        rx
    }

    /// Drops the waiters of `run` that gave up.
    pub fn forget_waiters(&self, run: &RunId) {
        let mut finishing = self.finishing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiters) = finishing.get_mut(run) {
            waiters.retain(|w| !w.is_closed());
            if waiters.is_empty() {
                finishing.remove(run);
            }
        }
    }

    fn finished(&self, run: &RunId) {
        let waiters = self
            .finishing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(run);
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(());
        }
    }

    /// Delivers every future event of `run` to `recipient`.
    pub fn subscribe(&self, run: RunId, recipient: Recipient<Live>) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        let room = rooms.entry(run).or_default();
        if !room.contains(&recipient) {
            room.push(recipient);
        }
    }

    /// Stops delivering `run`'s events to `recipient`.
    pub fn unsubscribe(&self, run: &RunId, recipient: &Recipient<Live>) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        if let Some(room) = rooms.get_mut(run) {
            room.retain(|r| r != recipient);
            if room.is_empty() {
                rooms.remove(run);
            }
        }
    }

    /// Delivers every future event of every run to `recipient`.
    pub fn subscribe_all(&self, recipient: Recipient<Live>) {
        let mut everything = self.everything.write().unwrap_or_else(|e| e.into_inner());
        if !everything.contains(&recipient) {
            everything.push(recipient);
        }
    }

    /// Undoes [`Hub::subscribe_all`].
    pub fn unsubscribe_all(&self, recipient: &Recipient<Live>) {
        let mut everything = self.everything.write().unwrap_or_else(|e| e.into_inner());
        everything.retain(|r| r != recipient);
    }

    /// Sends committed events to the run's subscribers and to those of every
    /// run, in order.
    pub fn publish(&self, run: &RunId, events: &[EventEnvelope<Run>]) {
        if events.iter().any(|e| {
            matches!(
                e.payload,
                RunEvent::RunCompleted { .. }
                    | RunEvent::RunFailed { .. }
                    | RunEvent::RunCancelled { .. }
            )
        }) {
            self.finished(run);
        }
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let everything = self.everything.read().unwrap_or_else(|e| e.into_inner());
        let room = rooms.get(run).map_or(&[][..], Vec::as_slice);
        if room.is_empty() && everything.is_empty() {
            return;
        }
        let mut left = Left::default();
        for envelope in events {
            let view = Live::Event(Arc::new(EventView::from_envelope(envelope)));
            for recipient in room.iter().chain(everything.iter()) {
                left.deliver(recipient, &view);
            }
        }
        drop((rooms, everything));
        self.remove(run, left);
    }

    /// Sends events another node committed (read back from the log, in
    /// log order) to the run's subscribers and to those of every run.
    pub fn publish_recorded(&self, run: &RunId, events: Vec<EventView>) {
        if events
            .iter()
            .any(|e| FINISHING.contains(&e.event_type.as_str()))
        {
            self.finished(run);
        }
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let everything = self.everything.read().unwrap_or_else(|e| e.into_inner());
        let room = rooms.get(run).map_or(&[][..], Vec::as_slice);
        let mut left = Left::default();
        for view in events {
            let live = Live::Event(Arc::new(view));
            for recipient in room.iter().chain(everything.iter()) {
                left.deliver(recipient, &live);
            }
        }
        drop((rooms, everything));
        self.remove(run, left);
    }

    /// How many runs someone waits on (for tests and metrics).
    pub fn awaited_runs(&self) -> usize {
        self.finishing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether anyone follows `run` (or every run), or waits for it to
    /// finish.
    pub fn followed(&self, run: &RunId) -> bool {
        let everything = self.everything.read().unwrap_or_else(|e| e.into_inner());
        !everything.is_empty()
            || self
                .rooms
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(run)
            || self
                .finishing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(run)
    }

    /// Sends an attempt's progress to the run's subscribers and to those of
    /// every run.
    pub fn progress(&self, run: &RunId, progress: Progress) {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let everything = self.everything.read().unwrap_or_else(|e| e.into_inner());
        let room = rooms.get(run).map_or(&[][..], Vec::as_slice);
        let live = Live::Progress(progress);
        let mut left = Left::default();
        for recipient in room.iter().chain(everything.iter()) {
            left.offer(recipient, &live);
        }
        drop((rooms, everything));
        self.remove(run, left);
    }

    /// Takes the subscribers that fell behind or went away out of every
    /// room, and tells the ones that fell behind.
    fn remove(&self, run: &RunId, left: Left) {
        if left.lagged.is_empty() && left.gone.is_empty() {
            return;
        }
        let out = |r: &Recipient<Live>| left.lagged.contains(r) || left.gone.contains(r);
        {
            let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
            rooms.retain(|_, room| {
                room.retain(|r| !out(r));
                !room.is_empty()
            });
            let mut everything = self.everything.write().unwrap_or_else(|e| e.into_inner());
            everything.retain(|r| !out(r));
        }
        for recipient in &left.lagged {
            tracing::warn!(
                run_id = %run,
                "a live subscriber (a WebSocket) fell behind: its queue is full, so it was \
                 taken out of every room and is closed (it may reconnect and resubscribe)"
            );
            // One message past the capacity, so that the subscriber learns
            // why nothing more comes.
            recipient.do_send(Live::Lagged);
        }
    }
}

/// The subscribers one delivery could not reach.
#[derive(Default)]
struct Left {
    /// Whose mailbox was full.
    lagged: Vec<Recipient<Live>>,
    /// Whose actor has stopped.
    gone: Vec<Recipient<Live>>,
}

impl Left {
    /// Sends `live` to `recipient` unless it already missed a message of
    /// this delivery (a subscriber is told once, and never gets a later
    /// message after a missed one).
    fn deliver(&mut self, recipient: &Recipient<Live>, live: &Live) {
        if self.lagged.contains(recipient) || self.gone.contains(recipient) {
            return;
        }
        match recipient.try_send(live.clone()) {
            Ok(()) => {}
            Err(SendError::Full(_)) => self.lagged.push(recipient.clone()),
            Err(SendError::Closed(_)) => self.gone.push(recipient.clone()),
        }
    }

    /// Sends `live` to `recipient` if its mailbox has room, and drops it
    /// otherwise (for what is not replayable and may be missed: progress).
    fn offer(&mut self, recipient: &Recipient<Live>, live: &Live) {
        match recipient.try_send(live.clone()) {
            Ok(()) | Err(SendError::Full(_)) => {}
            Err(SendError::Closed(_)) => self.gone.push(recipient.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::{Actor, Context, Handler};

    /// Records what it is sent.
    struct Follower {
        capacity: usize,
        got: Arc<Mutex<Vec<Live>>>,
    }

    impl Actor for Follower {
        type Context = Context<Self>;

        fn started(&mut self, ctx: &mut Self::Context) {
            ctx.set_mailbox_capacity(self.capacity);
        }
    }

    impl Handler<Live> for Follower {
        type Result = ();

        fn handle(&mut self, live: Live, _: &mut Self::Context) {
            self.got.lock().unwrap().push(live);
        }
    }

    fn chunk(i: usize) -> Progress {
        Progress {
            run_id: "r1".into(),
            step: "s".into(),
            attempt: 1,
            text: i.to_string(),
        }
    }

    /// A hub whose run `r1` one [`Follower`] with a mailbox of 4 follows,
    /// what that follower gets, and its address.
    async fn followed_with_capacity_4() -> (Hub, RunId, Arc<Mutex<Vec<Live>>>, actix::Addr<Follower>)
    {
        let hub = Hub::default();
        let run = RunId::parse("r1").unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let addr = Follower {
            capacity: 4,
            got: got.clone(),
        }
        .start();
        settle().await;
        hub.subscribe(run.clone(), addr.clone().recipient());
        (hub, run, got, addr)
    }

    /// Lets the started actors run what they were sent.
    async fn settle() {
        for _ in 0..10 {
            actix_web::rt::task::yield_now().await;
        }
    }

    fn event(sequence: i64) -> EventView {
        EventView {
            run_id: "r1".into(),
            sequence,
            event_type: "StepCommented".into(),
            event_version: "1.0".into(),
            recorded_at: None,
            metadata: Value::Null,
            payload: Value::Null,
        }
    }

    #[actix_web::test]
    async fn a_subscriber_whose_mailbox_is_full_is_dropped_and_told_once() {
        let (hub, run, got, _follower) = followed_with_capacity_4().await;
        // Nothing runs between these: the follower is not polled.
        for i in 1..=20 {
            hub.publish_recorded(&run, vec![event(i)]);
        }
        assert!(!hub.followed(&run), "taken out of the room");
        settle().await;
        let got = got.lock().unwrap().clone();
        let (last, events) = got.split_last().expect("the follower got something");
        assert_eq!(last, &Live::Lagged);
        // A prefix of the stream, no longer than its mailbox (plus the
        // sender's own slot).
        assert!(!events.is_empty() && events.len() <= 5, "{events:?}");
        for (i, live) in events.iter().enumerate() {
            assert_eq!(live, &Live::Event(Arc::new(event(i as i64 + 1))));
        }
    }

    #[actix_web::test]
    async fn progress_past_a_full_mailbox_is_dropped_and_the_subscriber_stays() {
        let (hub, run, got, _follower) = followed_with_capacity_4().await;
        for i in 0..20 {
            hub.progress(&run, chunk(i));
        }
        assert!(hub.followed(&run), "still in the room");
        settle().await;
        // An event after the burst still arrives, after the chunks that fit.
        hub.publish_recorded(&run, vec![event(1)]);
        settle().await;
        let got = got.lock().unwrap().clone();
        let (last, chunks) = got.split_last().expect("the follower got something");
        assert_eq!(last, &Live::Event(Arc::new(event(1))));
        assert!(!chunks.is_empty() && chunks.len() <= 5, "{chunks:?}");
        for (i, live) in chunks.iter().enumerate() {
            assert_eq!(live, &Live::Progress(chunk(i)));
        }
        assert!(!got.contains(&Live::Lagged));
    }

    #[actix_web::test]
    async fn a_subscriber_that_keeps_up_gets_everything() {
        let (hub, run, got, _follower) = followed_with_capacity_4().await;
        for i in 0..50 {
            hub.progress(&run, chunk(i));
            if i % 2 == 1 {
                settle().await;
            }
        }
        settle().await;
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), 50, "{got:?}");
        assert!(hub.followed(&run));
    }

    #[test]
    fn waiters_that_gave_up_are_forgotten() {
        let hub = Hub::default();
        let run = RunId::parse("r1").unwrap();
        let waiting = hub.when_finished(&run);
        assert_eq!(hub.awaited_runs(), 1);
        // Forgetting while the waiter still waits keeps it.
        hub.forget_waiters(&run);
        assert_eq!(hub.awaited_runs(), 1);
        drop(waiting);
        hub.forget_waiters(&run);
        assert_eq!(hub.awaited_runs(), 0);
        // A hung-up waiter is dropped when the next one comes.
        drop(hub.when_finished(&run));
        let mut next = hub.when_finished(&run);
        assert_eq!(
            hub.finishing.lock().unwrap().get(&run).map(Vec::len),
            Some(1)
        );
        hub.finished(&run);
        assert!(next.try_recv().is_ok());
        assert_eq!(hub.awaited_runs(), 0);
    }
}
