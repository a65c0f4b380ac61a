//! Running under systemd, without systemd: the agent is started the way a `Type=notify` unit
//! with `WatchdogSec=` starts it (`$NOTIFY_SOCKET`, `$WATCHDOG_USEC`, `$JOURNAL_STREAM`), and
//! the test plays systemd's side: it reads the notifications from its own socket and checks
//! stderr is in the form journald parses.

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{busybox_layout, task_file, SKIFF};
use crate::require_env;

/// Notifications received until `until` matches one, or the deadline.
fn recv_until(sock: &UnixDatagram, timeout: Duration, until: &str) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == until);
            got.push(msg);
            if done {
                break;
            }
        }
    }
    got
}

#[test]
fn under_systemd_the_agent_notifies_ready_pings_the_watchdog_and_logs_priorities() {
    require_env!();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"ship\"\ndata_dir = \"{}\"\nrun_dir = \"{}\"\nstop_grace_secs = 1\n\
             cgroup_parent = \"skiff-e2e-ship-{}\"\nlog = \"info\"\n",
            dir.path().join("data").display(),
            dir.path().join("run").display(),
            std::process::id()
        ),
    )
    .expect("write agent.toml");
    let import = Command::new(SKIFF)
        .args(["image", "--config"])
        .arg(&config)
        .arg("import")
        .arg(busybox_layout())
        .args(["--tag", "busybox"])
        .output()
        .expect("run skiff image import");
    assert!(import.status.success(), "{import:?}");
    let tasks = dir.path().join("tasks");
    std::fs::create_dir_all(&tasks).expect("tasks dir");
    task_file(
        &tasks,
        "sleeper",
        r#"{"family": "sleeper", "restartPolicy": "always",
            "containerDefinitions": [{"name": "main", "image": "busybox", "command": ["sleep", "1000"]}]}"#,
    );

    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut agent = Command::new(SKIFF)
        .args(["agent", "--config"])
        .arg(&config)
        .arg("--local")
        .arg(&tasks)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env("JOURNAL_STREAM", "8:123456")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.id()).expect("pid"));

    let start = recv_until(&sock, Duration::from_secs(30), "READY=1");
    let ready = start.last().cloned().unwrap_or_default();
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "no READY=1 within 30 s: {start:?}"
    );
    assert!(
        ready.contains("STATUS=running: node ship"),
        "READY=1 without a status line: {ready:?}"
    );

    // WatchdogSec=0.4 s: the agent pings every 0.2 s from its loop.
    let t = Instant::now();
    let mut pings = 0;
    while t.elapsed() < Duration::from_secs(2) {
        pings += recv_until(&sock, Duration::from_millis(300), "WATCHDOG=1")
            .iter()
            .filter(|m| m.as_str() == "WATCHDOG=1")
            .count();
    }
    assert!(pings >= 4, "only {pings} watchdog pings in 2 s");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let stop = recv_until(&sock, Duration::from_secs(10), "STOPPING=1");
    assert!(
        stop.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1 after SIGTERM: {stop:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = agent.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "agent exit: {status:?}");

    let mut stderr = String::new();
    agent
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("<6>")),
        "no info line: {stderr}"
    );
    for l in &lines {
        let prio = l.strip_prefix('<').and_then(|r| r.get(..2));
        assert!(
            matches!(prio, Some(p) if p.len() == 2 && p.as_bytes()[0].is_ascii_digit() && p.as_bytes()[1] == b'>' && p.as_bytes()[0] <= b'7'),
            "line without a syslog priority: {l:?}"
        );
        assert!(!l.contains('\x1b'), "ANSI colour under journald: {l:?}");
    }
}
