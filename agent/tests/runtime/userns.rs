//! User-namespace remapping with real containers (`userns` in the names): root in the
//! container is an unprivileged host uid, the image still reads as root's, what the container
//! writes is stored under the mapped ids, `/sys` works in the task's own network namespace and
//! on the host's, execs join the same user namespace, privileged containers stay unmapped.

use std::os::unix::fs::MetadataExt;

use skiff_agent::runtime::IdMap;
use skiff_proto::ContainerSecurity;

use super::*;

const MAP: IdMap = IdMap {
    base: 300_000,
    size: 65_536,
};

async fn remapped_runtime(fx: &Fixture) -> (Runtime, Receiver<ContainerExit>) {
    let mut cfg = fx.config();
    cfg.userns = Some(MAP);
    Runtime::start(cfg).await.expect("runtime starts")
}

/// `0 300000 65536` from `/proc/self/uid_map`, whitespace normalised.
fn map_line(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {out:?}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

const PROBE: &str =
    "echo uid_map $(cat /proc/self/uid_map); echo gid_map $(cat /proc/self/gid_map); \
                     echo id $(id -u):$(id -g); echo busybox $(ls -ln /bin/busybox | \
                     while read m l u g r; do echo $u:$g; done); echo data > /written; \
                     mkdir /made; echo nets $(ls /sys/class/net)";

#[tokio::test]
async fn userns_remaps_root_and_keeps_the_image_as_root_sees_it() {
    if !root_or_skip("userns_remaps_root_and_keeps_the_image_as_root_sees_it") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = remapped_runtime(&fx).await;
    for mode in [NetworkMode::None, NetworkMode::Host] {
        let family = format!("remapped-{}", format!("{mode:?}").to_lowercase());
        let t = task(&family, vec![container("c", &["sh", "-c", PROBE])], mode);
        rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
        let (path, rx) = fx.fifo(&family);
        rt.start_container(&t.family, &t.containers[0].name, &path)
            .await
            .expect("start");
        let exit = next_exit(&mut exits).await;
        let out = drain(&rx);
        assert_eq!(exit.exit.code, 0, "{mode:?}: {out}");
        assert_eq!(map_line(&out, "uid_map"), "0 300000 65536", "{out}");
        assert_eq!(map_line(&out, "gid_map"), "0 300000 65536", "{out}");
        assert_eq!(map_line(&out, "id"), "0:0", "{out}");
        // The image's files (root's on the host) are root's inside: the idmapped lower layer.
        assert_eq!(map_line(&out, "busybox"), "0:0", "{out}");
        // sysfs: the task's own network namespace has only lo; the host's has more.
        let nets = map_line(&out, "nets");
        match mode {
            NetworkMode::None => assert_eq!(nets, "lo", "{out}"),
            _ => assert!(nets.split(' ').count() > 1, "host /sys: {out}"),
        }
        // Written by the container's root: stored as host uid 300000.
        let upper = fx
            .run_dir()
            .join("tasks")
            .join(&family)
            .join("c")
            .join("upper");
        for f in ["written", "made"] {
            let meta = std::fs::metadata(upper.join(f)).expect("file in the upper layer");
            assert_eq!((meta.uid(), meta.gid()), (300_000, 300_000), "{f}");
        }
        assert_eq!(
            std::fs::metadata(fx.image.rootfs.join("bin/busybox"))
                .expect("image file")
                .uid(),
            0,
            "the image is untouched"
        );
        rt.remove_task(&t.family).await.expect("remove");
        assert!(!fx.run_dir().join("tasks").join(&family).exists());
        assert!(!fx.run_dir().join("netns").join(&family).exists());
    }
}

#[tokio::test]
async fn userns_exec_joins_the_container_and_privileged_stays_unmapped() {
    if !root_or_skip("userns_exec_joins_the_container_and_privileged_stays_unmapped") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = remapped_runtime(&fx).await;
    let mut c = container("app", &["sleep", "1000"]);
    c.user = Some("nobody".into());
    let (t, c, _rx) = start_sleeper(&fx, &rt, "userns-exec", c, NetworkMode::None).await;
    // The container's process on the host: nobody (65534) is host uid 365534.
    let pids = container_procs(&fx, &t, &c);
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).expect("status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    assert_eq!(
        uids.split_whitespace().next(),
        Some("365534"),
        "host view: {status}"
    );
    let out = rt
        .exec(
            &t,
            &c,
            argv(&["sh", "-c", "id -u; cat /proc/self/uid_map"]),
            EXEC_TIMEOUT,
        )
        .await
        .expect("exec");
    let text = String::from_utf8_lossy(&out.output);
    assert_eq!(out.code, Some(0), "{text}");
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(lines, ["65534", "0 300000 65536"], "{text}");
    rt.remove_task(&t).await.expect("remove");
    assert_eq!(next_exit(&mut exits).await.container, c);

    // A privileged container is not remapped.
    let mut p = container(
        "priv",
        &["sh", "-c", "echo uid_map $(cat /proc/self/uid_map)"],
    );
    p.security = ContainerSecurity {
        privileged: true,
        ..Default::default()
    };
    let (exit, out) = run_one(&fx, &rt, &mut exits, p).await;
    assert_eq!(exit.exit.code, 0, "{out}");
    assert_eq!(map_line(&out, "uid_map"), "0 0 4294967295", "{out}");

    // A user outside the range is refused before anything runs, naming the id and the range.
    let mut c = container("far", &["true"]);
    c.user = Some("70000".into());
    let t = task("userns-far", vec![c], NetworkMode::None);
    let err = rt
        .prepare_task(&t, &fx.images(1))
        .await
        .expect_err("uid outside the range");
    let msg = err.to_string();
    assert!(
        msg.contains("uid 70000") && msg.contains("0..65536"),
        "{msg}"
    );
    assert!(!fx.run_dir().join("tasks/userns-far").exists());
    assert!(!fx.run_dir().join("netns/userns-far").exists());
}

