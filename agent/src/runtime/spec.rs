//! The OCI runtime spec (`config.json`) of one container, from its definition and its image's
//! config, following Docker's rules for entrypoint/cmd, environment, working directory and user.
//!
//! Everything here is pure: the user database comes in as text, so the rules are unit-tested
//! without a rootfs.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use oci_spec::OciSpecError;
use skiff_proto::{ContainerDefinition, TaskDefinition};

use super::userns::IdMap;
use crate::images::ImageConfig;

/// `PATH` when the image sets none (Docker's default).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Largest `/etc/passwd` or `/etc/group` read from an image.
const MAX_USER_DB: u64 = 4 << 20;

/// Why a container's spec could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command: neither the definition nor the image sets an entrypoint or command")]
    NoCommand,
    #[error("{0}")]
    User(#[from] UserError),
    #[error("cannot read {path} from the image: {source}")]
    UserDb { path: PathBuf, source: io::Error },
    #[error("invalid OCI spec: {0}")]
    Oci(#[from] OciSpecError),
    #[error("capability {0} is not available to the agent, so it can't give it to a container")]
    Capability(&'static str),
    #[error(
        "{what} {id} is outside the node's user-namespace range (container ids 0..{size}, \
         [userns] size in the agent config)"
    )]
    Unmapped {
        what: &'static str,
        id: u32,
        size: u32,
    },
}

/// A `user` setting that cannot be resolved against the image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("unknown user {0:?}: not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("unknown group {0:?}: not in the image's /etc/group")]
    UnknownGroup(String),
    #[error("invalid user {0:?}: expected user, uid, user:group or uid:gid")]
    Invalid(String),
}

/// Numeric identity of the container's process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the groups of `/etc/group` listing the user by name.
    pub additional_gids: Vec<u32>,
}

/// Everything [`build`] needs besides the definitions.
#[derive(Debug, Clone)]
pub(crate) struct SpecParams<'a> {
    pub task: &'a TaskDefinition,
    pub container: &'a ContainerDefinition,
    pub image: &'a ImageConfig,
    pub user: ResolvedUser,
    /// Absolute path of the container's root filesystem.
    pub rootfs: PathBuf,
    /// The task's network namespace file; `None` = the host's network namespace.
    pub netns: Option<PathBuf>,
    /// `linux.cgroupsPath`, e.g. `/skiff/web/nginx`.
    pub cgroups_path: PathBuf,
    /// Whether the host accounts swap, so the memory limit can include swap.
    pub swap_limit: bool,
    /// Files bind-mounted over the image's (`/etc/hosts`, `/etc/resolv.conf`): host path,
    /// container path.
    pub etc_files: Vec<(PathBuf, String)>,
    /// The container's `mountPoints` resolved to host directories: host path, container path,
    /// read-only.
    pub volumes: Vec<(PathBuf, String, bool)>,
    /// The container's `linuxParameters.devices`, looked up on the host.
    pub devices: Vec<HostDevice>,
    /// Capabilities the agent itself holds (bit = capability number): a privileged container
    /// gets those, any other must ask for a subset.
    pub host_caps: u64,
    /// The task's user namespace (its pinned file) and id map, which the container joins;
    /// `None`: the host's user namespace.
    pub userns: Option<(PathBuf, IdMap)>,
}

/// The agent's permitted capabilities (`CapPrm` of `/proc/self/status`); all if unreadable.
pub(crate) fn own_capabilities() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapPrm:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// A host device node given to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostDevice {
    pub container_path: String,
    pub block: bool,
    pub major: i64,
    pub minor: i64,
    pub file_mode: u32,
    /// cgroup access: a subset of `rwm`.
    pub access: String,
}

/// Process arguments, Docker's way: the definition's entry point (else the image's), then the
/// definition's command, else the image's cmd unless the entry point was overridden.
pub(crate) fn args(c: &ContainerDefinition, img: &ImageConfig) -> Result<Vec<String>, SpecError> {
    let (entry, cmd): (&[String], &[String]) = if !c.entry_point.is_empty() {
        (&c.entry_point, &c.command)
    } else if !c.command.is_empty() {
        (&img.entrypoint, &c.command)
    } else {
        (&img.entrypoint, &img.cmd)
    };
    let args: Vec<String> = entry.iter().chain(cmd).cloned().collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

fn env_key(var: &str) -> &str {
    var.split_once('=').map_or(var, |(k, _)| k)
}

fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let var = format!("{key}={value}");
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(slot) => *slot = var,
        None => env.push(var),
    }
}

