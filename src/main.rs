//! The `squall` binary: parses the command line, sets up logging, runs one subcommand
//! and maps its outcome to an exit code. All behaviour lives in the library and `cli/`.

mod cli;

/// jemalloc, not the system allocator: see its entry in Cargo.toml (the broker and the
/// load generator both allocate on one thread and free on another).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return cli::clap_exit(e),
    };
    // Before logging and before the runtime: a bad setting exits 64 with nothing bound.
    let prepared = match cli::prepare(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(cli::exit_code_of(&e));
        }
    };
    cli::init_tracing(&prepared.log);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = prepared.worker_threads() {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(prepared)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code_of(&e))
        }
    }
}
