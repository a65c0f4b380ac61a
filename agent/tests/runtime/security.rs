//! Least privilege with real containers: capabilities, no_new_privs and the seccomp filter as
//! the kernel reports them in `/proc/self/status`, the filter refusing what capabilities alone
//! would allow, a read-only root with tmpfs, volumes and a device (`security` in the names).

use skiff_proto::{ContainerSecurity, Device, MountPoint, TaskExtension, Tmpfs, Volume};

use super::*;

/// The `/proc/self/status` fields a container reports, and whether `unshare -U` (a new user
/// namespace, which needs no capability) worked: only the seccomp filter refuses it.
const PROBE: &str = "grep -E '^(CapEff|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
                     unshare -U true 2>/dev/null && echo userns=yes || echo userns=no";

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {out:?}"))
}

/// Docker's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
/// NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

#[tokio::test]
async fn security_defaults_as_the_kernel_sees_them() {
    if !root_or_skip("security_defaults_as_the_kernel_sees_them") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;

    let (exit, out) = run_one(
        &fx,
        &rt,
        &mut exits,
        container("plain", &["sh", "-c", PROBE]),
    )
    .await;
    assert_eq!(exit.exit.code, 0, "{out}");
    assert_eq!(field(&out, "CapEff:"), DOCKER_DEFAULT_CAPS, "{out}");
    assert_eq!(field(&out, "NoNewPrivs:"), "1", "{out}");
    assert_eq!(field(&out, "CapInh:"), "0000000000000000", "{out}");
    assert_eq!(field(&out, "CapAmb:"), "0000000000000000", "{out}");
    assert_eq!(field(&out, "Seccomp:"), "2", "filtered: {out}");
    assert_eq!(
        field(&out, "userns="),
        "no",
        "the filter refuses unshare: {out}"
    );

    // Capabilities added and dropped.
    let mut c = container("netadmin", &["sh", "-c", PROBE]);
    c.security = ContainerSecurity {
        cap_add: vec!["NET_ADMIN".into()],
        cap_drop: vec!["ALL".into()],
        ..Default::default()
    };
    let (_, out) = run_one(&fx, &rt, &mut exits, c).await;
    assert_eq!(field(&out, "CapEff:"), "0000000000001000", "{out}");
    assert_eq!(field(&out, "Seccomp:"), "2", "{out}");

    // Unconfined: no filter, and unshare -U works again (no capability is needed for it).
    let mut c = container("unconfined", &["sh", "-c", PROBE]);
    c.security.seccomp_unconfined = true;
    let (_, out) = run_one(&fx, &rt, &mut exits, c).await;
    assert_eq!(field(&out, "Seccomp:"), "0", "{out}");
    assert_eq!(field(&out, "CapEff:"), DOCKER_DEFAULT_CAPS, "{out}");
    assert_eq!(field(&out, "userns="), "yes", "{out}");

    // Privileged: every capability the host has, no filter.
    let mut c = container("privileged", &["sh", "-c", PROBE]);
    c.security.privileged = true;
    let (_, out) = run_one(&fx, &rt, &mut exits, c).await;
    assert_eq!(field(&out, "Seccomp:"), "0", "{out}");
    let eff = u64::from_str_radix(field(&out, "CapEff:"), 16).expect("hex");
    // What the agent holds (this VM's root lacks SYS_RESOURCE, for one).
    let own = std::fs::read_to_string("/proc/self/status").expect("status");
    assert_eq!(field(&out, "CapEff:"), field(&own, "CapPrm:"), "{out}");
    assert!(eff.count_ones() >= 38, "{out}");
}

