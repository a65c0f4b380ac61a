//! The node's local policy: what desired state may ask of this device, whoever signed it.
//!
//! A fleet key decides *what runs*; the device owner decides *how much a task may do here*. The
//! policy file (`policy_file` in the agent config, TOML) bounds the privileges a task definition
//! can request: privileged containers, host networking, running without the seccomp filter,
//! capabilities beyond Docker's default set, host devices and host directories. A desired-state
//! document with a task outside it is rejected as a whole (`DesiredRejected`, naming the task,
//! the container, the field and the rule), and the node keeps what it ran.
//!
//! ```toml
//! privileged = false        # may a container be "privileged"?
//! host_network = true       # may a task use networkMode "host"?
//! unconfined = false        # may a container run without the seccomp filter
//!                           # ("seccomp:unconfined", "no-new-privileges:false")?
//! capabilities = []         # capabilities a container may add ("NET_ADMIN", ...)
//! devices = []              # host devices a container may be given ("/dev/ttyUSB0", "/dev/i2c-*")
//! host_paths = []           # host directories volumes may bind (the directory or below it)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use skiff_proto::{NetworkMode, TaskDefinition, CAPABILITY_NAMES};

/// Largest policy file read.
const MAX_POLICY_BYTES: u64 = 64 * 1024;
/// Entries of one list.
const MAX_ENTRIES: usize = 256;

/// What remote desired state may ask for. The default: no privileged containers, host
/// networking allowed, the seccomp filter always on, no added capabilities, no devices, no host
/// directories.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub privileged: bool,
    pub host_network: bool,
    pub unconfined: bool,
    pub capabilities: Vec<String>,
    pub devices: Vec<String>,
    pub host_paths: Vec<String>,
    /// Where the policy was read from, for messages.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            privileged: false,
            host_network: true,
            unconfined: false,
            capabilities: Vec::new(),
            devices: Vec::new(),
            host_paths: Vec::new(),
            source: None,
        }
    }
}

