//! The `runlog` binary: parse the command line and call into the library.

/// mimalloc instead of the system allocator: the server allocates and frees
/// many small objects per request and per event (JSON values, events,
/// buffers), where glibc's malloc took about a fifth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    runlog::cli::run()
}
