//! Metrics: node CPU/RAM from sysinfo, task CPU/RAM from the task cgroups.

use std::collections::BTreeMap;

use skiff_proto::{MetricsSample, Name, TaskSample};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use crate::runtime::TaskStats;

/// Turns successive readings into samples (CPU % needs two readings).
#[derive(Debug)]
pub struct Sampler {
    /// `None` when sysinfo can't read this system: node figures are then 0.
    sys: Option<System>,
    /// Per task: cumulative CPU ns and the monotonic ms it was read at.
    prev: BTreeMap<Name, (u64, u64)>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Sampler {
        let sys = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        if let Err(e) = &sys {
            tracing::warn!(error = %e, "cannot read node CPU and memory; reporting 0");
        }
        Sampler {
            sys: sys.ok(),
            prev: BTreeMap::new(),
        }
    }

    /// One sample at `mono_ms` / `wall_ms` from the node and the given task readings.
    pub fn sample(
        &mut self,
        tasks: Vec<(Name, Option<TaskStats>)>,
        mono_ms: u64,
        wall_ms: u64,
    ) -> MetricsSample {
        if let Some(sys) = &mut self.sys {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
        }
        let mut next = BTreeMap::new();
        let tasks = tasks
            .into_iter()
            .filter_map(|(name, stats)| {
                let stats = stats?;
                let cpu_pct = self.prev.get(&name).map_or(0.0, |&(ns, ms)| {
                    cpu_percent(ns, ms, stats.cpu_usage_ns, mono_ms)
                });
                next.insert(name.clone(), (stats.cpu_usage_ns, mono_ms));
                Some(TaskSample {
                    task: name,
                    cpu_pct,
                    mem_bytes: stats.mem_bytes,
                    mem_limit_bytes: stats.mem_limit_bytes,
                })
            })
            .collect();
        self.prev = next;
        let sys = self.sys.as_ref();
        MetricsSample {
            at_ms: wall_ms,
            cpu_pct: sys.map_or(0.0, System::global_cpu_usage),
            mem_used_bytes: sys.map_or(0, System::used_memory),
            mem_total_bytes: sys.map_or(0, System::total_memory),
            tasks,
        }
    }
}

/// CPU use between two readings in % of one CPU.
pub fn cpu_percent(prev_ns: u64, prev_ms: u64, ns: u64, ms: u64) -> f32 {
    let wall_ns = ms.saturating_sub(prev_ms).saturating_mul(1_000_000);
    if wall_ns == 0 {
        return 0.0;
    }
    let used = ns.saturating_sub(prev_ns);
    #[allow(clippy::cast_possible_truncation)] // a percentage fits an f32
    let pct = (used as f64 * 100.0 / wall_ns as f64) as f32;
    pct
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_of_one_cpu() {
        assert_eq!(cpu_percent(0, 0, 500_000_000, 1_000), 50.0);
        assert_eq!(cpu_percent(0, 0, 2_000_000_000, 1_000), 200.0);
        assert_eq!(cpu_percent(10, 5, 5, 5), 0.0);
        assert_eq!(
            cpu_percent(10, 5, 5, 1_005),
            0.0,
            "a counter reset is not negative"
        );
    }

    #[test]
    fn tasks_get_cpu_from_the_second_reading_on() {
        let mut s = Sampler::new();
        let t: Name = "t".parse().expect("name");
        let st = |ns| {
            Some(TaskStats {
                cpu_usage_ns: ns,
                mem_bytes: 1 << 20,
                mem_limit_bytes: None,
            })
        };
        let first = s.sample(vec![(t.clone(), st(0))], 0, 0);
        assert_eq!(first.tasks[0].cpu_pct, 0.0);
        let second = s.sample(vec![(t.clone(), st(250_000_000))], 1_000, 1_000);
        assert_eq!(second.tasks[0].cpu_pct, 25.0);
        assert_eq!(second.tasks[0].mem_bytes, 1 << 20);
        assert!(second.mem_total_bytes > 0 && second.mem_used_bytes <= second.mem_total_bytes);
        let gone = s.sample(vec![(t, None)], 2_000, 2_000);
        assert!(gone.tasks.is_empty());
    }
}
