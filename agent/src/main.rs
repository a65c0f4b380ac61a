//! The `skiff` binary (placeholder: the CLI is being written).

fn main() -> std::process::ExitCode {
    // The launcher is re-executed from this binary; it must run before anything starts a thread.
    if std::env::args_os().nth(1).is_some_and(|a| a == "__launcher") {
        return skiff_agent::runtime::launcher_main();
    }
    std::process::ExitCode::SUCCESS
}
