//! Bridge networking against real links, namespaces and nftables. Each test has its own
//! bridge, subnet (`10.213.K.0/24`) and host port range, and removes them when it ends; the
//! "outside" is a network namespace the test makes, joined to the node by a veth pair. No
//! traffic leaves the machine.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;

use skiff_agent::runtime::{BridgeConfig, NetworkConfig};
use skiff_proto::{Endpoint, PortMapping, Protocol};

use super::*;

static NET_SEQ: AtomicU32 = AtomicU32::new(0);

pub(crate) fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bridge, subnet and port range unique to one test, and optionally a client namespace;
/// everything is removed on drop.
struct TestNet {
    cfg: BridgeConfig,
    k: u32,
    client: Option<String>,
}

impl TestNet {
    fn new() -> TestNet {
        let n = NET_SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let k = ((pid % 40) * 6 + n) % 250;
        let cfg = NetworkConfig {
            bridge: format!("skt{}x{n}", pid % 100_000),
            subnet: format!("10.213.{k}.0/24"),
            ephemeral_ports: format!("{}-{}", 40_000 + k * 50, 40_000 + k * 50 + 49),
            dns: Some(vec!["192.0.2.53".into()]),
            ..NetworkConfig::default()
        }
        .validate()
        .expect("valid network config");
        TestNet {
            cfg,
            k,
            client: None,
        }
    }

    fn addr(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, u8::try_from(self.k).expect("k"), last)
    }

    fn suffix(&self) -> String {
        self.cfg.bridge.replace('-', "_")
    }

    /// The veths that are ports of the bridge.
    fn veths(&self) -> Vec<String> {
        sh(&format!(
            "ip -o link show master {} 2>/dev/null",
            self.cfg.bridge
        ))
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
    }

    /// The elements of the bridge's port-mapping maps.
    fn mappings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in ["tcp", "udp"] {
            let text = sh(&format!(
                "nft list map ip skiff {p}_{} 2>/dev/null",
                self.suffix()
            ));
            if let Some(e) = text.split("elements = {").nth(1) {
                let e = e.split('}').next().unwrap_or("");
                out.extend(
                    e.split(',')
                        .map(|x| format!("{p} {}", x.trim()))
                        .filter(|x| x.len() > 4),
                );
            }
        }
        out
    }

    /// A namespace `10.214.K.2/30` joined to the node's `10.214.K.1` by a veth pair: the LAN.
    /// Returns the node's address on it.
    fn client(&mut self) -> Ipv4Addr {
        let ns = format!("sktc{}x{}", std::process::id() % 100_000, self.k);
        let k = self.k;
        let script = format!(
            "set -e; ip netns add {ns}; ip link add {ns} type veth peer name eth0 netns {ns}; \
             ip addr add 10.214.{k}.1/30 dev {ns}; ip link set {ns} up; \
             ip -n {ns} addr add 10.214.{k}.2/30 dev eth0; ip -n {ns} link set eth0 up; \
             ip -n {ns} link set lo up; ip -n {ns} route add default via 10.214.{k}.1"
        );
        let st = Command::new("sh")
            .args(["-c", &script])
            .status()
            .expect("sh");
        assert!(st.success(), "client namespace setup");
        self.client = Some(ns);
        Ipv4Addr::new(10, 214, u8::try_from(k).expect("k"), 1)
    }

    fn client_ns(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(self.client.as_deref().expect("client made"))
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let s = self.suffix();
        let mut script = format!("ip link del {} 2>/dev/null;", self.cfg.bridge);
        for c in ["pre", "out", "post", "fwd"] {
            script.push_str(&format!("nft delete chain ip skiff {c}_{s} 2>/dev/null;"));
        }
        for m in ["tcp", "udp"] {
            script.push_str(&format!("nft delete map ip skiff {m}_{s} 2>/dev/null;"));
        }
        if let Some(ns) = &self.client {
            script.push_str(&format!("ip netns del {ns}; ip link del {ns} 2>/dev/null;"));
        }
        let _ = Command::new("sh").args(["-c", &script]).status();
    }
}

/// A busybox httpd serving `body` on port 8080, mapped to a dynamic host port.
fn web(family: &str, body: &str) -> TaskDefinition {
    let mut c = container(
        "web",
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 8080 -h /www"
            ),
        ],
    );
    c.port_mappings = vec![PortMapping {
        container_port: 8080,
        host_port: None,
        protocol: Protocol::Tcp,
    }];
    task(family, vec![c], NetworkMode::Bridge)
}

fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// [`http_get`] from inside the network namespace at `ns`.
pub(crate) fn http_get_in(ns: PathBuf, addr: SocketAddr) -> std::io::Result<String> {
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        http_get(addr)
    })
    .join()
    .expect("client thread")
}

/// Retries `get` (httpd may still be starting) until it answers with `body`.
pub(crate) async fn answers(what: &str, body: &str, get: impl Fn() -> std::io::Result<String>) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let res = get();
        match &res {
            Ok(text) if text.contains(body) => return,
            _ if Instant::now() > end => panic!("{what}: no answer with {body:?}: {res:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn bridge_runtime(fx: &Fixture, net: &TestNet) -> (Runtime, Receiver<ContainerExit>) {
    let (rt, exits) = fx.runtime().await;
    rt.enable_bridge(net.cfg.clone())
        .await
        .expect("bridge networking available");
    (rt, exits)
}

#[tokio::test]
async fn bridge_task_has_eth0_its_address_dns_files_and_reaches_the_bridge() {
    if !root_or_skip("bridge_task_has_eth0_its_address_dns_files_and_reaches_the_bridge") {
        return;
    }
    let fx = Fixture::new();
    let net = TestNet::new();
    let (rt, mut exits) = bridge_runtime(&fx, &net).await;
    let gw = net.cfg.gateway();
    let probe = format!(
        "ip -4 addr show eth0; ip route; cat /etc/resolv.conf /etc/hosts; ping -c 1 -W 3 {gw}"
    );
    let t = task(
        "probe",
        vec![container("p", &["sh", "-c", &probe])],
        NetworkMode::Bridge,
    );
    let endpoints = rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    assert!(endpoints.is_empty(), "no port mappings, no endpoints");
    assert_eq!(net.veths().len(), 1, "one veth on the bridge");
    let veth = sh(&format!("ip -o link show {}", net.veths()[0]));
    assert!(veth.contains("alias skiff task probe"), "{veth}");
    let (path, rx) = fx.fifo("probe");
    rt.start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start");
    let exit = next_exit(&mut exits).await;
    let out = drain(&rx);
    assert_eq!(exit.exit.code, 0, "{out}");
    let me = net.addr(2);
    assert!(out.contains(&format!("inet {me}/24")), "{out}");
    assert!(out.contains(&format!("default via {gw} dev eth0")), "{out}");
    assert!(out.contains("nameserver 192.0.2.53"), "{out}");
    assert!(out.contains(&format!("{me}\tprobe")), "{out}");
    assert!(out.contains("1 packets received"), "{out}");
    rt.remove_task(&t.family).await.expect("remove");
    assert_eq!(net.veths(), Vec::<String>::new());
    assert_eq!(entries(&fx.run_dir().join("net")), Vec::<String>::new());
}

#[tokio::test]
async fn bridge_port_mappings_answer_on_loopback_node_address_and_from_another_namespace() {
    if !root_or_skip(
        "bridge_port_mappings_answer_on_loopback_node_address_and_from_another_namespace",
    ) {
        return;
    }
    let fx = Fixture::new();
    let mut net = TestNet::new();
    let node = net.client();
    let (rt, _exits) = bridge_runtime(&fx, &net).await;
    let (first, last) = net.cfg.ephemeral_ports;
    let mut running = Vec::new();
    let mut ports = Vec::new();
    for (i, family) in ["web1", "web2"].into_iter().enumerate() {
        let t = web(family, &format!("hello-{family}"));
        let endpoints = rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
        let last_octet = u8::try_from(i + 2).expect("small");
        assert_eq!(endpoints.len(), 1);
        let e: &Endpoint = &endpoints[0];
        assert_eq!(
            (e.container.as_str(), e.container_port, e.protocol),
            ("web", 8080, Protocol::Tcp)
        );
        assert_eq!(e.address, net.addr(last_octet).to_string());
        assert!((first..=last).contains(&e.host_port), "{e:?}");
        ports.push(e.host_port);
        let (path, rx) = fx.fifo(family);
        rt.start_container(&t.family, &t.containers[0].name, &path)
            .await
            .expect("start");
        running.push((t, rx));
    }
    assert_ne!(ports[0], ports[1], "two copies get different host ports");
    assert_eq!(net.mappings().len(), 2, "{:?}", net.mappings());
    for ((t, _), port) in running.iter().zip(&ports) {
        let body = format!("hello-{}", t.family);
        let port = *port;
        answers("127.0.0.1", &body, || {
            http_get(SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .await;
        answers("the node's address", &body, || {
            http_get(SocketAddr::from((node, port)))
        })
        .await;
        let ns = net.client_ns();
        answers("another namespace", &body, || {
            http_get_in(ns.clone(), SocketAddr::from((node, port)))
        })
        .await;
    }
    for (t, _) in &running {
        rt.remove_task(&t.family).await.expect("remove");
    }
    assert_eq!(net.veths(), Vec::<String>::new());
    assert_eq!(net.mappings(), Vec::<String>::new());
    assert_eq!(entries(&fx.run_dir().join("net")), Vec::<String>::new());
    let gone = http_get(SocketAddr::from(([127, 0, 0, 1], ports[0])));
    assert!(gone.is_err(), "nothing answers once removed: {gone:?}");
}

#[tokio::test]
async fn bridge_udp_mapping_delivers_datagrams() {
    if !root_or_skip("bridge_udp_mapping_delivers_datagrams") {
        return;
    }
    let fx = Fixture::new();
    let net = TestNet::new();
    let (rt, _exits) = bridge_runtime(&fx, &net).await;
    let mut c = container("dns", &["sleep", "1000"]);
    c.port_mappings = vec![PortMapping {
        container_port: 5353,
        host_port: None,
        protocol: Protocol::Udp,
    }];
    let t = task("udp", vec![c], NetworkMode::Bridge);
    let endpoints = rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    assert_eq!(endpoints[0].protocol, Protocol::Udp);
    let port = endpoints[0].host_port;
    let (path, _rx) = fx.fifo("udp");
    rt.start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start");
    // busybox's nc has no UDP: the listener is a socket the test opens in the task's namespace.
    let ns = fx.run_dir().join("netns/udp");
    let listener = std::thread::spawn(move || -> std::io::Result<String> {
        let f = std::fs::File::open(&ns)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let sock = UdpSocket::bind("0.0.0.0:5353")?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 64];
        let (n, _) = sock.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let end = Instant::now() + Duration::from_secs(10);
    while !listener.is_finished() && Instant::now() < end {
        sock.send_to(b"datagram", ("127.0.0.1", port))
            .expect("send");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = listener.join().expect("listener thread");
    assert_eq!(got.expect("a datagram arrived"), "datagram");
    rt.remove_task(&t.family).await.expect("remove");
    assert_eq!(net.mappings(), Vec::<String>::new());
}

#[tokio::test]
async fn bridge_static_host_port_conflicts_are_reported_and_nothing_is_half_applied() {
    if !root_or_skip("bridge_static_host_port_conflicts_are_reported_and_nothing_is_half_applied") {
        return;
    }
    let fx = Fixture::new();
    let net = TestNet::new();
    let (rt, _exits) = bridge_runtime(&fx, &net).await;
    let (first, _) = net.cfg.ephemeral_ports;
    let with_static = |family: &str, port: u16| {
        let mut t = web(family, family);
        t.containers[0].port_mappings.push(PortMapping {
            container_port: 9090,
            host_port: Some(port),
            protocol: Protocol::Tcp,
        });
        t
    };
    let a = with_static("a", first + 40);
    let eps = rt.prepare_task(&a, &fx.images(1)).await.expect("prepare a");
    assert_eq!(eps[1].host_port, first + 40);
    let b = with_static("b", first + 40);
    let err = rt
        .prepare_task(&b, &fx.images(1))
        .await
        .expect_err("conflict");
    assert!(
        err.to_string().contains(&format!(
            "host port {}/tcp of container web is mapped already by task a",
            first + 40
        )),
        "{err}"
    );
    // A port some process of the node listens on.
    let busy = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let busy_port = busy.local_addr().expect("addr").port();
    let c = with_static("c", busy_port);
    let err = rt
        .prepare_task(&c, &fx.images(1))
        .await
        .expect_err("in use");
    assert!(err.to_string().contains("is in use on this node"), "{err}");
    // Only a's things exist.
    assert_eq!(net.veths().len(), 1);
    assert_eq!(net.mappings().len(), 2, "{:?}", net.mappings());
    assert_eq!(entries(&fx.run_dir().join("net")), vec!["a".to_string()]);
    assert_eq!(entries(&fx.run_dir().join("tasks")), vec!["a".to_string()]);
    rt.remove_task(&a.family).await.expect("remove");
    assert_eq!(net.mappings(), Vec::<String>::new());
}

#[tokio::test]
async fn bridge_cleanup_stale_after_a_crash_leaves_nothing() {
    if !root_or_skip("bridge_cleanup_stale_after_a_crash_leaves_nothing") {
        return;
    }
    let fx = Fixture::new();
    let net = TestNet::new();
    let (old, _old_exits) = bridge_runtime(&fx, &net).await;
    let t = web("crashed", "x");
    let endpoints = old.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    let (path, _rx) = fx.fifo("crashed");
    old.start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start");
    let veth = net.veths().pop().expect("a veth");
    // The agent dies with kill -9: its launcher goes, the container stays.
    let launcher = nix::unistd::Pid::from_raw(i32::try_from(old.launcher_pid()).expect("pid"));
    nix::sys::signal::kill(launcher, nix::sys::signal::Signal::SIGKILL).expect("kill launcher");
    drop(old);
    // Leftovers no allocation explains: a veth named as skiff names them, a port mapping.
    let stray = format!("{}0a0a0a0a", &veth[..6]);
    let suffix = net.suffix();
    let setup = format!(
        "ip link add {stray} type veth peer name {stray}p && \
         nft add element ip skiff tcp_{suffix} '{{ {} : {} . 80 }}'",
        endpoints[0].host_port + 1,
        net.addr(99)
    );
    assert!(Command::new("sh")
        .args(["-c", &setup])
        .status()
        .expect("sh")
        .success());
    assert_eq!(net.mappings().len(), 2);

    let (rt, _exits) = bridge_runtime(&fx, &net).await;
    let removed = rt.cleanup_stale().await.expect("cleanup");
    assert!(removed.contains(&"crashed/web".to_string()), "{removed:?}");
    assert!(removed.contains(&format!("veth {stray}")), "{removed:?}");
    assert!(
        removed.contains(&"1 port mapping(s)".to_string()),
        "{removed:?}"
    );
    assert_eq!(net.veths(), Vec::<String>::new());
    assert!(
        sh(&format!(
            "ip link show {veth} 2>&1; ip link show {stray} 2>&1"
        ))
        .matches("does not exist")
        .count()
            == 2
    );
    assert_eq!(net.mappings(), Vec::<String>::new());
    assert_eq!(entries(&fx.run_dir().join("net")), Vec::<String>::new());
    assert_eq!(entries(&fx.run_dir().join("netns")), Vec::<String>::new());
    assert_eq!(
        rt.cleanup_stale().await.expect("again"),
        Vec::<String>::new()
    );
}

/// Runs `f` on a thread that has entered the network namespace at `ns` (`None`: the test's).
fn in_ns<T: Send + 'static>(
    ns: Option<PathBuf>,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::thread::JoinHandle<std::io::Result<T>> {
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            let file = std::fs::File::open(&ns)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        }
        f()
    })
}

/// A listener on `port` in the namespace `server`, ready when this returns.
fn listen_in(server: Option<PathBuf>, port: u16) -> std::net::TcpListener {
    in_ns(server, move || {
        std::net::TcpListener::bind(("0.0.0.0", port))
    })
    .join()
    .expect("listener thread")
    .expect("bind")
}

/// Sends `mib` MiB over one TCP connection from the namespace `client` to `to`, read to the end
/// by `listener`'s side; MB/s (10^6 bytes) from connect to the last byte read.
fn throughput(listener: std::net::TcpListener, client: PathBuf, to: SocketAddr, mib: usize) -> f64 {
    let reader = std::thread::spawn(move || -> std::io::Result<(usize, Instant)> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok((n, Instant::now())),
                k => n += k,
            }
        }
    });
    let t0 = in_ns(Some(client), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        let t0 = Instant::now();
        let buf = vec![7u8; 1 << 20];
        for _ in 0..mib {
            s.write_all(&buf)?;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(t0)
    })
    .join()
    .expect("client thread")
    .expect("client");
    let (n, end) = reader.join().expect("reader").expect("read");
    assert_eq!(n, mib << 20);
    n as f64 / (end - t0).as_secs_f64() / 1e6
}

