//! Audits: `runlog replay --verify --all` (or `--since TIME`) folds every
//! run's log and compares the result with the run detail read model,
//! field by field. Wiring, like `cli`: it reads through `store` and
//! `projections`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::domain::log::Logged;
use crate::projections::{ReadModels, RunDetail};
use crate::store::EventLog;

/// One field on which a read model differs from its run's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// The run.
    pub run_id: String,
    /// The field, as a path into the run detail (`steps.b.status`); empty
    /// for the whole document.
    pub field: String,
    /// What the log says (null: absent).
    pub expected: Value,
    /// What the read model says (null: absent).
    pub found: Value,
}

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    /// Runs checked.
    pub runs: usize,
    /// Every divergence, by run then field.
    pub divergences: Vec<Divergence>,
    /// Runs whose read model was still behind their log after a second
    /// look (compared up to where it was).
    pub behind: Vec<String>,
}

impl Report {
    /// Runs with at least one divergence.
    pub fn divergent_runs(&self) -> usize {
        let mut runs: Vec<&str> = self.divergences.iter().map(|d| d.run_id.as_str()).collect();
        runs.dedup();
        runs.len()
    }

    /// Whether the read models agree with the log.
    pub fn ok(&self) -> bool {
        self.divergences.is_empty() && self.behind.is_empty()
    }
}

/// Progress of a long verification: (runs done, runs in all).
pub type OnProgress<'a> = &'a mut dyn FnMut(usize, usize);

/// Verifies the runs of the log (those with an event recorded at or after
/// `since`, when given) against the run detail read model. A read model
/// behind its log (a server still applying) is compared up to where it is,
/// and looked at once more at the end; one still behind then is reported.
pub async fn verify_runs(
    log: &EventLog,
    reads: &ReadModels,
    since: Option<&str>,
    progress: OnProgress<'_>,
) -> Result<Report, Box<dyn std::error::Error>> {
    let ids = log.run_ids(since).await?;
    let mut report = Report {
        runs: ids.len(),
        ..Report::default()
    };
    let mut behind = Vec::new();
    for (done, id) in ids.iter().enumerate() {
        if verify_run(log, reads, id, &mut report.divergences).await? {
            behind.push(id.clone());
        }
        progress(done + 1, ids.len());
    }
    if !behind.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for id in behind {
            if verify_run(log, reads, &id, &mut Vec::new()).await? {
                report.behind.push(id);
            }
        }
    }
    Ok(report)
}

/// Compares one run; returns whether its read model is behind its log.
async fn verify_run(
    log: &EventLog,
    reads: &ReadModels,
    id: &str,
    divergences: &mut Vec<Divergence>,
) -> Result<bool, Box<dyn std::error::Error>> {
    let events = log.follow_aggregate("Run", id, 0).await?;
    let last = events.last().map_or(0, |e| e.sequence);
    let Some(stored) = reads.run_detail(id).await? else {
        divergences.push(Divergence {
            run_id: id.to_string(),
            field: String::new(),
            expected: Value::String(format!("a run detail at sequence {last}")),
            found: Value::Null,
        });
        return Ok(false);
    };
    let upto = stored.sequence.min(last);
    let folded = RunDetail::replayed(events.iter().filter_map(Logged::as_run), Some(upto));
    let mut fields = Vec::new();
    diff(
        "",
        &serde_json::to_value(&folded)?,
        &serde_json::to_value(&stored)?,
        &mut fields,
    );
    divergences.extend(
        fields
            .into_iter()
            .map(|(field, expected, found)| Divergence {
                run_id: id.to_string(),
                field,
                expected,
                found,
            }),
    );
    Ok(stored.sequence < last)
}

/// The fields where `found` differs from `expected`, as paths.
pub fn diff(path: &str, expected: &Value, found: &Value, out: &mut Vec<(String, Value, Value)>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (expected, found) {
        (Value::Object(e), Value::Object(f)) => {
            let mut keys: Vec<&String> = e.keys().chain(f.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let (ev, fv) = (
                    e.get(key).unwrap_or(&Value::Null),
                    f.get(key).unwrap_or(&Value::Null),
                );
                diff(&join(key), ev, fv, out);
            }
        }
        (Value::Array(e), Value::Array(f)) if e.len() == f.len() => {
            for (i, (ev, fv)) in e.iter().zip(f).enumerate() {
                diff(&join(&i.to_string()), ev, fv, out);
            }
        }
        _ if expected != found => out.push((path.to_string(), expected.clone(), found.clone())),
        _ => {}
    }
}

/// Reports progress: a bar with runs/s and ETA on a terminal, a log line
/// every 1,000 runs (and at the end) otherwise.
pub fn progress_reporter(what: &'static str) -> impl FnMut(usize, usize) {
    use std::io::IsTerminal;
    let started = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} runs, {per_sec}, ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(what);
        bar
    });
    move |done, total| match &bar {
        Some(bar) => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            if done == total {
                bar.finish_and_clear();
            }
        }
        None => {
            if done % 1000 == 0 || done == total {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let rate = done as f64 / secs;
                let eta = (total - done) as f64 / rate.max(1e-9);
                tracing::info!(
                    what,
                    done,
                    total,
                    runs_per_s = format!("{rate:.0}"),
                    eta_s = format!("{eta:.0}"),
                    "progress"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::diff;

    #[test]
    fn diff_names_each_differing_field_by_its_path() {
        let expected = json!({"status": "completed", "steps": {"a": {"status": "completed"}},
                              "tags": [1, 2], "gone": 1});
        let found = json!({"status": "completed", "steps": {"a": {"status": "failed"}},
                           "tags": [1, 3], "extra": true});
        let mut out = Vec::new();
        diff("", &expected, &found, &mut out);
        assert_eq!(
            out,
            vec![
                ("extra".to_string(), json!(null), json!(true)),
                ("gone".to_string(), json!(1), json!(null)),
                (
                    "steps.a.status".to_string(),
                    json!("completed"),
                    json!("failed")
                ),
                ("tags.1".to_string(), json!(2), json!(3)),
            ]
        );
        let mut none = Vec::new();
        diff("", &expected, &expected, &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn arrays_of_different_lengths_differ_as_a_whole() {
        let mut out = Vec::new();
        diff("xs", &json!([1]), &json!([1, 2]), &mut out);
        assert_eq!(out, vec![("xs".to_string(), json!([1]), json!([1, 2]))]);
    }
}