#[tokio::test]
async fn security_read_only_root_tmpfs_volumes_and_a_device() {
    if !root_or_skip("security_read_only_root_tmpfs_volumes_and_a_device") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let host_dir = fx.dir.path().join("host-data");
    std::fs::create_dir_all(&host_dir).expect("host dir");
    std::fs::write(host_dir.join("greeting"), "hello from the host\n").expect("file");

    let script = "touch /rootfile 2>/dev/null && echo root=rw || echo root=ro; \
                  touch /tmp/x && echo tmp=rw; \
                  cat /data/greeting; (echo new > /data/new) 2>/dev/null && echo data=rw || echo data=ro; \
                  echo shared > /scratch/note && echo scratch=rw; \
                  echo bytes > /dev/sink && echo device=ok";
    let mut c = container("ro", &["sh", "-c", script]);
    c.security = ContainerSecurity {
        read_only_root: true,
        tmpfs: vec![Tmpfs {
            container_path: "/tmp".into(),
            size_mib: 4,
            mount_options: vec!["noexec".into()],
        }],
        devices: vec![Device {
            host_path: "/dev/null".into(),
            container_path: Some("/dev/sink".into()),
            read: true,
            write: true,
            mknod: false,
        }],
        ..Default::default()
    };
    c.mount_points = vec![
        MountPoint {
            source_volume: name("data"),
            container_path: "/data".into(),
            read_only: true,
        },
        MountPoint {
            source_volume: name("scratch"),
            container_path: "/scratch".into(),
            read_only: false,
        },
    ];
    let mut t = task("rofs", vec![c], NetworkMode::None);
    t.extensions.push(TaskExtension::Volumes(vec![
        Volume {
            name: name("data"),
            host_path: Some(host_dir.to_string_lossy().into_owned()),
        },
        Volume {
            name: name("scratch"),
            host_path: None,
        },
    ]));
    t.validate().expect("valid");
    rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    let (path, rx) = fx.fifo("rofs");
    rt.start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start");
    let exit = next_exit(&mut exits).await;
    let out = drain(&rx);
    assert_eq!(exit.exit.code, 0, "{out}");
    assert_eq!(
        out,
        "root=ro\ntmp=rw\nhello from the host\ndata=ro\nscratch=rw\ndevice=ok\n"
    );
    // The task-scoped volume lives in the task's run dir and goes with the task.
    let scratch = fx.run_dir().join("tasks/rofs/volumes/scratch/note");
    assert_eq!(std::fs::read_to_string(&scratch).expect("note"), "shared\n");
    rt.remove_task(&t.family).await.expect("remove");
    assert!(!scratch.exists());
    assert!(!host_dir.join("new").exists(), "read-only volume");
    assert!(host_dir.join("greeting").exists(), "host data stays");

    // A device path that is not a device node fails the prepare, naming it.
    let mut c = container("baddev", &["true"]);
    c.security.devices = vec![Device {
        host_path: "/dev/shm".into(),
        container_path: None,
        read: true,
        write: false,
        mknod: false,
    }];
    let t = task("baddev", vec![c], NetworkMode::None);
    let err = rt
        .prepare_task(&t, &fx.images(1))
        .await
        .expect_err("not a device");
    assert!(
        err.to_string().contains("/dev/shm: not a device node"),
        "{err}"
    );
    assert!(!fx.run_dir().join("tasks/baddev").exists());
}

#[tokio::test]
async fn security_secret_files_live_on_a_tmpfs_for_the_user_only() {
    if !root_or_skip("security_secret_files_live_on_a_tmpfs_for_the_user_only") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let value = format!("file-secret-{}", std::process::id());
    let mut c = container(
        "sec",
        &[
            "sh",
            "-c",
            "id -u; stat -c '%a %u' /run/secrets/token; cat /run/secrets/token; echo; \
             grep -c ' /run/secrets tmpfs ' /proc/mounts; echo \"env=${TOKEN:-none}\"",
        ],
    );
    c.user = Some("nobody".into());
    c.secrets = vec![skiff_proto::Secret {
        name: "/run/secrets/token".into(),
        sealed: "skiff-sealed:v1:unused-here".into(),
    }];
    let t = task("secfile", vec![c], NetworkMode::None);
    t.validate().expect("valid");
    rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    let (path, rx) = fx.fifo("secfile");
    let opened: skiff_agent::secrets::SecretValue =
        serde_json::from_value(serde_json::json!(value)).expect("value");
    rt.start_container_with(
        &t.family,
        &t.containers[0].name,
        &path,
        vec![("/run/secrets/token".into(), opened)],
    )
    .await
    .expect("start");
    let exit = next_exit(&mut exits).await;
    let out = drain(&rx);
    assert_eq!(exit.exit.code, 0, "{out}");
    assert_eq!(out, format!("65534\n400 65534\n{value}\n1\nenv=none\n"));
    // Nowhere on the host's disk: not in the bundle, not in the run dir.
    let mut found = Vec::new();
    let mut stack = vec![fx.run_dir()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(value.len()).any(|w| w == value.as_bytes()) {
                        found.push(p);
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "the secret is in {found:?}");
    rt.remove_task(&t.family).await.expect("remove");
}
