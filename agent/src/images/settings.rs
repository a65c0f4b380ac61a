//! The `[images]` section of the agent config: pull policy, pull limits, garbage collection.

use std::time::Duration;

use serde::Deserialize;

use super::pull::{PullOptions, PullPolicy};

/// `[images]` in the agent config. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// When the agent pulls before starting a task: `always`, `if-not-present` (default),
    /// `prefer-cached` (pull, but run the cached image when the registry is unreachable),
    /// `never`.
    pub pull_policy: PullPolicy,
    /// MiB kept free on the store's file system: a pull that would leave less fails before
    /// downloading. Default 256, 0..=1048576.
    pub min_free_mib: u64,
    /// Download rate limit in KiB/s (metered links). Default: unlimited (0).
    pub pull_rate_limit_kib: u64,
    /// Retries per blob when a download breaks off or the registry is unreachable, each
    /// resuming where the last stopped. Default 2, 0..=10.
    pub pull_retries: u32,
    /// Garbage collection (`skiff image prune`, and the agent after each pull): unused images
    /// beyond this many most recent per repository are removed. Default 2, 1..=100.
    pub keep_per_repository: usize,
    /// Garbage collection also removes unused images, oldest first, while the store's file
    /// system has less than this many MiB free. Default 512, 0 disables.
    pub gc_low_water_mib: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            pull_policy: PullPolicy::IfNotPresent,
            min_free_mib: 256,
            pull_rate_limit_kib: 0,
            pull_retries: 2,
            keep_per_repository: 2,
            gc_low_water_mib: 512,
        }
    }
}

/// What is wrong with `[images]`: the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("images.{field}: {problem}")]
pub struct ImagesConfigError {
    pub field: &'static str,
    pub problem: String,
}

/// `[images]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagesSettings {
    pub pull_policy: PullPolicy,
    pub pull: PullOptions,
    pub keep_per_repository: usize,
    pub gc_low_water_bytes: u64,
}

impl Default for ImagesSettings {
    fn default() -> Self {
        ImagesConfig::default()
            .validate()
            .unwrap_or_else(|_| ImagesSettings {
                pull_policy: PullPolicy::IfNotPresent,
                pull: PullOptions::default(),
                keep_per_repository: 2,
                gc_low_water_bytes: 512 << 20,
            })
    }
}

impl ImagesConfig {
    pub fn validate(&self) -> Result<ImagesSettings, ImagesConfigError> {
        let range = |field, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(ImagesConfigError {
                    field,
                    problem: format!("{v} is outside {lo}..={hi}"),
                })
            }
        };
        let min_free = range("min_free_mib", self.min_free_mib, 0, 1 << 20)?;
        let rate = range("pull_rate_limit_kib", self.pull_rate_limit_kib, 0, 1 << 30)?;
        let retries = range("pull_retries", u64::from(self.pull_retries), 0, 10)?;
        let keep = range(
            "keep_per_repository",
            self.keep_per_repository as u64,
            1,
            100,
        )?;
        let low = range("gc_low_water_mib", self.gc_low_water_mib, 0, 1 << 30)?;
        Ok(ImagesSettings {
            pull_policy: self.pull_policy,
            pull: PullOptions {
                min_free_bytes: min_free << 20,
                rate_limit: (rate > 0).then_some(rate << 10),
                retries: u32::try_from(retries).unwrap_or(2),
                retry_delay: Duration::from_millis(500),
            },
            keep_per_repository: usize::try_from(keep).unwrap_or(2),
            gc_low_water_bytes: low << 20,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let s = ImagesConfig::default()
            .validate()
            .expect("defaults are valid");
        assert_eq!(s.pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(s.pull.min_free_bytes, 256 << 20);
        assert_eq!(s.pull.rate_limit, None);
        assert_eq!(s, ImagesSettings::default());
        let c: ImagesConfig =
            toml::from_str("pull_policy = \"prefer-cached\"\npull_rate_limit_kib = 64\n")
                .expect("valid toml");
        let s = c.validate().expect("valid");
        assert_eq!(s.pull_policy, PullPolicy::PreferCached);
        assert_eq!(s.pull.rate_limit, Some(64 * 1024));
        assert!(toml::from_str::<ImagesConfig>("pull_policy = \"sometimes\"").is_err());
        assert!(toml::from_str::<ImagesConfig>("pullpolicy = \"never\"").is_err());
        let bad = ImagesConfig {
            pull_retries: 11,
            ..ImagesConfig::default()
        };
        assert_eq!(
            bad.validate().expect_err("out of range").to_string(),
            "images.pull_retries: 11 is outside 0..=10"
        );
    }
}
