//! Storage tests against a real SQLite file and a real PostgreSQL database:
//! migrations, the cqrs-es event store with snapshots, optimistic
//! concurrency, the append-only log, the blob store and the projection
//! catch-up.

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use common::{Backend, Storage};
use cqrs_es::Aggregate as _;
use runlog::app::start_projector;
use runlog::db::Db;
use runlog::domain::definition::Definition;
use runlog::domain::ids::{
    ArtifactName, LeaseToken, OutputName, RunId, StepId, TemplateId, Timestamp,
};
use runlog::domain::log::Position;
use runlog::domain::run::{
    Action, ArtifactContent, ArtifactWritten, Author, MessageStatus, Outputs, Policy, Run,
    RunCommand, RunError, RunEvent, Stamp, StartRun, StepStatus,
};
use runlog::domain::template::{Template, TemplateCommand};
use runlog::projections::{ReadModels, RunDetail, READ_MODELS};
use runlog::store::{self, AggregateStore, BlobStore, NewTask, StoreError, TaskQueue};
use serde_json::json;

/// Snapshot size used by the round-trip tests: small, so that commits of
/// 1, 2 and 5 events cross snapshot boundaries at every offset.
const SNAPSHOT_EVERY: usize = 3;

/// Commit sizes after the first commit (`Start`: 2 events). Starting at
/// sequence 2, this covers every (size, sequence mod 3) pair for the sizes
/// 1, 2 and 5.
const SIZES: [usize; 23] = [
    1, 5, 2, 5, 5, 1, 2, 2, 5, 1, 1, 5, 2, 5, 1, 2, 5, 5, 2, 1, 5, 1, 2,
];

/// Fresh storage on `backend`, connected and migrated; `None` when the
/// backend's tests are skipped.
async fn open(backend: Backend) -> Option<(Storage, Db)> {
    let storage = Storage::new(backend).await?;
    let db = connect(&storage).await;
    store::migrate(&db).await.expect("migrate");
    Some((storage, db))
}

async fn connect(storage: &Storage) -> Db {
    Db::connect(storage.database_url.as_deref(), &storage.data_dir)
        .await
        .expect("connect to the test database")
}

fn step(name: &str) -> StepId {
    StepId::parse(name).expect("step id")
}

fn metadata() -> HashMap<String, String> {
    HashMap::from([("recorded_at".to_string(), "test".to_string())])
}

/// The diamond a → {b, c} → d, echo agents.
fn diamond() -> Arc<Definition> {
    let value = json!({"steps": {
        "a": {"agent": "echo"},
        "b": {"agent": "echo", "depends_on": ["a"]},
        "c": {"agent": "echo", "depends_on": ["a"]},
        "d": {"agent": "echo", "depends_on": ["b", "c"]}
    }});
    Arc::new(Definition::parse(&value).expect("definition"))
}

fn start_command(run_id: &str, at: i64) -> (RunCommand, Stamp) {
    let command = RunCommand::Start(StartRun {
        run_id: RunId::parse(run_id).expect("run id"),
        template_id: TemplateId::parse("tpl").expect("template id"),
        template_version: 1,
        definition: diamond(),
        input: json!({"topic": "owls"}),
        retry_of: None,
        redirected_from: None,
        auto_run: true,
        owner: None,
        imports: Vec::new(),
    });
    (command, stamp(at))
}

/// Decides a command with its stamp.
trait DecideWith {
    fn decide_with(&self, command: (RunCommand, Stamp)) -> Result<Vec<RunEvent>, RunError>;
}

impl DecideWith for Run {
    fn decide_with(
        &self,
        (command, stamp): (RunCommand, Stamp),
    ) -> Result<Vec<RunEvent>, RunError> {
        self.decide(command, &stamp)
    }
}

/// The stamp of a command decided at `at`.
fn stamp(at: i64) -> Stamp {
    Stamp {
        at: Timestamp(at),
        lease_seed: format!("seed-{at}"),
        policy: Policy::default(),
    }
}

/// Completes a running step of `state` with one output.
fn complete_command(state: &Run, name: &str, at: i64) -> (RunCommand, Stamp) {
    let lease = state.steps[&step(name)]
        .lease
        .clone()
        .expect("the step is running");
    let outputs: Outputs = BTreeMap::from([(
        OutputName::parse("text").expect("output name"),
        ArtifactContent::Inline(json!(format!("{name} at {at}"))),
    )]);
    let command = RunCommand::CompleteStep {
        usage: None,
        step: step(name),
        lease,
        outputs,
        comments: Vec::new(),
        message: None,
    };
    (command, stamp(at))
}

/// A synthetic event. The store does not check business rules and `apply`
/// holds none, so any sequence folds; each event has its own time, so every
/// prefix of the log folds to a different state.
fn filler(i: usize) -> RunEvent {
    let at = Timestamp(1_000_000 + i as i64);
    let s = step(["a", "b", "c", "d"][i % 4]);
    let round = (i / 4 + 1) as u32;
    match i % 4 {
        0 => RunEvent::StepDispatched {
            evaluating: false,
            step: s,
            attempt: round,
            lease: LeaseToken::new(format!("lease-{i}")),
            reads: BTreeMap::new(),
            recovered: i.is_multiple_of(8),
            prompt_override: None,
            instructions: Vec::new(),
            imports: BTreeMap::new(),
            at,
        },
        1 => RunEvent::StepFailed {
            step: s,
            attempt: round,
            error: format!("failure {i}"),
            will_retry: true,
            fails_run: false,
            retryable: true,
            at,
        },
        2 => RunEvent::StepRetryScheduled {
            step: s,
            next_attempt: round + 1,
            delay_ms: 10,
            due_at: at.plus_millis(10),
            at,
        },
        _ => RunEvent::StepCompleted {
            latest: Default::default(),
            final_score: None,
            usage: None,
            skipped: Vec::new(),
            artifacts: vec![ArtifactWritten {
                name: ArtifactName::new(&s, &OutputName::parse("out").expect("output")),
                version: round,
                content: ArtifactContent::Inline(json!({"i": i})),
            }],
            step: s,
            attempt: round,
            ready: vec![],
            at,
        },
    }
}

/// The batches the round-trip tests commit: `Start` (decided by the
/// aggregate: `RunStarted` + the root's `StepDispatched`), then synthetic
/// batches of the sizes in [`SIZES`].
fn batches(run_id: &str) -> Vec<Vec<RunEvent>> {
    let start = Run::default()
        .decide_with(start_command(run_id, 1))
        .expect("start");
    assert_eq!(start.len(), 2, "Start decides RunStarted + a dispatch");
    let mut batches = vec![start];
    let mut i = 0;
    for size in SIZES {
        batches.push((i..i + size).map(filler).collect());
        i += size;
    }
    batches
}

/// A writer that works like the run actor: it commits on top of its
/// in-memory state, its sequence and the snapshot counter the previous
/// commit returned.
#[derive(Default)]
struct Writer {
    state: Run,
    sequence: usize,
    snapshot: Option<usize>,
}

impl Writer {
    /// A writer of a run it has just started (committed) as `run_id`.
    async fn started(runs: &AggregateStore<Run>, run_id: &str, at: i64) -> Self {
        let mut writer = Self::default();
        let start = writer
            .state
            .decide_with(start_command(run_id, at))
            .expect("start");
        writer.commit(runs, run_id, &start).await;
        writer
    }

    /// Commits `events`, checks the envelopes' sequences and folds them in.
    async fn commit(&mut self, runs: &AggregateStore<Run>, run_id: &str, events: &[RunEvent]) {
        let (envelopes, next, _) = runs
            .commit(
                run_id,
                self.state.clone(),
                self.sequence,
                self.snapshot,
                events.to_vec(),
                metadata(),
                None,
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "commit of {} events at sequence {} (snapshot counter {:?}) failed: {e}",
                    events.len(),
                    self.sequence,
                    self.snapshot
                )
            });
        let sequences: Vec<usize> = envelopes.iter().map(|e| e.sequence).collect();
        let expected: Vec<usize> = (self.sequence + 1..=self.sequence + events.len()).collect();
        assert_eq!(sequences, expected, "envelope sequences");
        for event in events {
            self.state.apply_event(event.clone());
        }
        self.sequence += events.len();
        self.snapshot = next;
    }
}

