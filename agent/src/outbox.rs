//! The outbox: events and metrics wait here until the broker acknowledges them.
//!
//! Every event and metrics message is queued, published at QoS 1 while connected (at most
//! [`MAX_IN_FLIGHT`] at a time, in order) and removed only when its PUBACK arrives (brokers
//! acknowledge QoS 1 in order, so acknowledgements are matched first-in first-out; status and
//! replies published in between take their place in that order). When the connection breaks,
//! whatever is unacknowledged stays queued and is sent again, in order, after the next CONNACK:
//! delivery is at least once.
//!
//! While offline the queue is kept on disk (`{data_dir}/outbox/queue`), appended in batches
//! (events every [`FLUSH_EVERY`], metrics every [`METRICS_FLUSH_EVERY`]) rather than per message
//! (flash is precious), so it survives a restart;
//! it is emptied once everything is acknowledged. The queue is bounded: when it is full, the
//! oldest half of the metrics messages are merged pairwise into averaged samples (coarser, not
//! lost), and only when no metrics are left to merge are the oldest events dropped. What was
//! merged or dropped is counted and reported (`EventBody::OutboxOverflow`).

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_proto::codec::{decode, encode, Message};
use skiff_proto::{Metrics, MetricsSample, TaskSample};

/// Publishes awaiting acknowledgement at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// How often queued events are appended to disk while offline.
pub const FLUSH_EVERY: Duration = Duration::from_secs(30);
/// How often queued metrics are appended to disk while offline (a multiple of [`FLUSH_EVERY`]).
pub const METRICS_FLUSH_EVERY: Duration = Duration::from_secs(300);
/// Largest single entry read back from disk.
const MAX_ENTRY: usize = skiff_proto::limits::MAX_MESSAGE;

/// What kind of message an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Event,
    Metrics,
}

#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    kind: EntryKind,
    /// The encoded message (header + body), as published.
    bytes: Vec<u8>,
    /// Published and not yet acknowledged.
    in_flight: bool,
    /// Already in the disk file.
    on_disk: bool,
}

/// A message to publish now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub kind: EntryKind,
    pub bytes: Vec<u8>,
}

/// The queue and its disk file.
#[derive(Debug)]
pub struct Outbox {
    path: Option<PathBuf>,
    max_bytes: usize,
    queue: VecDeque<Entry>,
    bytes: usize,
    next_id: u64,
    /// Acknowledgements expected, in order: `Some(id)` for an entry, `None` for another publish.
    acks: VecDeque<Option<u64>>,
    connected: bool,
    /// Totals of what the bound took, and what was already reported.
    pub dropped_events: u64,
    pub merged_samples: u64,
    reported: (u64, u64),
}

