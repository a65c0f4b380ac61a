//! The container's privileges and mounts in ECS JSON: `privileged`, `readonlyRootFilesystem`,
//! `linuxParameters` (capabilities, devices, tmpfs), `dockerSecurityOptions`, `mountPoints`,
//! and the task's `volumes` they name. What the node allows is its policy's business
//! ([`crate::policy`]); here only the shape and bounds are checked.

use serde_json::{Map, Value};
use skiff_proto::{ContainerSecurity, Device, MountPoint, Tmpfs, Volume};

use super::{
    boolean, each, got, invalid, is_empty, join, known_fields, name, number_u32, string, strings,
    TaskDefError,
};

/// `linuxParameters` keys skiff does not implement, accepted only when empty.
const LINUX_UNSUPPORTED: &[(&str, Option<&str>)] = &[
    (
        "initProcessEnabled",
        Some("the task's first process is the container's own command"),
    ),
    ("sharedMemorySize", None),
    ("maxSwap", None),
    ("swappiness", None),
];

/// Reads one container-level security key into `sec`; `false` if `key` is not one of them.
pub(super) fn container_key(
    key: &str,
    v: &Value,
    path: &str,
    sec: &mut ContainerSecurity,
) -> Result<bool, TaskDefError> {
    match key {
        "privileged" => sec.privileged = boolean(v, path)?,
        "readonlyRootFilesystem" => sec.read_only_root = boolean(v, path)?,
        "linuxParameters" => linux_parameters(v, path, sec)?,
        "dockerSecurityOptions" => security_options(v, path, sec)?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn linux_parameters(
    v: &Value,
    path: &str,
    sec: &mut ContainerSecurity,
) -> Result<(), TaskDefError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(path, format!("expected an object, got {}", got(v))))?;
    for (k, x) in obj {
        let p = join(path, k);
        if x.is_null() {
            continue;
        }
        match k.as_str() {
            "capabilities" => {
                for (k, x, p) in known_fields(x, &p, &["add", "drop"])? {
                    let names = strings(x, &p)?
                        .into_iter()
                        .map(|c| {
                            let c = c.to_ascii_uppercase();
                            c.strip_prefix("CAP_").map(str::to_string).unwrap_or(c)
                        })
                        .collect();
                    if k == "add" {
                        sec.cap_add = names;
                    } else {
                        sec.cap_drop = names;
                    }
                }
            }
            "devices" => sec.devices = each(x, &p, device)?,
            "tmpfs" => sec.tmpfs = each(x, &p, tmpfs)?,
            other => match LINUX_UNSUPPORTED.iter().find(|(n, _)| *n == other) {
                Some((_, why)) if !is_empty(x) => {
                    return Err(TaskDefError::Unsupported { path: p, why: *why })
                }
                Some(_) => {}
                None => {
                    let keys = ["capabilities", "devices", "tmpfs"]
                        .into_iter()
                        .chain(LINUX_UNSUPPORTED.iter().map(|(n, _)| *n))
                        .collect::<Vec<_>>();
                    return Err(super::unknown(&p, other, &keys, &[], ""));
                }
            },
        }
    }
    Ok(())
}

fn device(v: &Value, path: &str) -> Result<Device, TaskDefError> {
    let mut d = Device {
        host_path: String::new(),
        container_path: None,
        read: true,
        write: true,
        mknod: true,
    };
    let mut host = None;
    for (k, x, p) in known_fields(v, path, &["hostPath", "containerPath", "permissions"])? {
        match k {
            "hostPath" => host = Some(string(x, &p)?.to_string()),
            "containerPath" => d.container_path = Some(string(x, &p)?.to_string()),
            _ => {
                // ECS: absent = all three.
                d.read = false;
                d.write = false;
                d.mknod = false;
                for (i, perm) in strings(x, &p)?.iter().enumerate() {
                    match perm.as_str() {
                        "read" => d.read = true,
                        "write" => d.write = true,
                        "mknod" => d.mknod = true,
                        other => {
                            return Err(invalid(
                                &format!("{p}[{i}]"),
                                format!(
                                    "unknown permission {other:?}: one of \"read\", \"write\", \
                                     \"mknod\""
                                ),
                            ))
                        }
                    }
                }
            }
        }
    }
    d.host_path = host.ok_or_else(|| invalid(&join(path, "hostPath"), "missing"))?;
    Ok(d)
}

