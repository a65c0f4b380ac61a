//! `skiff-fleet-bench`: the fleet-scale figures (issue 9), each with the command that produced
//! it in `docs/benchmarks.md`.
//!
//! ```text
//! cargo build --release && sudo target/release/skiff-fleet-bench [--nodes 1000,10000]
//!     [--interval 10] [--window 30] [--ramp 1000] [--tasks 2] [--peer-messages 50000]
//! ```
//!
//! For each fleet size it starts its own mosquitto on a free loopback port (20,000 connections
//! allowed), a counting `mosquitto_sub -t 'skiff/v1/#'`, and `skiff sim --nodes N` (the real
//! core and MQTT shell per node, containers faked), then measures: the time until every node is
//! online; over a steady window the message rate the subscriber sees, the broker's CPU and RSS
//! (from `/proc/<pid>`) and the sim's own; `skiff ctl nodes` listing the whole fleet; a
//! cluster-wide `skiff ctl apply`: its wall time and each node's latency from the publish to
//! its status showing the new version (p50, p99, max); Ctrl-C until every node is offline.
//! Peer, on the same broker in the same run: the rate `mosquitto_pub -l` achieves into a
//! `mosquitto_sub` with messages of the fleet's average size, once while the fleet is
//! connected and once after it left, with the broker's CPU during each burst (a single-threaded
//! broker at 100 % is saturated). Everything shares this machine's CPUs: the sim's and the
//! subscriber's CPU are printed too.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_proto::codec::{decode, Message};
use skiff_proto::NodeState;

#[path = "common/mod.rs"]
mod common;

use common::{cpu_ticks, percentile, rss_kib, ticks_per_sec, Kill, Res, Work};

const CLUSTER: &str = "bench";

struct Args {
    nodes: Vec<u32>,
    interval: u64,
    window: u64,
    ramp: u32,
    tasks: u32,
    peer_messages: u32,
    skiff: PathBuf,
}

