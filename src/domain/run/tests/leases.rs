//! Given/when/then: remote workers' claims, heartbeats and releases, and the
//! tick that expires leases, revokes them after a cancel's grace and
//! dispatches due retries.

use super::*;

/// The default lease of the policy.
const LEASE_MS: i64 = 30_000;

fn claim(step: &str, token: &str, worker: &str, ms: i64) -> Stamped {
    stamped(
        RunCommand::ClaimStep {
            step: sid(step),
            lease: lease(token),
            worker: worker.into(),
        },
        ms,
        "",
    )
}

fn heartbeat(step: &str, token: &str, ms: i64) -> Stamped {
    stamped(
        RunCommand::Heartbeat {
            step: sid(step),
            lease: lease(token),
        },
        ms,
        "",
    )
}

fn release_step(step: &str, token: &str, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::ReleaseStep {
            step: sid(step),
            lease: lease(token),
            comments: Vec::new(),
        },
        ms,
        seed,
    )
}

fn claimed(step: &str, attempt: u32, worker: &str, ms: i64) -> RunEvent {
    RunEvent::StepClaimed {
        step: sid(step),
        attempt,
        worker: worker.into(),
        lease_expires_at: at(ms + LEASE_MS),
        at: at(ms),
    }
}

fn expired(step: &str, attempt: u32, worker: &str, expiries: u32, ms: i64) -> RunEvent {
    RunEvent::StepLeaseExpired {
        step: sid(step),
        attempt,
        worker: worker.into(),
        expiries,
        at: at(ms),
    }
}

/// The events of `events` that are not the thread's.
fn story(events: Vec<RunEvent>) -> Vec<RunEvent> {
    events
        .into_iter()
        .filter(|e| {
            !matches!(
                e,
                RunEvent::MessagePosted { .. } | RunEvent::MessageStatusChanged { .. }
            )
        })
        .collect()
}

/// Decides `command` on the state `history` leads to; the events not of
/// the thread.
fn when(history: &[RunEvent], command: Stamped) -> Result<Vec<RunEvent>, RunError> {
    decide(&state_after(history.to_vec()), command).map(story)
}

/// `history` and then the events `command` decides on it.
fn then(mut history: Vec<RunEvent>, command: Stamped) -> Vec<RunEvent> {
    let events = decide(&state_after(history.clone()), command).expect("command accepted");
    history.extend(events);
    history
}

/// The diamond with a claimed by worker w1 at 12.
fn diamond_a_claimed() -> Vec<RunEvent> {
    let mut events = diamond_started();
    events.push(claimed("a", 1, "w1", 12));
    events
}

// ------------------------------------------------------------------ claims --

#[test]
fn a_claim_records_the_worker_and_a_lease_that_runs_from_the_claim() {
    assert_eq!(
        when(&diamond_started(), claim("a", "s0.1", "w1", 12)),
        Ok(vec![claimed("a", 1, "w1", 12)])
    );
    let run = state_after(diamond_a_claimed());
    let a = &run.steps[&sid("a")];
    assert_eq!(a.claimed_by.as_deref(), Some("w1"));
    assert_eq!(a.lease_expires_at, Some(at(12 + LEASE_MS)));
    assert_eq!(a.status, StepStatus::Running);
}

