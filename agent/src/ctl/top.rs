//! `skiff ctl top`: the cluster refreshing in the terminal. One subscription to the nodes'
//! status (retained: the whole fleet at once) and metrics (each node's load as it samples);
//! every `--interval` a frame: a totals line, then one row per node. On a terminal each frame
//! replaces the last (ANSI clear + home, no TUI library) and `q` quits; otherwise frames are
//! printed one after the other without escape codes. Ctrl-C or `--count` frames end it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use skiff_proto::codec::{decode, Message};
use skiff_proto::topic::{all_nodes, Topic};
use skiff_proto::{Name, NodeState, Status};
use tokio::time::Instant;

use super::fleet::{self, NodeFilter, SortKey};
use super::{CtlError, Session, Target};
use crate::display;

/// What `skiff ctl top` shows, and for how long.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// Between frames.
    pub interval: Duration,
    /// Stop after this many frames.
    pub count: Option<u64>,
    pub filter: NodeFilter,
    pub sort: SortKey,
    pub reverse: bool,
    /// Rows shown (the first of that order); the totals count every node.
    pub limit: Option<usize>,
}

/// The cluster as `top` knows it: each node's last status, and its load from the newest of
/// its status and metrics.
#[derive(Debug, Default)]
struct View {
    nodes: BTreeMap<Name, Status>,
    /// When each node was last heard from (its report's time, or when a live message came).
    seen: BTreeMap<Name, u64>,
    /// The node's time of its last metrics sample.
    sampled: BTreeMap<Name, u64>,
}

impl View {
    fn observe(&mut self, topic: &str, msg: Message, retained: bool, now_ms: u64) {
        match (Topic::parse(topic), msg) {
            (Some(Topic::Status { node, .. }), Message::Status(st)) if st.node == node => {
                let seen = if retained { st.at_ms } else { now_ms };
                let seen = seen.max(self.seen.get(&node).copied().unwrap_or(0));
                let mut st = st;
                // A metrics sample newer than this report keeps its figures.
                let newer = self.sampled.get(&node).is_some_and(|s| *s > st.at_ms);
                if let (true, Some(old)) = (newer, self.nodes.get(&node)) {
                    st.resources.cpu_pct = old.resources.cpu_pct;
                    st.resources.mem_used_bytes = old.resources.mem_used_bytes;
                }
                self.seen.insert(node.clone(), seen);
                self.nodes.insert(node, st);
            }
            (Some(Topic::Metrics { node, .. }), Message::Metrics(m)) if m.node == node => {
                let (Some(st), Some(sample)) = (self.nodes.get_mut(&node), m.samples.last()) else {
                    return;
                };
                st.resources.cpu_pct = sample.cpu_pct;
                st.resources.mem_used_bytes = sample.mem_used_bytes;
                if sample.mem_total_bytes > 0 {
                    st.resources.mem_total_bytes = sample.mem_total_bytes;
                }
                self.sampled.insert(node.clone(), sample.at_ms);
                self.seen.insert(node, now_ms.max(sample.at_ms));
            }
            _ => {}
        }
    }

    /// The nodes shown, with `at_ms` as last heard from, filtered and sorted.
    fn rows(&self, opts: &TopOptions) -> Vec<Status> {
        let mut rows: Vec<Status> = self
            .nodes
            .values()
            .filter(|st| opts.filter.keep(st))
            .map(|st| {
                let mut st = st.clone();
                st.at_ms = self.seen.get(&st.node).copied().unwrap_or(st.at_ms);
                st
            })
            .collect();
        fleet::sort_nodes(&mut rows, opts.sort, opts.reverse);
        rows
    }
}