/// Median round trip of a 1-byte request and answer over one TCP connection from `client` to
/// `to` (`listener`'s side answers), of 2000 after 100 warm-up ones.
fn round_trip(listener: std::net::TcpListener, client: PathBuf, to: SocketAddr) -> Duration {
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let times = in_ns(Some(client), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_nodelay(true)?;
        let mut b = [1u8; 1];
        let mut times = Vec::new();
        for i in 0..2100 {
            let t0 = Instant::now();
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
            if i >= 100 {
                times.push(t0.elapsed());
            }
        }
        Ok(times)
    })
    .join()
    .expect("client thread")
    .expect("client");
    echo.join().expect("echo").expect("echo");
    median(times)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Times `script` (run with `sh -c`) `runs` times after a warm-up, running `undo` after each.
fn time_script(script: &str, undo: &str, runs: usize) -> Duration {
    let mut times = Vec::new();
    for i in 0..=runs {
        let t0 = Instant::now();
        let st = Command::new("sh")
            .args(["-c", script])
            .status()
            .expect("sh");
        let dt = t0.elapsed();
        assert!(st.success(), "peer script failed: {script}");
        sh(undo);
        if i > 0 {
            times.push(dt);
        }
    }
    median(times)
}

/// Runs of each measurement in [`measure_network_setup_none_bridge_awsvpc_against_iproute2`].
const RUNS: usize = 30;

