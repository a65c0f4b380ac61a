//! How `skiff image pull` shows a pull: a progress bar per layer in a terminal, one line per
//! layer otherwise, or JSON lines (`--json`) for scripts.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::pull::{PullError, PullProgress, PulledImage};
use super::registry::{ClientOptions, Registries, RegistryClient};
use super::settings::ImagesSettings;
use super::{ImageRef, ImageStore};

const BAR: usize = 30;

/// `skiff image pull`: pull `r` with progress, then unpack its rootfs (when it is for this
/// machine) so a task can start from it at once.
pub fn pull_cli(
    store: &ImageStore,
    registries: &Registries,
    settings: &ImagesSettings,
    r: &ImageRef,
    json: bool,
) -> Result<(), PullError> {
    let client = RegistryClient::new(registries.clone(), &ClientOptions::default());
    let mut printer = Printer::new(json);
    let img = store.pull(&client, r, &settings.pull, &mut |p| printer.on(p))?;
    let unpacked = if *store.platform() == super::Platform::host() {
        store.resolve(&img.reference)?.is_some()
    } else {
        false
    };
    printer.done(&img, unpacked);
    Ok(())
}

/// Renders [`PullProgress`] as it arrives.
#[derive(Debug)]
pub struct Printer {
    json: bool,
    tty: bool,
    last: Option<Instant>,
}

impl Printer {
    /// `json`: JSON lines on stdout; else text on stderr, with bars when it is a terminal.
    pub fn new(json: bool) -> Printer {
        Printer {
            json,
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    /// Whether to draw now (at most every `every`).
    fn due(&mut self, every: Duration) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < every) {
            return false;
        }
        self.last = Some(now);
        true
    }

    pub fn on(&mut self, p: &PullProgress) {
        if self.json {
            let line = match p {
                PullProgress::Resolved {
                    digest,
                    platform,
                    layers,
                } => serde_json::json!({
                    "event": "resolved",
                    "digest": digest.to_string(),
                    "platform": platform.to_string(),
                    "layers": layers.iter().map(|l| serde_json::json!({
                        "digest": l.digest.to_string(), "size": l.size, "present": l.present,
                    })).collect::<Vec<_>>(),
                }),
                PullProgress::Layer { digest, done, size } => {
                    if !self.due(Duration::from_millis(500)) {
                        return;
                    }
                    serde_json::json!({
                        "event": "progress", "layer": digest.to_string(), "done": done, "size": size,
                    })
                }
                PullProgress::LayerDone {
                    digest,
                    size,
                    fetched,
                    resumed_from,
                } => serde_json::json!({
                    "event": "layer", "digest": digest.to_string(), "size": size,
                    "fetched": fetched, "resumed_from": resumed_from,
                }),
            };
            println!("{line}");
            return;
        }
        let mut err = std::io::stderr().lock();
        match p {
            PullProgress::Resolved {
                digest,
                platform,
                layers,
            } => {
                let missing: Vec<_> = layers.iter().filter(|l| !l.present).collect();
                let bytes: u64 = missing.iter().map(|l| l.size).sum();
                let _ = writeln!(
                    err,
                    "manifest {digest} ({platform}): {} layers, {} to fetch ({})",
                    layers.len(),
                    missing.len(),
                    human(bytes)
                );
            }
            PullProgress::Layer { digest, done, size } => {
                if self.tty && self.due(Duration::from_millis(100)) {
                    let _ = write!(err, "\r{}", bar_line(&short(digest), *done, *size));
                    let _ = err.flush();
                }
            }
            PullProgress::LayerDone {
                digest,
                size,
                fetched,
                resumed_from,
            } => {
                let mut line = bar_line(&short(digest), *size, *size);
                if *fetched == 0 && *resumed_from == 0 {
                    line = format!("{}  already in the store", short(digest));
                } else if *resumed_from > 0 {
                    line.push_str(&format!("  (resumed at {})", human(*resumed_from)));
                }
                if self.tty {
                    let _ = writeln!(err, "\r{line}");
                } else {
                    let _ = writeln!(err, "{line}");
                }
                self.last = None;
            }
        }
    }

    /// The final line: the image pulled.
    pub fn done(&self, img: &PulledImage, unpacked: bool) {
        if self.json {
            let line = serde_json::json!({
                "event": "pulled",
                "reference": img.reference.to_string(),
                "digest": img.digest.to_string(),
                "platform": img.platform.to_string(),
                "size": img.size,
                "layers_fetched": img.layers_fetched,
                "bytes_fetched": img.bytes_fetched,
                "bytes_resumed": img.bytes_resumed,
                "unpacked": unpacked,
            });
            println!("{line}");
        } else {
            println!(
                "pulled {} {} ({}, {}, {} fetched)",
                img.reference,
                img.digest,
                img.platform,
                human(img.size),
                human(img.bytes_fetched)
            );
        }
    }
}

fn short(d: &super::Digest) -> String {
    d.hex().get(..12).unwrap_or(d.hex()).to_owned()
}

fn bar_line(name: &str, done: u64, size: u64) -> String {
    let filled = if size == 0 {
        BAR
    } else {
        usize::try_from(u128::from(done.min(size)) * BAR as u128 / u128::from(size)).unwrap_or(BAR)
    };
    format!(
        "{name}  [{}{}] {:>9} / {:<9}",
        "#".repeat(filled),
        " ".repeat(BAR - filled),
        human(done),
        human(size)
    )
}

/// `1.4 MiB`, `512 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
        let half = bar_line("abc", 50, 100);
        assert!(
            half.contains(&format!("[{}{}]", "#".repeat(15), " ".repeat(15))),
            "{half}"
        );
        assert!(bar_line("abc", 0, 0).contains(&"#".repeat(BAR)));
    }
}