impl Policy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let shown = path.display();
        let len = std::fs::metadata(path)
            .map_err(|e| format!("{shown}: {e}"))?
            .len();
        if len > MAX_POLICY_BYTES {
            return Err(format!(
                "{shown}: {len} bytes, at most {MAX_POLICY_BYTES} allowed"
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
        let mut p: Policy = toml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
        p.check_self().map_err(|e| format!("{shown}: {e}"))?;
        p.source = Some(path.to_owned());
        Ok(p)
    }

    fn check_self(&mut self) -> Result<(), String> {
        for (field, list) in [
            ("capabilities", &self.capabilities),
            ("devices", &self.devices),
            ("host_paths", &self.host_paths),
        ] {
            if list.len() > MAX_ENTRIES {
                return Err(format!(
                    "{field}: {} entries, at most {MAX_ENTRIES}",
                    list.len()
                ));
            }
        }
        for c in self.capabilities.iter_mut() {
            let upper = c.to_ascii_uppercase();
            let name = upper.strip_prefix("CAP_").unwrap_or(&upper).to_string();
            if !CAPABILITY_NAMES.contains(&name.as_str()) {
                return Err(format!("capabilities: unknown capability {c:?}"));
            }
            *c = name;
        }
        for d in &self.devices {
            let base = d.strip_suffix('*').unwrap_or(d);
            if !base.starts_with("/dev/") || base.contains("..") {
                return Err(format!(
                    "devices: {d:?} is not a path under /dev/ (a trailing * matches a prefix)"
                ));
            }
        }
        for h in &self.host_paths {
            skiff_proto::check_abs_path("host_paths", h).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn rule(&self, rule: &str) -> String {
        match &self.source {
            Some(p) => format!("rule {rule} in {}", p.display()),
            None => format!("rule {rule} of the default policy"),
        }
    }

    /// Checks one task definition against the policy: `Err` names the task, the container, the
    /// field and the rule that refuses it.
    pub fn check(&self, t: &TaskDefinition) -> Result<(), String> {
        let refuse = |what: String, rule: &str| {
            Err(format!(
                "task {}: {what} is not allowed on this node ({})",
                t.family,
                self.rule(rule)
            ))
        };
        if t.network_mode == NetworkMode::Host && !self.host_network {
            return refuse("networkMode \"host\"".into(), "host_network = false");
        }
        for v in t.volumes() {
            if let Some(h) = &v.host_path {
                if !self.host_paths.iter().any(|allowed| under(h, allowed)) {
                    return refuse(format!("volume {} on host path {h}", v.name), "host_paths");
                }
            }
        }
        for c in &t.containers {
            let s = &c.security;
            let at = |field: &str| format!("container {} {field}", c.name);
            if s.privileged && !self.privileged {
                return refuse(at("privileged"), "privileged = false");
            }
            if s.seccomp_unconfined && !self.unconfined {
                return refuse(at("seccomp:unconfined"), "unconfined = false");
            }
            if s.no_new_privileges == Some(false) && !self.unconfined {
                return refuse(at("no-new-privileges:false"), "unconfined = false");
            }
            for cap in &s.cap_add {
                let default = skiff_proto::DEFAULT_CAPABILITIES.contains(&cap.as_str());
                if !default && !self.capabilities.contains(cap) {
                    return refuse(at(&format!("capability {cap}")), "capabilities");
                }
            }
            for d in &s.devices {
                let allowed = self.devices.iter().any(|p| match p.strip_suffix('*') {
                    Some(prefix) => d.host_path.starts_with(prefix),
                    None => *p == d.host_path,
                });
                if !allowed {
                    return refuse(at(&format!("device {}", d.host_path)), "devices");
                }
            }
        }
        Ok(())
    }
}

/// Whether `path` is `dir` or below it, component by component (`/srv/data2` is not under
/// `/srv/data`). Both are checked absolute paths without `.` or `..`.
fn under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::{ContainerSecurity, Device, TaskExtension, Volume};

    fn task() -> TaskDefinition {
        crate::ecs::parse_task_definition(
            br#"{"family": "web", "containerDefinitions": [{"name": "app", "image": "busybox"}]}"#,
        )
        .expect("task")
    }

    fn with(sec: ContainerSecurity) -> TaskDefinition {
        let mut t = task();
        t.containers[0].security = sec;
        t
    }

    #[test]
    fn default_policy_allows_plain_tasks_and_refuses_privileges() {
        let p = Policy::default();
        assert_eq!(p.check(&task()), Ok(()));
        let mut host = task();
        host.network_mode = NetworkMode::Host;
        assert_eq!(p.check(&host), Ok(()));
        let cases = [
            (
                ContainerSecurity {
                    privileged: true,
                    ..Default::default()
                },
                "task web: container app privileged is not allowed on this node (rule privileged = false of the default policy)",
            ),
            (
                ContainerSecurity {
                    seccomp_unconfined: true,
                    ..Default::default()
                },
                "container app seccomp:unconfined is not allowed on this node (rule unconfined = false",
            ),
            (
                ContainerSecurity {
                    no_new_privileges: Some(false),
                    ..Default::default()
                },
                "no-new-privileges:false is not allowed",
            ),
            (
                ContainerSecurity {
                    cap_add: vec!["SYS_ADMIN".into()],
                    ..Default::default()
                },
                "container app capability SYS_ADMIN is not allowed on this node (rule capabilities",
            ),
            (
                ContainerSecurity {
                    devices: vec![Device {
                        host_path: "/dev/ttyUSB0".into(),
                        container_path: None,
                        read: true,
                        write: true,
                        mknod: false,
                    }],
                    ..Default::default()
                },
                "device /dev/ttyUSB0 is not allowed",
            ),
        ];
        for (sec, want) in cases {
            let got = p.check(&with(sec.clone())).expect_err("refused");
            assert!(got.contains(want), "{sec:?}: {got}");
        }
        // Adding a capability of the default set, dropping, read-only root: fine.
        let fine = ContainerSecurity {
            cap_add: vec!["CHOWN".into()],
            cap_drop: vec!["ALL".into()],
            read_only_root: true,
            no_new_privileges: Some(true),
            ..Default::default()
        };
        assert_eq!(p.check(&with(fine)), Ok(()));
    }

    #[test]
    fn a_policy_file_opens_exactly_what_it_names() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("policy.toml");
        std::fs::write(
            &path,
            "host_network = false\ncapabilities = [\"cap_net_admin\"]\n\
             devices = [\"/dev/ttyUSB*\", \"/dev/i2c-1\"]\nhost_paths = [\"/srv/data\"]\n",
        )
        .expect("write");
        let p = Policy::load(&path).expect("policy");
        assert_eq!(p.capabilities, ["NET_ADMIN"]);
        let mut host = task();
        host.network_mode = NetworkMode::Host;
        let e = p.check(&host).expect_err("host refused");
        assert!(
            e.contains(&format!("rule host_network = false in {}", path.display())),
            "{e}"
        );
        let dev = |p: &str| Device {
            host_path: p.into(),
            container_path: None,
            read: true,
            write: false,
            mknod: false,
        };
        let ok = ContainerSecurity {
            cap_add: vec!["NET_ADMIN".into()],
            devices: vec![dev("/dev/ttyUSB3"), dev("/dev/i2c-1")],
            ..Default::default()
        };
        assert_eq!(p.check(&with(ok)), Ok(()));
        let bad = ContainerSecurity {
            devices: vec![dev("/dev/i2c-2")],
            ..Default::default()
        };
        assert!(p.check(&with(bad)).is_err());

        let vol = |h: &str| {
            let mut t = task();
            t.extensions.push(TaskExtension::Volumes(vec![Volume {
                name: "data".parse().expect("name"),
                host_path: Some(h.into()),
            }]));
            t
        };
        assert_eq!(p.check(&vol("/srv/data")), Ok(()));
        assert_eq!(p.check(&vol("/srv/data/app")), Ok(()));
        let e = p.check(&vol("/srv/data2")).expect_err("not under");
        assert!(e.contains("volume data on host path /srv/data2"), "{e}");
        assert!(p.check(&vol("/etc")).is_err());
        // Task-scoped volumes need no rule.
        let mut scoped = task();
        scoped.extensions.push(TaskExtension::Volumes(vec![Volume {
            name: "tmp".parse().expect("name"),
            host_path: None,
        }]));
        assert_eq!(Policy::default().check(&scoped), Ok(()));
    }

    #[test]
    fn bad_policy_files_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("policy.toml");
        for (text, want) in [
            ("privileged = \"yes\"", "invalid type"),
            ("privilege = true", "unknown field `privilege`"),
            (
                "capabilities = [\"NET_ADMINN\"]",
                "unknown capability \"NET_ADMINN\"",
            ),
            ("devices = [\"/etc/shadow\"]", "not a path under /dev/"),
            ("host_paths = [\"srv\"]", "not an absolute path"),
            ("host_paths = [\"/\"]", "can't be \"/\""),
        ] {
            std::fs::write(&path, text).expect("write");
            let e = Policy::load(&path).expect_err(text);
            assert!(e.contains(want) && e.contains("policy.toml"), "{text}: {e}");
        }
    }
}
