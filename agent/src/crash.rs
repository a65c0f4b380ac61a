//! `SKIFF_TEST_CRASH_AT`: how the end-to-end tests stop the agent at one exact point, as a
//! `kill -9` or a power cut there would (`abort`: no destructor runs, nothing is flushed).
//!
//! Points: `queue-receive` (an offer of the cluster queue arrived, nothing decided),
//! `queue-decided` (decided and saved, not yet acknowledged to the broker), `task-removed` (a
//! task's containers deleted, its run not yet saved), `store-replace:{file}` (a state file's new
//! content written and synced aside, not yet renamed over the old one: `desired-node.bin`,
//! `finished.bin`...), `history-append` (half of a run record appended to its history).

const VAR: &str = "SKIFF_TEST_CRASH_AT";

/// Whether the tests asked for a crash at `point`.
pub(crate) fn armed(point: &str) -> bool {
    std::env::var_os(VAR).is_some_and(|v| v == point)
}

/// Whether any crash point is asked for (to build a point's name only then).
pub(crate) fn any_armed() -> bool {
    std::env::var_os(VAR).is_some()
}

/// Aborts the process, saying where.
pub(crate) fn abort(point: &str) -> ! {
    tracing::error!(at = point, "SKIFF_TEST_CRASH_AT: aborting");
    std::process::abort();
}

/// Aborts here when the tests asked for a crash at `point`.
pub(crate) fn point(point: &str) {
    if armed(point) {
        abort(point);
    }
}