on_both_backends!(migrations_are_idempotent, |backend| {
    let Some(storage) = Storage::new(backend).await else {
        return;
    };
    let db = connect(&storage).await;
    let first = store::migrate(&db).await.expect("first migration");
    assert!(first > 0, "a fresh database applies every migration");
    let second = store::migrate(&db).await.expect("second migration");
    assert_eq!(second, 0, "nothing is left to apply the second time");
    db.close().await;

    // From another connection (a restart), still nothing to apply.
    let db = connect(&storage).await;
    assert_eq!(store::migrate(&db).await.expect("third migration"), 0);
    let recorded: i64 = runlog::with_pool!(&db, pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM runlog_migrations")
            .fetch_one(pool)
            .await
            .expect("count migrations")
    });
    assert_eq!(recorded as usize, first, "each migration is recorded once");
    db.close().await;
});

on_both_backends!(snapshot_store_round_trip, |backend| {
    let Some((_storage, db)) = open(backend).await else {
        return;
    };
    let runs = AggregateStore::<Run>::new(&db, SNAPSHOT_EVERY);
    let run_id = "run-round-trip";
    let batches = batches(run_id);
    let mut writer = Writer::default();
    for events in &batches {
        writer.commit(&runs, run_id, events).await;
        // After every commit, a load sees the new sequence and the snapshot
        // counter we mirrored (a wrong counter fails the next commit that
        // updates the snapshot with a Conflict).
        let loaded = runs.load(run_id).await.expect("load");
        assert_eq!(loaded.sequence, writer.sequence, "loaded sequence");
        assert_eq!(
            loaded.snapshot, writer.snapshot,
            "mirrored snapshot counter"
        );
    }
    let total: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(writer.sequence, total);
    assert!(
        writer.snapshot.is_some_and(|s| s > 1),
        "snapshots were taken"
    );

    // The log holds every event once, in order, as committed.
    let stored = runs.load_events(run_id).await.expect("load_events");
    let sequences: Vec<usize> = stored.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=total).collect::<Vec<_>>());
    let payloads: Vec<RunEvent> = stored.into_iter().map(|e| e.payload).collect();
    assert_eq!(payloads, batches.concat());

    // Without snapshots, `load` is the fold of every event.
    let unsnapshotted = AggregateStore::<Run>::new(&db, 0)
        .load(run_id)
        .await
        .expect("load without snapshots");
    assert_eq!(unsnapshotted.sequence, total);
    assert_eq!(unsnapshotted.state, writer.state);

    // A writer that reloads (like an actor after a conflict or a restart)
    // can commit on top of what it loaded.
    let loaded = runs.load(run_id).await.expect("load");
    let (envelopes, _, _) = runs
        .commit(
            run_id,
            loaded.state,
            loaded.sequence,
            loaded.snapshot,
            vec![filler(1000), filler(1001)],
            metadata(),
            None,
        )
        .await
        .expect("commit after a reload");
    assert_eq!(envelopes.last().map(|e| e.sequence), Some(total + 2));
    db.close().await;
});

/// `load` through the snapshot store must return the fold of every event,
/// whatever the commit sizes.
async fn snapshot_load_is_the_fold_of_every_event(backend: Backend) {
    let Some((_storage, db)) = open(backend).await else {
        return;
    };
    let runs = AggregateStore::<Run>::new(&db, SNAPSHOT_EVERY);
    let run_id = "run-fold";
    let mut writer = Writer::default();
    let mut mismatches = Vec::new();
    for events in batches(run_id) {
        let before = writer.sequence;
        writer.commit(&runs, run_id, &events).await;
        let loaded = runs.load(run_id).await.expect("load");
        if loaded.state != writer.state {
            mismatches.push(format!(
                "commit of {} events at sequence {before} -> {}: loaded state reflects \
                 updated_at {:?}, the fold {:?}",
                events.len(),
                writer.sequence,
                loaded.state.updated_at,
                writer.state.updated_at,
            ));
        }
    }
    db.close().await;
    assert!(
        mismatches.is_empty(),
        "load differs from the fold of all events after {} of {} commits:\n{}",
        mismatches.len(),
        SIZES.len() + 1,
        mismatches.join("\n")
    );
}

mod snapshot_load_is_the_fold {
    use super::*;

    #[actix_web::test]
    async fn on_sqlite() {
        snapshot_load_is_the_fold_of_every_event(Backend::Sqlite).await;
    }

    #[actix_web::test]
    async fn on_postgres() {
        snapshot_load_is_the_fold_of_every_event(Backend::Postgres).await;
    }
}

on_both_backends!(a_stale_sequence_is_a_conflict, |backend| {
    let Some((_storage, db)) = open(backend).await else {
        return;
    };
    for snapshot_every in [0, SNAPSHOT_EVERY] {
        let runs = AggregateStore::<Run>::new(&db, snapshot_every);
        let run_id = format!("run-stale-{snapshot_every}");
        let mut writer = Writer::default();
        for events in batches(&run_id).iter().take(6) {
            writer.commit(&runs, &run_id, events).await;
        }
        let total = writer.sequence;
        // Writers that loaded before the last commits: 1 or 2 events, so
        // that some of them are due a snapshot update and some are not.
        for stale in [0, 1, total - 3, total - 2, total - 1] {
            for size in [1, 2] {
                let events: Vec<RunEvent> = (0..size).map(|i| filler(500 + i)).collect();
                let result = runs
                    .commit(
                        &run_id,
                        Run::default(),
                        stale,
                        writer.snapshot,
                        events,
                        metadata(),
                        None,
                    )
                    .await;
                assert!(
                    matches!(result, Err(StoreError::Conflict)),
                    "snapshot_every {snapshot_every}: a commit of {size} at stale sequence \
                     {stale} (log at {total}) must be a Conflict, got {:?}",
                    result.map(|(envelopes, _, _)| envelopes.len())
                );
            }
        }
        // Nothing of the refused commits reached the log.
        let stored = runs.load_events(&run_id).await.expect("load_events");
        assert_eq!(stored.len(), total);
        assert_eq!(stored.last().map(|e| e.sequence), Some(total));
        // The up-to-date writer still commits.
        writer.commit(&runs, &run_id, &[filler(900)]).await;
    }
    db.close().await;
});

on_both_backends!(the_event_log_refuses_update_and_delete, |backend| {
    let Some((_storage, db)) = open(backend).await else {
        return;
    };
    let runs = AggregateStore::<Run>::new(&db, 0);
    let run_id = "run-append-only";
    let mut writer = Writer::default();
    for events in batches(run_id).iter().take(3) {
        writer.commit(&runs, run_id, events).await;
    }
    let before = runs.load_events(run_id).await.expect("load_events");
    let statements = [
        "UPDATE events SET event_type = 'Tampered' WHERE aggregate_id = $1",
        "UPDATE events SET sequence = sequence + 100 WHERE aggregate_id = $1 AND sequence = 1",
        "DELETE FROM events WHERE aggregate_id = $1",
        "DELETE FROM events WHERE aggregate_id = $1 AND sequence = 2",
    ];
    for statement in statements {
        let result = runlog::with_pool!(&db, pool => {
            sqlx::query(statement).bind(run_id).execute(pool).await.map(|r| r.rows_affected())
        });
        match result {
            Ok(rows) => panic!("`{statement}` succeeded ({rows} rows)"),
            Err(e) => assert!(
                e.to_string().contains("append-only"),
                "`{statement}` failed for another reason: {e}"
            ),
        }
    }
    let after = runs.load_events(run_id).await.expect("load_events");
    assert_eq!(after.len(), before.len());
    for (a, b) in before.iter().zip(&after) {
        assert_eq!((a.sequence, &a.payload), (b.sequence, &b.payload));
    }
    db.close().await;
});

on_both_backends!(blobs_are_content_addressed, |backend| {
    let Some((_storage, db)) = open(backend).await else {
        return;
    };
    let blobs = BlobStore::new(db.clone());
    let small = br#"{"text":"hello"}"#.to_vec();
    let large: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for body in [&small, &large] {
        let first = blobs.put("run-a", body).await.expect("first put");
        let second = blobs.put("run-b", body).await.expect("second put");
        assert_eq!(first, second, "the same bytes have the same key");
        assert_eq!(first, BlobStore::key_of(body));
        assert_eq!(first.len(), 64);
        assert_eq!(blobs.get(&first).await.expect("get").as_ref(), Some(body));
    }
    assert_ne!(BlobStore::key_of(&small), BlobStore::key_of(&large));
    let stored: i64 = runlog::with_pool!(&db, pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM blobs")
            .fetch_one(pool)
            .await
            .expect("count blobs")
    });
    assert_eq!(stored, 2, "each body is stored once");
    let unknown = BlobStore::key_of(b"never stored");
    assert_eq!(blobs.get(&unknown).await.expect("get unknown"), None);
    assert_eq!(blobs.get("not-a-key").await.expect("get garbage"), None);
    db.close().await;
});

