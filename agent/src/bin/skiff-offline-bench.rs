//! `skiff-offline-bench`: the offline-autonomy figures (issue 4), each with the command that
//! produced it in `docs/benchmarks.md`.
//!
//! ```text
//! cargo build --release && sudo target/release/skiff-offline-bench [--seconds 120]
//! ```
//!
//! With 10 running services and metrics every 10 s: bytes the agent (and its launcher) write to
//! storage per hour connected and per hour with the broker gone (from `/proc/<pid>/io`
//! `write_bytes`, extrapolated from a window; the run dir is a tmpfs, as on a device, so only the
//! data dir counts), and the time from a `kill -9`ed agent's restart to all 10 services running
//! again: adopted from the launcher that outlived it, and, with the launcher killed too,
//! cleaned up and started again. Peer: mosquitto's own writes in the same window (persistence
//! off: ~0).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_agent::config::BrokerUrl;
use skiff_agent::mqtt::{self, Inbound};
use skiff_proto::codec::{decode, encode, Message};
use skiff_proto::{DesiredState, Name, NodeState, RestartPolicy, TaskDefinition, TaskState};

#[path = "common/mod.rs"]
mod common;

use common::{launcher_in, launcher_of, start_broker, write_bytes, Kill as Proc, Res};

fn agent_writes(agent: u32) -> u64 {
    write_bytes(agent) + launcher_of(agent).map_or(0, write_bytes)
}

fn service(i: usize) -> Res<TaskDefinition> {
    common::task(
        &format!("svc{i}"),
        &["sleep", "100000"],
        RestartPolicy::Always,
    )
}

/// Waits until the node's status, reported at or after wall time `since_ms`, shows `n` running
/// tasks; returns when it did.
async fn until_running(
    conn: &mut mqtt::Connection,
    status: &str,
    n: usize,
    since_ms: u64,
    limit: Duration,
) -> Res<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.inbound.recv()).await? {
            Some(Inbound::Publish { topic, payload, .. }) if topic == status => {
                if let Ok(Message::Status(s)) = decode(&payload) {
                    let running = s
                        .tasks
                        .iter()
                        .filter(|t| t.state == TaskState::Running)
                        .count();
                    if s.state == NodeState::Online && running == n && s.at_ms >= since_ms {
                        return Ok(Instant::now());
                    }
                }
            }
            Some(_) => {}
            None => return Err("broker connection gone".into()),
        }
    }
}

