//! Task cgroups on cgroup v1 (one hierarchy per controller, or several co-mounted) and on the
//! cgroup v2 unified hierarchy: layout detection, creating a task cgroup with its limits,
//! removing cgroup trees, and reading stats and OOM counters.
//!
//! Every function works from the hierarchy roots held in [`CgroupLayout`], so the unit tests run
//! the same code against fake trees in a temporary directory.
//!
//! libcontainer creates the container cgroups (`{parent}/{task}/{container}`) below the task
//! cgroup made here, in every v1 hierarchy it knows, and removes them on delete; the task and
//! parent levels are ours to remove.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::TaskStats;

/// Where cgroup hierarchies are mounted on a normal system.
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// CFS period used for task CPU quotas (the kernel default).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// v1 controllers a task cgroup is created in (the limits and stats live there); libcontainer
/// creates the container level in the others.
const V1_TASK_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

/// v1 controller names as they appear in a cgroup mount's super options.
const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "blkio",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// v2 controllers enabled for task and container cgroups.
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Which cgroup hierarchies the host has. Detected once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CgroupLayout {
    /// Legacy or hybrid: a mount point per v1 controller (co-mounted controllers share one).
    V1 {
        controllers: BTreeMap<String, PathBuf>,
    },
    /// Pure cgroup v2.
    V2 { root: PathBuf },
}

/// A failed cgroup file operation.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {path}: {source}")]
pub struct CgroupError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

fn cg_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Task-level limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TaskLimits {
    /// Hard memory limit in bytes (memory + swap: exceeding it OOM-kills).
    pub memory_bytes: Option<u64>,
    /// CPU quota in microseconds per [`CPU_PERIOD_US`].
    pub cpu_quota_us: Option<u64>,
}

impl TaskLimits {
    /// ECS units: 1024 CPU units = one CPU; memory in MiB.
    pub fn from_task(cpu_units: Option<u32>, memory_mib: Option<u32>) -> Self {
        TaskLimits {
            memory_bytes: memory_mib.map(|m| u64::from(m) << 20),
            cpu_quota_us: cpu_units.map(|u| (u64::from(u) * CPU_PERIOD_US / 1024).max(1000)),
        }
    }
}

