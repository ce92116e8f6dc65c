//! `runlog bench`: workloads against a real server over HTTP.

use std::process::ExitCode;

use clap::Args;

/// Benchmark settings.
#[derive(Debug, Clone, Args)]
pub struct BenchSettings {}

/// Runs the benchmark.
pub async fn run(_settings: BenchSettings) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Err("the benchmark is not implemented yet".into())
}
