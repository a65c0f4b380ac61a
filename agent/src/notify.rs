//! systemd's service notification protocol (`sd_notify`), in its own few lines: datagrams of
//! `KEY=value` lines to the socket named by `$NOTIFY_SOCKET`.
//!
//! The agent says `READY=1` once the runtime is up and its state is loaded (so `Type=notify`
//! units ordered after skiff start when it can take work), `WATCHDOG=1` from its main loop
//! every half `$WATCHDOG_USEC` (a wedged loop stops the pings and systemd restarts the agent),
//! `STOPPING=1` when it starts stopping its tasks, and `STATUS=` lines that `systemctl status`
//! shows. Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

/// Where to send notifications, or nowhere.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

/// Why `$NOTIFY_SOCKET` can't be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {socket:?}: {source}")]
    Socket { socket: String, source: io::Error },
}

impl Notifier {
    /// A notifier that does nothing (not under systemd).
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// From the environment systemd gives a service: `$NOTIFY_SOCKET` (a path, or `@name` for
    /// an abstract socket), `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the watchdog applies only when
    /// it names this process or is unset).
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let for_pid = std::env::var("WATCHDOG_PID").ok();
        let watchdog = usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0)
            .filter(|_| {
                for_pid
                    .and_then(|p| p.trim().parse::<u32>().ok())
                    .is_none_or(|p| p == std::process::id())
            })
            .map(Duration::from_micros);
        match socket {
            Some(s) if !s.is_empty() => Notifier::new(&s, watchdog),
            _ => Ok(Notifier::disabled()),
        }
    }

    /// Notifications to `socket` (a path or `@abstract`), expecting a ping every `watchdog`.
    pub fn new(socket: &str, watchdog: Option<Duration>) -> Result<Notifier, NotifyError> {
        let err = |source| NotifyError::Socket {
            socket: socket.to_owned(),
            source,
        };
        let addr = match socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes()).map_err(err)?
            }
            None => SocketAddr::from_pathname(PathBuf::from(socket)).map_err(err)?,
        };
        let sock = UnixDatagram::unbound().map_err(err)?;
        Ok(Notifier {
            socket: Some((sock, addr)),
            watchdog,
        })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the service's `WatchdogSec=`, or None.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref()?;
        self.watchdog.map(|w| w / 2)
    }

    /// The agent can take work.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// The main loop is alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// The agent is stopping its tasks and will exit.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// A line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    fn send(&self, msg: &str) {
        let Some((sock, addr)) = &self.socket else {
            return;
        };
        // Best effort, never blocking the loop: systemd may be gone during shutdown.
        if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }
}

/// A STATUS value must stay on one line: the protocol is newline-separated.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_ready_watchdog_status_and_stopping_to_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = Notifier::new(
            path.to_str().expect("utf-8 path"),
            Some(Duration::from_secs(10)),
        )
        .expect("notifier");
        assert!(n.is_enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        n.ready("running 2 tasks\nsecond line");
        assert_eq!(recv(&server), "READY=1\nSTATUS=running 2 tasks second line");
        n.watchdog();
        assert_eq!(recv(&server), "WATCHDOG=1");
        n.status("broker connected");
        assert_eq!(recv(&server), "STATUS=broker connected");
        n.stopping("stopping 2 tasks");
        assert_eq!(recv(&server), "STOPPING=1\nSTATUS=stopping 2 tasks");
    }

    #[test]
    fn abstract_sockets_are_supported() {
        let name = format!("skiff-notify-test-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address")
        };
        let server = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = Notifier::new(&format!("@{name}"), None).expect("notifier");
        assert_eq!(n.watchdog_interval(), None);
        n.watchdog();
        assert_eq!(recv(&server), "WATCHDOG=1");
    }

    #[test]
    fn disabled_notifier_has_no_watchdog_and_sends_nothing() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready("ignored");
    }

    #[test]
    fn a_missing_socket_is_not_an_error_for_the_agent() {
        let n = Notifier::new("/nonexistent/skiff/notify.sock", None).expect("notifier");
        // Sending fails quietly: systemd may have gone away during shutdown.
        n.stopping("bye");
        assert!(n.is_enabled());
    }
}
