//! Given/when/then: purging a finished run's artifact bodies.

use super::*;

fn purge(finished_before: i64, ms: i64) -> Stamped {
    stamped(
        RunCommand::PurgeArtifacts {
            finished_before: at(finished_before),
        },
        ms,
        "p",
    )
}

fn blob(sha: &str, size: u64) -> ArtifactContent {
    ArtifactContent::Blob {
        sha256: sha.into(),
        size,
    }
}

/// The completed diamond (finished at 50) where b's and d's bodies were
/// large enough to live in the blob store.
fn diamond_completed_with_blobs() -> Vec<RunEvent> {
    diamond_completed()
        .into_iter()
        .map(|mut event| {
            if let RunEvent::StepCompleted {
                step, artifacts, ..
            } = &mut event
            {
                let sha = match step.as_str() {
                    "b" => Some(("bb", 10_000)),
                    "d" => Some(("dd", 20_000)),
                    _ => None,
                };
                if let Some((sha, size)) = sha {
                    artifacts[0].content = blob(sha, size);
                }
            }
            event
        })
        .collect()
}

fn purged(versions: &[(&str, u32, &str, u64)], finished_before: i64, ms: i64) -> RunEvent {
    RunEvent::ArtifactsPurged {
        versions: versions
            .iter()
            .map(|&(name, version, sha, size)| PurgedVersion {
                name: artifact(name),
                version,
                sha256: sha.into(),
                size,
            })
            .collect(),
        finished_before: at(finished_before),
        at: at(ms),
    }
}

#[test]
fn purging_a_finished_run_names_every_version_stored_as_a_blob() {
    Given::with(())
        .given(diamond_completed_with_blobs())
        .when(purge(100, 200))
        .then_expect_events(vec![purged(
            &[("b.out", 1, "bb", 10_000), ("d.out", 1, "dd", 20_000)],
            100,
            200,
        )]);
}

#[test]
fn a_run_with_only_inline_bodies_is_purged_with_no_versions() {
    Given::with(())
        .given(diamond_failed())
        .when(purge(100, 200))
        .then_expect_events(vec![purged(&[], 100, 200)]);
}

#[test]
fn purging_a_purged_run_records_nothing() {
    let mut history = diamond_completed_with_blobs();
    history.push(purged(
        &[("b.out", 1, "bb", 10_000), ("d.out", 1, "dd", 20_000)],
        100,
        200,
    ));
    Given::with(())
        .given(history)
        .when(purge(300, 400))
        .then_expect_events(vec![]);
}

#[test]
fn a_run_that_has_not_finished_is_not_purged() {
    Given::with(())
        .given(diamond_a_done())
        .when(purge(100, 200))
        .then_expect_error(RunError::NotFinished("running"));
    Given::with(())
        .given(vec![])
        .when(purge(100, 200))
        .then_expect_error(RunError::NotStarted);
}

#[test]
fn a_run_that_finished_at_or_after_the_cut_off_is_not_purged() {
    Given::with(())
        .given(diamond_completed())
        .when(purge(50, 200))
        .then_expect_error(RunError::FinishedLater {
            finished_at: at(50).to_rfc3339(),
            finished_before: at(50).to_rfc3339(),
        });
}

#[test]
fn a_cancelled_run_is_purged_and_one_that_finished_after_the_cut_off_is_not() {
    Given::with(())
        .given(diamond_cancelled())
        .when(purge(1_000, 2_000))
        .then_expect_events(vec![purged(&[], 1_000, 2_000)]);
    Given::with(())
        .given(diamond_completed())
        .when(purge(49, 200))
        .then_expect_error(RunError::FinishedLater {
            finished_at: at(50).to_rfc3339(),
            finished_before: at(49).to_rfc3339(),
        });
}

#[test]
fn a_reopened_run_finishes_again_later_and_the_cut_off_reads_the_last_finish() {
    // b retried at 60 reopens the run; it has not finished since.
    let mut history = diamond_completed();
    history.push(RunEvent::StepRetryRequested {
        step: sid("b"),
        prompt_override: None,
        invalidated: steps(&["d"]),
        reopens_run: true,
        at: at(60),
    });
    let run = state_after(history.clone());
    assert_eq!(run.finished_at, None);
    Given::with(())
        .given(history)
        .when(purge(100, 200))
        .then_expect_error(RunError::NotFinished("running"));
    assert_eq!(state_after(diamond_completed()).finished_at, Some(at(50)));
}

#[test]
fn a_purged_run_is_never_reopened() {
    let mut history = diamond_completed_with_blobs();
    history.push(purged(&[("b.out", 1, "bb", 10_000)], 100, 200));
    let run = state_after(history.clone());
    assert_eq!(run.purged_at, Some(at(200)));
    let refused = RunError::Purged(at(200).to_rfc3339());
    Given::with(())
        .given(history.clone())
        .when(retry_step("b", Some("again"), 300, "s9"))
        .then_expect_error(refused.clone());
    Given::with(())
        .given(history)
        .when(rollback("b.out", 1, 300, "s9"))
        .then_expect_error(refused);
}