async fn count(db: &Db, sql: &str) -> i64 {
    runlog::with_pool!(db, pool => {
        sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
    })
}

on_both_backends!(
    a_blob_goes_when_the_last_run_that_references_it_is_released,
    |backend| {
        let Some((_storage, db)) = open(backend).await else {
            return;
        };
        let blobs = BlobStore::new(db.clone());
        let shared = vec![b'x'; 20_000];
        let own = vec![b'y'; 30_000];
        let shared_key = blobs.put("run-1", &shared).await.expect("put");
        blobs.put("run-2", &shared).await.expect("put");
        let own_key = blobs.put("run-1", &own).await.expect("put");
        blobs.put("run-1", &own).await.expect("put again");

        let released = blobs.release_run("run-1").await.expect("release run-1");
        assert_eq!(
            released,
            store::Released {
                referenced: 2,
                deleted: 1,
                bytes: 30_000
            },
            "run-1's own body goes; the body run-2 shares stays"
        );
        assert_eq!(blobs.get(&own_key).await.expect("get"), None);
        assert_eq!(
            blobs.get(&shared_key).await.expect("get"),
            Some(shared.clone())
        );
        assert_eq!(
            blobs.release_run("run-1").await.expect("again"),
            store::Released::default(),
            "releasing twice frees nothing more"
        );
        let released = blobs.release_run("run-2").await.expect("release run-2");
        assert_eq!((released.deleted, released.bytes), (1, 20_000));
        assert_eq!(blobs.get(&shared_key).await.expect("get"), None);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM blob_refs").await, 0);
        // A body stored again after its release is a new blob.
        blobs.put("run-3", &own).await.expect("put after release");
        assert_eq!(blobs.get(&own_key).await.expect("get"), Some(own));
        // Purges under way are owed until released (or refused).
        blobs.owe_release("run-3", 20).await.expect("owe");
        blobs.owe_release("run-4", 10).await.expect("owe");
        blobs.owe_release("run-3", 30).await.expect("owe again");
        assert_eq!(
            blobs.owed_releases().await.expect("owed"),
            vec!["run-4".to_string(), "run-3".to_string()]
        );
        blobs.forgive_release("run-4").await.expect("forgive");
        blobs.release_run("run-3").await.expect("release run-3");
        assert!(blobs.owed_releases().await.expect("owed").is_empty());
        db.close().await;
    }
);

on_both_backends!(a_put_racing_a_release_never_loses_the_body, |backend| {
    let Some((_storage, db)) = open(backend).await else {
        return;
    };
    let blobs = BlobStore::new(db.clone());
    for i in 0..40u32 {
        let body = format!("{i}:{}", "b".repeat(10_000)).into_bytes();
        let old_run = format!("old-{i}");
        let new_run = format!("new-{i}");
        let key = blobs.put(&old_run, &body).await.expect("put");
        // The old run is purged while a new run stores the same body.
        let (released, put) = tokio::join!(blobs.release_run(&old_run), blobs.put(&new_run, &body));
        released.expect("release");
        put.expect("put");
        assert_eq!(
            blobs.get(&key).await.expect("get").as_deref(),
            Some(body.as_slice()),
            "round {i}: the body the new run references is stored"
        );
    }
    db.close().await;
});

on_both_backends!(
    the_blob_refs_migration_fills_references_from_the_log,
    |backend| {
        let Some((_storage, db)) = open(backend).await else {
            return;
        };
        // A run written before blob_refs existed: its event names a blob that
        // nothing records a reference to.
        let body = vec![b'z'; 12_000];
        let key = BlobStore::key_of(&body);
        let payload = json!({"StepCompleted": {"step": "a", "attempt": 1, "ready": [], "at": 5,
        "artifacts": [{"name": "a.out", "version": 1,
                       "content": {"blob": {"sha256": key, "size": body.len()}}}]}});
        let migration = match backend {
            Backend::Sqlite => include_str!("../schema/sqlite/012_blob_refs.sql"),
            Backend::Postgres => include_str!("../schema/postgres/012_blob_refs.sql"),
        };
        runlog::with_pool!(&db, pool => {
            sqlx::query("INSERT INTO blobs (sha256, size, body) VALUES ($1, $2, $3)")
                .bind(&key)
                .bind(body.len() as i64)
                .bind(&body)
                .execute(pool)
                .await
                .expect("store the body");
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                 event_version, payload, metadata) VALUES ('Run', 'old-run', 1, 'StepCompleted', \
                 '1.2', $1, $2)",
            )
            .bind(&payload)
            .bind(json!({}))
            .execute(pool)
            .await
            .expect("an old event");
            sqlx::raw_sql(migration).execute(pool).await.expect("the migration again");
        });
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM blob_refs WHERE run_id = 'old-run'"
            )
            .await,
            1
        );
        let released = BlobStore::new(db.clone())
            .release_run("old-run")
            .await
            .expect("release");
        assert_eq!((released.deleted, released.bytes), (1, 12_000));
        db.close().await;
    }
);

/// The run detail as a pure fold of the log.
async fn folded_detail(runs: &AggregateStore<Run>, run_id: &str) -> RunDetail {
    let mut detail = RunDetail::default();
    for envelope in runs.load_events(run_id).await.expect("load_events") {
        detail.apply(envelope.sequence as u64, &envelope.payload);
    }
    detail
}

/// Applies everything in the log with a fresh follower, from the stored
/// positions, then stops it; returns how many events it applied.
async fn project_all(db: &Db) -> u64 {
    let projector = start_projector(db);
    let head = store::EventLog::new(db.clone())
        .last_committed()
        .await
        .expect("the log's head");
    let applied = projector.catch_up(head).await.expect("catch-up");
    projector.stop().await;
    applied
}

/// Every read model's stored position.
async fn stored_positions(db: &Db) -> Vec<(String, Position)> {
    let rows: Vec<(String, i64, i64)> = runlog::with_pool!(db, pool => {
        sqlx::query_as("SELECT name, tx, position FROM projection_positions ORDER BY name")
            .fetch_all(pool)
            .await
            .expect("positions")
    });
    rows.into_iter()
        .map(|(name, tx, position)| {
            (
                name,
                Position {
                    tx: tx as u64,
                    position,
                },
            )
        })
        .collect()
}

