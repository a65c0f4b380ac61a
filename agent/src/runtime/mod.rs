//! Containers through libcontainer (placeholder, being written).

/// Entry point of the launcher process (`skiff __launcher`), placeholder.
pub fn launcher_main() -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
