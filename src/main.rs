//! The `runlog` binary: parse the command line and call into the library.

fn main() -> std::process::ExitCode {
    runlog::cli::run()
}