on_both_backends!(a_follower_catches_up_from_its_position, |backend| {
    let Some((_storage, db)) = open(backend).await else {
        return;
    };
    let runs = AggregateStore::<Run>::new(&db, store::RUN_SNAPSHOT_EVERY);
    let templates = AggregateStore::<Template>::new(&db, 0);
    let reads = ReadModels::new(db.clone());
    let log = store::EventLog::new(db.clone());

    // Nothing to apply on an empty database.
    assert_eq!(project_all(&db).await, 0);

    // Committed while no follower runs (a crash, or a server stopped):
    // a template, run 1 started with one step completed, run 2 finished,
    // run 3 started.
    let agents: BTreeSet<String> = ["echo".to_string()].into();
    let template_id = "tpl-unprojected";
    let created = Template::default()
        .decide(
            TemplateCommand::Create {
                id: TemplateId::parse(template_id).expect("template id"),
                name: "unprojected".into(),
                description: None,
                definition: json!({"steps": {"a": {"agent": "echo"}}}),
                at: Timestamp(5),
            },
            &agents,
        )
        .expect("create template");
    let template_events = created.len() as u64;
    templates
        .commit(
            template_id,
            Template::default(),
            0,
            None,
            created,
            metadata(),
            None,
        )
        .await
        .expect("commit template");
    let mut one = Writer::started(&runs, "run-one", 10).await;
    let done_a = one
        .state
        .decide_with(complete_command(&one.state, "a", 20))
        .expect("complete a");
    one.commit(&runs, "run-one", &done_a).await;
    let mut two = Writer::started(&runs, "run-two", 30).await;
    for (name, at) in [("a", 40), ("b", 50), ("c", 60), ("d", 70)] {
        let events = two
            .state
            .decide_with(complete_command(&two.state, name, at))
            .expect("complete");
        two.commit(&runs, "run-two", &events).await;
    }
    assert_eq!(two.state.status.as_str(), "completed");
    let three = Writer::started(&runs, "run-three", 80).await;
    assert_eq!(reads.run_detail("run-one").await.expect("read"), None);
    assert!(reads.template(template_id).await.expect("read").is_none());

    // A follower started now applies all of it from the start of the log.
    let everything = template_events + (one.sequence + two.sequence + three.sequence) as u64;
    assert_eq!(project_all(&db).await, everything);
    for (run_id, writer) in [("run-one", &one), ("run-two", &two), ("run-three", &three)] {
        let detail = reads
            .run_detail(run_id)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("{run_id} has a read model after the catch-up"));
        assert_eq!(detail.sequence, writer.sequence as u64, "{run_id}");
        assert_eq!(detail, folded_detail(&runs, run_id).await, "{run_id}");
    }
    let one_detail = reads
        .run_detail("run-one")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(one_detail.status.as_str(), "running");
    assert_eq!(one_detail.steps["a"].status, StepStatus::Completed);
    assert_eq!(one_detail.steps["b"].status, StepStatus::Running);
    assert_eq!(
        reads.active_runs().await.expect("active runs"),
        vec!["run-one".to_string(), "run-three".to_string()]
    );
    let template = reads
        .template(template_id)
        .await
        .expect("read")
        .expect("the template is in the catalogue after the catch-up");
    assert_eq!(
        (template.name.as_str(), template.version),
        ("unprojected", 1)
    );
    // Every read model records the log's head as its position.
    let head = log.last_committed().await.expect("head");
    let positions = stored_positions(&db).await;
    let mut names: Vec<&str> = READ_MODELS.to_vec();
    names.sort_unstable();
    assert_eq!(
        positions
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        names
    );
    assert!(
        positions.iter().all(|(_, p)| *p == head),
        "{positions:?} at {head}"
    );

    // The next follower applies only what came after: O(events since).
    let done_b = one
        .state
        .decide_with(complete_command(&one.state, "b", 90))
        .expect("complete b");
    one.commit(&runs, "run-one", &done_b).await;
    assert_eq!(project_all(&db).await, done_b.len() as u64);
    assert_eq!(
        reads
            .run_detail("run-one")
            .await
            .expect("read")
            .expect("row"),
        folded_detail(&runs, "run-one").await
    );
    assert_eq!(project_all(&db).await, 0, "nothing left behind");
    db.close().await;
});

/// A read model whose rows went missing (deleted by hand, or written by an
/// older build that lost a write) is filled from the run's own events at
/// the run's next event, not folded from the middle.
async fn a_document_behind_the_log_is_filled_from_the_run(backend: Backend) {
    let Some((_storage, db)) = open(backend).await else {
        return;
    };
    let runs = AggregateStore::<Run>::new(&db, store::RUN_SNAPSHOT_EVERY);
    let reads = ReadModels::new(db.clone());
    let run_id = "run-lost-rows";
    let mut writer = Writer::default();
    for (name, at) in [("", 10), ("a", 20)] {
        let events = if name.is_empty() {
            writer.state.decide_with(start_command(run_id, at))
        } else {
            writer
                .state
                .decide_with(complete_command(&writer.state, name, at))
        }
        .expect("decide");
        writer.commit(&runs, run_id, &events).await;
    }
    project_all(&db).await;
    runlog::with_pool!(&db, pool => {
        for table in ["run_details", "run_summaries"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE run_id = $1"))
                .bind(run_id)
                .execute(pool)
                .await
                .expect("delete the run's rows");
        }
    });
    let done_b = writer
        .state
        .decide_with(complete_command(&writer.state, "b", 30))
        .expect("complete b");
    writer.commit(&runs, run_id, &done_b).await;
    project_all(&db).await;
    let detail = reads
        .run_detail(run_id)
        .await
        .expect("read")
        .expect("a read model");
    let folded = folded_detail(&runs, run_id).await;
    db.close().await;
    assert_eq!(
        detail.steps["a"].status,
        StepStatus::Completed,
        "the read model is at sequence {} of {} but misses the first events",
        detail.sequence,
        folded.sequence
    );
    assert_eq!(detail, folded);
}

mod a_document_behind_the_log_is_filled_from_the_run {
    use super::*;

    #[actix_web::test]
    async fn on_sqlite() {
        a_document_behind_the_log_is_filled_from_the_run(Backend::Sqlite).await;
    }

    #[actix_web::test]
    async fn on_postgres() {
        a_document_behind_the_log_is_filled_from_the_run(Backend::Postgres).await;
    }
}

/// A thread message and its status changes, as the run commits them.
fn thread_events() -> Vec<Vec<RunEvent>> {
    let posted =
        |message: u32, action: Action, status: MessageStatus, at: i64| RunEvent::MessagePosted {
            message,
            author: Author::User,
            action,
            content: format!("message {message}"),
            metadata: json!(null),
            step: None,
            idempotency_key: None,
            status,
            reason: None,
            buttons: Vec::new(),
            input: None,
            at: Timestamp(at),
        };
    let changed = |message: u32, status: MessageStatus, step_name: Option<&str>, at: i64| {
        RunEvent::MessageStatusChanged {
            message,
            status,
            step: step_name.map(step),
            reason: (status == MessageStatus::Ignored).then(|| "the run ended".to_string()),
            at: Timestamp(at),
        }
    };
    vec![
        vec![posted(1, Action::Instruction, MessageStatus::Pending, 100)],
        vec![
            changed(1, MessageStatus::Acknowledged, Some("b"), 110),
            posted(2, Action::Instruction, MessageStatus::Pending, 120),
        ],
        vec![changed(2, MessageStatus::Acknowledged, Some("c"), 130)],
        vec![
            posted(3, Action::Comment, MessageStatus::Processed, 140),
            changed(1, MessageStatus::Processed, None, 150),
            changed(2, MessageStatus::Ignored, None, 160),
        ],
    ]
}

/// Commits the start of `run_id` and then [`thread_events`], one commit
/// each; returns each commit's position in the log.
async fn commit_thread(runs: &AggregateStore<Run>, run_id: &str) -> Vec<Position> {
    let start = Run::default()
        .decide_with(start_command(run_id, 1))
        .expect("start");
    let mut sequence = 0;
    let mut positions = Vec::new();
    for events in std::iter::once(start).chain(thread_events()) {
        let (envelopes, _, position) = runs
            .commit(
                run_id,
                Run::default(),
                sequence,
                None,
                events,
                metadata(),
                None,
            )
            .await
            .expect("commit");
        sequence += envelopes.len();
        positions.push(position);
    }
    positions
}

/// The thread read model does not depend on how the follower paged the
/// log: a status change of a message posted in the same page (folded into
/// its insert) reads the same as one applied to an earlier message.
async fn the_thread_reads_the_same_however_batched(backend: Backend) {
    let Some((_storage, db)) = open(backend).await else {
        return;
    };
    let runs = AggregateStore::<Run>::new(&db, store::RUN_SNAPSHOT_EVERY);
    let reads = ReadModels::new(db.clone());
    // Each run commits the same events. "one-by-one": a follower applies
    // every commit before the next is made; "all-at-once": a follower
    // started after all of them applies them in one page.
    let following = start_projector(&db);
    let start = Run::default()
        .decide_with(start_command("one-by-one", 1))
        .expect("start");
    let mut sequence = 0;
    for events in std::iter::once(start).chain(thread_events()) {
        let (envelopes, _, position) = runs
            .commit(
                "one-by-one",
                Run::default(),
                sequence,
                None,
                events,
                metadata(),
                None,
            )
            .await
            .expect("commit");
        sequence += envelopes.len();
        following.committed(position);
        following.applied(position).await;
        assert!(following.position() >= position);
    }
    following.stop().await;
    commit_thread(&runs, "all-at-once").await;
    project_all(&db).await;
    let thread = |run_id: &'static str| {
        let reads = &reads;
        async move {
            reads
                .messages(run_id, 0, 100)
                .await
                .expect("messages")
                .items
                .into_iter()
                .map(|m| (m.id, m.status, m.step, m.reason, m.created_at, m.updated_at))
                .collect::<Vec<_>>()
        }
    };
    let one_by_one = thread("one-by-one").await;
    let statuses: Vec<(u32, &str, Option<&str>)> = one_by_one
        .iter()
        .map(|(id, status, step, _, _, _)| (*id, status.as_str(), step.as_deref()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (1, "processed", Some("b")),
            (2, "ignored", Some("c")),
            (3, "processed", None)
        ]
    );
    assert_eq!(one_by_one[1].3.as_deref(), Some("the run ended"));
    assert_ne!(one_by_one[0].4, one_by_one[0].5, "updated_at moved on");
    assert_eq!(thread("all-at-once").await, one_by_one);

    // Positions forgotten (an upgrade from a build without them): a
    // follower applies the whole log again over the stored rows, which
    // changes nothing.
    runlog::with_pool!(&db, pool => {
        sqlx::query("DELETE FROM projection_positions")
            .execute(pool)
            .await
            .expect("forget the positions");
    });
    let total = project_all(&db).await;
    assert_eq!(
        total as usize,
        2 * sequence,
        "both runs' events applied again"
    );
    assert_eq!(thread("one-by-one").await, one_by_one);
    assert_eq!(thread("all-at-once").await, one_by_one);
    db.close().await;
}

