//! awsvpc networking against real macvlans and namespaces. Each test has its own emulated LAN
//! (`10.99.K.0/24`): a veth pair whose node end is the awsvpc parent (no address on the node)
//! and whose other end is `eth0` of a "lan" namespace holding `10.99.K.1`, the LAN's gateway
//! and client. Everything is removed on drop; no traffic leaves the machine.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use skiff_agent::runtime::{AwsvpcConfig, NetworkConfig};
use skiff_proto::{PortMapping, Protocol};

use super::bridge::{answers, http_get_in, sh};
use super::*;

static LAN_SEQ: AtomicU32 = AtomicU32::new(0);

/// An emulated LAN unique to one test.
pub(crate) struct TestLan {
    pub k: u8,
    /// The node's interface on the LAN (the awsvpc parent).
    pub parent: String,
    /// The "lan" namespace: the gateway and client at `.1`.
    pub ns: String,
}

impl TestLan {
    pub(crate) fn new() -> TestLan {
        let n = LAN_SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let k = u8::try_from(((pid % 40) * 6 + n) % 250).expect("k");
        let parent = format!("skp{}x{n}", pid % 100_000);
        let ns = format!("skl{}x{n}", pid % 100_000);
        let script = format!(
            "set -e; ip netns add {ns}; ip link add {parent} type veth peer name eth0 netns {ns}; \
             ip link set {parent} up; ip -n {ns} addr add 10.99.{k}.1/24 dev eth0; \
             ip -n {ns} link set eth0 up; ip -n {ns} link set lo up"
        );
        let st = Command::new("sh")
            .args(["-c", &script])
            .status()
            .expect("sh");
        assert!(st.success(), "LAN setup");
        TestLan { k, parent, ns }
    }

    pub(crate) fn addr(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, self.k, last)
    }

    /// `[network]` for this LAN with a pool of `size` addresses from `.10`.
    pub(crate) fn config(&self, size: u8) -> AwsvpcConfig {
        let net = NetworkConfig {
            awsvpc_parent: Some(self.parent.clone()),
            awsvpc_pool: Some(format!("{}-{}", self.addr(10), self.addr(9 + size))),
            awsvpc_subnet: Some(format!("10.99.{}.0/24", self.k)),
            awsvpc_gateway: Some(self.addr(1).to_string()),
            dns: Some(vec!["192.0.2.53".into()]),
            ..NetworkConfig::default()
        };
        let bridge = net.validate().expect("bridge part");
        net.validate_awsvpc(&bridge)
            .expect("valid awsvpc config")
            .expect("awsvpc on")
    }

    pub(crate) fn client_ns(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.ns)
    }

    /// Whether something on the LAN answers ARP for `ip` (asked from the client).
    pub(crate) fn arp_answers(&self, ip: Ipv4Addr) -> bool {
        let out = sh(&format!(
            "ip netns exec {} busybox arping -c 2 -w 2 -I eth0 {ip} 2>&1",
            self.ns
        ));
        assert!(out.contains("Received "), "arping: {out}");
        !out.contains("Received 0 ")
    }
}

impl Drop for TestLan {
    fn drop(&mut self) {
        let script = format!(
            "ip netns del {} 2>/dev/null; ip link del {} 2>/dev/null",
            self.ns, self.parent
        );
        let _ = Command::new("sh").args(["-c", &script]).status();
    }
}