fn tmpfs(v: &Value, path: &str) -> Result<Tmpfs, TaskDefError> {
    let (mut container_path, mut size_mib, mut mount_options) = (None, None, Vec::new());
    for (k, x, p) in known_fields(v, path, &["containerPath", "size", "mountOptions"])? {
        match k {
            "containerPath" => container_path = Some(string(x, &p)?.to_string()),
            "size" => size_mib = Some(number_u32(x, &p, "a size in MiB")?),
            _ => mount_options = strings(x, &p)?,
        }
    }
    Ok(Tmpfs {
        container_path: container_path
            .ok_or_else(|| invalid(&join(path, "containerPath"), "missing"))?,
        size_mib: size_mib
            .ok_or_else(|| invalid(&join(path, "size"), "missing; a tmpfs needs a size in MiB"))?,
        mount_options,
    })
}

/// Docker's `--security-opt` values skiff honours.
fn security_options(
    v: &Value,
    path: &str,
    sec: &mut ContainerSecurity,
) -> Result<(), TaskDefError> {
    for (i, opt) in strings(v, path)?.iter().enumerate() {
        let p = format!("{path}[{i}]");
        // Docker accepts both `key:value` and `key=value`.
        let (key, value) = match opt.split_once([':', '=']) {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        match (key, value) {
            ("no-new-privileges", None | Some("true")) => sec.no_new_privileges = Some(true),
            ("no-new-privileges", Some("false")) => sec.no_new_privileges = Some(false),
            ("seccomp", Some("unconfined")) => sec.seccomp_unconfined = true,
            ("seccomp", _) => {
                return Err(invalid(
                    &p,
                    "skiff applies its own default seccomp filter; the only other choice is \
                     \"seccomp:unconfined\"",
                ))
            }
            ("apparmor" | "label" | "credentialspec", _) => {
                return Err(TaskDefError::Unsupported {
                    path: p,
                    why: Some("skiff applies no AppArmor or SELinux profiles"),
                })
            }
            _ => {
                return Err(invalid(
                    &p,
                    format!(
                    "unknown security option {}: skiff knows \"no-new-privileges[:true|false]\" \
                         and \"seccomp:unconfined\"",
                    super::quoted(opt)
                ),
                ))
            }
        }
    }
    Ok(())
}

/// ECS `mountPoints`.
pub(super) fn mount_points(v: &Value, path: &str) -> Result<Vec<MountPoint>, TaskDefError> {
    each(v, path, |x, p| {
        let (mut source, mut container_path, mut read_only) = (None, None, false);
        for (k, x, p) in known_fields(x, p, &["sourceVolume", "containerPath", "readOnly"])? {
            match k {
                "sourceVolume" => source = Some(name(x, &p)?),
                "containerPath" => container_path = Some(string(x, &p)?.to_string()),
                _ => read_only = boolean(x, &p)?,
            }
        }
        Ok(MountPoint {
            source_volume: source.ok_or_else(|| invalid(&join(p, "sourceVolume"), "missing"))?,
            container_path: container_path
                .ok_or_else(|| invalid(&join(p, "containerPath"), "missing"))?,
            read_only,
        })
    })
}

/// ECS task-level `volumes`: bind mounts (`host.sourcePath`) and task-scoped directories (no
/// `host`, or no `sourcePath`).
pub(super) fn volumes(v: &Value, path: &str) -> Result<Vec<Volume>, TaskDefError> {
    const NOT_BIND: Option<&str> =
        Some("skiff volumes are host directories (\"host\": {\"sourcePath\": ...}) or task-scoped ones (no \"host\")");
    each(v, path, |x, p| {
        let obj = x
            .as_object()
            .ok_or_else(|| invalid(p, format!("expected an object, got {}", got(x))))?;
        let (mut vol_name, mut host_path) = (None, None);
        for (k, x) in obj {
            let kp = join(p, k);
            match k.as_str() {
                "name" => vol_name = Some(name(x, &kp)?),
                "host" if !x.is_null() => {
                    for (_, x, pp) in known_fields(x, &kp, &["sourcePath"])? {
                        host_path = Some(string(x, &pp)?.to_string()).filter(|s| !s.is_empty());
                    }
                }
                "host" => {}
                "configuredAtLaunch" => {
                    if !is_empty(x) {
                        return Err(TaskDefError::Unsupported {
                            path: kp,
                            why: None,
                        });
                    }
                }
                "dockerVolumeConfiguration"
                | "efsVolumeConfiguration"
                | "fsxWindowsFileServerVolumeConfiguration" => {
                    if !is_empty(x) {
                        return Err(TaskDefError::Unsupported {
                            path: kp,
                            why: NOT_BIND,
                        });
                    }
                }
                other => {
                    return Err(super::unknown(
                        &kp,
                        other,
                        &[
                            "name",
                            "host",
                            "configuredAtLaunch",
                            "dockerVolumeConfiguration",
                            "efsVolumeConfiguration",
                        ],
                        &[],
                        "",
                    ))
                }
            }
        }
        Ok(Volume {
            name: vol_name.ok_or_else(|| invalid(&join(p, "name"), "missing"))?,
            host_path,
        })
    })
}

/// The container-level security keys of `c`, in ECS JSON, into `o`.
pub(super) fn container_to_json(
    sec: &ContainerSecurity,
    mounts: &[MountPoint],
    o: &mut Map<String, Value>,
) {
    if sec.privileged {
        o.insert("privileged".into(), true.into());
    }
    if sec.read_only_root {
        o.insert("readonlyRootFilesystem".into(), true.into());
    }
    let mut opts = Vec::new();
    match sec.no_new_privileges {
        Some(true) => opts.push("no-new-privileges"),
        Some(false) => opts.push("no-new-privileges:false"),
        None => {}
    }
    if sec.seccomp_unconfined {
        opts.push("seccomp:unconfined");
    }
    if !opts.is_empty() {
        o.insert("dockerSecurityOptions".into(), opts.into());
    }
    let mut lp = Map::new();
    if !sec.cap_add.is_empty() || !sec.cap_drop.is_empty() {
        lp.insert(
            "capabilities".into(),
            serde_json::json!({"add": sec.cap_add, "drop": sec.cap_drop}),
        );
    }
    if !sec.devices.is_empty() {
        let devices = sec
            .devices
            .iter()
            .map(|d| {
                let perms: Vec<&str> = [(d.read, "read"), (d.write, "write"), (d.mknod, "mknod")]
                    .into_iter()
                    .filter_map(|(on, n)| on.then_some(n))
                    .collect();
                let mut dev = serde_json::json!({"hostPath": d.host_path, "permissions": perms});
                if let Some(cp) = &d.container_path {
                    dev["containerPath"] = cp.as_str().into();
                }
                dev
            })
            .collect();
        lp.insert("devices".into(), Value::Array(devices));
    }
    if !sec.tmpfs.is_empty() {
        let tmpfs = sec
            .tmpfs
            .iter()
            .map(|t| {
                serde_json::json!({
                    "containerPath": t.container_path,
                    "size": t.size_mib,
                    "mountOptions": t.mount_options,
                })
            })
            .collect();
        lp.insert("tmpfs".into(), Value::Array(tmpfs));
    }
    if !lp.is_empty() {
        o.insert("linuxParameters".into(), Value::Object(lp));
    }
    if !mounts.is_empty() {
        let mounts = mounts
            .iter()
            .map(|m| {
                serde_json::json!({
                    "sourceVolume": m.source_volume.as_str(),
                    "containerPath": m.container_path,
                    "readOnly": m.read_only,
                })
            })
            .collect();
        o.insert("mountPoints".into(), Value::Array(mounts));
    }
}

/// The task's `volumes` in ECS JSON.
pub(super) fn volumes_to_json(volumes: &[Volume]) -> Value {
    volumes
        .iter()
        .map(|v| match &v.host_path {
            Some(h) => serde_json::json!({"name": v.name.as_str(), "host": {"sourcePath": h}}),
            None => serde_json::json!({"name": v.name.as_str()}),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::parse_task_definition;
    use super::*;

    fn parse(v: Value) -> Result<skiff_proto::TaskDefinition, TaskDefError> {
        parse_task_definition(&serde_json::to_vec(&v).expect("json"))
    }

    fn task(container_extra: Value, task_extra: Value) -> Value {
        let mut c = json!({"name": "app", "image": "busybox"});
        for (k, v) in container_extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        let mut t = json!({"family": "web", "containerDefinitions": [c]});
        for (k, v) in task_extra.as_object().expect("object") {
            t[k] = v.clone();
        }
        t
    }

    fn err(v: Value) -> String {
        parse(v).expect_err("refused").to_string()
    }

    #[test]
    fn every_field_parses_and_round_trips() {
        let v = task(
            json!({
                "privileged": false,
                "readonlyRootFilesystem": true,
                "dockerSecurityOptions": ["no-new-privileges:false"],
                "linuxParameters": {
                    "capabilities": {"add": ["cap_net_admin"], "drop": ["MKNOD"]},
                    "devices": [{"hostPath": "/dev/ttyUSB0", "containerPath": "/dev/modem",
                                 "permissions": ["read", "write"]}],
                    "tmpfs": [{"containerPath": "/tmp", "size": 16, "mountOptions": ["noexec", "mode=1777"]}],
                    "initProcessEnabled": false,
                    "maxSwap": null
                },
                "mountPoints": [{"sourceVolume": "data", "containerPath": "/data", "readOnly": true},
                                {"sourceVolume": "scratch", "containerPath": "/scratch"}]
            }),
            json!({"volumes": [{"name": "data", "host": {"sourcePath": "/srv/data"}},
                               {"name": "scratch", "host": {}}]}),
        );
        let t = parse(v).expect("valid");
        let c = &t.containers[0];
        let s = &c.security;
        assert!(s.read_only_root && !s.privileged && !s.seccomp_unconfined);
        assert_eq!(s.no_new_privileges, Some(false));
        assert_eq!(s.cap_add, ["NET_ADMIN"]);
        assert_eq!(s.cap_drop, ["MKNOD"]);
        assert_eq!(
            s.devices,
            [Device {
                host_path: "/dev/ttyUSB0".into(),
                container_path: Some("/dev/modem".into()),
                read: true,
                write: true,
                mknod: false,
            }]
        );
        assert_eq!(s.tmpfs[0].size_mib, 16);
        assert_eq!(c.mount_points.len(), 2);
        assert!(c.mount_points[0].read_only && !c.mount_points[1].read_only);
        assert_eq!(
            t.volumes(),
            [
                Volume {
                    name: "data".parse().expect("name"),
                    host_path: Some("/srv/data".into()),
                },
                Volume {
                    name: "scratch".parse().expect("name"),
                    host_path: None,
                }
            ]
        );
        // Printed back as ECS JSON, it parses to the same definition.
        let again = parse(super::super::to_ecs_json(&t)).expect("round trip");
        assert_eq!(again, t);
        // Not filtered: no-new-privileges is off.
        assert!(!s.filtered(true));
        assert_eq!(
            s.capabilities(),
            [
                "AUDIT_WRITE",
                "CHOWN",
                "DAC_OVERRIDE",
                "FOWNER",
                "FSETID",
                "KILL",
                "NET_ADMIN",
                "NET_BIND_SERVICE",
                "NET_RAW",
                "SETFCAP",
                "SETGID",
                "SETPCAP",
                "SETUID",
                "SYS_CHROOT"
            ]
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                json!({"linuxParameters": {"capabilities": {"add": ["NET_ADMINN"]}}}),
                json!({}),
                "containerDefinitions[0].linuxParameters.capabilities.add[0]: unknown capability \"NET_ADMINN\"",
            ),
            (
                json!({"linuxParameters": {"devices": [{"hostPath": "/etc/shadow"}]}}),
                json!({}),
                "containerDefinitions[0].linuxParameters.devices[0].hostPath: a device path is under /dev/",
            ),
            (
                json!({"linuxParameters": {"devices": [{"hostPath": "/dev/../etc/shadow"}]}}),
                json!({}),
                "has a \".\" or \"..\" component",
            ),
            (
                json!({"linuxParameters": {"tmpfs": [{"containerPath": "/tmp", "size": 4, "mountOptions": ["exec,suid"]}]}}),
                json!({}),
                "containerDefinitions[0].linuxParameters.tmpfs[0].mountOptions: unsupported option \"exec,suid\"",
            ),
            (
                json!({"linuxParameters": {"tmpfs": [{"containerPath": "/tmp"}]}}),
                json!({}),
                "containerDefinitions[0].linuxParameters.tmpfs[0].size: missing",
            ),
            (
                json!({"linuxParameters": {"initProcessEnabled": true}}),
                json!({}),
                "containerDefinitions[0].linuxParameters.initProcessEnabled: not supported by skiff",
            ),
            (
                json!({"linuxParameters": {"capabilitiez": {}}}),
                json!({}),
                "containerDefinitions[0].linuxParameters.capabilitiez: unknown field (did you mean \"capabilities\"?)",
            ),
            (
                json!({"dockerSecurityOptions": ["apparmor:docker-default"]}),
                json!({}),
                "containerDefinitions[0].dockerSecurityOptions[0]: not supported by skiff",
            ),
            (
                json!({"dockerSecurityOptions": ["seccomp=/etc/profile.json"]}),
                json!({}),
                "the only other choice is \"seccomp:unconfined\"",
            ),
            (
                json!({"mountPoints": [{"sourceVolume": "data", "containerPath": "/data"}]}),
                json!({}),
                "containerDefinitions[0].mountPoints[0].sourceVolume: no volume named data",
            ),
            (
                json!({"mountPoints": [{"sourceVolume": "data", "containerPath": "data"}]}),
                json!({"volumes": [{"name": "data"}]}),
                "containerDefinitions[0].mountPoints[0].containerPath: \"data\" is not an absolute path",
            ),
            (
                json!({}),
                json!({"volumes": [{"name": "data", "host": {"sourcePath": "/"}}]}),
                "volumes[0].host.sourcePath: can't be \"/\"",
            ),
            (
                json!({}),
                json!({"volumes": [{"name": "data", "efsVolumeConfiguration": {"fileSystemId": "fs-1"}}]}),
                "volumes[0].efsVolumeConfiguration: not supported by skiff",
            ),
            (
                json!({}),
                json!({"volumes": [{"name": "a"}, {"name": "a"}]}),
                "volumes[1].name: duplicate volume name a",
            ),
        ];
        for (c, t, want) in cases {
            let got = err(task(c.clone(), t));
            assert!(got.contains(want), "{c}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn secret_files_are_named_under_run_secrets() {
        let sealed = crate::secrets::seal(&[9u8; 32], "value").expect("seal");
        let with = |name: &str| {
            task(
                json!({"secrets": [{"name": name, "valueFrom": sealed}]}),
                json!({}),
            )
        };
        parse(with("/run/secrets/db_password")).expect("a file");
        parse(with("DB_PASSWORD")).expect("a variable");
        for bad in [
            "/etc/passwd",
            "/run/secrets/../x",
            "/run/secrets/",
            "/run/secrets/a/b",
        ] {
            let e = err(with(bad));
            assert!(
                e.contains("a secret file is /run/secrets/NAME"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn security_options_spellings() {
        for (opt, nnp, unconfined) in [
            ("no-new-privileges", Some(true), false),
            ("no-new-privileges=true", Some(true), false),
            ("no-new-privileges:false", Some(false), false),
            ("seccomp=unconfined", None, true),
        ] {
            let t = parse(task(json!({"dockerSecurityOptions": [opt]}), json!({}))).expect(opt);
            let s = &t.containers[0].security;
            assert_eq!(
                (s.no_new_privileges, s.seccomp_unconfined),
                (nnp, unconfined)
            );
        }
        let plain = parse(task(json!({}), json!({}))).expect("plain");
        assert!(plain.containers[0].security.filtered(true));
        assert!(!plain.containers[0].security.filtered(false));
    }
}
