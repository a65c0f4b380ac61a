//! What the agent does with an image before it starts a task: pull it per the pull policy,
//! report progress (throttled, for `pulling` events), unpack its rootfs. Blocking: the agent
//! calls it from `spawn_blocking`.

use std::time::{Duration, Instant};

use super::pull::{Ensured, PullOptions, PullPolicy, PullProgress};
use super::registry::{ClientOptions, Registries, RegistryClient};
use super::settings::ImagesSettings;
use super::{ImageRef, ImageStore, ResolvedImage};

/// Least time between two progress reports of one pull.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The agent's puller: registry client, policy, limits.
#[derive(Debug, Clone)]
pub struct Puller {
    client: RegistryClient,
    policy: PullPolicy,
    opts: PullOptions,
}

/// Bytes of an image's layers on disk (`done`) out of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulling {
    pub done: u64,
    pub total: u64,
}

impl Puller {
    pub fn new(registries: &Registries, settings: &ImagesSettings) -> Puller {
        Puller {
            client: RegistryClient::new(registries.clone(), &ClientOptions::default()),
            policy: settings.pull_policy,
            opts: settings.pull.clone(),
        }
    }

    pub fn policy(&self) -> PullPolicy {
        self.policy
    }

    /// Make `r` available per the policy, then resolve it (unpacking its rootfs once).
    /// `progress` hears of a pull when it starts, at most every [`PROGRESS_EVERY`] while it
    /// downloads, and when every layer is in. The error names the image and what failed.
    pub fn ensure_resolved(
        &self,
        store: &ImageStore,
        r: &ImageRef,
        progress: &mut dyn FnMut(Pulling),
    ) -> Result<ResolvedImage, String> {
        let mut total = 0u64;
        let mut base = 0u64; // bytes of finished layers and layers already present
        let mut last: Option<Instant> = None;
        let mut on = |p: &PullProgress| match p {
            PullProgress::Resolved { layers, .. } => {
                total = layers.iter().map(|l| l.size).sum();
                base = layers.iter().filter(|l| l.present).map(|l| l.size).sum();
                last = Some(Instant::now());
                progress(Pulling { done: base, total });
            }
            PullProgress::Layer { done, .. } => {
                if last.is_none_or(|l| l.elapsed() >= PROGRESS_EVERY) {
                    last = Some(Instant::now());
                    progress(Pulling {
                        done: base.saturating_add(*done).min(total),
                        total,
                    });
                }
            }
            PullProgress::LayerDone {
                size,
                fetched,
                resumed_from,
                ..
            } => {
                if *fetched > 0 || *resumed_from > 0 {
                    base = base.saturating_add(*size);
                }
                if base >= total {
                    progress(Pulling { done: total, total });
                }
            }
        };
        match store
            .ensure(&self.client, r, self.policy, &self.opts, &mut on)
            .map_err(|e| e.to_string())?
        {
            Ensured::Cached | Ensured::Pulled(_) => {}
            Ensured::CachedAfter(e) => {
                tracing::warn!(image = %r, error = %e, "registry unreachable; running the cached image (pull_policy prefer-cached)");
            }
        }
        store
            .resolve(r)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("image {r} is not in the local store"))
    }
}