impl CgroupLayout {
    /// v2 if `/sys/fs/cgroup/cgroup.controllers` exists, else the v1 controllers mounted
    /// according to `/proc/self/mountinfo`. This matches libcontainer's own choice: on a hybrid
    /// layout it uses the v1 controllers.
    pub fn detect() -> io::Result<Self> {
        let root = Path::new(CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            return Ok(CgroupLayout::V2 {
                root: root.to_path_buf(),
            });
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let controllers = v1_mounts(&mountinfo);
        if !controllers.contains_key("memory") {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "neither cgroup v2 at /sys/fs/cgroup nor a cgroup v1 memory controller is mounted",
            ));
        }
        Ok(CgroupLayout::V1 { controllers })
    }

    /// Every distinct hierarchy root.
    fn roots(&self) -> Vec<&Path> {
        match self {
            CgroupLayout::V2 { root } => vec![root.as_path()],
            CgroupLayout::V1 { controllers } => {
                let mut roots: Vec<&Path> = controllers.values().map(PathBuf::as_path).collect();
                roots.sort();
                roots.dedup();
                roots
            }
        }
    }

    /// The directory of cgroup `rel` in the hierarchy holding `controller`.
    pub fn dir(&self, controller: &str, rel: &Path) -> Option<PathBuf> {
        match self {
            CgroupLayout::V2 { root } => Some(root.join(rel)),
            CgroupLayout::V1 { controllers } => controllers.get(controller).map(|m| m.join(rel)),
        }
    }

    /// The file with cgroup `rel`'s OOM-kill counter (`oom_kill N` line in both versions).
    pub fn oom_file(&self, rel: &Path) -> Option<PathBuf> {
        let dir = self.dir("memory", rel)?;
        Some(match self {
            CgroupLayout::V2 { .. } => dir.join("memory.events"),
            CgroupLayout::V1 { .. } => dir.join("memory.oom_control"),
        })
    }

    /// Whether a swap limit can be set on cgroup `rel` (v1 needs swap accounting).
    pub fn swap_limit_supported(&self, rel: &Path) -> bool {
        match self {
            CgroupLayout::V2 { root } => root.join(rel).join("memory.swap.max").exists(),
            CgroupLayout::V1 { controllers } => controllers
                .get("memory")
                .is_some_and(|m| m.join(rel).join("memory.memsw.limit_in_bytes").exists()),
        }
    }

    /// Creates the task cgroup `rel` (`{parent}/{task}`) and applies `limits`. Returns whether
    /// swap limits are supported below it.
    pub fn create_task(&self, rel: &Path, limits: &TaskLimits) -> Result<bool, CgroupError> {
        match self {
            CgroupLayout::V2 { root } => create_task_v2(root, rel, limits)?,
            CgroupLayout::V1 { controllers } => {
                let mut done: Vec<&Path> = Vec::new();
                for c in V1_TASK_CONTROLLERS {
                    let Some(mount) = controllers.get(c) else {
                        continue;
                    };
                    if done.contains(&mount.as_path()) {
                        continue;
                    }
                    done.push(mount);
                    let dir = mount.join(rel);
                    fs::create_dir_all(&dir).map_err(cg_err("create", &dir))?;
                }
                if let Some(mem) = controllers.get("memory") {
                    set_memory_v1(&mem.join(rel), limits.memory_bytes)?;
                }
                if let (Some(cpu), Some(quota)) = (controllers.get("cpu"), limits.cpu_quota_us) {
                    let dir = cpu.join(rel);
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
        }
        Ok(self.swap_limit_supported(rel))
    }

    /// Removes cgroup `rel` and everything below it in every hierarchy, deepest first. Processes
    /// still inside are killed first. A missing cgroup is fine.
    pub fn remove_tree(&self, rel: &Path) -> Result<(), CgroupError> {
        for root in self.roots() {
            let top = root.join(rel);
            if !top.is_dir() {
                continue;
            }
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs).map_err(cg_err("list", &top))?;
            // Children were pushed after their parent: reverse = deepest first.
            for dir in dirs.iter().rev() {
                remove_cgroup_dir(dir)?;
            }
        }
        Ok(())
    }

    /// Removes the now-empty ancestors of a task cgroup (`rel` = the parent path, e.g. `skiff`),
    /// deepest first, stopping quietly at the first one still in use.
    pub fn remove_empty_ancestors(&self, rel: &Path) {
        for root in self.roots() {
            let mut p = rel.to_path_buf();
            loop {
                if p.as_os_str().is_empty() {
                    break;
                }
                if fs::remove_dir(root.join(&p)).is_err() {
                    break;
                }
                if !p.pop() {
                    break;
                }
            }
        }
    }

    /// Moves process `pid` into cgroup `rel` (made if missing) of each hierarchy skiff's task
    /// cgroups use, and of systemd's own where it is mounted beside them (`name=systemd`, the
    /// unified hierarchy of a hybrid layout). The launcher goes there so that the agent's
    /// service unit stopping or restarting (which kills what is left in the unit's cgroup)
    /// does not kill it with the containers it keeps. Returns what failed (best effort).
    pub fn move_process(&self, rel: &Path, pid: u32) -> Vec<String> {
        let mut roots: Vec<PathBuf> = match self {
            CgroupLayout::V2 { root } => vec![root.clone()],
            CgroupLayout::V1 { controllers } => {
                let mut r: Vec<PathBuf> = V1_TASK_CONTROLLERS
                    .iter()
                    .filter_map(|c| controllers.get(*c).cloned())
                    .collect();
                for extra in ["systemd", "unified"] {
                    let p = Path::new(CGROUP_ROOT).join(extra);
                    if p.join("cgroup.procs").exists() {
                        r.push(p);
                    }
                }
                r
            }
        };
        roots.sort();
        roots.dedup();
        let mut failed = Vec::new();
        for root in roots {
            let dir = root.join(rel);
            let moved = fs::create_dir_all(&dir)
                .and_then(|()| fs::write(dir.join("cgroup.procs"), pid.to_string()));
            if let Err(e) = moved {
                failed.push(format!("{}: {e}", dir.display()));
            }
        }
        failed
    }

    /// Names of the cgroups directly below `rel` in any hierarchy.
    pub fn children(&self, rel: &Path) -> Vec<String> {
        let mut names = Vec::new();
        for root in self.roots() {
            if let Ok(rd) = fs::read_dir(root.join(rel)) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        if let Some(n) = e.file_name().to_str() {
                            names.push(n.to_owned());
                        }
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// CPU and memory of cgroup `rel`, hierarchical over its children. `None` if it does not
    /// exist or cannot be read.
    pub fn stats(&self, rel: &Path) -> Option<TaskStats> {
        match self {
            CgroupLayout::V2 { root } => stats_v2(&root.join(rel)).ok(),
            CgroupLayout::V1 { controllers } => {
                let mem = controllers.get("memory")?.join(rel);
                let cpuacct = controllers.get("cpuacct")?.join(rel);
                stats_v1(&mem, &cpuacct).ok()
            }
        }
    }
}

fn create_task_v2(root: &Path, rel: &Path, limits: &TaskLimits) -> Result<(), CgroupError> {
    let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let enable: Vec<&str> = V2_CONTROLLERS
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    // Enable the controllers in every level's subtree_control, from the root down to the task
    // itself (its containers are its children).
    let mut dir = root.to_path_buf();
    enable_v2(&dir, &enable);
    for comp in rel.components() {
        dir.push(comp);
        if !dir.is_dir() {
            fs::create_dir(&dir)
                .or_else(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(cg_err("create", &dir))?;
        }
        enable_v2(&dir, &enable);
    }
    if let Some(bytes) = limits.memory_bytes {
        write(&dir.join("memory.max"), &bytes.to_string())?;
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            write(&swap, "0")?;
        }
    }
    if let Some(quota) = limits.cpu_quota_us {
        write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
    }
    Ok(())
}

fn enable_v2(dir: &Path, controllers: &[&str]) {
    let file = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&file).unwrap_or_default();
    for c in controllers {
        if current.split_whitespace().any(|x| x == *c) {
            continue;
        }
        if let Err(e) = fs::write(&file, format!("+{c}")) {
            tracing::warn!(path = %file.display(), controller = c, error = %e, "cannot enable cgroup controller");
        }
    }
}

fn set_memory_v1(dir: &Path, bytes: Option<u64>) -> Result<(), CgroupError> {
    let Some(bytes) = bytes else {
        return Ok(());
    };
    // memory+swap must stay >= memory: raise the plain limit first, then pin memsw to it so the
    // task cannot swap its way past the limit.
    write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        write(&memsw, &bytes.to_string())?;
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(cg_err("write", path))
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    out.push(dir.to_path_buf());
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            collect_dirs(&e.path(), out)?;
        }
    }
    Ok(())
}

