//! `skiff-bench`: the walking skeleton's figures, each beside a peer measured in the same run.
//!
//! ```text
//! cargo build --release && sudo target/release/skiff-bench [--runs 20]
//! ```
//!
//! - apply → first output line and apply → `exited` event for a trivial task (median of N), beside
//!   `runc run` and `crun run` of the same rootfs (create + start + wait + delete);
//! - agent RSS idle and with 10 running tasks, beside the broker's (mosquitto) RSS;
//! - release binary size, beside runc, crun and mosquitto.
//!
//! Needs root, mosquitto, busybox-static; runc and crun are measured when installed.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_agent::config::BrokerUrl;
use skiff_agent::mqtt::{self, Inbound};
use skiff_proto::codec::{decode, encode, Message};
use skiff_proto::{DesiredState, EventBody, RestartPolicy, TaskDefinition};

#[path = "common/mod.rs"]
mod common;

use common::{
    launcher_of, median, name, rss_kib, size_mib, start_broker, task, until_n_running, which, Kill,
    Res, Work,
};

/// `RUNTIME run` of `true` on a bundle over `rootfs`: create + start + wait + delete, median ms.
fn peer_run(tool: &Path, rootfs: &Path, runs: usize, work: &Path) -> Res<f64> {
    let bundle = work.join(format!(
        "bundle-{}",
        tool.file_name().and_then(|s| s.to_str()).unwrap_or("rt")
    ));
    std::fs::create_dir_all(&bundle)?;
    let st = Command::new(tool)
        .arg("spec")
        .current_dir(&bundle)
        .status()?;
    if !st.success() {
        return Err("spec failed".into());
    }
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec_path)?)?;
    spec["root"]["path"] = serde_json::json!(rootfs);
    spec["root"]["readonly"] = serde_json::json!(true);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(["true"]);
    spec["linux"]["cgroupsPath"] = serde_json::json!("/skiff-bench-peer");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let mut times = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        let out = Command::new(tool)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("bench-{i}"))
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(times))
}