impl Outbox {
    /// An outbox bounded to `max_bytes`, kept in `dir` (None: memory only, e.g. local mode).
    /// Reads back what a previous run left.
    pub fn open(dir: Option<PathBuf>, max_bytes: usize) -> io::Result<Outbox> {
        let path = match dir {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                Some(d.join("queue"))
            }
            None => None,
        };
        let mut ob = Outbox {
            path,
            max_bytes,
            queue: VecDeque::new(),
            bytes: 0,
            next_id: 0,
            acks: VecDeque::new(),
            connected: false,
            dropped_events: 0,
            merged_samples: 0,
            reported: (0, 0),
        };
        let (entries, valid) = ob.read_file()?;
        for (kind, bytes) in entries {
            ob.push_entry(kind, bytes, true);
        }
        if let Some(path) = &ob.path {
            if let Err(e) = cut_file_tail(path, valid) {
                tracing::warn!(path = %path.display(), error = %e, "cannot cut the torn tail of the outbox file; entries appended later may be lost at a restart");
            }
        }
        Ok(ob)
    }

    /// The entries of the file, and the length of the good ones (where the next must go).
    fn read_file(&self) -> io::Result<(Vec<FileEntry>, u64)> {
        let Some(path) = &self.path else {
            return Ok((vec![], 0));
        };
        let mut data = Vec::new();
        match File::open(path) {
            Ok(f) => {
                f.take(u64::try_from(self.max_bytes.saturating_mul(2)).unwrap_or(u64::MAX))
                    .read_to_end(&mut data)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((vec![], 0)),
            Err(e) => return Err(e),
        }
        let mut out = Vec::new();
        let mut rest = data.as_slice();
        // [u32 len][u8 kind][message]; a torn tail (power cut mid-append) ends the read.
        while let Some((head, tail)) = rest.split_first_chunk::<5>() {
            let len = usize::try_from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]))
                .unwrap_or(usize::MAX);
            let kind = match head[4] {
                1 => EntryKind::Event,
                2 => EntryKind::Metrics,
                _ => break,
            };
            if len > MAX_ENTRY || tail.len() < len || decode(&tail[..len]).is_err() {
                break;
            }
            out.push((kind, tail[..len].to_vec()));
            rest = &tail[len..];
        }
        let valid = u64::try_from(data.len() - rest.len()).unwrap_or(u64::MAX);
        Ok((out, valid))
    }

    /// Messages queued (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the broker connection is up (as last reported).
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Queues a message; returns what to publish now.
    pub fn push(&mut self, kind: EntryKind, bytes: Vec<u8>) -> Vec<Send> {
        self.push_entry(kind, bytes, false);
        self.pump()
    }

    fn push_entry(&mut self, kind: EntryKind, bytes: Vec<u8>, on_disk: bool) {
        self.bytes += bytes.len();
        self.queue.push_back(Entry {
            id: self.next_id,
            kind,
            bytes,
            in_flight: false,
            on_disk,
        });
        self.next_id += 1;
        while self.bytes > self.max_bytes {
            if !self.downsample() && !self.drop_oldest_event() {
                break;
            }
        }
    }

    /// Entries to publish now (connected, under the in-flight limit), marked in flight.
    fn pump(&mut self) -> Vec<Send> {
        if !self.connected {
            return vec![];
        }
        let room = MAX_IN_FLIGHT.saturating_sub(self.queue.iter().filter(|e| e.in_flight).count());
        let mut out = Vec::new();
        for e in self.queue.iter_mut().filter(|e| !e.in_flight).take(room) {
            e.in_flight = true;
            self.acks.push_back(Some(e.id));
            out.push(Send {
                kind: e.kind,
                bytes: e.bytes.clone(),
            });
        }
        out
    }

    /// Another QoS 1 publish (status, reply) was made: its acknowledgement comes in order too.
    pub fn other_published(&mut self) {
        if self.connected {
            self.acks.push_back(None);
        }
    }

    /// A PUBACK arrived; returns what to publish next.
    pub fn acked(&mut self) -> Vec<Send> {
        if let Some(Some(id)) = self.acks.pop_front() {
            if let Some(pos) = self.queue.iter().position(|e| e.id == id) {
                if let Some(e) = self.queue.remove(pos) {
                    self.bytes -= e.bytes.len();
                }
            }
            if self.queue.is_empty() {
                self.clear_file();
            }
        }
        self.pump()
    }

    /// The broker connection is up: everything queued goes out again, in order.
    pub fn connected(&mut self) -> Vec<Send> {
        self.connected = true;
        self.acks.clear();
        for e in &mut self.queue {
            e.in_flight = false;
        }
        self.pump()
    }

    /// The connection broke: nothing more is sent; unacknowledged entries stay.
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.acks.clear();
        for e in &mut self.queue {
            e.in_flight = false;
        }
    }

    /// While offline, appends what is not on disk yet (one write, one fdatasync).
    ///
    /// `metrics_too`: also when only metrics wait. Events (run results) are written at every
    /// flush; metrics only every [`METRICS_FLUSH_EVERY`] (a power cut may cost that much of
    /// them), because each small synchronous append costs the flash a few 4 KiB blocks.
    pub fn flush(&mut self, metrics_too: bool) -> io::Result<()> {
        if self.connected {
            return Ok(());
        }
        self.append_pending(metrics_too)
    }

    /// Writes the events not on disk yet now, connected or not: for events whose loss in a
    /// crash would leave someone waiting (the cluster queue's decisions). At a restart they are
    /// sent again (at least once; consoles deduplicate).
    pub fn persist_events(&mut self) -> io::Result<()> {
        self.append_pending(false)
    }

    fn append_pending(&mut self, metrics_too: bool) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let pending_event = self
            .queue
            .iter()
            .any(|e| !e.on_disk && e.kind == EntryKind::Event);
        if !pending_event && !metrics_too {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in self.queue.iter().filter(|e| !e.on_disk) {
            buf.extend(
                u32::try_from(e.bytes.len())
                    .unwrap_or(u32::MAX)
                    .to_le_bytes(),
            );
            buf.push(match e.kind {
                EntryKind::Event => 1,
                EntryKind::Metrics => 2,
            });
            buf.extend(&e.bytes);
        }
        if buf.is_empty() {
            return Ok(());
        }
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        let before = f.metadata()?.len();
        if let Err(e) = f.write_all(&buf).and_then(|()| f.sync_data()) {
            // A part written (a full disk) would be a torn record hiding every later one.
            let _ = f.set_len(before);
            return Err(e);
        }
        for e in &mut self.queue {
            e.on_disk = true;
        }
        Ok(())
    }

    /// After a merge or a drop the file no longer matches the queue: rewrite what is on disk.
    fn rewrite_file(&mut self) {
        let Some(path) = &self.path else { return };
        if !self.queue.iter().any(|e| e.on_disk) && !path.exists() {
            return;
        }
        let tmp = path.with_extension("tmp");
        let mut buf = Vec::new();
        for e in self.queue.iter().filter(|e| e.on_disk) {
            buf.extend(
                u32::try_from(e.bytes.len())
                    .unwrap_or(u32::MAX)
                    .to_le_bytes(),
            );
            buf.push(match e.kind {
                EntryKind::Event => 1,
                EntryKind::Metrics => 2,
            });
            buf.extend(&e.bytes);
        }
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(&buf).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot rewrite the outbox file");
        }
    }

    fn clear_file(&mut self) {
        if let Some(path) = &self.path {
            if path.exists() {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(error = %e, "cannot remove the sent outbox file");
                }
            }
        }
    }

    /// Merges the oldest half of the queued metrics messages pairwise. False when fewer than
    /// two metrics messages are waiting.
    fn downsample(&mut self) -> bool {
        let idle: Vec<usize> = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EntryKind::Metrics && !e.in_flight)
            .map(|(i, _)| i)
            .collect();
        if idle.len() < 2 {
            return false;
        }
        let half = (idle.len() / 2).max(2) & !1;
        let mut remove = Vec::new();
        for pair in idle[..half].chunks(2) {
            let [a, b] = pair else { continue };
            let (Some(ea), Some(eb)) = (self.queue.get(*a), self.queue.get(*b)) else {
                continue;
            };
            let (Ok(Message::Metrics(ma)), Ok(Message::Metrics(mb))) =
                (decode(&ea.bytes), decode(&eb.bytes))
            else {
                continue;
            };
            let samples: Vec<MetricsSample> =
                ma.samples.iter().chain(&mb.samples).cloned().collect();
            let n = samples.len();
            let merged = Metrics {
                node: ma.node.clone(),
                samples: vec![average(&samples)],
            };
            let Ok(bytes) = encode(&Message::Metrics(merged)) else {
                continue;
            };
            self.merged_samples += u64::try_from(n.saturating_sub(1)).unwrap_or(0);
            self.bytes = self.bytes + bytes.len() - ea.bytes.len();
            if let Some(e) = self.queue.get_mut(*a) {
                e.bytes = bytes;
            }
            remove.push(*b);
        }
        for i in remove.into_iter().rev() {
            if let Some(e) = self.queue.remove(i) {
                self.bytes -= e.bytes.len();
            }
        }
        self.rewrite_file();
        true
    }

    fn drop_oldest_event(&mut self) -> bool {
        let Some(pos) = self.queue.iter().position(|e| !e.in_flight) else {
            return false;
        };
        if let Some(e) = self.queue.remove(pos) {
            self.bytes -= e.bytes.len();
            match e.kind {
                EntryKind::Event => self.dropped_events += 1,
                EntryKind::Metrics => self.merged_samples += 1,
            }
        }
        self.rewrite_file();
        true
    }

    /// Drop counts not reported yet, if any.
    pub fn unreported(&mut self) -> Option<(u64, u64)> {
        let now = (self.dropped_events, self.merged_samples);
        (now != self.reported).then(|| {
            let delta = (now.0 - self.reported.0, now.1 - self.reported.1);
            self.reported = now;
            delta
        })
    }
}