/// One frame: title, totals, a row per node.
fn frame(view: &View, opts: &TopOptions, cluster: &Name, now_ms: u64) -> String {
    let rows = view.rows(opts);
    let count = |s: NodeState| rows.iter().filter(|st| st.state == s).count();
    let up: Vec<&Status> = rows
        .iter()
        .filter(|st| st.state != NodeState::Offline)
        .collect();
    let cpus: u64 = up.iter().map(|st| u64::from(st.resources.cpus)).sum();
    let busy: f64 = up
        .iter()
        .map(|st| f64::from(st.resources.cpu_pct) * f64::from(st.resources.cpus))
        .sum();
    let cpu_pct = if cpus == 0 { 0.0 } else { busy / cpus as f64 };
    let mem_used: u64 = up.iter().map(|st| st.resources.mem_used_bytes).sum();
    let mem_total: u64 = up.iter().map(|st| st.resources.mem_total_bytes).sum();
    let (active, all) = rows
        .iter()
        .map(fleet::task_counts)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let mut out = format!(
        "skiff top: cluster {cluster}, {} UTC, every {} s\n",
        display::clock(now_ms),
        opts.interval.as_secs_f32()
    );
    out.push_str(&format!(
        "nodes {}: {} online, {} draining, {} drained, {} offline | CPU {cpu_pct:.0}% of {cpus} | MEM {}/{} | tasks {active}/{all}\n",
        rows.len(),
        count(NodeState::Online),
        count(NodeState::Draining),
        count(NodeState::Drained),
        count(NodeState::Offline),
        display::size(mem_used),
        display::size(mem_total),
    ));
    let name_w = rows
        .iter()
        .map(|st| st.node.as_str().len())
        .max()
        .unwrap_or(0)
        .max(12);
    out.push_str(&format!(
        "{:<name_w$} {:<8} {:>5} {:>8} {:>11} {:>7}  LABELS\n",
        "NODE", "STATE", "SEEN", "CPU", "MEM", "TASKS"
    ));
    let shown = opts.limit.unwrap_or(usize::MAX);
    for st in rows.iter().take(shown) {
        let (active, all) = fleet::task_counts(st);
        out.push_str(&format!(
            "{:<name_w$} {:<8} {:>5} {:>8} {:>11} {:>7}  {}\n",
            st.node.as_str(),
            display::node_state_label(st.state),
            display::age(now_ms.saturating_sub(st.at_ms)),
            display::cpu(st),
            display::mem(st),
            format!("{active}/{all}"),
            display::labels(&st.labels),
        ));
    }
    if rows.len() > shown {
        out.push_str(&format!("... and {} more\n", rows.len() - shown));
    }
    out
}

/// The terminal in non-canonical, no-echo mode (keys arrive one by one, `q` is not shown) and
/// the cursor hidden, until dropped. Ctrl-C still raises SIGINT.
struct Terminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl Terminal {
    fn raw() -> Terminal {
        use nix::sys::termios::{
            tcgetattr, tcsetattr, LocalFlags, SetArg, SpecialCharacterIndices,
        };
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok();
        if let Some(orig) = &saved {
            let mut raw = orig.clone();
            raw.local_flags
                .remove(LocalFlags::ICANON | LocalFlags::ECHO);
            raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
            raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        }
        print!("\x1b[?25l");
        Terminal { saved }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(orig) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                orig,
            );
        }
        print!("\x1b[?25h");
        let _ = std::io::stdout().flush();
    }
}

/// Keys typed on a terminal's stdin (a thread: tokio here has no stdin support).
fn keys() -> tokio::sync::mpsc::Receiver<u8> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let mut stdin = std::io::stdin();
        while let Ok(1) = stdin.read(&mut b) {
            if tx.blocking_send(b[0]).is_err() {
                return;
            }
        }
    });
    rx
}

