//! Named network namespaces for tasks: an nsfs bind mount on a file, as `ip netns add` makes
//! them, so every container of the task can join the same namespace by path.

use std::fs;
use std::io;
use std::path::Path;

use libcontainer::network::link::LinkClient;
use libcontainer::network::wrapper::create_network_client;
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::rootfs::unmount;

/// Creates a new network namespace with loopback up and pins it at `path` (a new file).
///
/// `unshare(CLONE_NEWNET)` only moves the calling thread, so it runs on a short-lived thread of
/// its own that exits afterwards; the bind mount keeps the namespace alive. Never run this on a
/// pooled thread: it would stay in the new namespace.
pub(crate) fn create(path: &Path) -> io::Result<()> {
    let target = path.to_path_buf();
    let res = std::thread::Builder::new()
        .name("skiff-netns".into())
        .spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            pin(Path::new("/proc/thread-self/ns/net"), &target)?;
            loopback_up()
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")));
    match res {
        // Someone else's file: leave it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(e) => {
            let _ = remove(path);
            Err(e)
        }
        Ok(()) => Ok(()),
    }
}

/// Pins the namespace `ns` (a `/proc/.../ns/*` file) with a bind mount on `at`, a new file
/// (its directory is made if missing). On error nothing is left at `at`.
pub(crate) fn pin(ns: &Path, at: &Path) -> io::Result<()> {
    if let Some(dir) = at.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(at)?;
    mount(Some(ns), at, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
        let _ = fs::remove_file(at);
        let e = io::Error::from(e);
        io::Error::new(
            e.kind(),
            format!("pin {} at {}: {e}", ns.display(), at.display()),
        )
    })
}

/// Brings `lo` up in the network namespace pinned at `path`, from a short-lived thread that
/// joins it (a namespace made elsewhere, e.g. inside a task's user namespace).
pub(crate) fn loopback_up_in(path: &Path) -> io::Result<()> {
    let ns = fs::File::open(path)?;
    std::thread::Builder::new()
        .name("skiff-netns".into())
        .spawn(move || -> io::Result<()> {
            setns(&ns, CloneFlags::CLONE_NEWNET)?;
            loopback_up()
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
}

/// Brings `lo` up in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    let mut links = LinkClient::new(create_network_client()).map_err(net_err)?;
    let lo = links.get_by_name("lo").map_err(net_err)?;
    links.set_up(lo.header.index).map_err(net_err)
}

fn net_err(e: libcontainer::network::NetworkError) -> io::Error {
    io::Error::other(format!("loopback: {e}"))
}

/// Unpins and removes a namespace file made by [`create`] or [`pin`]. A missing one is fine.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    unmount(path)?;
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
