//! Timers on a paused clock: the engine reads time only through its clock
//! port, so these tests hold time still and move it on by hand, without
//! sleeping through a back-off or a lease.

use std::time::Duration;

use runlog::domain::ids::Timestamp;
use runlog::engine::ManualClock;
use serde_json::json;

use crate::common::{count_events, spawn_app_with_clock, types};
use crate::on_both_backends;

/// How long a test waits (in real time) for the engine to act once the
/// clock allows it.
const WAIT: Duration = Duration::from_secs(15);

/// A paused clock at a fixed, recognisable time.
fn paused_clock() -> ManualClock {
    ManualClock::starting_at(Timestamp(1_800_000_000_000))
}

on_both_backends!(
    a_retry_waits_for_its_back_off_on_the_clock_and_runs_once_the_clock_reaches_it,
    |backend| {
        let clock = paused_clock();
        let Some(app) = spawn_app_with_clock(backend, clock.clone()).await else {
            return;
        };
        let template = app
            .template_id(
                "flaky",
                json!({"steps": {"a": {
                    "agent": "echo",
                    "config": {"fail_times": 1, "comments": false},
                    "retry": {"max_attempts": 2, "backoff_ms": 60_000}
                }}}),
            )
            .await;
        let run = app.run_id(&template, json!({"x": 1})).await;
        let waiting = app
            .wait_run(&run, "the retry is scheduled", WAIT, |r| {
                r["steps"]["a"]["retry_at"].is_string()
            })
            .await;
        assert_eq!(waiting["steps"]["a"]["status"], "ready", "{waiting}");
        assert_eq!(
            waiting["steps"]["a"]["retry_at"], "2027-01-15T08:01:00.000Z",
            "due 60 s after the failure, on the engine's clock: {waiting}"
        );
        // Time stands still: however long we wait, nothing is dispatched.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events = app.events(&run).await;
        assert_eq!(
            count_events(&events, "StepDispatched", Some("a")),
            1,
            "{:?}",
            types(&events)
        );

        // One millisecond short of the back-off: still nothing.
        clock.advance(Duration::from_millis(59_999));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events = app.events(&run).await;
        assert_eq!(
            count_events(&events, "StepDispatched", Some("a")),
            1,
            "{:?}",
            types(&events)
        );

        // The back-off is over: the second attempt runs and completes.
        clock.advance(Duration::from_millis(1));
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["steps"]["a"]["attempt"], 2, "{done}");
        let events = app.events(&run).await;
        let dispatched: Vec<&str> = events
            .iter()
            .filter(|e| e["event_type"] == "StepDispatched")
            .map(|e| e["recorded_at"].as_str().unwrap())
            .collect();
        assert_eq!(
            dispatched,
            ["2027-01-15T08:00:00.000Z", "2027-01-15T08:01:00.000Z"],
            "each attempt is recorded at the engine's time"
        );
    }
);