#[test]
fn a_step_with_its_own_heartbeat_timeout_gets_a_lease_of_that_length() {
    let def = definition(json!({"a": {"agent": "echo", "heartbeat_timeout_ms": 5_000}}));
    let history = vec![
        run_started(def, &["a"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
    ];
    let events = when(&history, claim("a", "s0.1", "w1", 12)).unwrap();
    let [RunEvent::StepClaimed {
        lease_expires_at, ..
    }] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(*lease_expires_at, at(5_012));
}

#[test]
fn claiming_an_attempt_a_worker_holds_is_refused() {
    assert_eq!(
        when(&diamond_a_claimed(), claim("a", "s0.1", "w2", 13)),
        Err(RunError::AlreadyClaimed(sid("a")))
    );
}

#[test]
fn claiming_with_a_lease_that_is_not_the_attempts_is_refused() {
    assert_eq!(
        when(&diamond_started(), claim("a", "old", "w1", 12)),
        Err(RunError::StaleLease(sid("a")))
    );
}

#[test]
fn claiming_a_step_that_is_not_running_is_refused() {
    assert_eq!(
        when(&diamond_started(), claim("b", "s0.1", "w1", 12)),
        Err(RunError::StepNotRunning(sid("b")))
    );
}

#[test]
fn claiming_an_attempt_of_a_finished_run_is_refused() {
    assert_eq!(
        when(&diamond_completed(), claim("d", "s3.1", "w1", 60)),
        Err(RunError::Finished("completed"))
    );
}

// -------------------------------------------------------------- heartbeats --

#[test]
fn a_heartbeat_a_third_of_a_lease_after_the_claim_extends_the_lease_to_a_full_lease_from_now() {
    assert_eq!(
        when(
            &diamond_a_claimed(),
            heartbeat("a", "s0.1", 12 + LEASE_MS / 3)
        ),
        Ok(vec![RunEvent::StepHeartbeat {
            step: sid("a"),
            attempt: 1,
            lease_expires_at: at(12 + LEASE_MS / 3 + LEASE_MS),
            at: at(12 + LEASE_MS / 3),
        }])
    );
}

#[test]
fn a_heartbeat_sooner_than_a_third_of_a_lease_is_answered_without_an_event() {
    assert_eq!(
        when(
            &diamond_a_claimed(),
            heartbeat("a", "s0.1", 12 + LEASE_MS / 3 - 1)
        ),
        Ok(vec![])
    );
}

#[test]
fn a_heartbeat_with_a_stale_lease_is_refused() {
    assert_eq!(
        when(&diamond_a_claimed(), heartbeat("a", "old", 20)),
        Err(RunError::StaleLease(sid("a")))
    );
}

#[test]
fn a_heartbeat_for_an_attempt_no_worker_claimed_is_refused() {
    assert_eq!(
        when(&diamond_started(), heartbeat("a", "s0.1", 20)),
        Err(RunError::NotClaimed(sid("a")))
    );
}

#[test]
fn a_heartbeat_after_the_attempt_completed_is_refused() {
    let history = then(diamond_a_claimed(), complete("a", "s0.1", "A", 20, "s1"));
    assert_eq!(
        when(&history, heartbeat("a", "s0.1", 25)),
        Err(RunError::StepNotRunning(sid("a")))
    );
}

// ---------------------------------------------------------------- releases --

#[test]
fn a_released_attempt_runs_again_as_a_new_attempt_without_using_up_its_retries() {
    let events = when(&diamond_a_claimed(), release_step("a", "s0.1", 20, "s2")).unwrap();
    assert_eq!(
        events,
        vec![
            RunEvent::StepReleased {
                step: sid("a"),
                attempt: 1,
                at: at(20),
            },
            dispatched("a", 2, "s2.1", &[], 20),
        ]
    );
    let run = state_after(then(
        diamond_a_claimed(),
        release_step("a", "s0.1", 20, "s2"),
    ));
    assert_eq!(run.steps[&sid("a")].failures, 0);
    assert_eq!(run.steps[&sid("a")].claimed_by, None);
}

#[test]
fn releasing_an_attempt_no_worker_claimed_is_refused() {
    assert_eq!(
        when(&diamond_started(), release_step("a", "s0.1", 20, "s2")),
        Err(RunError::NotClaimed(sid("a")))
    );
}

#[test]
fn a_release_while_pausing_pauses_the_run_without_dispatching_again() {
    let history = then(diamond_a_claimed(), pause(15));
    let events = when(&history, release_step("a", "s0.1", 20, "s2")).unwrap();
    assert_eq!(
        events,
        vec![
            RunEvent::StepReleased {
                step: sid("a"),
                attempt: 1,
                at: at(20),
            },
            run_paused(20),
        ]
    );
}

// ----------------------------------------------------------- lease expiry --

#[test]
fn a_lease_is_not_expired_a_millisecond_before_its_time() {
    assert_eq!(
        when(&diamond_a_claimed(), tick(12 + LEASE_MS - 1, "s9")),
        Ok(vec![])
    );
}

#[test]
fn an_expired_lease_ends_the_attempt_and_dispatches_the_step_again_without_using_up_its_retries() {
    let now = 12 + LEASE_MS;
    let history = then(diamond_a_claimed(), tick(now, "s9"));
    assert_eq!(
        story(history[diamond_a_claimed().len()..].to_vec()),
        vec![
            expired("a", 1, "w1", 1, now),
            dispatched("a", 2, "s9.1", &[], now)
        ]
    );
    // Announced once in the thread.
    assert!(history.iter().any(|e| matches!(e,
        RunEvent::MessagePosted { content, author: Author::System, .. }
            if content == "Step 'a' lost its worker 'w1' (no heartbeat before its lease ran out; 1 in a row).")));
    let run = state_after(history);
    let a = &run.steps[&sid("a")];
    assert_eq!(
        (a.status, a.attempt, a.failures, a.lease_expiries),
        (StepStatus::Running, 2, 0, 1)
    );
    assert_eq!(a.claimed_by, None);
}

#[test]
fn a_lease_extended_by_a_heartbeat_expires_a_full_lease_after_the_heartbeat() {
    let history = then(diamond_a_claimed(), heartbeat("a", "s0.1", 20_012));
    assert_eq!(when(&history, tick(12 + LEASE_MS, "s9")), Ok(vec![]));
    assert_eq!(
        when(&history, tick(20_012 + LEASE_MS, "s9")).unwrap()[0],
        expired("a", 1, "w1", 1, 20_012 + LEASE_MS)
    );
}

#[test]
fn the_third_expiry_in_a_row_fails_the_step_and_the_run() {
    let mut history = diamond_a_claimed();
    let mut now = 12 + LEASE_MS;
    history = then(history, tick(now, "s9"));
    for (n, token) in [(2, "s9.1"), (3, "s10.1")] {
        history = then(history, claim("a", token, "w1", now + 1));
        now += 1 + LEASE_MS;
        let seed = format!("s{}", 8 + n);
        let events = when(&history, tick(now, &seed)).unwrap();
        if n == 2 {
            assert_eq!(events[0], expired("a", 2, "w1", 2, now), "{events:?}");
            assert!(
                matches!(&events[1], RunEvent::StepDispatched { attempt: 3, .. }),
                "{events:?}"
            );
        } else {
            let error = "the step's lease expired 3 times in a row (last held by worker 'w1', \
                         which sent no heartbeat in time)";
            assert_eq!(
                events,
                vec![
                    expired("a", 3, "w1", 3, now),
                    RunEvent::StepFailed {
                        step: sid("a"),
                        attempt: 3,
                        error: error.into(),
                        will_retry: false,
                        fails_run: true,
                        retryable: false,
                        at: at(now),
                    },
                    run_failed("a", error, now),
                ]
            );
        }
        history = then(history, tick(now, &seed));
    }
}

#[test]
fn an_attempt_that_completes_ends_a_run_of_expiries() {
    let history = then(diamond_a_claimed(), tick(12 + LEASE_MS, "s9"));
    let history = then(history, complete("a", "s9.1", "A", 30_100, "s10"));
    let run = state_after(history);
    assert_eq!(run.steps[&sid("a")].lease_expiries, 0);
}

#[test]
fn an_expiry_while_pausing_pauses_the_run_instead_of_dispatching_again() {
    let history = then(diamond_a_claimed(), pause(15));
    let now = 12 + LEASE_MS;
    assert_eq!(
        when(&history, tick(now, "s9")),
        Ok(vec![expired("a", 1, "w1", 1, now), run_paused(now)])
    );
}

#[test]
fn only_claimed_attempts_have_leases_that_expire() {
    // a runs in-process (never claimed): no expiry however late.
    assert_eq!(when(&diamond_started(), tick(10_000_000, "s9")), Ok(vec![]));
    assert_eq!(state_after(diamond_started()).next_wake(), None);
}

#[test]
fn the_run_wakes_when_a_claimed_attempts_lease_is_due_to_expire() {
    assert_eq!(
        state_after(diamond_a_claimed()).next_wake(),
        Some(at(12 + LEASE_MS))
    );
}

// ---------------------------------------------------------- cancel's grace --

#[test]
fn a_cancel_gives_running_attempts_a_grace_then_revokes_their_leases_and_the_run_ends_cancelled() {
    let history = then(diamond_a_claimed(), cancel(Some("enough"), 20));
    let run = state_after(history.clone());
    assert_eq!(run.cancel_grace_until, Some(at(20 + GRACE_MS)));
    assert_eq!(
        run.next_wake(),
        Some(at(12 + LEASE_MS).min(at(20 + GRACE_MS)))
    );
    // The worker keeps heartbeating: its lease does not expire.
    let history = then(history, heartbeat("a", "s0.1", 20_000));
    assert_eq!(when(&history, tick(20 + GRACE_MS - 1, "s9")), Ok(vec![]));
    assert_eq!(
        when(&history, tick(20 + GRACE_MS, "s9")),
        Ok(vec![
            RunEvent::StepLeaseRevoked {
                step: sid("a"),
                attempt: 1,
                at: at(20 + GRACE_MS),
            },
            run_cancelled(Some("enough"), 20 + GRACE_MS),
        ])
    );
    let done = state_after(then(history, tick(20 + GRACE_MS, "s9")));
    assert_eq!(done.status, RunStatus::Cancelled);
    assert_eq!(done.next_wake(), None);
    // A late result is refused.
    assert_eq!(
        decide(&done, complete("a", "s0.1", "A", 20 + GRACE_MS + 1, "s10")),
        Err(RunError::Finished("cancelled"))
    );
}

#[test]
fn a_cancel_recorded_before_graces_existed_revokes_nothing_and_leases_expire_by_time() {
    let mut history = diamond_a_claimed();
    history.push(RunEvent::CancelRequested {
        reason: None,
        grace_until: None,
        at: at(20),
    });
    assert_eq!(when(&history, tick(12 + LEASE_MS - 1, "s9")), Ok(vec![]));
    assert_eq!(
        when(&history, tick(12 + LEASE_MS, "s9")),
        Ok(vec![
            expired("a", 1, "w1", 1, 12 + LEASE_MS),
            run_cancelled(None, 12 + LEASE_MS)
        ])
    );
}

// ------------------------------------------------------------------ recover --

#[test]
fn recovery_leaves_claimed_attempts_to_their_workers_and_redispatches_the_others() {
    // b is claimed by a worker; c ran in-process and died with the server.
    let history = then(diamond_a_done(), claim("b", "s1.1", "w1", 22));
    assert_eq!(
        when(&history, recover(30, "s9")),
        Ok(vec![redispatched("c", 1, "s9.1", &[("a.out", 1)], 30)])
    );
}

// ---------------------------------------------------------------- failures --

#[test]
fn a_failure_that_is_not_retryable_fails_the_step_even_with_attempts_left() {
    let command = stamped(
        RunCommand::FailStep {
            step: sid("a"),
            lease: lease("s0.1"),
            failure: Failure {
                error: "400 bad request".into(),
                retryable: false,
                retry_after_ms: None,
            },
            comments: Vec::new(),
        },
        20,
        "",
    );
    let events = when(&retrying_started(), command).unwrap();
    assert_eq!(
        events,
        vec![
            RunEvent::StepFailed {
                step: sid("a"),
                attempt: 1,
                error: "400 bad request".into(),
                will_retry: false,
                fails_run: true,
                retryable: false,
                at: at(20),
            },
            run_failed("a", "400 bad request", 20),
        ]
    );
}

#[test]
fn a_failure_told_to_retry_after_a_while_waits_that_long_when_it_is_longer_than_the_back_off() {
    let command = |after: u64| {
        stamped(
            RunCommand::FailStep {
                step: sid("a"),
                lease: lease("s0.1"),
                failure: Failure {
                    error: "429".into(),
                    retryable: true,
                    retry_after_ms: Some(after),
                },
                comments: Vec::new(),
            },
            20,
            "",
        )
    };
    assert_eq!(
        when(&retrying_started(), command(2_000)).unwrap()[1],
        retry_scheduled("a", 2, 2_000, 20)
    );
    // Shorter than the policy's 50 ms back-off: the back-off wins.
    assert_eq!(
        when(&retrying_started(), command(10)).unwrap()[1],
        retry_scheduled("a", 2, 50, 20)
    );
}