mod the_thread_reads_the_same_however_batched {
    use super::*;

    #[actix_web::test]
    async fn on_sqlite() {
        the_thread_reads_the_same_however_batched(Backend::Sqlite).await;
    }

    #[actix_web::test]
    async fn on_postgres() {
        the_thread_reads_the_same_however_batched(Backend::Postgres).await;
    }
}

on_both_backends!(
    a_stale_append_group_committed_with_good_ones_fails_alone,
    |backend| {
        let Some((_storage, db)) = open(backend).await else {
            return;
        };
        // Snapshots off: every commit goes through the group-commit appender.
        let runs = AggregateStore::<Run>::new(&db, 0);
        let stale_run = "run-group-stale";
        runs.commit(
            stale_run,
            Run::default(),
            0,
            None,
            vec![filler(0), filler(1)],
            metadata(),
            None,
        )
        .await
        .expect("first commit");
        // Many appends at once, so that they share transactions with the
        // stale one: 40 good first commits of other runs, and one writer that
        // still believes `stale_run` is empty.
        let good: Vec<String> = (0..40).map(|i| format!("run-group-{i}")).collect();
        let mut commits: Vec<_> = good
            .iter()
            .map(|id| {
                runs.commit(
                    id,
                    Run::default(),
                    0,
                    None,
                    vec![filler(2), filler(3)],
                    metadata(),
                    None,
                )
            })
            .collect();
        commits.insert(
            20,
            runs.commit(
                stale_run,
                Run::default(),
                0,
                None,
                vec![filler(4)],
                metadata(),
                None,
            ),
        );
        let results = futures::future::join_all(commits).await;
        for (i, result) in results.iter().enumerate() {
            if i == 20 {
                assert!(
                    matches!(result, Err(StoreError::Conflict)),
                    "the stale append: {result:?}"
                );
            } else {
                assert!(result.is_ok(), "append {i}: {:?}", result.as_ref().err());
            }
        }
        for id in &good {
            let events = runs.load_events(id).await.expect("load");
            assert_eq!(
                events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
                [1, 2],
                "{id}"
            );
        }
        let events = runs.load_events(stale_run).await.expect("load");
        assert_eq!(events.len(), 2, "the stale append left nothing in the log");
    }
);

/// A task of `agent` queued at `at`.
fn new_task(n: usize, agent: &str, at: i64) -> NewTask {
    NewTask {
        task_id: format!("task-{n}"),
        lease: format!("lease-{n}"),
        run_id: format!("run-{}", n % 7),
        step: "s".into(),
        attempt: 1,
        agent: agent.into(),
        payload: json!({"n": n}),
        queued_at: at,
    }
}

/// A node that took a task row for a worker and stopped before the run
/// recorded the claim leaves it claimed by no one: the queue finds such
/// rows (PostgreSQL, where the run's host is another node).
#[tokio::test]
async fn a_claim_no_run_recorded_is_found_once_it_is_old() {
    let Some((_storage, db)) = open(Backend::Postgres).await else {
        return;
    };
    let queue = TaskQueue::new(db.clone());
    for n in [1, 2] {
        let mut task = new_task(n, "work", 0);
        task.run_id = format!("run-{n}");
        queue.enqueue(task).await.expect("enqueue");
        queue
            .claim(&["work".to_string()], "w", 1_000, u64::MAX)
            .await
            .expect("claim")
            .expect("a task");
    }
    // run-2 recorded its claim; run-1 did not.
    let runs = AggregateStore::<Run>::new(&db, 0);
    let claimed = RunEvent::StepClaimed {
        step: step("s"),
        attempt: 1,
        worker: "w".into(),
        lease_expires_at: Timestamp(60_000),
        at: Timestamp(1_000),
    };
    runs.commit(
        "run-2",
        Run::default(),
        0,
        None,
        vec![claimed],
        metadata(),
        None,
    )
    .await
    .expect("commit");
    assert!(
        queue
            .unrecorded_claims(1_000)
            .await
            .expect("look")
            .is_empty(),
        "a claim as old as the cut-off may still be on its way"
    );
    assert_eq!(
        queue.unrecorded_claims(1_001).await.expect("look"),
        vec![("task-1".to_string(), "work".to_string())]
    );
    queue.unclaim("task-1").await.expect("unclaim");
    assert!(queue
        .unrecorded_claims(10_000)
        .await
        .expect("look")
        .is_empty());
    let again = queue
        .claim(&["work".to_string()], "w2", 20_000, u64::MAX)
        .await
        .expect("claim")
        .expect("the task is back in the queue");
    assert_eq!(again.task_id, "task-1");
    db.close().await;
}

on_both_backends!(
    concurrent_claimers_each_get_a_different_task_and_every_task_is_claimed_once,
    |backend| {
        let Some((_storage, db)) = open(backend).await else {
            return;
        };
        let queue = TaskQueue::new(db.clone());
        let tasks = 200;
        let queued: Vec<_> = (0..tasks)
            .map(|n| queue.enqueue(new_task(n, "work", n as i64)))
            .collect();
        for result in futures::future::join_all(queued).await {
            result.expect("enqueue");
        }
        // Another agent's task is never handed to these claimers.
        queue
            .enqueue(new_task(999, "other", 0))
            .await
            .expect("enqueue");
        let claimers = (0..8).map(|c| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(task) = queue
                    .claim(&["work".to_string()], &format!("w{c}"), 1_000, u64::MAX)
                    .await
                    .expect("claim")
                {
                    assert_eq!(task.agent, "work");
                    mine.push(task.task_id);
                }
                mine
            })
        });
        let mut all: Vec<String> = Vec::new();
        for claimer in futures::future::join_all(claimers).await {
            all.extend(claimer.expect("claimer"));
        }
        let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
        assert_eq!(all.len(), tasks, "every task claimed");
        assert_eq!(distinct.len(), tasks, "no task claimed twice");
        // Claimed tasks can be looked up, with their worker.
        let task = queue.get("task-5").await.expect("get").expect("a task");
        assert_eq!(task.lease, "lease-5");
        assert!(task.claimed_by.is_some_and(|w| w.starts_with('w')));
        assert!(queue.get("task-x").await.expect("get").is_none());
    }
);

on_both_backends!(
    tasks_are_claimed_oldest_first_and_withdrawn_only_while_unclaimed,
    |backend| {
        let Some((_storage, db)) = open(backend).await else {
            return;
        };
        let queue = TaskQueue::new(db.clone());
        queue.enqueue(new_task(2, "a", 20)).await.expect("enqueue");
        queue.enqueue(new_task(1, "b", 10)).await.expect("enqueue");
        queue.enqueue(new_task(3, "a", 30)).await.expect("enqueue");
        // The same lease again changes nothing.
        queue.enqueue(new_task(3, "a", 5)).await.expect("enqueue");
        let agents = ["a".to_string(), "b".to_string()];
        let first = queue
            .claim(&agents, "w", 40, u64::MAX)
            .await
            .expect("claim")
            .expect("a task");
        assert_eq!(first.task_id, "task-1");
        assert_eq!(first.payload, json!({"n": 1}));
        // A claimed task is not withdrawn; an unclaimed one is.
        assert!(!queue.withdraw("lease-1").await.expect("withdraw"));
        assert!(queue.withdraw("lease-2").await.expect("withdraw"));
        assert!(!queue.withdraw("lease-2").await.expect("withdraw"));
        let next = queue
            .claim(&agents, "w", 41, u64::MAX)
            .await
            .expect("claim")
            .expect("a task");
        assert_eq!(next.task_id, "task-3");
        assert!(queue
            .claim(&agents, "w", 42, u64::MAX)
            .await
            .expect("claim")
            .is_none());
        // Unclaimed again, it is claimable again; removed, it is gone.
        queue.unclaim("task-3").await.expect("unclaim");
        // A worker at its bound gets nothing though a task waits; another
        // with room gets it.
        assert_eq!(queue.claimed_by("w").await.expect("count"), 1);
        assert!(queue
            .claim(&agents, "w", 43, 1)
            .await
            .expect("claim")
            .is_none());
        let again = queue
            .claim(&agents, "w2", 43, 1)
            .await
            .expect("claim")
            .expect("a task");
        assert_eq!(again.task_id, "task-3");
        queue.remove("lease-3");
        queue.remove("lease-1");
        // Removals are group-committed in the background; a flush waits
        // for them.
        queue.flush().await;
        assert!(queue.get("task-3").await.expect("get").is_none());
        assert!(queue.get("task-1").await.expect("get").is_none());
    }
);