/// skiff's awsvpc links (`alias skiff awsvpc ...`) in every network namespace of the machine
/// that a process or a bind mount (under `extra` or `/run/netns`) holds: task name → count.
/// The skiff awsvpc links of the tasks `only` (tests run in parallel, each with its own task
/// names), found in every network namespace of the machine.
pub(crate) fn awsvpc_links(extra: &Path, only: &[&str]) -> BTreeMap<String, usize> {
    let mut by_inode: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut add = |p: PathBuf| {
        if let Ok(md) = std::fs::metadata(&p) {
            use std::os::unix::fs::MetadataExt;
            by_inode.entry(md.ino().to_string()).or_insert(p);
        }
    };
    for dir in [Path::new("/run/netns"), extra] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                add(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                add(e.path().join("ns/net"));
            }
        }
    }
    let mut out = BTreeMap::new();
    for p in by_inode.values() {
        let text = sh(&format!(
            "nsenter --net={} ip -o link show 2>/dev/null",
            p.display()
        ));
        for l in text.lines() {
            if let Some(t) = l.split("alias skiff awsvpc ").nth(1) {
                if only.contains(&t.trim()) {
                    *out.entry(t.trim().to_owned()).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A busybox httpd on port 80 of its own address, serving `body`.
fn web(family: &str, body: &str) -> TaskDefinition {
    let mut c = container(
        "web",
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www"
            ),
        ],
    );
    c.port_mappings = vec![PortMapping {
        container_port: 80,
        host_port: None,
        protocol: Protocol::Tcp,
    }];
    task(family, vec![c], NetworkMode::Awsvpc)
}

async fn awsvpc_runtime(
    fx: &Fixture,
    lan: &TestLan,
    size: u8,
) -> (Runtime, Receiver<ContainerExit>) {
    let (rt, exits) = fx.runtime().await;
    rt.enable_awsvpc(lan.config(size))
        .await
        .expect("awsvpc networking available");
    (rt, exits)
}

#[tokio::test]
async fn awsvpc_task_has_its_own_lan_address_and_is_reached_directly() {
    if !root_or_skip("awsvpc_task_has_its_own_lan_address_and_is_reached_directly") {
        return;
    }
    let fx = Fixture::new();
    let lan = TestLan::new();
    let (rt, mut exits) = awsvpc_runtime(&fx, &lan, 4).await;
    let gw = lan.addr(1);
    let probe = format!(
        "ip -4 addr show eth0; ip route; cat /etc/resolv.conf /etc/hosts; ping -c 1 -W 3 {gw}"
    );
    let t = task(
        "probe",
        vec![container("p", &["sh", "-c", &probe])],
        NetworkMode::Awsvpc,
    );
    let endpoints = rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    assert!(endpoints.is_empty(), "no port mappings, no endpoints");
    // The task's eth0 is a bridge-mode macvlan of the parent, marked as skiff's.
    let link = sh(&format!(
        "nsenter --net={} ip -d link show eth0",
        fx.run_dir().join("netns/probe").display()
    ));
    assert!(link.contains("macvlan mode bridge"), "{link}");
    assert!(link.contains("alias skiff awsvpc probe"), "{link}");
    let (path, rx) = fx.fifo("probe");
    rt.start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start");
    let exit = next_exit(&mut exits).await;
    let out = drain(&rx);
    assert_eq!(exit.exit.code, 0, "{out}");
    let me = lan.addr(10);
    assert!(out.contains(&format!("inet {me}/24")), "{out}");
    assert!(out.contains(&format!("default via {gw} dev eth0")), "{out}");
    assert!(out.contains("nameserver 192.0.2.53"), "{out}");
    assert!(out.contains(&format!("{me}\tprobe")), "{out}");
    assert!(out.contains("1 packets received"), "{out}");
    rt.remove_task(&t.family).await.expect("remove");
    assert_eq!(entries(&fx.run_dir().join("awsvpc")), Vec::<String>::new());

    // A web task: its endpoint is its own address and port, reached from the LAN.
    let w = web("web", "hello-awsvpc");
    let endpoints = rt.prepare_task(&w, &fx.images(1)).await.expect("prepare");
    assert_eq!(endpoints.len(), 1);
    let e = &endpoints[0];
    assert_eq!(
        (
            e.container.as_str(),
            e.container_port,
            e.host_port,
            e.protocol
        ),
        ("web", 80, 0, Protocol::Tcp),
        "nothing is mapped on the node"
    );
    // The address freed by the probe is handed out again.
    assert_eq!(e.address, me.to_string());
    let (path, _rx) = fx.fifo("web");
    rt.start_container(&w.family, &w.containers[0].name, &path)
        .await
        .expect("start");
    let ns = lan.client_ns();
    answers("the LAN client", "hello-awsvpc", || {
        http_get_in(ns.clone(), SocketAddr::from((me, 80)))
    })
    .await;
    assert_eq!(
        awsvpc_links(&fx.run_dir().join("netns"), &["web"]),
        BTreeMap::from([("web".to_string(), 1)])
    );
    rt.remove_task(&w.family).await.expect("remove");
    assert_eq!(
        awsvpc_links(&fx.run_dir().join("netns"), &["web"]),
        BTreeMap::new()
    );
    assert!(!lan.arp_answers(me), "the address is gone from the LAN");
    assert_eq!(entries(&fx.run_dir().join("awsvpc")), Vec::<String>::new());
}

#[tokio::test]
async fn awsvpc_pool_exhausted_fails_the_task_by_name_and_nothing_is_half_applied() {
    if !root_or_skip("awsvpc_pool_exhausted_fails_the_task_by_name_and_nothing_is_half_applied") {
        return;
    }
    let fx = Fixture::new();
    let lan = TestLan::new();
    let (rt, _exits) = awsvpc_runtime(&fx, &lan, 2).await;
    let mut addrs = Vec::new();
    for family in ["a", "b"] {
        let eps = rt
            .prepare_task(&web(family, family), &fx.images(1))
            .await
            .expect("prepare");
        addrs.push(eps[0].address.clone());
    }
    assert_eq!(addrs, [lan.addr(10).to_string(), lan.addr(11).to_string()]);
    let err = rt
        .prepare_task(&web("c", "c"), &fx.images(1))
        .await
        .expect_err("pool exhausted");
    assert_eq!(
        err.to_string(),
        format!(
            "awsvpc network of task c: no free address left in the awsvpc pool {}-{} for task c \
             (held by tasks a, b)",
            lan.addr(10),
            lan.addr(11)
        )
    );
    assert_eq!(
        sorted(entries(&fx.run_dir().join("awsvpc"))),
        vec!["a".to_string(), "b".to_string()]
    );
    assert_eq!(
        sorted(entries(&fx.run_dir().join("tasks"))),
        vec!["a".to_string(), "b".to_string()]
    );
    assert_eq!(
        sorted(entries(&fx.run_dir().join("netns"))),
        vec!["a".to_string(), "b".to_string()]
    );
    for t in ["a", "b"] {
        rt.remove_task(&name(t)).await.expect("remove");
    }
    assert_eq!(
        awsvpc_links(&fx.run_dir().join("netns"), &["a", "b", "c"]),
        BTreeMap::new()
    );
}

#[tokio::test]
async fn awsvpc_cleanup_stale_after_a_crash_frees_the_address_for_one_new_holder() {
    if !root_or_skip("awsvpc_cleanup_stale_after_a_crash_frees_the_address_for_one_new_holder") {
        return;
    }
    let fx = Fixture::new();
    let lan = TestLan::new();
    let (old, _old_exits) = awsvpc_runtime(&fx, &lan, 1).await;
    let t = web("crashed", "old-run");
    old.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    let (path, _rx) = fx.fifo("crashed");
    old.start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start");
    let me = lan.addr(10);
    let ns = lan.client_ns();
    answers("the old run", "old-run", || {
        http_get_in(ns.clone(), SocketAddr::from((me, 80)))
    })
    .await;
    // The agent dies with kill -9: its launcher goes, the container (and its address) stays.
    let launcher = nix::unistd::Pid::from_raw(i32::try_from(old.launcher_pid()).expect("pid"));
    nix::sys::signal::kill(launcher, nix::sys::signal::Signal::SIGKILL).expect("kill launcher");
    drop(old);

    let (rt, _exits) = awsvpc_runtime(&fx, &lan, 1).await;
    let removed = rt.cleanup_stale().await.expect("cleanup");
    assert!(removed.contains(&"crashed/web".to_string()), "{removed:?}");
    assert_eq!(
        awsvpc_links(&fx.run_dir().join("netns"), &["crashed", "next"]),
        BTreeMap::new()
    );
    assert_eq!(entries(&fx.run_dir().join("awsvpc")), Vec::<String>::new());
    assert!(!lan.arp_answers(me), "nothing holds the address");
    // The pool's one address goes to one new task, which answers alone.
    let n = web("next", "new-run");
    let eps = rt.prepare_task(&n, &fx.images(1)).await.expect("prepare");
    assert_eq!(eps[0].address, me.to_string());
    let (path, _rx) = fx.fifo("next");
    rt.start_container(&n.family, &n.containers[0].name, &path)
        .await
        .expect("start");
    answers("the new run", "new-run", || {
        http_get_in(ns.clone(), SocketAddr::from((me, 80)))
    })
    .await;
    assert_eq!(
        awsvpc_links(&fx.run_dir().join("netns"), &["crashed", "next"]),
        BTreeMap::from([("next".to_string(), 1)])
    );
    rt.remove_task(&n.family).await.expect("remove");
    assert_eq!(
        rt.cleanup_stale().await.expect("again"),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn awsvpc_unavailable_or_unconfigured_fails_awsvpc_tasks_with_the_reason() {
    if !root_or_skip("awsvpc_unavailable_or_unconfigured_fails_awsvpc_tasks_with_the_reason") {
        return;
    }
    let fx = Fixture::new();
    let (rt, _exits) = fx.runtime().await;
    let err = rt
        .prepare_task(&web("w", "w"), &fx.images(1))
        .await
        .expect_err("not configured");
    assert!(
        err.to_string()
            .contains("awsvpc networking is not configured on this node"),
        "{err}"
    );
    let lan = TestLan::new();
    let mut cfg = lan.config(2);
    cfg.parent = "skmissing0".into();
    let err = rt.enable_awsvpc(cfg).await.expect_err("no such parent");
    assert!(
        err.to_string()
            .contains("the parent interface skmissing0 does not exist"),
        "{err}"
    );
    let err = rt
        .prepare_task(&web("w", "w"), &fx.images(1))
        .await
        .expect_err("unavailable");
    assert!(
        err.to_string().contains(
            "awsvpc networking is unavailable on this node: the parent interface skmissing0 \
             does not exist"
        ),
        "{err}"
    );
    // Without awsvpc_subnet, the LAN's prefix comes from the parent's own address.
    let mut cfg = lan.config(2);
    cfg.subnet = None;
    let err = rt.enable_awsvpc(cfg.clone()).await.expect_err("no prefix");
    assert!(
        err.to_string().contains("set [network] awsvpc_subnet"),
        "{err}"
    );
    sh(&format!(
        "ip addr add {}/24 dev {}",
        lan.addr(2),
        lan.parent
    ));
    rt.enable_awsvpc(cfg).await.expect("prefix from the parent");
    let eps = rt
        .prepare_task(&web("w", "w"), &fx.images(1))
        .await
        .expect("prepare");
    assert_eq!(eps[0].address, lan.addr(10).to_string());
    rt.remove_task(&name("w")).await.expect("remove");
    assert_eq!(entries(&fx.run_dir().join("tasks")), Vec::<String>::new());
}