/// An entry read back from the outbox file.
type FileEntry = (EntryKind, Vec<u8>);

/// Cuts what follows the file's last good entry (see [`crate::store::cut_torn_tail`]).
fn cut_file_tail(path: &Path, valid: u64) -> io::Result<()> {
    match OpenOptions::new().write(true).open(path) {
        Ok(f) => crate::store::cut_torn_tail(&f, path, valid, "outbox file"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// One sample averaging several: the first one's time, mean CPU and memory, per task the mean
/// over the samples that include it.
fn average(samples: &[MetricsSample]) -> MetricsSample {
    let n = samples.len().max(1) as f64;
    let mean = |f: &dyn Fn(&MetricsSample) -> f64| samples.iter().map(f).sum::<f64>() / n;
    let mut tasks: BTreeMap<skiff_proto::Name, (f64, f64, Option<u64>, f64)> = BTreeMap::new();
    for s in samples {
        for t in &s.tasks {
            let e = tasks
                .entry(t.task.clone())
                .or_insert((0.0, 0.0, t.mem_limit_bytes, 0.0));
            e.0 += f64::from(t.cpu_pct);
            e.1 += t.mem_bytes as f64;
            e.3 += 1.0;
        }
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    // means of u64 and f32 values
    MetricsSample {
        at_ms: samples.first().map_or(0, |s| s.at_ms),
        cpu_pct: mean(&|s| f64::from(s.cpu_pct)) as f32,
        mem_used_bytes: mean(&|s| s.mem_used_bytes as f64) as u64,
        mem_total_bytes: samples.first().map_or(0, |s| s.mem_total_bytes),
        tasks: tasks
            .into_iter()
            .map(|(task, (cpu, mem, limit, k))| TaskSample {
                task,
                cpu_pct: (cpu / k) as f32,
                mem_bytes: (mem / k) as u64,
                mem_limit_bytes: limit,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::{Event, EventBody, Name};

    fn node() -> Name {
        "pi-1".parse().expect("name")
    }

    fn event(seq: u64) -> Vec<u8> {
        let ev = Event {
            node: node(),
            seq,
            at_ms: seq,
            body: EventBody::AgentStarted {
                version: "t".into(),
            },
        };
        encode(&Message::Event(ev)).expect("encode")
    }

    fn metrics(at_ms: u64, cpu: f32) -> Vec<u8> {
        let s = MetricsSample {
            at_ms,
            cpu_pct: cpu,
            mem_used_bytes: 100,
            mem_total_bytes: 1000,
            tasks: vec![],
        };
        encode(&Message::Metrics(Metrics {
            node: node(),
            samples: vec![s],
        }))
        .expect("encode")
    }

    fn seqs(sends: &[Send]) -> Vec<u64> {
        sends
            .iter()
            .filter_map(|s| match decode(&s.bytes) {
                Ok(Message::Event(e)) => Some(e.seq),
                Ok(Message::Metrics(m)) => Some(m.samples[0].at_ms),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn messages_are_removed_only_when_acknowledged_and_resent_after_a_break() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ob = Outbox::open(Some(dir.path().into()), 1 << 20).expect("open");
        assert!(
            ob.push(EntryKind::Event, event(1)).is_empty(),
            "offline: nothing sent"
        );
        assert_eq!(seqs(&ob.connected()), [1]);
        assert_eq!(seqs(&ob.push(EntryKind::Event, event(2))), [2]);
        ob.other_published(); // a status between them
        assert_eq!(seqs(&ob.push(EntryKind::Event, event(3))), [3]);
        ob.acked(); // 1
        assert_eq!(ob.len(), 2);
        ob.disconnected(); // 2 and 3 unacknowledged
        assert_eq!(seqs(&ob.connected()), [2, 3], "resent in order");
        ob.acked();
        ob.acked();
        assert!(ob.is_empty());
    }

    #[test]
    fn json_mirrors_take_their_place_in_the_acknowledgement_order() {
        // The agent publishes each released batch, then its JSON mirrors (other_published per
        // mirror). An entry is removed by its own PUBACK, never by a mirror's.
        let mut ob = Outbox::open(None, 1 << 20).expect("open");
        ob.connected();
        assert_eq!(seqs(&ob.push(EntryKind::Event, event(1))), [1]);
        ob.other_published(); // events.json of 1
        assert_eq!(seqs(&ob.push(EntryKind::Event, event(2))), [2]);
        ob.other_published(); // events.json of 2
        ob.acked(); // 1
        ob.acked(); // its mirror
        assert_eq!(ob.len(), 1, "2 is not acknowledged yet");
        ob.disconnected();
        assert_eq!(seqs(&ob.connected()), [2], "resent after the break");
        ob.other_published(); // its mirror, again
        ob.acked();
        assert!(ob.is_empty());
    }

    #[test]
    fn the_in_flight_window_is_bounded() {
        let mut ob = Outbox::open(None, 1 << 20).expect("open");
        for i in 0..100 {
            ob.push(EntryKind::Event, event(i));
        }
        let first = ob.connected();
        assert_eq!(first.len(), MAX_IN_FLIGHT);
        let next = ob.acked();
        assert_eq!(seqs(&next), [u64::try_from(MAX_IN_FLIGHT).expect("small")]);
    }

    #[test]
    fn offline_entries_survive_a_restart_and_the_file_goes_once_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ob = Outbox::open(Some(dir.path().into()), 1 << 20).expect("open");
        ob.push(EntryKind::Event, event(1));
        ob.push(EntryKind::Metrics, metrics(10, 5.0));
        ob.flush(true).expect("flush");
        // A power cut tears a half-written record at the end.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("queue"))
            .expect("open");
        f.write_all(&[200, 0, 0, 0, 1, b'S']).expect("write");
        drop(f);
        let mut again = Outbox::open(Some(dir.path().into()), 1 << 20).expect("reopen");
        assert_eq!(again.len(), 2);
        // Still offline: what comes next is appended after the good entries, not the torn one.
        again.push(EntryKind::Event, event(2));
        again.flush(true).expect("flush after the tear");
        drop(again);
        let mut again = Outbox::open(Some(dir.path().into()), 1 << 20).expect("reopen");
        assert_eq!(again.len(), 3);
        assert_eq!(seqs(&again.connected()), [1, 10, 2]);
        again.acked();
        again.acked();
        again.acked();
        assert!(
            !dir.path().join("queue").exists(),
            "emptied once everything is acknowledged"
        );
    }

    #[test]
    fn events_persisted_while_connected_are_sent_again_after_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ob = Outbox::open(Some(dir.path().into()), 1 << 20).expect("open");
        ob.connected();
        assert_eq!(
            seqs(&ob.push(EntryKind::Event, event(7))),
            [7],
            "sent at once"
        );
        ob.flush(false).expect("flush");
        assert!(
            !dir.path().join("queue").exists(),
            "a plain flush skips while connected"
        );
        ob.persist_events().expect("persist");
        drop(ob); // the agent dies before the PUBACK
        let mut again = Outbox::open(Some(dir.path().into()), 1 << 20).expect("reopen");
        assert_eq!(seqs(&again.connected()), [7]);
        again.acked();
        assert!(!dir.path().join("queue").exists());
    }

    #[test]
    fn a_full_queue_downsamples_metrics_before_dropping_events() {
        let one = metrics(0, 0.0).len();
        let ev = event(0).len();
        let mut ob = Outbox::open(None, 2 * ev + 7 * one).expect("open");
        ob.push(EntryKind::Event, event(1));
        for i in 0..8 {
            ob.push(EntryKind::Metrics, metrics(i * 10, i as f32));
        }
        ob.push(EntryKind::Event, event(2));
        assert!(ob.queued_bytes() <= 2 * ev + 7 * one);
        assert_eq!(ob.dropped_events, 0, "events are kept first");
        assert!(ob.merged_samples >= 1);
        let sent = ob.connected();
        let order = seqs(&sent);
        assert_eq!(order.first(), Some(&1));
        assert_eq!(order.last(), Some(&2));
        // The merged sample is the mean of the pair, at the first one's time.
        let first_metrics = sent
            .iter()
            .find_map(|s| match decode(&s.bytes) {
                Ok(Message::Metrics(m)) => Some(m.samples[0].clone()),
                _ => None,
            })
            .expect("metrics");
        assert_eq!((first_metrics.at_ms, first_metrics.cpu_pct), (0, 0.5));
        assert_eq!(ob.unreported(), Some((0, ob.merged_samples)));
        assert_eq!(ob.unreported(), None);
    }

    #[test]
    fn only_events_left_then_the_oldest_go() {
        let ev = event(0).len();
        let mut ob = Outbox::open(None, 3 * ev).expect("open");
        for i in 0..5 {
            ob.push(EntryKind::Event, event(i));
        }
        assert_eq!(ob.dropped_events, 2);
        assert_eq!(seqs(&ob.connected()), [2, 3, 4]);
    }
}