/// Appends `events` events to aggregate `id` after `after` in one
/// transaction held open for `hold` before it commits (or rolls back).
async fn append_slowly(
    db: &Db,
    id: &str,
    after: i64,
    events: i64,
    hold: std::time::Duration,
    commit: bool,
) {
    const INSERT: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, \
        event_type, event_version, payload, metadata) VALUES ('Run', $1, $2, 'Filler', '1.0', $3, $4)";
    runlog::with_pool!(db, pool => {
        let mut tx = pool.begin().await.expect("begin");
        for sequence in after + 1..=after + events {
            sqlx::query(INSERT)
                .bind(id)
                .bind(sequence)
                .bind(sqlx::types::Json(json!({"n": sequence})))
                .bind(sqlx::types::Json(json!({})))
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        tokio::time::sleep(hold).await;
        if commit {
            tx.commit().await.expect("commit");
        } else {
            tx.rollback().await.expect("rollback");
        }
    });
}

on_both_backends!(
    reading_the_log_by_position_skips_no_late_commit,
    |backend| {
        // 8 writers whose transactions stay open for up to 45 ms after
        // their inserts, so that on PostgreSQL later positions commit
        // before earlier ones (and every fourth rolls back). A reader
        // follows the log from the last position it got, as a projection
        // does, in small pages, while they write.
        const WRITERS: usize = 8;
        const TRANSACTIONS: usize = 12;
        const EVENTS: i64 = 3;
        let Some((_storage, db)) = open(backend).await else {
            return;
        };
        let log = store::EventLog::new(db.clone());
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move {
                    let id = format!("writer-{w}");
                    let mut committed = Vec::new();
                    let mut sequence = 0;
                    for t in 0..TRANSACTIONS {
                        let commit = t % 4 != 3;
                        let hold = std::time::Duration::from_millis(((w * 7 + t * 13) % 46) as u64);
                        append_slowly(&db, &id, sequence, EVENTS, hold, commit).await;
                        if commit {
                            committed.extend(
                                (sequence + 1..=sequence + EVENTS).map(|s| (id.clone(), s)),
                            );
                            sequence += EVENTS;
                        }
                    }
                    committed
                })
            })
            .collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let done = done.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut at = runlog::domain::log::Position::START;
                let mut seen = Vec::new();
                loop {
                    // Read the flag before the page: a page read after every
                    // writer finished that comes back empty is the end.
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let page = log.read_after(at, 5).await.expect("read the log");
                    for entry in &page {
                        assert!(
                            entry.position > at,
                            "positions go forward: {} after {at}",
                            entry.position
                        );
                        at = entry.position;
                        seen.push((entry.aggregate_id.clone(), entry.event.sequence));
                    }
                    if page.is_empty() {
                        if finished {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                }
                (seen, at)
            })
        };
        let mut committed = Vec::new();
        for writer in writers {
            committed.extend(writer.await.expect("writer"));
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (seen, last) = reader.await.expect("reader");

        // Every committed event exactly once, each aggregate's in order.
        assert_eq!(seen.len(), committed.len(), "events read once each");
        let read: BTreeSet<_> = seen.iter().cloned().collect();
        let expected: BTreeSet<_> = committed.iter().cloned().collect();
        assert_eq!(read.len(), seen.len(), "no event read twice");
        assert_eq!(
            read, expected,
            "no committed event skipped, none rolled back read"
        );
        let mut by_writer: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for (id, sequence) in &seen {
            by_writer.entry(id).or_default().push(*sequence);
        }
        for (id, sequences) in by_writer {
            assert!(
                sequences.windows(2).all(|w| w[0] < w[1]),
                "{id} in order: {sequences:?}"
            );
        }
        assert_eq!(
            log.head().await.expect("head"),
            last,
            "the head is the last event read"
        );
        assert!(log.read_after(last, 10).await.expect("read").is_empty());
        db.close().await;
    }
);

/// Transactions are server-wide on PostgreSQL: one left open in another
/// database of the same server must not hold this log back, while one open
/// in this database must (it may still commit below what a reader takes).
#[actix_web::test]
async fn a_transaction_open_elsewhere_on_the_server_does_not_hold_the_log_back() {
    let Some((_storage, db)) = open(Backend::Postgres).await else {
        return;
    };
    let Ok(base) = std::env::var("RUNLOG_TEST_DATABASE_URL") else {
        return;
    };
    let elsewhere = sqlx::PgPool::connect(&base)
        .await
        .expect("the base database");
    let mut open_elsewhere = elsewhere.begin().await.expect("begin elsewhere");
    // Writing gives the transaction an xid, as any writer's has.
    let xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *open_elsewhere)
        .await
        .expect("an xid elsewhere");
    assert!(!xid.is_empty());
    let log = store::EventLog::new(db.clone());
    append_slowly(&db, "run-a", 0, 2, std::time::Duration::ZERO, true).await;
    let read = log.read_after(Position::START, 10).await.expect("read");
    assert_eq!(
        read.len(),
        2,
        "an open transaction elsewhere holds nothing back"
    );

    // One open here holds back what commits after it, until it ends.
    let Db::Postgres(pool) = &db else {
        unreachable!("a PostgreSQL database")
    };
    let mut open_here = pool.begin().await.expect("begin here");
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata) VALUES ('Run', 'run-b', 1, 'Filler', '1.0', '{}', '{}')",
    )
    .execute(&mut *open_here)
    .await
    .expect("insert, not committed");
    append_slowly(&db, "run-c", 0, 1, std::time::Duration::ZERO, true).await;
    let held = log.read_after(read[1].position, 10).await.expect("read");
    assert!(
        held.is_empty(),
        "run-c waits behind run-b's open transaction: {held:?}"
    );
    open_here.commit().await.expect("commit here");
    let after: Vec<String> = log
        .read_after(read[1].position, 10)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.aggregate_id)
        .collect();
    assert_eq!(after, ["run-b", "run-c"]);
    open_elsewhere.rollback().await.expect("rollback");
    elsewhere.close().await;
    db.close().await;
}

/// A log restored from another PostgreSQL server (pg_dump / pg_restore)
/// carries that server's transaction ids, which may be ahead of this
/// one's: such events would sort after, and hide behind, everything this
/// server writes. The migration at start restamps them, and the read models
/// apply the log again.
#[actix_web::test]
async fn a_log_restored_from_a_server_ahead_of_this_one_reads_in_order() {
    let Some((_storage, db)) = open(Backend::Postgres).await else {
        return;
    };
    let Db::Postgres(pool) = &db else {
        unreachable!("a PostgreSQL database")
    };
    // The restored rows: transaction ids a million ahead of this server's.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata, txid) \
         SELECT 'Run', 'restored', s, 'Filler', '1.0', '{}', '{}', \
                ((pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000)::text)::xid8 \
           FROM generate_series(1, 3) AS s",
    )
    .execute(pool)
    .await
    .expect("restore");
    sqlx::query(
        "INSERT INTO projection_positions (name, version, tx, position, updated_at) \
         VALUES ('run_details', 1, 9999999, 3, 0)",
    )
    .execute(pool)
    .await
    .expect("a restored position");
    let log = store::EventLog::new(db.clone());
    assert!(
        log.read_after(Position::START, 10)
            .await
            .expect("read")
            .is_empty(),
        "before the restamp the restored events sort in this server's future"
    );
    store::migrate(&db).await.expect("migrate");
    let read = log.read_after(Position::START, 10).await.expect("read");
    assert_eq!(
        read.iter().map(|e| e.event.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        stored_positions(&db).await.is_empty(),
        "positions start over"
    );
    // What this server writes next sorts after the restored log.
    append_slowly(&db, "new", 0, 1, std::time::Duration::ZERO, true).await;
    let all = log.read_after(Position::START, 10).await.expect("read");
    assert_eq!(all.last().map(|e| e.aggregate_id.as_str()), Some("new"));
    assert!(all[2].position < all[3].position);
    // Migrating again changes nothing.
    store::migrate(&db).await.expect("migrate again");
    assert_eq!(
        log.read_after(Position::START, 10).await.expect("read"),
        all
    );
    db.close().await;
}