/// rmdir a leaf cgroup, killing what is still inside and retrying while the kernel finishes
/// tearing processes down.
fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupError> {
    let mut delay = Duration::from_millis(5);
    let mut attempt = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt >= 8 => return Err(cg_err("remove", dir)(e)),
            Err(_) => {}
        }
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
        attempt += 1;
    }
}

/// v1 controller → mount point, from the text of `/proc/self/mountinfo`.
pub(crate) fn v1_mounts(mountinfo: &str) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        let (Some(fstype), Some(_source), Some(opts)) = (r.next(), r.next(), r.next()) else {
            continue;
        };
        if fstype != "cgroup" {
            continue;
        }
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        for opt in opts.split(',') {
            if V1_CONTROLLERS.contains(&opt) {
                out.insert(
                    opt.to_owned(),
                    PathBuf::from(unescape_mountinfo(mount_point)),
                );
            }
        }
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// OOM kills recorded in `memory.events` (v2) or `memory.oom_control` (v1).
pub(crate) fn read_oom_kills(file: &Path) -> Option<u64> {
    keyed_value(&fs::read_to_string(file).ok()?, "oom_kill")
}

fn read_u64(path: &Path) -> io::Result<u64> {
    let s = fs::read_to_string(path)?;
    s.trim().parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

fn read_keyed(path: &Path, key: &str) -> io::Result<u64> {
    keyed_value(&fs::read_to_string(path)?, key).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no {key}", path.display()),
        )
    })
}