/// `skiff-bench --peer TOOL ROOTFS RUNS WORK`: measures a peer from inside a private mount
/// namespace without the hybrid layout's empty cgroup2 mount (crun refuses hybrid layouts; this
/// is how DESIGN.md measured it), printing the median in ms.
fn peer_in_private_mounts(args: &[String]) -> Res<()> {
    let [tool, rootfs, runs, work] = args else {
        return Err("usage: --peer TOOL ROOTFS RUNS WORK".into());
    };
    let _ = nix::mount::umount2("/sys/fs/cgroup/unified", nix::mount::MntFlags::MNT_DETACH);
    let ms = peer_run(
        Path::new(tool),
        Path::new(rootfs),
        runs.parse()?,
        Path::new(work),
    )?;
    println!("{ms}");
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--peer") {
        return peer_in_private_mounts(&args[2..]);
    }
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map_or(Ok(20), |s| s.parse())?;
    let exe = std::env::current_exe()?;
    let skiff = exe.parent().ok_or("no exe dir")?.join("skiff");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = Work::new("skiff-bench")?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let broker = start_broker(port, work.path())?;
    let layout = work.path().join("busybox-oci");
    let st = Command::new("sh")
        .arg(repo.join("tests/fixtures/make-busybox-oci.sh"))
        .arg(&layout)
        .status()?;
    if !st.success() {
        return Err("building the busybox image failed".into());
    }
    let data = work.path().join("data");
    let run = work.path().join("run");
    let cfg = work.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_id = \"bench\"\ncluster = \"bench\"\nbroker = \"mqtt://127.0.0.1:{port}\"\ndata_dir = \"{}\"\nrun_dir = \"{}\"\ncgroup_parent = \"skiff-bench\"\nlog = \"warn\"\nstop_grace_secs = 1\n",
            data.display(),
            run.display()
        ),
    )?;
    let st = Command::new(&skiff)
        .args(["image", "--config"])
        .arg(&cfg)
        .arg("import")
        .arg(&layout)
        .args(["--tag", "busybox"])
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        return Err("import failed".into());
    }
    std::thread::sleep(Duration::from_millis(200));
    let agent = Kill(
        Command::new(&skiff)
            .args(["agent", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .spawn()?,
    );
    let agent_pid = agent.0.id();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (apply_first, apply_exit, idle_rss, idle_launcher, busy_rss, busy_launcher) = rt.block_on(async {
        let cluster = name("bench")?;
        let node = name("bench")?;
        let desired = skiff_proto::topic::Topic::NodeDesired { cluster: cluster.clone(), node: node.clone() }.to_topic();
        let events = skiff_proto::topic::Topic::Events { cluster: cluster.clone(), node: node.clone() }.to_topic();
        let status = skiff_proto::topic::Topic::Status { cluster: cluster.clone(), node: node.clone() }.to_topic();
        let mut conn = mqtt::connect(mqtt::ConnectOptions {
            client_id: "skiff-bench".into(),
            broker: BrokerUrl { host: "127.0.0.1".into(), port },
            keepalive: Duration::from_secs(30),
            last_will: None,
            subscriptions: vec![events.clone(), status.clone()],
        });
        // Wait for the agent to be online.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, conn.inbound.recv()).await? {
                Some(Inbound::Publish { topic, payload, .. }) if topic == status => {
                    if let Ok(Message::Status(s)) = decode(&payload) {
                        if s.state == skiff_proto::NodeState::Online {
                            break;
                        }
                    }
                }
                Some(_) => {}
                None => return Err::<_, Box<dyn std::error::Error>>("broker gone".into()),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_rss = rss_kib(agent_pid);
        let idle_launcher = launcher_of(agent_pid).map_or(0, rss_kib);
        let mut version = 0u64;
        let mut publish = |tasks: Vec<TaskDefinition>| -> Res<Vec<u8>> {
            version += 1;
            Ok(encode(&Message::DesiredState(DesiredState { version, cluster: cluster.clone(), node: Some(node.clone()), tasks, signature: None }))?)
        };
        let mut first = Vec::new();
        let mut exited = Vec::new();
        for i in 0..runs {
            let family = format!("t{i}");
            let doc = publish(vec![task(&family, &["echo", "hi"], RestartPolicy::Never)?])?;
            let log = run.join("logs").join(format!("{family}.log"));
            let t0 = Instant::now();
            if std::env::var_os("SKIFF_BENCH_TRACE").is_some() {
                eprintln!("bench: publish {family} at {:?}", std::time::SystemTime::now());
            }
            conn.client.publish(desired.clone(), rumqttc::QoS::AtLeastOnce, true, doc).await?;
            let mut first_ms = None;
            let exit_ms = loop {
                if first_ms.is_none() && std::fs::metadata(&log).map(|m| m.len() > 0).unwrap_or(false) {
                    first_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                }
                match tokio::time::timeout(Duration::from_millis(1), conn.inbound.recv()).await {
                    Ok(Some(Inbound::Publish { topic, payload, .. })) if topic == events => {
                        if let Ok(Message::Event(e)) = decode(&payload) {
                            if matches!(&e.body, EventBody::ContainerExited { task, .. } if task.as_str() == family) {
                                if std::env::var_os("SKIFF_BENCH_TRACE").is_some() {
                                    eprintln!("bench: exited {family} at {:?}", std::time::SystemTime::now());
                                }
                                break t0.elapsed().as_secs_f64() * 1000.0;
                            }
                        }
                    }
                    Ok(None) => return Err("broker gone".into()),
                    _ => {}
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    return Err(format!("task {family} did not exit").into());
                }
            };
            while first_ms.is_none() && t0.elapsed() < Duration::from_secs(5) {
                if std::fs::metadata(&log).map(|m| m.len() > 0).unwrap_or(false) {
                    first_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            first.push(first_ms.ok_or("no output line")?);
            exited.push(exit_ms);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Ten long-running tasks.
        let tasks = (0..10).map(|i| task(&format!("s{i}"), &["sleep", "1000"], RestartPolicy::Always)).collect::<Res<Vec<_>>>()?;
        let doc = publish(tasks)?;
        conn.client.publish(desired.clone(), rumqttc::QoS::AtLeastOnce, true, doc).await?;
        until_n_running(&mut conn, &events, 10, Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let busy_rss = rss_kib(agent_pid);
        let busy_launcher = launcher_of(agent_pid).map_or(0, rss_kib);
        let doc = publish(vec![])?;
        conn.client.publish(desired.clone(), rumqttc::QoS::AtLeastOnce, true, doc).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok((median(first), median(exited), idle_rss, idle_launcher, busy_rss, busy_launcher))
    })?;
    let broker_rss = rss_kib(broker.0.id());
    // Peers on the same rootfs.
    let rootfs = std::fs::read_dir(data.join("images/rootfs"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .ok_or("no rootfs")?;
    let mut peers = Vec::new();
    for tool in ["runc", "crun"] {
        if let Some(p) = which(tool) {
            let measured = if tool == "crun" && Path::new("/sys/fs/cgroup/unified").exists() {
                let out = Command::new("unshare")
                    .args(["-m", "--propagation", "private"])
                    .arg(&exe)
                    .arg("--peer")
                    .arg(&p)
                    .arg(&rootfs)
                    .arg(runs.to_string())
                    .arg(work.path())
                    .output()?;
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| String::from_utf8_lossy(&out.stderr).into_owned().into())
            } else {
                peer_run(&p, &rootfs, runs, work.path())
            };
            match measured {
                Ok(ms) => peers.push(format!("| `{tool} run` of `true` (create+start+wait+delete), median of {runs} | {ms:.1} ms |")),
                Err(e) => peers.push(format!("| `{tool} run` of `true` | failed: {} |", e.to_string().lines().next().unwrap_or(""))),
            }
        }
    }
    agent.terminate();
    println!("| figure | value |\n|---|---|");
    println!("| skiff: apply → first output line (echo), median of {runs} | {apply_first:.1} ms |");
    println!("| skiff: apply → `exited` event (echo), median of {runs} | {apply_exit:.1} ms |");
    for p in peers {
        println!("{p}");
    }
    println!("| skiff agent RSS idle (agent + launcher) | {idle_rss} KiB + {idle_launcher} KiB |");
    println!("| skiff agent RSS with 10 running tasks (agent + launcher) | {busy_rss} KiB + {busy_launcher} KiB |");
    println!("| mosquitto (broker) RSS at the end of the run | {broker_rss} KiB |");
    println!(
        "| skiff release binary ({}) | {} |",
        std::env::consts::ARCH,
        size_mib(&skiff)
    );
    for tool in ["runc", "crun", "mosquitto"] {
        if let Some(p) = which(tool) {
            println!("| {tool} binary ({}) | {} |", p.display(), size_mib(&p));
        }
    }
    Ok(())
}