/// A log reader whose reads wait for a gate: a rebuild that runs until the
/// test lets it go.
struct GatedLog {
    inner: Box<dyn runlog::projections::LogReader>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl runlog::projections::LogReader for GatedLog {
    fn read_after(
        &self,
        after: Position,
        limit: i64,
    ) -> futures::future::BoxFuture<'_, Result<Vec<runlog::domain::log::Logged>, String>> {
        Box::pin(async move {
            let _permit = self.gate.acquire().await.map_err(|e| e.to_string())?;
            self.inner.read_after(after, limit).await
        })
    }

    fn aggregate_after<'a>(
        &'a self,
        aggregate_type: &'a str,
        aggregate_id: &'a str,
        after: u64,
    ) -> futures::future::BoxFuture<'a, Result<Vec<runlog::domain::log::Logged>, String>> {
        self.inner
            .aggregate_after(aggregate_type, aggregate_id, after)
    }

    fn count_after(&self, after: Position) -> futures::future::BoxFuture<'_, Result<u64, String>> {
        self.inner.count_after(after)
    }
}

on_both_backends!(
    a_second_rebuild_of_a_projection_is_refused_while_one_runs,
    |backend| {
        use runlog::projections::{ProjectionError, RebuildState, Rebuilds};
        let Some((_storage, db)) = open(backend).await else {
            return;
        };
        let runs = AggregateStore::<Run>::new(&db, SNAPSHOT_EVERY);
        let one = Writer::started(&runs, "run-1", 1).await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let factory: runlog::projections::LogReaderFactory = {
            let gate = gate.clone();
            Arc::new(move |own: Db| {
                Box::new(GatedLog {
                    inner: runlog::app::log_readers()(own),
                    gate: gate.clone(),
                }) as Box<dyn runlog::projections::LogReader>
            })
        };
        let rebuilds = Rebuilds::new(db.clone(), factory.clone());
        assert!(matches!(
            rebuilds.start("runs"),
            Err(ProjectionError::UnknownProjection(name)) if name == "runs"
        ));
        let mut first = rebuilds.start("run_summaries").expect("the first starts");
        // It has taken its lock and counted the log; now it waits at the gate.
        first.changed().await.expect("progress");
        assert_eq!(first.borrow().state, RebuildState::Building);
        assert!(matches!(
            rebuilds.start("run_summaries"),
            Err(ProjectionError::RebuildRunning(name)) if name == "run_summaries"
        ));
        // Another projection may rebuild meanwhile.
        let other = rebuilds.start("run_details").expect("another projection");
        if backend == Backend::Postgres {
            // Another process (another registry) is refused by the advisory
            // lock, and says so.
            let elsewhere = Rebuilds::new(db.clone(), factory.clone());
            let mut refused = elsewhere
                .start("run_summaries")
                .expect("starts, then fails");
            let failed = refused
                .wait_for(|p| p.is_finished())
                .await
                .map(|p| p.clone())
                .unwrap_or_else(|_| refused.borrow().clone());
            assert_eq!(failed.state, RebuildState::Failed, "{failed:?}");
            assert!(
                failed
                    .error
                    .as_deref()
                    .unwrap_or("")
                    .contains("already running"),
                "{failed:?}"
            );
        }
        gate.add_permits(1_000);
        for mut progress in [first, other] {
            let done = progress
                .wait_for(|p| p.is_finished())
                .await
                .map(|p| p.clone())
                .unwrap_or_else(|_| progress.borrow().clone());
            assert_eq!(done.state, RebuildState::Done, "{done:?}");
            assert_eq!(done.events_applied, one.sequence as u64, "{done:?}");
        }
        // Once finished, it may run again.
        let mut again = rebuilds.start("run_summaries").expect("runs again");
        let done = again
            .wait_for(|p| p.is_finished())
            .await
            .map(|p| p.clone())
            .unwrap_or_else(|_| again.borrow().clone());
        assert_eq!(done.state, RebuildState::Done, "{done:?}");
        let listed = ReadModels::new(db.clone())
            .list_runs(None, None, None, None, 10, None)
            .await
            .expect("list");
        assert_eq!(listed.items.len(), 1);
    }
);

/// `tests/fixtures/events/older_versions.json`: stored events of every
/// older event version, and what each reads as today.
fn older_versions() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/events/older_versions.json"))
        .expect("the fixture is JSON")
}

/// A fixture entry's payload as the store keeps it (tagged by variant).
fn tagged(entry: &serde_json::Value, field: &str) -> serde_json::Value {
    let event_type = entry["event_type"].as_str().expect("event_type");
    json!({ event_type: entry[field].clone() })
}

