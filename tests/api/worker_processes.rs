//! `runlog worker` as real processes against the real server: racing
//! workers, a worker killed mid-task, a worker frozen past its lease, a
//! cancel that stops the worker's program. The server's leases run on a
//! clock the test moves, so no test waits out a lease.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runlog::domain::ids::Timestamp;
use runlog::engine::{Clock, ManualClock, SystemClock};
use serde_json::{json, Value};

use crate::common::{
    count_events, expect_error, spawn_app_with_options, types, AppOptions, TestApp,
};
use crate::on_both_backends;
use crate::workers::{config, TOKEN};

const WAIT: Duration = Duration::from_secs(60);

/// A `runlog worker` process; killed when dropped.
struct WorkerProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WorkerProcess {
    /// Starts `runlog worker` for `agent` with `extra` flags.
    fn start(app: &TestApp, id: &str, agent: &str, extra: &[&str]) -> Self {
        let log = app.storage.data_dir.join(format!("{id}.log"));
        let file = std::fs::File::create(&log).expect("worker log");
        let child = Command::new(env!("CARGO_BIN_EXE_runlog"))
            .args([
                "worker",
                "--server",
                &app.address,
                "--agent",
                agent,
                "--worker-id",
                id,
            ])
            .args(extra)
            .env("RUNLOG_WORKER_TOKEN", TOKEN)
            .env("RUNLOG_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start runlog worker");
        Self { child, log }
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signal the worker");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process exits; its status. (Asynchronously: the
    /// server runs on this test's runtime too.)
    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Writes an executable shell script into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A server on a clock that starts at the wall clock's now and then moves
/// only when the test says.
async fn spawn(backend: crate::common::Backend) -> Option<(TestApp, ManualClock)> {
    let clock = ManualClock::starting_at(Timestamp(SystemClock.now().0));
    let app = spawn_app_with_options(
        backend,
        AppOptions {
            clock: Some(clock.clone()),
            config: Some(config()),
            ..AppOptions::default()
        },
    )
    .await?;
    Some((app, clock))
}

/// One step of the remote agent `render`.
fn one_remote_step() -> Value {
    json!({"steps": {"a": {"agent": "render"}}})
}

/// Waits until `done` holds for the run's events.
async fn wait_events(
    app: &TestApp,
    run: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = app.events(run).await;
        if done(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {:?}",
            types(&events)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

on_both_backends!(
    two_worker_processes_racing_for_200_tasks_execute_each_exactly_once,
    |backend| {
        let Some((app, _clock)) = spawn(backend).await else {
            return;
        };
        // Each execution appends a line to a shared file.
        let seen = app.storage.data_dir.join("executions.txt");
        let program = script(
            &app.storage.data_dir,
            "record.sh",
            &format!(
                "input=$(cat)\nid=$(printf '%s' \"$input\" | sed 's/.*\"task_id\":\"\\([a-z0-9]*\\)\".*/\\1/')\n\
                 echo \"$id\" >> {}\necho '{{\"done\": true}}'",
                seen.display()
            ),
        );
        let program = program.to_str().unwrap();
        let workers = [
            WorkerProcess::start(
                &app,
                "racer-1",
                "render",
                &["--concurrency", "4", "--exec", program],
            ),
            WorkerProcess::start(
                &app,
                "racer-2",
                "render",
                &["--concurrency", "4", "--exec", program],
            ),
        ];
        let template = app.template_id("one", one_remote_step()).await;
        let mut runs = Vec::new();
        for n in 0..200 {
            runs.push(app.run_id(&template, json!({"n": n})).await);
        }
        for run in &runs {
            let done = app.wait_finished(run, WAIT).await;
            assert_eq!(done["status"], "completed", "{done}");
        }
        let lines = std::fs::read_to_string(&seen).unwrap();
        let executed: Vec<&str> = lines.lines().collect();
        let distinct: std::collections::BTreeSet<&str> = executed.iter().copied().collect();
        assert_eq!(executed.len(), 200, "executions");
        assert_eq!(distinct.len(), 200, "a task ran twice");
        let mut by_worker = std::collections::BTreeMap::new();
        for run in &runs {
            let events = app.events(run).await;
            assert_eq!(count_events(&events, "StepClaimed", Some("a")), 1);
            assert_eq!(count_events(&events, "StepCompleted", Some("a")), 1);
            let claimed = events
                .iter()
                .find(|e| e["event_type"] == "StepClaimed")
                .unwrap();
            *by_worker
                .entry(claimed["payload"]["worker"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(by_worker.len(), 2, "both workers took tasks: {by_worker:?}");
        drop(workers);
    }
);

on_both_backends!(
    a_worker_killed_mid_task_loses_its_lease_and_another_worker_completes_the_step,
    |backend| {
        let Some((app, clock)) = spawn(backend).await else {
            return;
        };
        let started = app.storage.data_dir.join("started");
        let slow = script(
            &app.storage.data_dir,
            "slow.sh",
            &format!(
                "cat > /dev/null\ntouch {}\nsleep 20\necho '{{\"by\": \"slow\"}}'",
                started.display()
            ),
        );
        let quick = script(
            &app.storage.data_dir,
            "quick.sh",
            "cat > /dev/null\necho '{\"by\": \"quick\"}'",
        );
        let victim = WorkerProcess::start(
            &app,
            "victim",
            "render",
            &["--exec", slow.to_str().unwrap()],
        );
        let template = app.template_id("one", one_remote_step()).await;
        let run = app.run_id(&template, json!({})).await;
        wait_events(&app, &run, "the victim claimed the step", |e| {
            count_events(e, "StepClaimed", Some("a")) == 1
        })
        .await;
        let deadline = Instant::now() + WAIT;
        while !started.exists() {
            assert!(
                Instant::now() < deadline,
                "the program did not start: {}",
                victim.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        victim.signal(nix::sys::signal::Signal::SIGKILL);
        let rescuer = WorkerProcess::start(
            &app,
            "rescuer",
            "render",
            &["--exec", quick.to_str().unwrap()],
        );
        // No heartbeat comes: past the lease, the attempt expires and the
        // rescuer gets the step.
        clock.advance(Duration::from_secs(31));
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        let attempts = done["steps"]["a"]["attempts"].as_array().unwrap();
        assert_eq!(attempts[0]["status"], "expired", "{done}");
        assert_eq!(attempts[0]["worker"], "victim");
        assert_eq!(attempts[1]["worker"], "rescuer");
        let (_, artifact) = app.get(&format!("/api/runs/{run}/artifacts/a.by")).await;
        assert_eq!(artifact["versions"][0]["content"], "quick", "{artifact}");
        drop(rescuer);
    }
);

on_both_backends!(
    a_worker_frozen_past_its_lease_gets_409_when_it_completes_and_its_result_is_not_recorded,
    |backend| {
        let Some((app, clock)) = spawn(backend).await else {
            return;
        };
        let started = app.storage.data_dir.join("started");
        let program = script(
            &app.storage.data_dir,
            "sleepy.sh",
            &format!(
                "cat > /dev/null\ntouch {}\nsleep 2\necho '{{\"by\": \"sleepy\"}}'",
                started.display()
            ),
        );
        let sleepy = WorkerProcess::start(
            &app,
            "sleepy",
            "render",
            &["--exec", program.to_str().unwrap()],
        );
        let template = app.template_id("one", one_remote_step()).await;
        let run = app.run_id(&template, json!({})).await;
        let deadline = Instant::now() + WAIT;
        while !started.exists() {
            assert!(
                Instant::now() < deadline,
                "the program did not start: {}",
                sleepy.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sleepy.signal(nix::sys::signal::Signal::SIGSTOP);
        clock.advance(Duration::from_secs(31));
        let events = wait_events(&app, &run, "the lease expired", |e| {
            count_events(e, "StepLeaseExpired", Some("a")) == 1
        })
        .await;
        let before = events.len();
        // Thawed, its program finishes and it reports: 409, nothing recorded.
        sleepy.signal(nix::sys::signal::Signal::SIGCONT);
        let deadline = Instant::now() + WAIT;
        while !sleepy.log().contains("lease was lost") {
            assert!(
                Instant::now() < deadline,
                "the worker did not hear of its lost lease: {}",
                sleepy.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let events = app.events(&run).await;
        assert_eq!(
            count_events(&events, "StepCompleted", None),
            0,
            "{:?}",
            types(&events)
        );
        // Only thread messages and the new attempt's claim may follow.
        assert!(
            events[before..]
                .iter()
                .all(|e| ["StepClaimed", "MessagePosted"]
                    .contains(&e["event_type"].as_str().unwrap())),
            "{:?}",
            types(&events[before..])
        );
        let detail = app.run(&run).await;
        assert_eq!(
            detail["steps"]["a"]["attempts"][0]["status"], "expired",
            "{detail}"
        );
        assert!(
            detail["artifacts"].as_object().unwrap().is_empty(),
            "{detail}"
        );
        let reply = app.get(&format!("/api/runs/{run}/artifacts/a.by")).await;
        expect_error(&reply, 404, "artifact_not_found");
    }
);

on_both_backends!(
    a_cancel_reaches_the_worker_through_its_heartbeat_and_it_stops_its_program,
    |backend| {
        let Some((app, _clock)) = spawn(backend).await else {
            return;
        };
        let started = app.storage.data_dir.join("started");
        let stopped = app.storage.data_dir.join("stopped");
        let program = script(
            &app.storage.data_dir,
            "stubborn.sh",
            &format!(
                "cat > /dev/null\ntrap 'touch {}; exit 143' TERM\ntouch {}\n\
                 i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\necho '{{}}'",
                stopped.display(),
                started.display()
            ),
        );
        let worker =
            WorkerProcess::start(&app, "w", "render", &["--exec", program.to_str().unwrap()]);
        let template = app.template_id("one", one_remote_step()).await;
        let run = app.run_id(&template, json!({})).await;
        let deadline = Instant::now() + WAIT;
        while !started.exists() {
            assert!(
                Instant::now() < deadline,
                "the program did not start: {}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, _) = app
            .post(&format!("/api/runs/{run}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200);
        // The next heartbeat (at most 10 s) says the run is cancelled; the
        // worker sends SIGTERM, the program traps it and exits.
        let done = app
            .wait_run(&run, "the run is cancelled", WAIT, |r| {
                r["status"] == "cancelled"
            })
            .await;
        assert!(
            stopped.exists(),
            "the program was not stopped: {}",
            worker.log()
        );
        assert!(
            worker.log().contains("the run was cancelled"),
            "{}",
            worker.log()
        );
        assert_eq!(done["steps"]["a"]["status"], "failed", "{done}");
        assert_eq!(
            done["steps"]["a"]["error"], "stopped: the run was cancelled",
            "{done}"
        );
    }
);

on_both_backends!(
    a_worker_shut_down_with_sigterm_gives_back_a_task_its_program_cannot_finish_in_the_grace,
    |backend| {
        let Some((app, _clock)) = spawn(backend).await else {
            return;
        };
        let started = app.storage.data_dir.join("started");
        let program = script(
            &app.storage.data_dir,
            "long.sh",
            &format!(
                "cat > /dev/null\ntouch {}\nsleep 30\necho '{{}}'",
                started.display()
            ),
        );
        let mut worker = WorkerProcess::start(
            &app,
            "w",
            "render",
            &[
                "--exec",
                program.to_str().unwrap(),
                "--shutdown-grace-secs",
                "1",
                "--kill-grace-ms",
                "200",
            ],
        );
        let template = app.template_id("one", one_remote_step()).await;
        let run = app.run_id(&template, json!({})).await;
        let deadline = Instant::now() + WAIT;
        while !started.exists() {
            assert!(
                Instant::now() < deadline,
                "the program did not start: {}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worker.signal(nix::sys::signal::Signal::SIGTERM);
        let status = worker.wait_exit(WAIT).await;
        assert!(status.success(), "{status:?}: {}", worker.log());
        let events = wait_events(&app, &run, "the task was given back", |e| {
            count_events(e, "StepReleased", Some("a")) == 1
        })
        .await;
        assert_eq!(count_events(&events, "StepCompleted", None), 0);
        // It is ready for another worker, as a new attempt.
        let (status, task) = app.claim("other", &["render"], 10).await;
        assert_eq!(status, 200, "{task}");
        assert_eq!(task["attempt"], 2);
    }
);

on_both_backends!(
    an_echo_worker_completes_tasks_with_their_inputs_without_a_program,
    |backend| {
        let Some((app, _clock)) = spawn(backend).await else {
            return;
        };
        let _worker = WorkerProcess::start(&app, "echoer", "render", &["--echo"]);
        let template = app.template_id("one", one_remote_step()).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        let (_, artifact) = app.get(&format!("/api/runs/{run}/artifacts/a.topic")).await;
        assert_eq!(artifact["versions"][0]["content"], "owls", "{artifact}");
    }
);