/// Environment: the image's (with a default `PATH` if it has none), `HOSTNAME` = task family,
/// then the definition's variables, each replacing one of the same name.
pub(crate) fn env(
    task: &TaskDefinition,
    c: &ContainerDefinition,
    img: &ImageConfig,
) -> Vec<String> {
    let mut env: Vec<String> = Vec::with_capacity(img.env.len() + c.environment.len() + 2);
    for var in &img.env {
        let key = env_key(var);
        if key.is_empty() {
            continue;
        }
        match env.iter_mut().find(|e| env_key(e) == key) {
            Some(slot) => *slot = var.clone(),
            None => env.push(var.clone()),
        }
    }
    if !env.iter().any(|e| env_key(e) == "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    set_env(&mut env, "HOSTNAME", task.family.as_str());
    for var in &c.environment {
        set_env(&mut env, &var.name, &var.value);
    }
    env
}

/// Working directory: the definition's, else the image's, else `/`.
pub(crate) fn cwd(c: &ContainerDefinition, img: &ImageConfig) -> String {
    let dir = c
        .working_directory
        .as_deref()
        .filter(|d| !d.is_empty())
        .or(img.working_dir.as_deref().filter(|d| !d.is_empty()))
        .unwrap_or("/");
    if dir.starts_with('/') {
        dir.to_owned()
    } else {
        // Docker resolves a relative image WorkingDir against `/`.
        format!("/{dir}")
    }
}

/// The `user` setting in effect: the definition's, else the image's.
pub(crate) fn user_setting<'a>(
    c: &'a ContainerDefinition,
    img: &'a ImageConfig,
) -> Option<&'a str> {
    c.user
        .as_deref()
        .filter(|u| !u.is_empty())
        .or(img.user.as_deref().filter(|u| !u.is_empty()))
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        if l.starts_with('#') {
            return None;
        }
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|l| {
        if l.starts_with('#') {
            return None;
        }
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        let gid = f.next()?.parse().ok()?;
        let members = f.next().unwrap_or("");
        Some(GroupEntry { name, gid, members })
    })
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves `user`, `uid`, `user:group` or `uid:gid` (`None` = root) against the image's
/// `/etc/passwd` and `/etc/group` contents. A numeric uid unknown to the image runs with gid 0,
/// as Docker does; a name must exist.
pub(crate) fn resolve_user(
    setting: Option<&str>,
    passwd: &str,
    group: &str,
) -> Result<ResolvedUser, UserError> {
    let setting = setting.unwrap_or("0");
    let invalid = || UserError::Invalid(setting.to_owned());
    let (user, grp) = match setting.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (setting, None),
    };
    if user.is_empty() || grp.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(invalid());
    }
    let (uid, mut gid, name) = if is_numeric(user) {
        let uid: u32 = user.parse().map_err(|_| invalid())?;
        match passwd_entries(passwd).find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name)),
            None => (uid, 0, None),
        }
    } else {
        let e = passwd_entries(passwd)
            .find(|e| e.name == user)
            .ok_or_else(|| UserError::UnknownUser(user.to_owned()))?;
        (e.uid, e.gid, Some(e.name))
    };
    if let Some(g) = grp {
        gid = if is_numeric(g) {
            g.parse().map_err(|_| invalid())?
        } else {
            group_entries(group)
                .find(|e| e.name == g)
                .ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?
                .gid
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for e in group_entries(group) {
            if e.gid != gid
                && e.members.split(',').any(|m| m.trim() == name)
                && !additional_gids.contains(&e.gid)
            {
                additional_gids.push(e.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Reads `etc/{name}` of an image rootfs without following symlinks out of it (a missing file
/// reads as empty).
pub(crate) fn read_user_db(rootfs: &Path, name: &str) -> Result<String, SpecError> {
    let etc = rootfs.join("etc");
    let path = etc.join(name);
    let err = |source| SpecError::UserDb {
        path: PathBuf::from("/etc").join(name),
        source,
    };
    match fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(String::new()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(err(e)),
    }
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(err(e)),
    };
    let mut text = String::new();
    file.take(MAX_USER_DB)
        .read_to_string(&mut text)
        .map_err(err)?;
    Ok(text)
}

fn mib_bytes(mib: u32) -> i64 {
    i64::from(mib) << 20
}

/// The container's OCI runtime spec: `Spec::default()` (oci-spec's default mounts, masked and
/// read-only paths, rlimits) adjusted to the definition.
pub(crate) fn build(p: &SpecParams<'_>) -> Result<Spec, SpecError> {
    let c = p.container;
    let mut spec = Spec::default();

    let sec = &c.security;
    let held = |name: &str| {
        skiff_proto::CAPABILITY_NAMES
            .iter()
            .position(|n| *n == name)
            .is_some_and(|bit| p.host_caps & (1u64 << bit) != 0)
    };
    if let Some((_, map)) = &p.userns {
        let ids = [("uid", p.user.uid), ("gid", p.user.gid)]
            .into_iter()
            .chain(p.user.additional_gids.iter().map(|g| ("group", *g)));
        for (what, id) in ids {
            if map.host_id(id).is_none() {
                return Err(SpecError::Unmapped {
                    what,
                    id,
                    size: map.size,
                });
            }
        }
    }
    let mut cap_names = sec.capabilities();
    if sec.privileged {
        cap_names.retain(|n| held(n));
    } else if let Some(missing) = cap_names.iter().find(|n| !held(n)) {
        return Err(SpecError::Capability(missing));
    }
    // Names are checked against skiff_proto::CAPABILITY_NAMES when the definition is
    // validated; one oci-spec does not know is left out rather than failing the start.
    let caps: HashSet<Capability> = cap_names
        .iter()
        .filter_map(|n| Capability::from_str(n).ok())
        .collect();
    // Inheritable and ambient empty, as Docker since 20.10 (oci-spec's builder would fill them
    // with its defaults, which capset refuses once CAP_SETPCAP is dropped).
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let mut user = UserBuilder::default().uid(p.user.uid).gid(p.user.gid);
    if !p.user.additional_gids.is_empty() {
        user = user.additional_gids(p.user.additional_gids.clone());
    }
    let default_process = spec.process().clone().unwrap_or_default();
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user.build()?)
        .args(args(c, p.image)?)
        .env(env(p.task, c, p.image))
        .cwd(cwd(c, p.image))
        .capabilities(capabilities)
        // On unless the definition turns it off (where the node's policy allows): setuid
        // binaries can't gain privileges, and the seccomp filter can be installed.
        .no_new_privileges(sec.no_new_privileges.unwrap_or(true));
    if let Some(rlimits) = default_process.rlimits() {
        process = process.rlimits(rlimits.clone());
    }
    spec.set_process(Some(process.build()?));

    spec.set_root(Some(
        RootBuilder::default()
            .path(p.rootfs.clone())
            .readonly(sec.read_only_root)
            .build()?,
    ));
    spec.set_hostname(Some(p.task.family.as_str().to_owned()));
    spec.set_mounts(Some(mounts(p, spec.mounts().clone().unwrap_or_default())?));

    let mut namespaces = Vec::with_capacity(6);
    if let Some((path, _)) = &p.userns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .path(path.clone())
                .build()?,
        );
    }
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ] {
        namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
    }
    if let Some(netns) = &p.netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(netns.clone())
                .build()?,
        );
    }

    let mut memory = LinuxMemoryBuilder::default();
    let mut has_memory = false;
    if let Some(m) = c.memory_mib {
        memory = memory.limit(mib_bytes(m));
        if p.swap_limit {
            // memory+swap = memory: exceeding the limit OOM-kills instead of swapping.
            memory = memory.swap(mib_bytes(m));
        }
        has_memory = true;
    }
    if let Some(r) = c.memory_reservation_mib {
        memory = memory.reservation(mib_bytes(r));
        has_memory = true;
    }
    // Deny every device, then libcontainer allows its default set (null, zero, tty, ...) and
    // the ones given; privileged: every device.
    let mut device_rules = vec![LinuxDeviceCgroupBuilder::default()
        .allow(sec.privileged)
        .access("rwm")
        .build()?];
    let mut devices = Vec::with_capacity(p.devices.len());
    for d in &p.devices {
        let typ = if d.block {
            LinuxDeviceType::B
        } else {
            LinuxDeviceType::C
        };
        device_rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(d.major)
                .minor(d.minor)
                .access(d.access.clone())
                .build()?,
        );
        devices.push(
            LinuxDeviceBuilder::default()
                .path(&d.container_path)
                .typ(typ)
                .major(d.major)
                .minor(d.minor)
                .file_mode(d.file_mode)
                .uid(0u32)
                .gid(0u32)
                .build()?,
        );
    }
    let mut resources = LinuxResourcesBuilder::default().devices(device_rules);
    if has_memory {
        resources = resources.memory(memory.build()?);
    }
    if let Some(cpu) = c.cpu {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .shares(u64::from(cpu.max(2)))
                .build()?,
        );
    }

    let default_linux = spec.linux().clone().unwrap_or_default();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build()?)
        .cgroups_path(p.cgroups_path.clone());
    if !devices.is_empty() {
        linux = linux.devices(devices);
    }
    if let Some((_, map)) = &p.userns {
        let ids = vec![LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(map.base)
            .size(map.size)
            .build()?];
        linux = linux.uid_mappings(ids.clone()).gid_mappings(ids);
    }
    if sec.privileged {
        linux = linux.masked_paths(Vec::new()).readonly_paths(Vec::new());
    } else {
        if let Some(masked) = default_linux.masked_paths() {
            linux = linux.masked_paths(masked.clone());
        }
        if let Some(ro) = default_linux.readonly_paths() {
            linux = linux.readonly_paths(ro.clone());
        }
    }
    if sec.filtered(true) && super::seccomp::AVAILABLE {
        linux = linux.seccomp(super::seccomp::default_profile(&cap_names)?);
    }
    spec.set_linux(Some(linux.build()?));
    Ok(spec)
}