on_both_backends!(older_event_versions_load_through_the_upcasters, |backend| {
    use cqrs_es::DomainEvent;
    let Some((_storage, db)) = open(backend).await else {
        return;
    };
    let fixture = older_versions();
    let fixture_runs = fixture["runs"].as_array().expect("runs");
    // Written as an older build wrote them, straight into the log.
    for run in fixture_runs {
        let run_id = run["run_id"].as_str().expect("run_id");
        for (i, entry) in run["events"].as_array().expect("events").iter().enumerate() {
            runlog::with_pool!(&db, pool => {
                sqlx::query(
                    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                     event_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind("Run")
                .bind(run_id)
                .bind(i as i64 + 1)
                .bind(entry["event_type"].as_str())
                .bind(entry["event_version"].as_str())
                .bind(tagged(entry, "stored"))
                .bind(json!({"recorded_at": "fixture"}))
                .execute(pool)
                .await
                .expect("insert a stored event");
            });
        }
    }
    let runs = AggregateStore::<Run>::new(&db, SNAPSHOT_EVERY);
    let log = store::EventLog::new(db.clone());
    let mut versions = BTreeSet::new();
    for run in fixture_runs {
        let run_id = run["run_id"].as_str().expect("run_id");
        let entries = run["events"].as_array().expect("events");
        let expected: Vec<RunEvent> = entries
            .iter()
            .map(|e| serde_json::from_value(tagged(e, "expected")).expect("an expected event"))
            .collect();
        for (entry, event) in entries.iter().zip(&expected) {
            versions.insert(format!(
                "{} {}",
                entry["event_type"], entry["event_version"]
            ));
            // What the upcasters make of the stored payload: the expected
            // payload, at the version this build writes.
            let upcast = store::upcast::upcast(cqrs_es::persist::SerializedEvent::new(
                run_id.into(),
                1,
                "Run".into(),
                entry["event_type"].as_str().expect("type").into(),
                entry["event_version"].as_str().expect("version").into(),
                tagged(entry, "stored"),
                json!({}),
            ));
            assert_eq!(upcast.payload, tagged(entry, "expected"), "{entry}");
            assert_eq!(upcast.event_version, event.event_version(), "{entry}");
        }
        // Through the aggregate store (replay, actors).
        let loaded: Vec<RunEvent> = runs
            .load_events(run_id)
            .await
            .expect("the older events load")
            .into_iter()
            .map(|e| e.payload)
            .collect();
        assert_eq!(loaded, expected, "{run_id}");
        let mut folded = Run::default();
        for event in &expected {
            folded.apply_event(event.clone());
        }
        let state = runs.load(run_id).await.expect("the run loads");
        assert_eq!(state.sequence, expected.len());
        assert_eq!(
            serde_json::to_value(&state.state).expect("state"),
            serde_json::to_value(&folded).expect("state")
        );
        // Through the log the projections and audit read.
        let followed = log
            .follow_aggregate("Run", run_id, 0)
            .await
            .expect("the log decodes them");
        let followed: Vec<RunEvent> = followed
            .iter()
            .filter_map(|l| l.as_run().map(|(_, e)| e.clone()))
            .collect();
        assert_eq!(followed, expected, "{run_id}");
    }
    // Every older version of the catalogue is covered.
    for needed in [
        "RunStarted 1.0",
        "RunStarted 1.1",
        "RunStarted 1.2",
        "StepDispatched 1.0",
        "StepDispatched 1.1",
        "StepCompleted 1.0",
        "StepCompleted 1.1",
        "StepFailed 1.0",
        "StepFailed 1.1",
        "CancelRequested 1.0",
        "StepAwaitingReview 1.0",
        "MessagePosted 1.0",
    ] {
        let (event_type, version) = needed.split_once(' ').expect("pair");
        assert!(
            versions.contains(&format!("\"{event_type}\" \"{version}\"")),
            "the fixture lacks {needed}: {versions:?}"
        );
    }
    // And the read models build from them.
    project_all(&db).await;
    let reads = ReadModels::new(db.clone());
    for (run_id, status) in [
        ("fixture-old-1", "completed"),
        ("fixture-old-2", "cancelled"),
        ("fixture-old-3", "failed"),
    ] {
        let detail = reads
            .run_detail(run_id)
            .await
            .expect("read")
            .expect("a detail");
        assert_eq!(detail.status.as_str(), status, "{run_id}");
    }
    let one = reads
        .run_detail("fixture-old-1")
        .await
        .expect("read")
        .expect("detail");
    assert!(one.auto_run, "a 1.0 run ran its steps automatically");
});

on_both_backends!(
    a_snapshot_of_another_version_is_ignored_never_misread,
    |backend| {
        let Some((_storage, db)) = open(backend).await else {
            return;
        };
        let runs = AggregateStore::<Run>::new(&db, SNAPSHOT_EVERY);
        let mut one = Writer::started(&runs, "run-snap", 10).await;
        let done = one
            .state
            .decide_with(complete_command(&one.state, "a", 20))
            .expect("a");
        one.commit(&runs, "run-snap", &done).await;
        assert!(one.sequence >= SNAPSHOT_EVERY, "a snapshot was written");
        let payload: serde_json::Value = runlog::with_pool!(&db, pool => {
            sqlx::query_scalar("SELECT payload FROM snapshots WHERE aggregate_id = 'run-snap'")
                .fetch_one(pool)
                .await
                .expect("the snapshot")
        });
        assert_eq!(payload["snapshot_version"], 2, "{payload}");
        let truth = serde_json::to_value(&one.state).expect("state");
        assert_eq!(payload["state"], truth);
        // A snapshot of an older shape that would read as a different state
        // (here: a run with no steps), with an old version, or with none (as
        // written before snapshots had versions).
        let mut misleading = truth.clone();
        misleading["steps"] = json!({});
        for stored in [
            json!({"snapshot_version": 0, "state": misleading.clone()}),
            // Version 1: before runs recorded when they finished.
            json!({"snapshot_version": 1, "state": misleading.clone()}),
            misleading.clone(),
        ] {
            runlog::with_pool!(&db, pool => {
                sqlx::query("UPDATE snapshots SET payload = $1 WHERE aggregate_id = 'run-snap'")
                    .bind(&stored)
                    .execute(pool)
                    .await
                    .expect("tamper");
            });
            let loaded = runs.load("run-snap").await.expect("loads from the events");
            assert_eq!(loaded.sequence, one.sequence);
            assert_eq!(serde_json::to_value(&loaded.state).expect("state"), truth);
            assert_eq!(loaded.snapshot, one.snapshot, "the counter is kept");
        }
        // The next snapshot replaces the ignored one.
        for step in ["b", "c", "d"] {
            let events = one
                .state
                .decide_with(complete_command(&one.state, step, 30))
                .expect("complete");
            one.commit(&runs, "run-snap", &events).await;
        }
        let payload: serde_json::Value = runlog::with_pool!(&db, pool => {
            sqlx::query_scalar("SELECT payload FROM snapshots WHERE aggregate_id = 'run-snap'")
                .fetch_one(pool)
                .await
                .expect("the snapshot")
        });
        assert_eq!(payload["snapshot_version"], 2, "{payload}");
        let loaded = runs.load("run-snap").await.expect("loads");
        assert_eq!(
            serde_json::to_value(&loaded.state).expect("state"),
            serde_json::to_value(&one.state).expect("state")
        );
    }
);

/// Fencing (docs/adr/0007): a node that lost a run to another writes
/// nothing to it, whatever its actor still believes, and the new host's
/// appends go in; a run's first append takes its host row; a live host
/// keeps its run; a run taken from another host is flagged for recovery.
#[actix_web::test]
async fn a_node_that_lost_a_run_can_append_nothing_to_it() {
    let Some((_storage, db)) = open(Backend::Postgres).await else {
        return;
    };
    use runlog::store::{Acquired, Cluster};
    let dead_after = runlog::store::DEAD_AFTER;
    let a = Cluster::join(&db, "node-a", "http://a", dead_after)
        .await
        .expect("a joins")
        .expect("PostgreSQL has a cluster");
    let b = Cluster::join(&db, "node-b", "http://b", dead_after)
        .await
        .expect("b joins")
        .expect("PostgreSQL has a cluster");
    let runs = AggregateStore::<Run>::new(&db, 0);
    let run_id = "run-fenced";

    // a starts the run: its first append takes the host row at epoch 1.
    let mut state = Run::default();
    let start = state.decide_with(start_command(run_id, 1)).expect("start");
    let a_fence = a.starting();
    let (envelopes, _, _) = runs
        .commit(
            run_id,
            Run::default(),
            0,
            None,
            start.clone(),
            metadata(),
            Some(&a_fence),
        )
        .await
        .expect("a's start");
    for e in &envelopes {
        state.apply(e.payload.clone());
    }
    let sequence = envelopes.len();
    match b.acquire(run_id).await.expect("b asks") {
        Acquired::Elsewhere { node, address } => {
            assert_eq!(
                (node.as_str(), address.as_deref()),
                ("node-a", Some("http://a"))
            );
        }
        other => panic!("b took a run a live node hosts: {other:?}"),
    }

    // Asking about a run that does not exist takes nothing.
    assert_eq!(
        b.acquire("run-nobody-started").await.expect("b asks"),
        Acquired::Unknown
    );

    // a leaves (as a node that stopped or was found dead); b takes the run
    // over, and is told to recover it.
    a.leave().await.expect("a leaves");
    let b_fence = match b.acquire(run_id).await.expect("b asks again") {
        Acquired::Held { fence, recover } => {
            assert!(recover, "a's attempts may have died with it");
            assert!(fence.epoch > a_fence.epoch, "{fence:?}");
            fence
        }
        other => panic!("b could not take a dead node's run: {other:?}"),
    };

    // a's next append is refused and writes nothing; b's goes in.
    let complete = state
        .decide_with(complete_command(&state, "a", 2))
        .expect("complete a");
    let refused = runs
        .commit(
            run_id,
            Run::default(),
            sequence,
            None,
            complete.clone(),
            metadata(),
            Some(&a_fence),
        )
        .await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    let log = store::EventLog::new(db.clone());
    assert_eq!(
        log.events_of("Run", run_id, 0, 1000)
            .await
            .expect("log")
            .len(),
        sequence
    );
    runs.commit(
        run_id,
        Run::default(),
        sequence,
        None,
        complete,
        metadata(),
        Some(&b_fence),
    )
    .await
    .expect("the new host appends");

    // Beside a fenced append, another run's append in the same batch
    // commits (a fenced append is left out, not failed with its batch).
    let other = "run-beside";
    let start = Run::default()
        .decide_with(start_command(other, 3))
        .expect("start");
    let (fenced, opened) = futures::join!(
        runs.commit(
            run_id,
            Run::default(),
            sequence + 1,
            None,
            vec![filler(1)],
            metadata(),
            Some(&a_fence)
        ),
        runs.commit(
            other,
            Run::default(),
            0,
            None,
            start,
            metadata(),
            Some(&a_fence)
        ),
    );
    assert!(matches!(fenced, Err(StoreError::Fenced)), "{fenced:?}");
    opened.expect("the other run's start commits");

    // a comes back under its id: it does not get its old run back from a
    // live b, and a second live process cannot take the same id.
    let again = Cluster::join(&db, "node-a", "http://a", dead_after)
        .await
        .expect("a joins again")
        .expect("a cluster");
    assert!(matches!(
        again.acquire(run_id).await.expect("a asks"),
        Acquired::Elsewhere { .. }
    ));
    let twin = Cluster::join(&db, "node-b", "http://b2", dead_after).await;
    assert!(
        matches!(twin, Err(StoreError::NodeIdInUse(_))),
        "{:?}",
        twin.err()
    );
}