/// At or above this a limit means "none" (v1 shows page-aligned `LONG_MAX`).
const UNLIMITED: u64 = 1 << 62;

/// v1: `cpuacct.usage`; `memory.usage_in_bytes - total_inactive_file`; `memory.limit_in_bytes`.
pub(crate) fn stats_v1(memory_dir: &Path, cpuacct_dir: &Path) -> io::Result<TaskStats> {
    let cpu_usage_ns = read_u64(&cpuacct_dir.join("cpuacct.usage"))?;
    let usage = read_u64(&memory_dir.join("memory.usage_in_bytes"))?;
    let inactive = read_keyed(&memory_dir.join("memory.stat"), "total_inactive_file").unwrap_or(0);
    let limit = read_u64(&memory_dir.join("memory.limit_in_bytes"))?;
    Ok(TaskStats {
        cpu_usage_ns,
        mem_bytes: usage.saturating_sub(inactive),
        mem_limit_bytes: (limit < UNLIMITED).then_some(limit),
    })
}

/// v2: `cpu.stat usage_usec`; `memory.current - memory.stat inactive_file`; `memory.max`.
pub(crate) fn stats_v2(dir: &Path) -> io::Result<TaskStats> {
    let usage_usec = read_keyed(&dir.join("cpu.stat"), "usage_usec")?;
    let current = read_u64(&dir.join("memory.current"))?;
    let inactive = read_keyed(&dir.join("memory.stat"), "inactive_file").unwrap_or(0);
    let max = fs::read_to_string(dir.join("memory.max"))?;
    let max = max.trim();
    let mem_limit_bytes = if max == "max" {
        None
    } else {
        let v: u64 = max
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("memory.max: {e}")))?;
        (v < UNLIMITED).then_some(v)
    };
    Ok(TaskStats {
        cpu_usage_ns: usage_usec.saturating_mul(1000),
        mem_bytes: current.saturating_sub(inactive),
        mem_limit_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    fn get(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    const MOUNTINFO_HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_mounts_separate_and_comounted() {
        let m = v1_mounts(MOUNTINFO_HYBRID);
        assert_eq!(m.get("cpu"), Some(&PathBuf::from("/sys/fs/cgroup/cpu")));
        assert_eq!(
            m.get("memory"),
            Some(&PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert!(!m.contains_key("name=systemd"));
        assert_eq!(m.len(), 4);

        let co =
            "25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw shared:8 - cgroup cgroup rw,cpu,cpuacct\n\
                  26 24 0:23 / /sys/fs/cgroup/my\\040mem rw - cgroup cgroup rw,memory\n";
        let m = v1_mounts(co);
        assert_eq!(m.get("cpu"), m.get("cpuacct"));
        assert_eq!(
            m.get("memory"),
            Some(&PathBuf::from("/sys/fs/cgroup/my mem"))
        );
        let layout = CgroupLayout::V1 { controllers: m };
        assert_eq!(layout.roots().len(), 2);
    }

    fn fake_v1(root: &Path) -> CgroupLayout {
        let mut controllers = BTreeMap::new();
        for c in ["memory", "cpu", "cpuacct", "pids", "cpuset"] {
            let d = root.join(c);
            fs::create_dir_all(&d).expect("mkdir");
            controllers.insert(c.to_owned(), d);
        }
        put(&root.join("memory/memory.memsw.limit_in_bytes"), "");
        CgroupLayout::V1 { controllers }
    }

    #[test]
    fn v1_task_limits() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = fake_v1(tmp.path());
        let rel = Path::new("skiff/web");
        // A real cgroup directory comes with its files; the fake one gets them up front.
        put(
            &tmp.path()
                .join("memory/skiff/web/memory.memsw.limit_in_bytes"),
            "",
        );
        let limits = TaskLimits::from_task(Some(512), Some(64));
        let swap = layout.create_task(rel, &limits).expect("create");
        assert!(swap);
        let mem = tmp.path().join("memory/skiff/web");
        assert_eq!(get(&mem.join("memory.limit_in_bytes")), "67108864");
        assert_eq!(get(&mem.join("memory.memsw.limit_in_bytes")), "67108864");
        let cpu = tmp.path().join("cpu/skiff/web");
        assert_eq!(get(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(get(&cpu.join("cpu.cfs_period_us")), "100000");
        assert!(tmp.path().join("cpuacct/skiff/web").is_dir());
        assert!(tmp.path().join("pids/skiff/web").is_dir());
        // cpuset is left to libcontainer, which fills cpus/mems on its way down.
        assert!(!tmp.path().join("cpuset/skiff").exists());
    }

    #[test]
    fn v1_no_limits_writes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = fake_v1(tmp.path());
        layout
            .create_task(Path::new("skiff/t"), &TaskLimits::default())
            .expect("create");
        assert!(!tmp
            .path()
            .join("memory/skiff/t/memory.limit_in_bytes")
            .exists());
        assert!(!tmp.path().join("cpu/skiff/t/cpu.cfs_quota_us").exists());
    }

    #[test]
    fn v2_task_limits_and_subtree_control() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        put(
            &root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        );
        put(&root.join("cgroup.subtree_control"), "");
        put(&root.join("skiff/web/memory.swap.max"), "max\n");
        let layout = CgroupLayout::V2 { root: root.clone() };
        let swap = layout
            .create_task(
                Path::new("skiff/web"),
                &TaskLimits::from_task(Some(2048), Some(128)),
            )
            .expect("create");
        assert!(swap);
        let dir = root.join("skiff/web");
        assert_eq!(get(&dir.join("memory.max")), "134217728");
        assert_eq!(get(&dir.join("memory.swap.max")), "0");
        assert_eq!(get(&dir.join("cpu.max")), "200000 100000");
        // A regular file keeps only the last write: each controller is enabled by its own write.
        assert_eq!(get(&root.join("cgroup.subtree_control")), "+pids");
        assert_eq!(get(&dir.join("cgroup.subtree_control")), "+pids");
    }

    #[test]
    fn cpu_quota_from_units() {
        let l = TaskLimits::from_task(Some(1024), None);
        assert_eq!(l.cpu_quota_us, Some(100_000));
        let l = TaskLimits::from_task(Some(256), None);
        assert_eq!(l.cpu_quota_us, Some(25_000));
        // The kernel refuses quotas under 1 ms.
        let l = TaskLimits::from_task(Some(1), None);
        assert_eq!(l.cpu_quota_us, Some(1000));
        let l = TaskLimits::from_task(None, Some(4));
        assert_eq!(l.memory_bytes, Some(4 << 20));
    }

    #[test]
    fn stats_from_fake_v1() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = fake_v1(tmp.path());
        let mem = tmp.path().join("memory/skiff/web");
        put(&mem.join("memory.usage_in_bytes"), "10485760\n");
        put(
            &mem.join("memory.stat"),
            "cache 4096\ninactive_file 999\ntotal_cache 8192\ntotal_inactive_file 2097152\n",
        );
        put(&mem.join("memory.limit_in_bytes"), "9223372036854771712\n");
        put(
            &tmp.path().join("cpuacct/skiff/web/cpuacct.usage"),
            "123456789\n",
        );
        let s = layout.stats(Path::new("skiff/web")).expect("stats");
        assert_eq!(
            s,
            TaskStats {
                cpu_usage_ns: 123_456_789,
                mem_bytes: 8 << 20,
                mem_limit_bytes: None
            }
        );
        put(&mem.join("memory.limit_in_bytes"), "67108864\n");
        let s = layout.stats(Path::new("skiff/web")).expect("stats");
        assert_eq!(s.mem_limit_bytes, Some(64 << 20));
        assert_eq!(layout.stats(Path::new("skiff/none")), None);
    }

    #[test]
    fn stats_from_fake_v2() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("skiff/web");
        put(
            &dir.join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        put(&dir.join("memory.current"), "5242880\n");
        put(
            &dir.join("memory.stat"),
            "anon 1000\nfile 4096\nactive_file 1\ninactive_file 1048576\n",
        );
        put(&dir.join("memory.max"), "max\n");
        let layout = CgroupLayout::V2 {
            root: tmp.path().to_path_buf(),
        };
        let s = layout.stats(Path::new("skiff/web")).expect("stats");
        assert_eq!(
            s,
            TaskStats {
                cpu_usage_ns: 2_500_000,
                mem_bytes: 4 << 20,
                mem_limit_bytes: None
            }
        );
        put(&dir.join("memory.max"), "16777216\n");
        let s = layout.stats(Path::new("skiff/web")).expect("stats");
        assert_eq!(s.mem_limit_bytes, Some(16 << 20));
    }

    #[test]
    fn oom_counters() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let v1 = fake_v1(tmp.path());
        let rel = Path::new("skiff/t/c");
        let f = v1.oom_file(rel).expect("v1 file");
        assert!(f.ends_with("memory/skiff/t/c/memory.oom_control"));
        put(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
        assert_eq!(read_oom_kills(&f), Some(2));

        let v2 = CgroupLayout::V2 {
            root: tmp.path().join("v2"),
        };
        let f = v2.oom_file(rel).expect("v2 file");
        assert!(f.ends_with("v2/skiff/t/c/memory.events"));
        put(
            &f,
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        );
        assert_eq!(read_oom_kills(&f), Some(1));
        // oom_kill must not match oom_kill_disable or oom_group_kill.
        put(&f, "oom_group_kill 5\noom_kill_disable 1\n");
        assert_eq!(read_oom_kills(&f), None);
        assert_eq!(read_oom_kills(&tmp.path().join("missing")), None);
    }

    #[test]
    fn remove_tree_deepest_first_and_ancestors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = fake_v1(tmp.path());
        for c in ["memory", "cpu", "cpuset"] {
            fs::create_dir_all(tmp.path().join(c).join("skiff/web/app")).expect("mkdir");
            fs::create_dir_all(tmp.path().join(c).join("skiff/other")).expect("mkdir");
        }
        assert_eq!(
            layout.children(Path::new("skiff")),
            vec!["other".to_owned(), "web".to_owned()]
        );
        layout.remove_tree(Path::new("skiff/web")).expect("remove");
        for c in ["memory", "cpu", "cpuset"] {
            assert!(!tmp.path().join(c).join("skiff/web").exists());
            assert!(tmp.path().join(c).join("skiff/other").exists());
        }
        layout.remove_empty_ancestors(Path::new("skiff"));
        assert!(tmp.path().join("memory/skiff").exists(), "still in use");
        layout
            .remove_tree(Path::new("skiff/other"))
            .expect("remove");
        layout.remove_empty_ancestors(Path::new("skiff"));
        for c in ["memory", "cpu", "cpuset"] {
            assert!(!tmp.path().join(c).join("skiff").exists());
            assert!(tmp.path().join(c).exists());
        }
        // Idempotent.
        layout.remove_tree(Path::new("skiff/web")).expect("again");
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }
}
