//! Named time zones (`Europe/Berlin`) for cron schedules: the node's own zoneinfo database
//! (`/usr/share/zoneinfo`, package `tzdata`), read once per zone and kept. The core only asks
//! for the UTC offset at an instant, so its tests use POSIX TZ rules instead of files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tz::TimeZone;

/// Largest zoneinfo file read (real ones are 0.1–4 KiB).
const MAX_TZIF: u64 = 256 * 1024;

/// Where zone files are looked up (`TZDIR` as libc uses it, else the system's).
fn tzdir() -> PathBuf {
    std::env::var_os("TZDIR").map_or_else(|| PathBuf::from("/usr/share/zoneinfo"), PathBuf::from)
}

type Lookup = dyn Fn(&str) -> Option<Arc<TimeZone>> + Send + Sync;

/// Resolves zone names to their rules. Cheap to clone.
#[derive(Clone)]
pub struct Zones(Arc<Lookup>);

impl std::fmt::Debug for Zones {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Zones")
    }
}

impl Zones {
    /// No named zones (schedules may only use fixed offsets).
    pub fn none() -> Zones {
        Zones(Arc::new(|_| None))
    }

    /// The node's zoneinfo database, each zone read once (a failed read is retried later).
    pub fn system() -> Zones {
        let cache: Mutex<HashMap<String, Arc<TimeZone>>> = Mutex::new(HashMap::new());
        let dir = tzdir();
        Zones(Arc::new(move |name| {
            if skiff_proto::check_zone_name("timezone", name).is_err() {
                return None;
            }
            let mut cache = cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(z) = cache.get(name) {
                return Some(z.clone());
            }
            let path = dir.join(name);
            let meta = std::fs::metadata(&path).ok()?;
            if !meta.is_file() || meta.len() > MAX_TZIF {
                return None;
            }
            let bytes = std::fs::read(&path).ok()?;
            let zone = Arc::new(TimeZone::from_tz_data(&bytes).ok()?);
            cache.insert(name.to_string(), zone.clone());
            Some(zone)
        }))
    }

    /// Zones from POSIX TZ strings (`CET-1CEST,M3.5.0,M10.5.0/3`), by name; for tests.
    pub fn from_rules(rules: &[(&str, &str)]) -> Zones {
        let zones: HashMap<String, Arc<TimeZone>> = rules
            .iter()
            .filter_map(|(name, rule)| {
                Some((
                    name.to_string(),
                    Arc::new(TimeZone::from_posix_tz(rule).ok()?),
                ))
            })
            .collect();
        Zones(Arc::new(move |name| zones.get(name).cloned()))
    }

    /// Whether the zone is known here.
    pub fn exists(&self, name: &str) -> bool {
        (self.0)(name).is_some()
    }

    /// The zone's offset east of UTC, in minutes, at `utc_ms` (None: unknown zone).
    pub fn offset_min(&self, name: &str, utc_ms: u64) -> Option<i32> {
        let zone = (self.0)(name)?;
        let secs = i64::try_from(utc_ms / 1000).ok()?;
        let t = zone.find_local_time_type(secs).ok()?;
        Some(t.ut_offset() / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_database_and_rules_agree_on_berlin() {
        let rules = Zones::from_rules(&[("Europe/Berlin", "CET-1CEST,M3.5.0,M10.5.0/3")]);
        // 2026-01-15 and 2026-07-15, 12:00 UTC.
        for (ms, want) in [(1_768_478_400_000, 60), (1_784_116_800_000, 120)] {
            assert_eq!(rules.offset_min("Europe/Berlin", ms), Some(want));
            if std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin").exists() {
                assert_eq!(Zones::system().offset_min("Europe/Berlin", ms), Some(want));
            }
        }
        assert!(!Zones::system().exists("Mars/Olympus_Mons"));
        assert!(!Zones::system().exists("../../etc/passwd"));
        assert!(!Zones::none().exists("UTC"));
    }
}