/// A task's network setup in each mode, median of [`RUNS`] after a warm-up: `prepare_task` (task
/// cgroup, namespace, network, rootfs, `config.json`) of a one-container task with networkMode
/// none, bridge (one dynamic port mapping) and awsvpc (one port, on an emulated LAN), and
/// prepare + start. The network's own share is the difference to none. Beside it, the peer:
/// the same network made with iproute2 and nft commands (namespace, veth on the bridge or
/// macvlan on the parent, address, up, default route; the bridge's port mapping), as a shell
/// script or a CNI plugin does it, in the same run. A measurement, not a check:
/// `cargo test --release -p skiff-agent --test runtime -- --ignored --nocapture measure_network`.
#[tokio::test]
#[ignore = "measurement; run explicitly"]
async fn measure_network_setup_none_bridge_awsvpc_against_iproute2() {
    if !root_or_skip("measure_network_setup_none_bridge_awsvpc_against_iproute2") {
        return;
    }
    let fx = Fixture::new();
    let mut net = TestNet::new();
    let lan = super::awsvpc::TestLan::new();
    let (rt, mut exits) = bridge_runtime(&fx, &net).await;
    rt.enable_awsvpc(lan.config(4))
        .await
        .expect("awsvpc networking available");
    // Round robin over the modes, so drift on the machine touches each alike.
    let modes = [NetworkMode::None, NetworkMode::Bridge, NetworkMode::Awsvpc];
    let mut prepare = vec![Vec::new(); 3];
    let mut start = vec![Vec::new(); 3];
    for i in 0..=RUNS {
        for (m, mode) in modes.into_iter().enumerate() {
            let family = format!("m{mode:?}{i}").to_lowercase();
            let mut c = container("t", &["true"]);
            if mode != NetworkMode::None {
                c.port_mappings = vec![PortMapping {
                    container_port: 80,
                    host_port: None,
                    protocol: Protocol::Tcp,
                }];
            }
            let t = task(&family, vec![c], mode);
            let (path, _rx) = fx.fifo(&family);
            let t0 = Instant::now();
            rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
            let t1 = Instant::now();
            rt.start_container(&t.family, &t.containers[0].name, &path)
                .await
                .expect("start");
            let t2 = Instant::now();
            next_exit(&mut exits).await;
            rt.remove_task(&t.family).await.expect("remove");
            if i > 0 {
                start[m].push(t2 - t0);
                prepare[m].push(t1 - t0);
            }
        }
    }
    let mut report = Vec::new();
    let none = median(prepare[0].clone());
    for (m, mode) in modes.into_iter().enumerate() {
        let p = median(prepare[m].clone());
        report.push(format!(
            "skiff {mode:?}: prepare median {p:?}, prepare+start median {:?}, network share \
             (prepare - none's) {:?}",
            median(start[m].clone()),
            p.saturating_sub(none)
        ));
    }
    let pid = std::process::id() % 100_000;
    let ns = format!("skpeer{pid}");
    let bridge_peer = format!(
        "set -e; ip netns add {ns}; ip link add skph{pid} type veth peer name eth0 netns {ns}; \
         ip link set skph{pid} master {br} up; ip -n {ns} link set lo up; \
         ip -n {ns} addr add {a}/{p} dev eth0; ip -n {ns} link set eth0 up; \
         ip -n {ns} route add default via {gw}; \
         nft add element ip skiff tcp_{sfx} '{{ {port} : {a} . 80 }}'",
        br = net.cfg.bridge,
        a = net.addr(200),
        p = net.cfg.prefix,
        gw = net.cfg.gateway(),
        sfx = net.suffix(),
        port = net.cfg.ephemeral_ports.0 + 45,
    );
    let bridge_undo = format!(
        "ip netns del {ns}; ip link del skph{pid} 2>/dev/null; \
         nft delete element ip skiff tcp_{} '{{ {} }}'",
        net.suffix(),
        net.cfg.ephemeral_ports.0 + 45
    );
    let awsvpc_peer = format!(
        "set -e; ip netns add {ns}; \
         ip link add link {parent} name eth0 netns {ns} type macvlan mode bridge; \
         ip -n {ns} link set lo up; ip -n {ns} addr add {a}/24 dev eth0; \
         ip -n {ns} link set eth0 up; ip -n {ns} route add default via {gw}",
        parent = lan.parent,
        a = lan.addr(200),
        gw = lan.addr(1),
    );
    let none_peer = format!("set -e; ip netns add {ns}; ip -n {ns} link set lo up");
    let undo = format!("ip netns del {ns}");
    let none = time_script(&none_peer, &undo, RUNS);
    let b = time_script(&bridge_peer, &bridge_undo, RUNS);
    let a = time_script(&awsvpc_peer, &undo, RUNS);
    report.push(format!(
        "iproute2 None (netns + lo up): median {none:?}\n\
         iproute2 Bridge (netns, veth on the bridge, address, route, nft element): median {b:?}\n\
         iproute2 Awsvpc (netns, macvlan, address, route): median {a:?}"
    ));

    // The data path: TCP from a client namespace on a veth (the "LAN") into the node.
    // Host networking: a listener in the node's namespace, reached at the node's address on
    // the client's veth. Bridge: a task's namespace behind its port mapping, reached at the
    // same address and the host port. awsvpc: a task's namespace on its own LAN address (the
    // client is on the emulated LAN, whose wire is also a veth).
    let node = net.client();
    let client = net.client_ns();
    let port = 5001;
    let mut c = container("t", &["true"]);
    c.port_mappings = vec![PortMapping {
        container_port: port,
        host_port: None,
        protocol: Protocol::Tcp,
    }];
    let bt = task("tput-bridge", vec![c.clone()], NetworkMode::Bridge);
    let host_port = rt.prepare_task(&bt, &fx.images(1)).await.expect("prepare")[0].host_port;
    let at = task("tput-awsvpc", vec![c], NetworkMode::Awsvpc);
    rt.prepare_task(&at, &fx.images(1)).await.expect("prepare");
    let bns = Some(fx.run_dir().join("netns/tput-bridge"));
    let ans = Some(fx.run_dir().join("netns/tput-awsvpc"));
    let host_free = std::net::TcpListener::bind("0.0.0.0:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let paths: [(&str, Option<PathBuf>, u16, PathBuf, SocketAddr); 3] = [
        (
            "host",
            None,
            host_free,
            client.clone(),
            SocketAddr::from((node, host_free)),
        ),
        (
            "bridge",
            bns,
            port,
            client,
            SocketAddr::from((node, host_port)),
        ),
        (
            "awsvpc",
            ans,
            port,
            lan.client_ns(),
            SocketAddr::from((lan.addr(10), port)),
        ),
    ];
    let mut rates = Vec::new();
    for (what, server, bind, from, to) in paths {
        let mut r: Vec<f64> = (0..5)
            .map(|_| throughput(listen_in(server.clone(), bind), from.clone(), to, 256))
            .collect();
        r.sort_by(f64::total_cmp);
        let rtt = round_trip(listen_in(server, bind), from, to);
        rates.push(r[2]);
        report.push(format!(
            "TCP {what}: 256 MiB median of 5 {:.0} MB/s ({:.2} of host), 1-byte round trip median {rtt:?}",
            r[2],
            r[2] / rates[0]
        ));
    }
    for t in [&bt, &at] {
        rt.remove_task(&t.family).await.expect("remove");
    }
    println!("{}", report.join("\n"));
}