fn main() -> Res<()> {
    let secs: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map_or(Ok(120), |s| s.parse())?;
    let exe = std::env::current_exe()?;
    let skiff = exe.parent().ok_or("no exe dir")?.join("skiff");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = PathBuf::from(format!("/tmp/skiff-offline-bench-{}", std::process::id()));
    let run = work.join("run");
    std::fs::create_dir_all(&run)?;
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "skiff-bench", run.to_str().ok_or("path")?])
        .status()?;
    if !st.success() {
        return Err("cannot mount a tmpfs for the run dir".into());
    }
    let result = measure(&skiff, &repo, &work, &run, secs);
    let _ = Command::new("umount")
        .args(["-l", run.to_str().unwrap_or("")])
        .status();
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn measure(skiff: &Path, repo: &Path, work: &Path, run: &Path, secs: u64) -> Res<()> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut broker = Some(start_broker(port, work)?);
    let layout = work.join("busybox-oci");
    Command::new("sh")
        .arg(repo.join("tests/fixtures/make-busybox-oci.sh"))
        .arg(&layout)
        .stdout(Stdio::null())
        .status()?;
    let data = work.join("data");
    let cfg = work.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_id = \"bench\"\ncluster = \"bench\"\nbroker = \"mqtt://127.0.0.1:{port}\"\ndata_dir = \"{}\"\nrun_dir = \"{}\"\n\
             cgroup_parent = \"skiff-offline-bench\"\nlog = \"warn\"\nmetrics_interval_secs = 10\nkeepalive_secs = 5\n",
            data.display(),
            run.display()
        ),
    )?;
    Command::new(skiff)
        .args(["image", "--config"])
        .arg(&cfg)
        .arg("import")
        .arg(&layout)
        .args(["--tag", "busybox"])
        .stdout(Stdio::null())
        .status()?;
    let spawn = || {
        Command::new(skiff)
            .args(["agent", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .spawn()
    };
    let mut agent = Proc(spawn()?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cluster, node): (Name, Name) = ("bench".parse()?, "bench".parse()?);
    let desired = skiff_proto::topic::Topic::NodeDesired {
        cluster: cluster.clone(),
        node: node.clone(),
    }
    .to_topic();
    let status = skiff_proto::topic::Topic::Status {
        cluster: cluster.clone(),
        node: node.clone(),
    }
    .to_topic();
    let connect = || {
        mqtt::connect(mqtt::ConnectOptions {
            client_id: format!(
                "skiff-offline-bench-{}",
                Instant::now().elapsed().as_nanos()
            ),
            broker: BrokerUrl {
                host: "127.0.0.1".into(),
                port,
            },
            keepalive: Duration::from_secs(30),
            last_will: None,
            subscriptions: vec![status.clone()],
        })
    };
    rt.block_on(async {
        let mut conn = connect();
        let tasks = (0..10).map(service).collect::<Res<Vec<_>>>()?;
        let doc = DesiredState {
            version: 1,
            cluster: cluster.clone(),
            node: Some(node.clone()),
            tasks,
            signature: None,
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        conn.client
            .publish(
                desired.clone(),
                rumqttc::QoS::AtLeastOnce,
                true,
                encode(&Message::DesiredState(doc))?,
            )
            .await?;
        until_running(&mut conn, &status, 10, 0, Duration::from_secs(60)).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    std::thread::sleep(Duration::from_secs(5));

    let window = Duration::from_secs(secs);
    let per_hour = |bytes: u64| bytes as f64 * 3600.0 / secs as f64;
    let broker_pid = broker.as_ref().map_or(0, |b| b.0.id());
    let (a0, b0) = (agent_writes(agent.0.id()), write_bytes(broker_pid));
    std::thread::sleep(window);
    let (connected, broker_writes) = (
        agent_writes(agent.0.id()) - a0,
        write_bytes(broker_pid) - b0,
    );

    drop(broker.take()); // the network is gone
    std::thread::sleep(Duration::from_secs(3));
    let a1 = agent_writes(agent.0.id());
    std::thread::sleep(window);
    let offline = agent_writes(agent.0.id()) - a1;
    // The outbox is appended every 30 s: its size after the window, extrapolated to a day.
    let outbox = std::fs::metadata(data.join("outbox/queue")).map_or(0, |m| m.len());

    // The agent dies with the broker back: time from the restart to a status of the new agent
    // showing all services running. First with its launcher alive (the services are adopted),
    // then with the launcher killed too (they are cleaned up and started again).
    broker = Some(start_broker(port, work)?);
    let mut restart = |kill_launcher: bool| -> Res<Duration> {
        // Not necessarily the agent's child any more (adopted by the previous restart).
        let launcher = launcher_in(run);
        let _ = agent.0.kill();
        let _ = agent.0.wait();
        if let (true, Some(pid)) = (kill_launcher, launcher) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        rt.block_on(async {
            let mut conn = connect();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let since = u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis(),
            )?;
            let t0 = Instant::now();
            agent = Proc(spawn()?);
            let done =
                until_running(&mut conn, &status, 10, since, Duration::from_secs(60)).await?;
            Ok(done - t0)
        })
    };
    let adopted = restart(false)?;
    std::thread::sleep(Duration::from_secs(3));
    let restarted = restart(true)?;
    agent.terminate();
    drop(broker);
    println!("| figure (10 services, metrics every 10 s, {secs} s windows) | value |\n|---|---|");
    println!(
        "| agent + launcher writes, connected | {connected} B in {secs} s = {:.0} B/h |",
        per_hour(connected)
    );
    println!(
        "| agent + launcher writes, broker gone | {offline} B in {secs} s = {:.0} B/h |",
        per_hour(offline)
    );
    println!(
        "| outbox on disk after {} s offline (metrics every 10 s, 10 tasks) | {outbox} B = {:.0} KiB/day |",
        secs + 3,
        outbox as f64 * 86_400.0 / (secs + 3) as f64 / 1024.0
    );
    println!(
        "| mosquitto (peer) writes, same connected window | {broker_writes} B = {:.0} B/h |",
        per_hour(broker_writes)
    );
    println!(
        "| `kill -9` of the agent, restart → all 10 services running (adopted) | {:.0} ms |",
        adopted.as_secs_f64() * 1000.0
    );
    println!(
        "| `kill -9` of agent and launcher, restart → all 10 running (cleaned, started again) | {:.0} ms |",
        restarted.as_secs_f64() * 1000.0
    );
    Ok(())
}