fn args() -> Res<Args> {
    let mut a = Args {
        nodes: vec![1000, 10_000],
        interval: 10,
        window: 30,
        ramp: 1000,
        tasks: 2,
        peer_messages: 50_000,
        skiff: std::env::current_exe()?
            .parent()
            .ok_or("no directory of the executable")?
            .join("skiff"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => {
                a.nodes = value()?
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--interval" => a.interval = value()?.parse()?,
            "--window" => a.window = value()?.parse()?,
            "--ramp" => a.ramp = value()?.parse()?,
            "--tasks" => a.tasks = value()?.parse()?,
            "--peer-messages" => a.peer_messages = value()?.parse()?,
            "--skiff" => a.skiff = PathBuf::from(value()?),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(a)
}

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Open files this process (and the broker it starts) may have.
fn raise_file_limit(want: u64) -> Res<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want)).is_ok() {
        return Ok(want);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// mosquitto for a fleet: 20,000 connections, a deep queue per subscriber (a fleet-wide apply
/// or stop is a burst of ~15 messages per node; mosquitto drops QoS 1 messages for a subscriber
/// beyond `max_queued_messages`, 1000 by default, and consoles subscribe to every node's events
/// and status), no per-connection log lines.
fn start_broker(port: u16, dir: &Path) -> Res<Kill> {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nmax_connections 20000\nallow_anonymous true\n\
             persistence false\nmax_queued_messages 1000000\nconnection_messages false\n\
             log_dest stderr\nlog_type error\n"
        ),
    )?;
    let broker = Kill(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("mosquitto does not listen".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(broker)
}

/// What the counting subscriber saw.
#[derive(Default)]
struct Seen {
    total: u64,
    bytes: u64,
    status: u64,
    events: u64,
    metrics: u64,
    metrics_bytes: u64,
    other: u64,
    /// Node → (state, cluster version, when that version was first seen).
    nodes: HashMap<String, (NodeState, u64, Instant)>,
    /// When the cluster's desired state last arrived.
    desired_at: Option<Instant>,
}

impl Seen {
    fn online(&self) -> usize {
        self.nodes
            .values()
            .filter(|(s, _, _)| *s == NodeState::Online)
            .count()
    }

    fn offline(&self) -> usize {
        self.nodes
            .values()
            .filter(|(s, _, _)| *s == NodeState::Offline)
            .count()
    }
}

/// `mosquitto_sub -t 'skiff/v1/#'`, counting and decoding in a thread.
struct Counter {
    child: Kill,
    seen: Arc<Mutex<Seen>>,
}

impl Counter {
    /// A `mosquitto_sub` on these topic filters.
    fn start(port: u16, filters: &[&str]) -> Res<Counter> {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"]);
        for f in filters {
            cmd.args(["-t", f]);
        }
        let mut child = cmd.args(["-F", "%t %x"]).stdout(Stdio::piped()).spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let Some((topic, hex)) = line.split_once(' ') else {
                    continue;
                };
                let now = Instant::now();
                let bytes = hex::decode(hex.trim()).unwrap_or_default();
                let mut g = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                g.total += 1;
                g.bytes += bytes.len() as u64;
                if topic.ends_with("/status") {
                    g.status += 1;
                    if let Ok(Message::Status(st)) = decode(&bytes) {
                        let node = st.node.to_string();
                        let since = match g.nodes.get(&node) {
                            Some((_, v, at)) if *v == st.cluster_version => *at,
                            _ => now,
                        };
                        g.nodes.insert(node, (st.state, st.cluster_version, since));
                    }
                } else if topic.ends_with("/events") {
                    g.events += 1;
                } else if topic.ends_with("/metrics") {
                    g.metrics += 1;
                    g.metrics_bytes += bytes.len() as u64;
                } else if topic.ends_with("/desired") && !topic.contains("/nodes/") {
                    g.desired_at = Some(now);
                } else {
                    g.other += 1;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        Ok(Counter {
            child: Kill(child),
            seen,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn wait(&self, what: &str, limit: Duration, f: impl Fn(&Seen) -> bool) -> Res<Duration> {
        let t0 = Instant::now();
        while !self.with(&f) {
            if t0.elapsed() > limit {
                return Err(format!("timed out after {limit:?} waiting for {what}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(t0.elapsed())
    }
}

/// CPU % of one core used by `pid` between two readings `secs` apart.
fn cpu_pct(before: u64, after: u64, secs: f64) -> f64 {
    after.saturating_sub(before) as f64 / ticks_per_sec() / secs * 100.0
}

/// The peer: `publishers` × `mosquitto_pub -l` publishing `n` lines of `size` bytes in all at
/// (at most ~50,000 per publisher: beyond 65,535 queued messages mosquitto_pub's 16-bit message
/// ids wrap and it loses messages)
/// QoS 1 into a counting `mosquitto_sub`; returns the rate it received them at and the broker's
/// CPU % during the burst, or what went wrong (messages lost: none for 10 s).
fn peer_burst(port: u16, broker_pid: u32, n: u32, size: usize, publishers: u32) -> Peer {
    match try_peer_burst(port, broker_pid, n, size, publishers) {
        Ok((rate, cpu)) => Peer::Ok { rate, cpu },
        Err(e) => Peer::Failed(e.to_string()),
    }
}

enum Peer {
    Ok { rate: f64, cpu: f64 },
    Failed(String),
}

impl Peer {
    fn rate(&self) -> String {
        match self {
            Peer::Ok { rate, .. } => format!("{rate:.0} msg/s"),
            Peer::Failed(e) => e.clone(),
        }
    }

    fn cpu(&self) -> String {
        match self {
            Peer::Ok { cpu, .. } => format!("{cpu:.0}"),
            Peer::Failed(_) => "?".into(),
        }
    }
}

fn try_peer_burst(
    port: u16,
    broker_pid: u32,
    n: u32,
    size: usize,
    publishers: u32,
) -> Res<(f64, f64)> {
    let p = port.to_string();
    let publishers = publishers.max(1);
    let mut sub = Kill(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &p, "-q", "1", "-t", "peer/burst"])
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let out = sub.0.stdout.take().ok_or("no stdout")?;
    let got = Arc::new(Mutex::new((0u32, Instant::now())));
    let g = got.clone();
    std::thread::spawn(move || {
        for _ in BufReader::new(out).lines().map_while(Result::ok) {
            let mut c = g.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *c = (c.0 + 1, Instant::now());
        }
    });
    let mut pubs = Vec::new();
    let mut inputs = Vec::new();
    for _ in 0..publishers {
        let mut publisher = Kill(
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &p, "-q", "1"])
                .args(["-t", "peer/burst", "-l"])
                .stdin(Stdio::piped())
                .spawn()?,
        );
        inputs.push(publisher.0.stdin.take().ok_or("no stdin")?);
        pubs.push(publisher);
    }
    std::thread::sleep(Duration::from_millis(500));
    let line = format!("{}\n", "x".repeat(size.max(1)));
    let share = n / publishers;
    let cpu0 = cpu_ticks(broker_pid).0;
    let t0 = Instant::now();
    let mut writers = Vec::new();
    for (i, mut stdin) in inputs.into_iter().enumerate() {
        let line = line.clone();
        // The first one takes the remainder too.
        let count = if i == 0 {
            n - share * (publishers - 1)
        } else {
            share
        };
        writers.push(std::thread::spawn(move || {
            let mut buf = std::io::BufWriter::with_capacity(1 << 16, &mut stdin);
            for _ in 0..count {
                if buf.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
            let _ = buf.flush();
        }));
    }
    let (count, last) = loop {
        std::thread::sleep(Duration::from_millis(5));
        let (count, last) = *got
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if count >= n || last.elapsed() > Duration::from_secs(10) {
            break (count, last);
        }
    };
    let secs = last.saturating_duration_since(t0).as_secs_f64();
    let cpu = cpu_pct(cpu0, cpu_ticks(broker_pid).0, t0.elapsed().as_secs_f64());
    drop(pubs);
    for w in writers {
        let _ = w.join();
    }
    if count < n {
        return Err(format!("{} of {n} lost", n - count).into());
    }
    Ok((f64::from(n) / secs, cpu))
}

/// Runs `skiff ctl ... args`; returns (wall time, stdout lines).
fn ctl(a: &Args, port: u16, args: &[&str]) -> Res<(Duration, Vec<String>)> {
    let t0 = Instant::now();
    let out = Command::new(&a.skiff)
        .args(["ctl", "--broker", &format!("mqtt://127.0.0.1:{port}")])
        .args(["--cluster", CLUSTER, "--timeout", "300"])
        .args(args)
        .output()?;
    let took = t0.elapsed();
    if !out.status.success() {
        return Err(format!(
            "skiff ctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    Ok((took, lines))
}

/// `skiff sim`, with its log lines collected.
struct Sim {
    child: Kill,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sim {
    fn start(a: &Args, port: u16, nodes: u32) -> Res<Sim> {
        let mut child = Command::new(&a.skiff)
            .args(["sim", "--nodes", &nodes.to_string()])
            .args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
            .args(["--cluster", CLUSTER])
            .args(["--metrics-interval", &a.interval.to_string()])
            .args(["--ramp", &a.ramp.to_string()])
            .args(["--tasks-per-node", &a.tasks.to_string()])
            .args(["--sites", "10"])
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()?;
        let err = child.stderr.take().ok_or("no stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        Ok(Sim {
            child: Kill(child),
            lines,
        })
    }

    fn line(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn fleet(a: &Args, n: u32) -> Res<()> {
    let work = Work::new(&format!("skiff-fleet-bench-{n}"))?;
    let port = free_port()?;
    let broker = start_broker(port, work.path())?;
    let bpid = broker.0.id();
    let counter = Counter::start(port, &["skiff/v1/#"])?;
    // The apply's latencies from a subscriber that reads only the statuses and the document:
    // the counting one lags behind the burst of events an apply causes.
    let statuses = Counter::start(
        port,
        &[
            &format!("skiff/v1/{CLUSTER}/nodes/+/status"),
            &format!("skiff/v1/{CLUSTER}/desired"),
        ],
    )?;
    let cpid = counter.child.0.id();
    let limit = Duration::from_secs(120 + u64::from(n / a.ramp.max(1)) * 2);

    // Connect the fleet.
    eprintln!("{n} nodes: connecting");
    let sim = Sim::start(a, port, n)?;
    let spid = sim.child.0.id();
    let n_us = usize::try_from(n)?;
    let connect = counter.wait("every node online", limit, |s| s.online() >= n_us)?;
    // The sim says so at its next progress line (every second).
    let t = Instant::now();
    while sim.line("sim: all nodes online").is_none() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let sim_secs = sim
        .line("sim: all nodes online")
        .and_then(|l| l.split("secs=\"").nth(1)?.split('"').next()?.parse().ok())
        .unwrap_or(f64::NAN);

    // Steady state: one interval to settle (the first metrics of the last nodes), then the
    // window.
    eprintln!("{n} nodes: online; steady window");
    std::thread::sleep(Duration::from_secs(a.interval));
    let (b0, s0, c0) = (cpu_ticks(bpid).0, cpu_ticks(spid).0, cpu_ticks(cpid).0);
    let seen0 = counter.with(|s| (s.total, s.status, s.events, s.metrics, s.bytes));
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(a.window));
    let secs = t0.elapsed().as_secs_f64();
    let (b1, s1, c1) = (cpu_ticks(bpid).0, cpu_ticks(spid).0, cpu_ticks(cpid).0);
    let seen1 = counter.with(|s| (s.total, s.status, s.events, s.metrics, s.bytes));
    let (broker_cpu, sim_cpu, sub_cpu) = (
        cpu_pct(b0, b1, secs),
        cpu_pct(s0, s1, secs),
        cpu_pct(c0, c1, secs),
    );
    let (broker_rss, sim_rss) = (rss_kib(bpid), rss_kib(spid));
    let rate = |i: usize| {
        let (a0, a1) = match i {
            0 => (seen0.0, seen1.0),
            1 => (seen0.1, seen1.1),
            2 => (seen0.2, seen1.2),
            _ => (seen0.3, seen1.3),
        };
        (a1 - a0) as f64 / secs
    };
    let avg_size = counter.with(|s| {
        s.metrics_bytes
            .checked_div(s.metrics)
            .and_then(|b| usize::try_from(b).ok())
            .unwrap_or(160)
    });
    let bytes_rate = (seen1.4 - seen0.4) as f64 / secs;

    // The peer while the fleet is connected.
    eprintln!("{n} nodes: peer bursts with the fleet connected");
    let busy = peer_burst(port, bpid, a.peer_messages, avg_size, 1);
    let busy4 = peer_burst(port, bpid, a.peer_messages * 4, avg_size, 4);

    // The console: the whole fleet listed.
    eprintln!("{n} nodes: skiff ctl nodes");
    let (nodes_took, nodes_lines) = ctl(a, port, &["nodes"])?;
    let (json_took, json_lines) = ctl(a, port, &["nodes", "--json"])?;

    // A cluster-wide apply.
    eprintln!("{n} nodes: skiff ctl apply");
    let file = work.path().join("web.json");
    std::fs::write(
        &file,
        r#"{"family": "web", "memory": "32", "containerDefinitions": [
            {"name": "app", "image": "busybox:latest", "command": ["httpd", "-f"]}]}"#,
    )?;
    let apply_start = Instant::now();
    let mut apply = Command::new(&a.skiff)
        .args(["ctl", "--broker", &format!("mqtt://127.0.0.1:{port}")])
        .args(["--cluster", CLUSTER, "--timeout", "300", "apply"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = apply.stdout.take().ok_or("no stdout")?;
    let mut published: Option<(u64, Instant)> = None;
    let mut applied_lines = 0usize;
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("published desired state version ") {
            let v = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or("no version in ctl's output")?;
            published = Some((v, Instant::now()));
        } else if line.contains(": applied version") {
            applied_lines += 1;
        }
    }
    let status = apply.wait()?;
    let apply_took = apply_start.elapsed();
    let (version, printed_at) = published.ok_or("ctl apply published nothing")?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = apply.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        eprintln!("skiff ctl apply exited with {status}: {err}");
    }
    statuses.wait("every node's status with the new version", limit, |s| {
        s.nodes.values().filter(|(_, v, _)| *v == version).count() >= n_us
    })?;
    // From the publish: the earlier of ctl's "published" line and the document's arrival at
    // the independent subscriber.
    let publish_at = statuses
        .with(|s| s.desired_at)
        .map_or(printed_at, |d| d.min(printed_at));
    let lat: Vec<f64> = statuses.with(|s| {
        s.nodes
            .values()
            .filter(|(_, v, _)| *v == version)
            .map(|(_, _, at)| at.saturating_duration_since(publish_at).as_secs_f64())
            .collect()
    });
    let (p50, p99, max) = (
        percentile(lat.clone(), 50.0),
        percentile(lat.clone(), 99.0),
        percentile(lat, 100.0),
    );

    // Ctrl-C: every node offline.
    eprintln!("{n} nodes: Ctrl-C");
    let stop = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(spid)?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let offline = match counter.wait("every node offline", Duration::from_secs(60), |s| {
        s.offline() >= n_us
    }) {
        Ok(t) => format!("{:.2} s", t.as_secs_f64()),
        Err(e) => format!("{e} (subscriber saw {})", counter.with(Seen::offline)),
    };
    let mut sim = sim;
    let deadline = Instant::now() + limit;
    while sim.child.0.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let sim_exit = stop.elapsed();
    let clean = sim
        .line("sim: stopped")
        .and_then(|l| {
            l.split("disconnected_cleanly=")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(String::from)
        })
        .unwrap_or_else(|| "?".into());

    let retained_offline = ctl(a, port, &["nodes", "--json"])
        .map(|(_, lines)| {
            lines
                .iter()
                .filter(|l| l.contains("\"state\":\"Offline\""))
                .count()
                .to_string()
        })
        .unwrap_or_else(|e| e.to_string());
    // The peer on the same broker after the fleet left.
    std::thread::sleep(Duration::from_secs(2));
    eprintln!("{n} nodes: peer bursts after the fleet left");
    let idle = peer_burst(port, bpid, a.peer_messages, avg_size, 1);
    let idle4 = peer_burst(port, bpid, a.peer_messages * 4, avg_size, 4);
    let broker_rss_after = rss_kib(bpid);

    let expected = f64::from(n) / a.interval as f64;
    println!(
        "\n== {n} nodes, metrics every {} s, {} tasks per node, ramp {}/s ==",
        a.interval, a.tasks, a.ramp
    );
    println!(
        "{:<58} {:>18} {:>30}",
        "", "skiff (sim fleet)", "peer (mosquitto_pub/sub)"
    );
    println!(
        "{:<58} {:>18}",
        "all nodes online (subscriber / sim's own count)",
        format!("{:.1} s / {:.1} s", connect.as_secs_f64(), sim_secs)
    );
    println!(
        "{:<58} {:>18} {:>30}",
        format!("message rate at mosquitto_sub 'skiff/v1/#' ({secs:.0} s)"),
        format!("{:.0} msg/s", rate(0)),
        format!("1 pub: {}, fleet on", busy.rate()),
    );
    for peer in [
        format!("4 pubs: {}, fleet on", busy4.rate()),
        format!("1 pub: {}, fleet gone", idle.rate()),
        format!("4 pubs: {}, fleet gone", idle4.rate()),
    ] {
        println!("{:<58} {:>18} {peer:>30}", "", "");
    }
    println!(
        "{:<58} {:>18}",
        format!("  metrics / status / events (expected metrics {expected:.0}/s)"),
        format!("{:.0} / {:.1} / {:.1}", rate(3), rate(1), rate(2))
    );
    println!(
        "{:<58} {:>18} {:>30}",
        "  bytes/s, average metrics message",
        format!("{:.0} KiB/s, {avg_size} B", bytes_rate / 1024.0),
        format!("{avg_size} B lines, QoS 1"),
    );
    println!(
        "{:<58} {:>18} {:>30}",
        "broker CPU (% of one core)",
        format!("{broker_cpu:.1} %"),
        format!(
            "bursts {}/{} % on, {}/{} % gone",
            busy.cpu(),
            busy4.cpu(),
            idle.cpu(),
            idle4.cpu()
        ),
    );
    println!(
        "{:<58} {:>18} {:>30}",
        "broker RSS",
        mib(broker_rss),
        format!("{} after the fleet left", mib(broker_rss_after))
    );
    println!(
        "{:<58} {:>18}",
        "skiff sim CPU (% of one core) / RSS / per node",
        format!(
            "{sim_cpu:.1} % / {} / {:.1} KiB",
            mib(sim_rss),
            sim_rss as f64 / f64::from(n)
        )
    );
    println!(
        "{:<58} {:>18}",
        "counting mosquitto_sub CPU",
        format!("{sub_cpu:.1} %")
    );
    println!(
        "{:<58} {:>18}",
        format!("skiff ctl nodes ({} lines)", nodes_lines.len()),
        format!("{:.2} s", nodes_took.as_secs_f64())
    );
    println!(
        "{:<58} {:>18}",
        format!("skiff ctl nodes --json ({} lines)", json_lines.len()),
        format!("{:.2} s", json_took.as_secs_f64())
    );
    println!(
        "{:<58} {:>18}",
        format!("skiff ctl apply (cluster): wall time, {applied_lines} applied"),
        format!("{:.2} s", apply_took.as_secs_f64())
    );
    println!(
        "{:<58} {:>18}",
        "  publish → status shows the version: p50 / p99 / max",
        format!("{p50:.2} / {p99:.2} / {max:.2} s")
    );
    println!(
        "{:<58} {:>18}",
        "Ctrl-C → every node offline / sim exited, clean",
        format!("{offline} / {:.2} s, {clean}/{n}", sim_exit.as_secs_f64())
    );
    println!(
        "{:<58} {:>18}",
        "retained status offline after (skiff ctl nodes --json)",
        format!("{retained_offline}/{n}")
    );
    drop(broker);
    Ok(())
}

fn main() -> Res<()> {
    let a = args()?;
    for tool in ["mosquitto", "mosquitto_sub", "mosquitto_pub"] {
        if common::which(tool).is_none() {
            return Err(format!(
                "{tool} is not installed (apt-get install mosquitto mosquitto-clients)"
            )
            .into());
        }
    }
    let most = a.nodes.iter().copied().max().unwrap_or(0);
    let files = raise_file_limit(u64::from(most) * 2 + 1024)?;
    println!(
        "skiff-fleet-bench: {} CPUs, {} MiB RAM, open files {files}, {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
        mem_total_mib(),
        mosquitto_version()
    );
    for n in &a.nodes {
        if let Err(e) = fleet(&a, *n) {
            println!("\n== {n} nodes: FAILED: {e}");
        }
    }
    Ok(())
}

fn mem_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn mosquitto_version() -> String {
    Command::new("mosquitto")
        .arg("-h")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}
