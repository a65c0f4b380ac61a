//! Size bounds. Chosen to stay inside what managed brokers accept (AWS IoT Core: 128 KiB
//! messages, 7 topic levels) so a fleet can move off a single mosquitto without changes.

/// Largest encoded message, header included.
pub const MAX_MESSAGE: usize = 128 * 1024;
/// Longest [`crate::Name`].
pub const MAX_NAME: usize = 64;
/// Tasks in one desired-state document.
pub const MAX_TASKS: usize = 64;
/// Containers in one task definition (ECS allows 10).
pub const MAX_CONTAINERS: usize = 10;
/// Arguments in `entryPoint` plus `command` of one container.
pub const MAX_ARGS: usize = 256;
/// Environment variables of one container.
pub const MAX_ENV: usize = 256;
/// Longest single string (argument, environment value, image reference, path).
pub const MAX_STRING: usize = 4096;
/// Longest image reference.
pub const MAX_IMAGE_REF: usize = 512;
/// Largest log chunk in one reply.
pub const MAX_LOG_CHUNK: usize = 64 * 1024;
/// Samples in one metrics batch.
pub const MAX_SAMPLES: usize = 64;
/// Longest free-text reason in an event or reply.
pub const MAX_REASON: usize = 1024;
/// Runs kept and reported per task.
pub const MAX_HISTORY: usize = 100;
/// Desired count of one service (and bound of its auto scaling).
pub const MAX_SERVICE_TASKS: u32 = 64;
/// Longest family of a service: its tasks are named `{family}.{slot}` within [`MAX_NAME`].
pub const MAX_SERVICE_FAMILY: usize = MAX_NAME - 4;
/// Policies of each kind in one service's auto scaling.
pub const MAX_SCALING_POLICIES: usize = 8;
/// Runs of one scheduled task at once with overlap policy `allow`.
pub const MAX_CONCURRENT_RUNS: usize = 4;
/// Port mappings of one task (all its containers).
pub const MAX_PORT_MAPPINGS: usize = 32;