async fn key(rx: &mut Option<tokio::sync::mpsc::Receiver<u8>>) -> Option<u8> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// `skiff ctl top`.
pub async fn top(target: &Target, opts: TopOptions) -> Result<(), CtlError> {
    let subscriptions = vec![
        all_nodes(&target.cluster, "status"),
        all_nodes(&target.cluster, "metrics"),
    ];
    let mut s = Session::open_reader(target, subscriptions).await?;
    let tty = std::io::stdout().is_terminal();
    let interactive = tty && std::io::stdin().is_terminal();
    let _terminal = tty.then(Terminal::raw);
    let mut keys = interactive.then(keys);
    let mut view = View::default();
    for (topic, payload) in s.retained(Duration::from_millis(300), target.timeout).await {
        if let Ok(msg) = decode(&payload) {
            view.observe(&topic, msg, true, crate::clock::wall_ms());
        }
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut stdout = std::io::stdout();
    let mut frames = 0u64;
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            let text = frame(&view, &opts, &target.cluster, crate::clock::wall_ms());
            let written = if tty {
                write!(stdout, "\x1b[H\x1b[2J{text}")
            } else {
                writeln!(stdout, "{text}")
            };
            if written.and_then(|()| stdout.flush()).is_err() {
                return Ok(()); // stdout closed (e.g. `| head`)
            }
            frames += 1;
            if opts.count.is_some_and(|c| frames >= c) {
                return Ok(());
            }
            next = (next + opts.interval).max(Instant::now());
        }
        tokio::select! {
            m = s.next(next) => match m {
                Some((topic, payload, retained)) => {
                    if let Ok(msg) = decode(&payload) {
                        view.observe(&topic, msg, retained, crate::clock::wall_ms());
                    }
                }
                None => tokio::time::sleep_until(next).await,
            },
            k = key(&mut keys) => match k {
                Some(b'q' | b'Q') => return Ok(()),
                Some(_) => {}
                None => keys = None,
            },
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::codec::Message;
    use skiff_proto::{Metrics, MetricsSample, NodeResources};

    fn n(s: &str) -> Name {
        s.parse().expect("name")
    }

    fn status(node: &str, state: NodeState, at_ms: u64, cpu_pct: f32) -> Message {
        Message::Status(Status {
            node: n(node),
            state,
            agent_version: "0.1.0".into(),
            cluster_version: 0,
            node_version: 0,
            at_ms,
            tasks: vec![],
            services: vec![],
            labels: [("site".to_string(), "north".to_string())].into(),
            resources: NodeResources {
                cpus: 4,
                mem_total_bytes: 4 << 30,
                cpu_pct,
                mem_used_bytes: 1 << 30,
            },
        })
    }

    fn metrics(node: &str, at_ms: u64, cpu_pct: f32) -> Message {
        Message::Metrics(Metrics {
            node: n(node),
            samples: vec![MetricsSample {
                at_ms,
                cpu_pct,
                mem_used_bytes: 2 << 30,
                mem_total_bytes: 4 << 30,
                tasks: vec![],
            }],
        })
    }

    fn opts() -> TopOptions {
        TopOptions {
            interval: Duration::from_secs(2),
            count: None,
            filter: NodeFilter::default(),
            sort: SortKey::Cpu,
            reverse: false,
            limit: None,
        }
    }

    #[test]
    fn frame_shows_totals_and_each_node_with_its_newest_load() {
        let mut v = View::default();
        let t = |node: &str, leaf: &str| format!("skiff/v1/demo/nodes/{node}/{leaf}");
        v.observe(
            &t("a", "status"),
            status("a", NodeState::Online, 1_000, 10.0),
            true,
            5_000,
        );
        v.observe(
            &t("b", "status"),
            status("b", NodeState::Online, 2_000, 20.0),
            true,
            5_000,
        );
        v.observe(
            &t("c", "status"),
            status("c", NodeState::Offline, 500, 0.0),
            true,
            5_000,
        );
        // A live sample of a: its load now; a message on the wrong topic counts for nothing.
        v.observe(&t("a", "metrics"), metrics("a", 6_000, 70.0), false, 6_000);
        v.observe(&t("b", "metrics"), metrics("a", 6_000, 99.0), false, 6_000);
        let f = frame(&v, &opts(), &n("demo"), 7_000);
        let lines: Vec<&str> = f.lines().collect();
        assert_eq!(
            lines[0], "skiff top: cluster demo, 00:00:07 UTC, every 2 s",
            "{f}"
        );
        // (70 × 4 + 20 × 4) / 8 CPUs of the two online nodes.
        assert_eq!(
            lines[1],
            "nodes 3: 2 online, 0 draining, 0 drained, 1 offline | CPU 45% of 8 | MEM 3.0G/8.0G | tasks 0/0",
            "{f}"
        );
        assert!(lines[2].starts_with("NODE "), "{f}");
        let row = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(
            row(3),
            [
                "a",
                "online",
                "1s",
                "70%/4",
                "2.0G/4.0G",
                "0/0",
                "site=north"
            ]
        );
        assert_eq!(
            row(4),
            [
                "b",
                "online",
                "5s",
                "20%/4",
                "1.0G/4.0G",
                "0/0",
                "site=north"
            ]
        );
        assert_eq!(
            row(5),
            ["c", "offline", "6s", "-/4", "-/4.0G", "0/0", "site=north"]
        );
        // A status report older than the last sample keeps the sample's load.
        v.observe(
            &t("a", "status"),
            status("a", NodeState::Online, 5_500, 5.0),
            true,
            7_500,
        );
        let f = frame(&v, &opts(), &n("demo"), 8_000);
        assert!(f.lines().nth(3).is_some_and(|l| l.contains("70%/4")), "{f}");
        // Filters apply to the totals too.
        let mut o = opts();
        o.filter.states = vec![NodeState::Offline];
        let f = frame(&v, &o, &n("demo"), 8_000);
        assert!(f.contains("nodes 1: 0 online"), "{f}");
        assert_eq!(f.lines().count(), 4, "{f}");
        // A limit shortens the list, not the totals.
        let mut o = opts();
        o.limit = Some(1);
        let f = frame(&v, &o, &n("demo"), 8_000);
        let lines: Vec<&str> = f.lines().collect();
        assert!(lines[1].starts_with("nodes 3: 2 online"), "{f}");
        assert_eq!(lines.len(), 5, "{f}");
        assert!(lines[3].starts_with("a "), "{f}");
        assert_eq!(lines[4], "... and 2 more", "{f}");
    }
}