/// What remapping costs a task start: prepare (namespaces, idmapped overlay, spec) and
/// start + wait + remove of `true`, median of 20, without and with `[userns]` in the same run.
/// A measurement, not a check:
/// `cargo test --release -p skiff-agent --test runtime -- --ignored --nocapture measure_userns`.
#[tokio::test]
#[ignore = "measurement; run explicitly"]
async fn measure_userns_overhead_median_of_20() {
    if !root_or_skip("measure_userns_overhead_median_of_20") {
        return;
    }
    let fx = Fixture::new();
    for remap in [None, Some(MAP)] {
        let mut cfg = fx.config();
        cfg.userns = remap;
        let (rt, mut exits) = Runtime::start(cfg).await.expect("runtime starts");
        let prefix = if remap.is_some() { "ur" } else { "up" };
        let (prepare, cycle) = true_cycles(&fx, &rt, &mut exits, prefix, NetworkMode::None).await;
        println!(
            "{}: prepare_task median {:?}, start+wait+remove median {:?}",
            if remap.is_some() {
                "remapped (userns)"
            } else {
                "not remapped     "
            },
            prepare[prepare.len() / 2],
            cycle[cycle.len() / 2],
        );
    }
}

#[tokio::test]
async fn userns_copies_with_shifted_owners_where_the_image_cannot_be_idmapped() {
    if !root_or_skip("userns_copies_with_shifted_owners_where_the_image_cannot_be_idmapped") {
        return;
    }
    let fx = Fixture::new();
    // The image rootfs seen through an overlay mount: overlayfs can't be idmapped, so the
    // runtime falls back to a copy of it with every owner shifted.
    let over = fx.dir.path().join("over");
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(over.join(d)).expect("mkdir");
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.image.rootfs.display(),
        over.join("upper").display(),
        over.join("work").display()
    );
    nix::mount::mount(
        Some("overlay"),
        &over.join("merged"),
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .expect("overlay mount for the image");
    let mut image = fx.image.clone();
    image.rootfs = over.join("merged");
    let (rt, mut exits) = remapped_runtime(&fx).await;
    let t = task(
        "userns-copy",
        vec![container("c", &["sh", "-c", PROBE])],
        NetworkMode::None,
    );
    rt.prepare_task(&t, &[image]).await.expect("prepare");
    let (path, rx) = fx.fifo("userns-copy");
    rt.start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start");
    let exit = next_exit(&mut exits).await;
    let out = drain(&rx);
    let rootfs = fx.run_dir().join("tasks/userns-copy/c/rootfs");
    let written = std::fs::metadata(rootfs.join("written")).map(|m| (m.uid(), m.gid()));
    let busybox = std::fs::metadata(rootfs.join("bin/busybox")).map(|m| m.uid());
    rt.remove_task(&t.family).await.expect("remove");
    let _ = nix::mount::umount2(&over.join("merged"), nix::mount::MntFlags::MNT_DETACH);
    assert_eq!(exit.exit.code, 0, "{out}");
    assert_eq!(map_line(&out, "id"), "0:0", "{out}");
    assert_eq!(map_line(&out, "busybox"), "0:0", "{out}");
    // A copy: the image's files are stored shifted, and so is what the container wrote.
    assert_eq!(busybox.expect("copied busybox"), 300_000);
    assert_eq!(written.expect("written"), (300_000, 300_000));
}