/// oci-spec's default mounts (`/proc`, `/dev`, `/sys` read-only...; `/sys` read-write when
/// privileged), then `/etc` files, the task's volumes and the tmpfs mounts.
fn mounts(p: &SpecParams<'_>, mut mounts: Vec<Mount>) -> Result<Vec<Mount>, SpecError> {
    let sec = &p.container.security;
    if p.userns.is_some() && p.netns.is_none() {
        // sysfs can only be mounted by the user namespace that owns the network namespace; on
        // the host's network, bind the host's /sys read-only instead (as Docker does).
        for m in mounts.iter_mut() {
            if m.destination() == Path::new("/sys") {
                m.set_typ(Some("bind".to_owned()));
                m.set_source(Some(PathBuf::from("/sys")));
                m.set_options(Some(
                    ["rbind", "rprivate", "nosuid", "noexec", "nodev", "ro"]
                        .map(str::to_owned)
                        .to_vec(),
                ));
            }
        }
    }
    if sec.privileged {
        for m in mounts.iter_mut() {
            if m.destination() == Path::new("/sys") {
                let opts = m.options().clone().unwrap_or_default();
                m.set_options(Some(opts.into_iter().filter(|o| o != "ro").collect()));
            }
        }
    }
    let bind = |source: &Path, destination: &str, ro: bool| {
        let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
        if ro {
            options.push("ro".to_owned());
        }
        MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(options)
            .build()
    };
    for (source, destination) in &p.etc_files {
        mounts.push(bind(source, destination, false)?);
    }
    for (source, destination, ro) in &p.volumes {
        mounts.push(bind(source, destination, *ro)?);
    }
    if p.container
        .secrets
        .iter()
        .any(|s| matches!(skiff_proto::secret_file(&s.name), Ok(Some(_))))
    {
        // Secret files: memory only, the container's user only.
        mounts.push(
            MountBuilder::default()
                .destination(skiff_proto::SECRET_FILE_DIR)
                .typ("tmpfs")
                .source("tmpfs")
                .options(vec![
                    "nosuid".to_owned(),
                    "nodev".to_owned(),
                    "noexec".to_owned(),
                    "size=1m".to_owned(),
                    "mode=0700".to_owned(),
                    format!("uid={}", p.user.uid),
                    format!("gid={}", p.user.gid),
                ])
                .build()?,
        );
    }
    for t in &sec.tmpfs {
        let mut options = vec![
            "nosuid".to_owned(),
            "nodev".to_owned(),
            format!("size={}m", t.size_mib),
        ];
        options.extend(t.mount_options.iter().cloned());
        mounts.push(
            MountBuilder::default()
                .destination(&t.container_path)
                .typ("tmpfs")
                .source("tmpfs")
                .options(options)
                .build()?,
        );
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::{EnvVar, NetworkMode, RestartPolicy};

    fn n(s: &str) -> skiff_proto::Name {
        s.parse().expect("name")
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn container() -> ContainerDefinition {
        ContainerDefinition {
            name: n("app"),
            image: "busybox".into(),
            entry_point: vec![],
            command: vec![],
            environment: vec![],
            cpu: None,
            memory_mib: None,
            memory_reservation_mib: None,
            essential: true,
            working_directory: None,
            user: None,
            health_check: None,
            stop_timeout_secs: None,
            depends_on: vec![],
            port_mappings: vec![],
            secrets: vec![],
            security: Default::default(),
            mount_points: vec![],
        }
    }

    fn task(c: ContainerDefinition) -> TaskDefinition {
        TaskDefinition {
            family: n("web"),
            revision: 1,
            containers: vec![c],
            cpu: None,
            memory_mib: None,
            network_mode: NetworkMode::None,
            restart_policy: RestartPolicy::Never,
            extensions: vec![],
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: strings(&["/entry"]),
            cmd: strings(&["serve", "--port", "80"]),
            env: strings(&["PATH=/bin", "LANG=C"]),
            working_dir: Some("/srv".into()),
            user: None,
        }
    }

    #[test]
    fn args_follow_docker() {
        let img = image();
        let mut c = container();
        assert_eq!(
            args(&c, &img).expect("args"),
            strings(&["/entry", "serve", "--port", "80"])
        );
        c.command = strings(&["check"]);
        assert_eq!(args(&c, &img).expect("args"), strings(&["/entry", "check"]));
        // An entry point override drops the image's cmd.
        c.command = vec![];
        c.entry_point = strings(&["/bin/sh", "-c"]);
        assert_eq!(args(&c, &img).expect("args"), strings(&["/bin/sh", "-c"]));
        c.command = strings(&["echo hi"]);
        assert_eq!(
            args(&c, &img).expect("args"),
            strings(&["/bin/sh", "-c", "echo hi"])
        );
        // Image with cmd only.
        let img = ImageConfig {
            entrypoint: vec![],
            cmd: strings(&["sh"]),
            ..ImageConfig::default()
        };
        assert_eq!(args(&container(), &img).expect("args"), strings(&["sh"]));
        assert!(matches!(
            args(&container(), &ImageConfig::default()),
            Err(SpecError::NoCommand)
        ));
    }

    #[test]
    fn env_merges_by_name() {
        let mut c = container();
        c.environment = vec![
            EnvVar {
                name: "LANG".into(),
                value: "C.UTF-8".into(),
            },
            EnvVar {
                name: "MODE".into(),
                value: "a=b".into(),
            },
        ];
        let t = task(c.clone());
        assert_eq!(
            env(&t, &c, &image()),
            strings(&["PATH=/bin", "LANG=C.UTF-8", "HOSTNAME=web", "MODE=a=b"])
        );
        // No PATH in the image: the default comes first.
        let img = ImageConfig {
            env: strings(&["A=1", "A=2"]),
            ..ImageConfig::default()
        };
        let c = container();
        assert_eq!(
            env(&t, &c, &img),
            vec![
                format!("PATH={DEFAULT_PATH}"),
                "A=2".into(),
                "HOSTNAME=web".into()
            ]
        );
        // The definition may override PATH and HOSTNAME.
        let mut c = container();
        c.environment = vec![
            EnvVar {
                name: "PATH".into(),
                value: "/opt".into(),
            },
            EnvVar {
                name: "HOSTNAME".into(),
                value: "h".into(),
            },
        ];
        assert_eq!(
            env(&t, &c, &ImageConfig::default()),
            strings(&["PATH=/opt", "HOSTNAME=h"])
        );
    }

    #[test]
    fn cwd_rules() {
        let mut c = container();
        assert_eq!(cwd(&c, &image()), "/srv");
        assert_eq!(cwd(&c, &ImageConfig::default()), "/");
        let img = ImageConfig {
            working_dir: Some("app".into()),
            ..ImageConfig::default()
        };
        assert_eq!(cwd(&c, &img), "/app");
        c.working_directory = Some("/work".into());
        assert_eq!(cwd(&c, &image()), "/work");
    }

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www:x:33:33:www-data:/var/www:/usr/sbin/nologin
broken line
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";
    const GROUP: &str = "\
root:x:0:
daemon:x:1:
www:x:33:
audio:x:29:www,daemon
video:x:44:daemon
nogroup:x:65534:
";

    fn ru(uid: u32, gid: u32, extra: &[u32]) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: extra.to_vec(),
        }
    }

    #[test]
    fn users() {
        let r = |s: Option<&str>| resolve_user(s, PASSWD, GROUP);
        assert_eq!(r(None), Ok(ru(0, 0, &[])));
        assert_eq!(r(Some("root")), Ok(ru(0, 0, &[])));
        assert_eq!(r(Some("www")), Ok(ru(33, 33, &[29])));
        assert_eq!(r(Some("daemon")), Ok(ru(1, 1, &[29, 44])));
        assert_eq!(r(Some("nobody")), Ok(ru(65534, 65534, &[])));
        // uid known to the image: its primary group.
        assert_eq!(r(Some("33")), Ok(ru(33, 33, &[29])));
        // uid unknown to the image: gid 0, as Docker.
        assert_eq!(r(Some("1000")), Ok(ru(1000, 0, &[])));
        assert_eq!(r(Some("1000:1000")), Ok(ru(1000, 1000, &[])));
        assert_eq!(r(Some("www:nogroup")), Ok(ru(33, 65534, &[29])));
        assert_eq!(r(Some("www:audio")), Ok(ru(33, 29, &[])));
        assert_eq!(r(Some("65534:44")), Ok(ru(65534, 44, &[])));
        assert_eq!(
            r(Some("alice")),
            Err(UserError::UnknownUser("alice".into()))
        );
        assert_eq!(
            r(Some("www:staff")),
            Err(UserError::UnknownGroup("staff".into()))
        );
        for bad in ["", ":", "www:", ":0", "1:2:3", "99999999999"] {
            assert_eq!(r(Some(bad)), Err(UserError::Invalid(bad.into())), "{bad:?}");
        }
        // No user database at all: numbers still work, names don't.
        assert_eq!(resolve_user(Some("5:6"), "", ""), Ok(ru(5, 6, &[])));
        assert!(resolve_user(Some("root"), "", "").is_err());
        assert!(UserError::UnknownUser("alice".into())
            .to_string()
            .contains("/etc/passwd"));
    }

    #[test]
    fn user_setting_precedence() {
        let mut c = container();
        let mut img = image();
        assert_eq!(user_setting(&c, &img), None);
        img.user = Some("www".into());
        assert_eq!(user_setting(&c, &img), Some("www"));
        c.user = Some("1:1".into());
        assert_eq!(user_setting(&c, &img), Some("1:1"));
    }

    #[test]
    fn user_db_does_not_follow_symlinks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::write(tmp.path().join("host-secret"), "root:x:0:0::/:/bin/sh\n").expect("write");
        std::os::unix::fs::symlink(tmp.path().join("host-secret"), root.join("etc/passwd"))
            .expect("symlink");
        assert!(read_user_db(&root, "passwd").is_err());
        fs::write(root.join("etc/group"), GROUP).expect("write");
        assert_eq!(read_user_db(&root, "group").expect("group"), GROUP);
        assert_eq!(read_user_db(&root, "missing").expect("missing"), "");
        assert_eq!(
            read_user_db(&tmp.path().join("none"), "passwd").expect("no etc"),
            ""
        );
    }

    fn params<'a>(t: &'a TaskDefinition, img: &'a ImageConfig) -> SpecParams<'a> {
        SpecParams {
            task: t,
            container: &t.containers[0],
            image: img,
            user: ru(33, 33, &[29]),
            rootfs: "/run/skiff/tasks/web/app/rootfs".into(),
            netns: Some("/run/skiff/netns/web".into()),
            cgroups_path: "/skiff/web/app".into(),
            swap_limit: true,
            etc_files: vec![("/run/skiff/tasks/web/hosts".into(), "/etc/hosts".into())],
            volumes: vec![],
            devices: vec![],
            host_caps: u64::MAX,
            userns: None,
        }
    }

    fn caps(spec: &Spec) -> Vec<String> {
        let process = spec.process().as_ref().expect("process");
        let set = process.capabilities().as_ref().expect("caps");
        let mut v: Vec<String> = set
            .bounding()
            .iter()
            .flatten()
            .map(|c| c.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn userns_joins_the_task_namespace_with_its_map() {
        let t = task(container());
        let img = image();
        let map = IdMap {
            base: 100_000,
            size: 65_536,
        };
        let mut p = params(&t, &img);
        p.userns = Some(("/run/skiff/tasks/web/userns".into(), map));
        let spec = build(&p).expect("spec");
        let linux = spec.linux().as_ref().expect("linux");
        let user_ns = linux
            .namespaces()
            .iter()
            .flatten()
            .find(|n| n.typ() == LinuxNamespaceType::User)
            .expect("a user namespace");
        assert_eq!(
            user_ns.path().as_deref(),
            Some(Path::new("/run/skiff/tasks/web/userns"))
        );
        for ids in [linux.uid_mappings(), linux.gid_mappings()] {
            let ids = ids.as_ref().expect("mapping");
            assert_eq!(ids.len(), 1);
            assert_eq!(
                (ids[0].container_id(), ids[0].host_id(), ids[0].size()),
                (0, 100_000, 65_536)
            );
        }
        let sys = |spec: &Spec| {
            spec.mounts()
                .iter()
                .flatten()
                .find(|m| m.destination() == Path::new("/sys"))
                .and_then(|m| m.typ().clone())
        };
        // The task's network namespace belongs to its user namespace: sysfs mounts there.
        assert_eq!(sys(&spec).as_deref(), Some("sysfs"));
        // On the host's network it can't: the host's /sys, bound read-only.
        p.netns = None;
        let spec = build(&p).expect("spec");
        assert_eq!(sys(&spec).as_deref(), Some("bind"));
        let m = spec
            .mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == Path::new("/sys"));
        let opts = m.and_then(|m| m.options().clone()).unwrap_or_default();
        assert!(opts.iter().any(|o| o == "ro") && opts.iter().any(|o| o == "rbind"));

        // Without remapping: no user namespace, no mappings.
        let spec = build(&params(&t, &img)).expect("spec");
        let linux = spec.linux().as_ref().expect("linux");
        assert!(!linux
            .namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::User));
        assert!(linux.uid_mappings().is_none());

        // An id the range does not hold is refused, naming it.
        let mut p = params(&t, &img);
        p.userns = Some(("/x".into(), IdMap { base: 1, size: 30 }));
        let err = build(&p).expect_err("uid 33 is outside 0..30");
        assert_eq!(
            err.to_string(),
            "uid 33 is outside the node's user-namespace range (container ids 0..30, [userns] \
             size in the agent config)"
        );
        p.userns = Some(("/x".into(), IdMap { base: 1, size: 34 }));
        build(&p).expect("uid, gid 33 and group 29 are inside 0..34");
        p.user = ru(1, 1, &[40]);
        let err = build(&p).expect_err("group 40 is outside 0..34");
        assert!(err.to_string().starts_with("group 40 is outside"), "{err}");
    }

    #[test]
    fn least_privilege_by_default() {
        let t = task(container());
        let img = image();
        let spec = build(&params(&t, &img)).expect("spec");
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.no_new_privileges(), Some(true));
        let mut want: Vec<String> = skiff_proto::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect();
        want.sort();
        assert_eq!(caps(&spec), want);
        let linux = spec.linux().as_ref().expect("linux");
        assert!(linux.seccomp().is_some(), "filtered by default");
        assert!(linux
            .masked_paths()
            .as_ref()
            .is_some_and(|m| m.iter().any(|p| p == "/proc/kcore")));
        assert!(linux
            .readonly_paths()
            .as_ref()
            .is_some_and(|m| m.iter().any(|p| p == "/proc/sys")));
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(false));
    }

    #[test]
    fn security_settings_reach_the_spec() {
        let mut c = container();
        c.security.read_only_root = true;
        c.security.cap_add = vec!["NET_ADMIN".into()];
        c.security.cap_drop = vec!["ALL".into()];
        c.security.tmpfs = vec![skiff_proto::Tmpfs {
            container_path: "/tmp".into(),
            size_mib: 8,
            mount_options: vec!["noexec".into()],
        }];
        let t = task(c);
        let img = image();
        let mut p = params(&t, &img);
        p.volumes = vec![("/srv/data".into(), "/data".into(), true)];
        p.devices = vec![HostDevice {
            container_path: "/dev/ttyUSB0".into(),
            block: false,
            major: 188,
            minor: 0,
            file_mode: 0o660,
            access: "rw".into(),
        }];
        let spec = build(&p).expect("spec");
        assert_eq!(caps(&spec), ["NET_ADMIN"]);
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(true));
        let mounts = spec.mounts().as_ref().expect("mounts");
        let data = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .expect("volume");
        assert_eq!(data.source().as_deref(), Some(Path::new("/srv/data")));
        assert!(data
            .options()
            .as_ref()
            .is_some_and(|o| o.contains(&"ro".to_owned())));
        let tmp = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/tmp"))
            .expect("tmpfs");
        assert_eq!(tmp.typ().as_deref(), Some("tmpfs"));
        assert_eq!(
            tmp.options().as_deref(),
            Some(&strings(&["nosuid", "nodev", "size=8m", "noexec"])[..])
        );
        let linux = spec.linux().as_ref().expect("linux");
        let dev = &linux.devices().as_ref().expect("devices")[0];
        assert_eq!((dev.major(), dev.minor()), (188, 0));
        let rules = linux
            .resources()
            .as_ref()
            .and_then(|r| r.devices().as_ref())
            .expect("rules");
        assert!(!rules[0].allow());
        assert!(rules[1].allow() && rules[1].major() == Some(188));
        assert_eq!(rules[1].access().as_deref(), Some("rw"));
    }

    #[test]
    fn privileged_and_unconfined() {
        let mut c = container();
        c.security.privileged = true;
        let t = task(c);
        let img = image();
        let spec = build(&params(&t, &img)).expect("spec");
        assert_eq!(caps(&spec).len(), skiff_proto::CAPABILITY_NAMES.len());
        let linux = spec.linux().as_ref().expect("linux");
        assert!(linux.seccomp().is_none());
        assert!(linux.masked_paths().as_ref().is_none_or(|m| m.is_empty()));
        assert!(linux.readonly_paths().as_ref().is_none_or(|m| m.is_empty()));
        let rules = linux
            .resources()
            .as_ref()
            .and_then(|r| r.devices().as_ref())
            .expect("rules");
        assert!(rules[0].allow(), "every device");
        let sys = spec
            .mounts()
            .as_ref()
            .and_then(|m| m.iter().find(|m| m.destination() == Path::new("/sys")))
            .expect("/sys");
        assert!(!sys
            .options()
            .as_ref()
            .is_some_and(|o| o.contains(&"ro".to_owned())));

        for sec in [
            skiff_proto::ContainerSecurity {
                seccomp_unconfined: true,
                ..Default::default()
            },
            skiff_proto::ContainerSecurity {
                no_new_privileges: Some(false),
                ..Default::default()
            },
        ] {
            let mut c = container();
            c.security = sec.clone();
            let t = task(c);
            let spec = build(&params(&t, &img)).expect("spec");
            let linux = spec.linux().as_ref().expect("linux");
            assert!(linux.seccomp().is_none(), "{sec:?}");
            assert!(linux.masked_paths().is_some());
            let nnp = spec.process().as_ref().and_then(|p| p.no_new_privileges());
            assert_eq!(nnp, Some(sec.no_new_privileges.unwrap_or(true)));
        }
    }

    #[test]
    fn spec_fields() {
        let mut c = container();
        c.memory_mib = Some(16);
        c.memory_reservation_mib = Some(8);
        c.cpu = Some(1);
        let t = task(c);
        let img = image();
        let spec = build(&params(&t, &img)).expect("spec");
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.terminal(), Some(false));
        assert_eq!(
            process.args().as_deref(),
            Some(&strings(&["/entry", "serve", "--port", "80"])[..])
        );
        assert_eq!(process.cwd(), Path::new("/srv"));
        assert_eq!(process.user().uid(), 33);
        assert_eq!(process.user().gid(), 33);
        assert_eq!(process.user().additional_gids().as_deref(), Some(&[29][..]));
        assert!(process
            .env()
            .as_ref()
            .expect("env")
            .contains(&"HOSTNAME=web".to_owned()));
        assert_eq!(spec.hostname().as_deref(), Some("web"));
        let hosts = spec
            .mounts()
            .as_ref()
            .and_then(|m| {
                m.iter()
                    .find(|m| m.destination() == Path::new("/etc/hosts"))
            })
            .expect("/etc/hosts is bind-mounted");
        assert_eq!(
            hosts.source().as_deref(),
            Some(Path::new("/run/skiff/tasks/web/hosts"))
        );
        assert_eq!(hosts.typ().as_deref(), Some("bind"));
        let root = spec.root().as_ref().expect("root");
        assert_eq!(root.readonly(), Some(false));
        assert_eq!(root.path(), Path::new("/run/skiff/tasks/web/app/rootfs"));

        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/skiff/web/app"))
        );
        let ns = linux.namespaces().as_ref().expect("namespaces");
        let types: Vec<_> = ns.iter().map(|n| n.typ()).collect();
        assert_eq!(
            types,
            vec![
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Network
            ]
        );
        assert_eq!(
            ns[4].path().as_deref(),
            Some(Path::new("/run/skiff/netns/web"))
        );
        let res = linux.resources().as_ref().expect("resources");
        let mem = res.memory().as_ref().expect("memory");
        assert_eq!(mem.limit(), Some(16 << 20));
        assert_eq!(mem.swap(), Some(16 << 20));
        assert_eq!(mem.reservation(), Some(8 << 20));
        // cpu.shares has a floor of 2.
        assert_eq!(res.cpu().as_ref().and_then(|c| c.shares()), Some(2));
        let devices = res.devices().as_ref().expect("devices");
        assert!(!devices[0].allow());

        // The spec serializes and libcontainer's loader reads it back.
        let json = serde_json::to_string(&spec).expect("json");
        let back: Spec = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, spec);
    }

    #[test]
    fn spec_host_network_and_no_limits() {
        let t = task(container());
        let img = image();
        let mut p = params(&t, &img);
        p.netns = None;
        p.swap_limit = false;
        let spec = build(&p).expect("spec");
        let linux = spec.linux().as_ref().expect("linux");
        let ns = linux.namespaces().as_ref().expect("namespaces");
        assert!(ns.iter().all(|n| n.typ() != LinuxNamespaceType::Network));
        let res = linux.resources().as_ref().expect("resources");
        assert!(res.memory().is_none());
        assert!(res.cpu().is_none());

        let mut c = container();
        c.memory_mib = Some(32);
        let t = task(c);
        let mut p = params(&t, &img);
        p.swap_limit = false;
        let spec = build(&p).expect("spec");
        let mem = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .expect("memory");
        assert_eq!(mem.limit(), Some(32 << 20));
        assert_eq!(mem.swap(), None);
    }
}
