//! User-namespace remapping (`[userns]` in the agent config): root in a container is an
//! unprivileged host uid, `base`, and container ids `0..size` are host ids `base..base+size`.
//!
//! Each task gets a user namespace of its own with that mapping, pinned on a file in the task's
//! run directory as `ip netns` pins network namespaces. The task's network namespace is created
//! inside it (so it is *owned* by it): the containers join both by path, and root in a
//! container may then mount `/sys` and configure its own network namespace, and nothing of the
//! host's. Namespaces are made by a short-lived child, `skiff __userns`, because a process with
//! threads (the agent) may not create or join a user namespace.
//!
//! The container's root filesystem is an overlay whose lower layer, the shared image rootfs, is
//! an *idmapped mount* of it through the task's user namespace: files owned by host uid 0 show
//! as container uid 0, and files the container writes land in the upper layer owned by
//! `base + uid` on disk. Where the image store's filesystem can't be idmapped, the rootfs is a
//! copy with every owner shifted instead.

// Raw mount-API syscalls (open_tree, mount_setattr) that neither nix nor std wrap.
#![allow(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use nix::sched::{unshare, CloneFlags};

use super::netns;

/// A single id range: container ids `0..size` are host ids `base..base + size`, for users and
/// groups alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub base: u32,
    pub size: u32,
}

impl IdMap {
    /// The host id of container id `id`, if it is mapped.
    pub fn host_id(self, id: u32) -> Option<u32> {
        (id < self.size).then(|| self.base + id)
    }

    /// The line for `/proc/PID/uid_map` and `gid_map`.
    fn line(self) -> String {
        format!("0 {} {}\n", self.base, self.size)
    }
}

/// Which namespaces `skiff __userns` makes.
const WITH_NET: &str = "net";
const WITHOUT_NET: &str = "nonet";

/// Entry point of `skiff __userns net|nonet`, started by [`create`]: unshares a user namespace
/// (and a network namespace it owns), says so with one byte on stdout, then waits for stdin to
/// close while the parent maps ids and pins the namespaces. Runs before anything starts a thread.
pub fn helper_main() -> ExitCode {
    let mut flags = CloneFlags::CLONE_NEWUSER;
    match std::env::args_os().nth(2).as_deref().map(|a| a.as_bytes()) {
        Some(b"net") => flags |= CloneFlags::CLONE_NEWNET,
        Some(b"nonet") => {}
        _ => {
            eprintln!("skiff __userns is started by the skiff agent, not by hand");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = unshare(flags) {
        eprintln!("skiff __userns: unshare: {e}");
        return ExitCode::FAILURE;
    }
    if io::stdout()
        .write_all(b"r")
        .and_then(|()| io::stdout().flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    // Until the parent closes our stdin (or dies).
    let mut sink = [0u8; 64];
    while matches!(io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    ExitCode::SUCCESS
}

/// Makes a user namespace with `map` and pins it at `userns` (a new file); with `netns`, also a
/// network namespace owned by it, pinned there (a new file). `exe` is this binary. On error
/// nothing is left pinned.
pub(crate) fn create(
    exe: &Path,
    map: IdMap,
    userns: &Path,
    netns: Option<&Path>,
) -> io::Result<()> {
    let mut child = Command::new(exe)
        .arg("__userns")
        .arg(if netns.is_some() {
            WITH_NET
        } else {
            WITHOUT_NET
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .current_dir("/")
        .env_clear()
        .spawn()?;
    let res = pin(&mut child, map, userns, netns);
    // Closing stdin lets the helper exit; the pins keep the namespaces.
    drop(child.stdin.take());
    if res.is_err() {
        let _ = child.kill();
    }
    let status = child.wait();
    if let Err(e) = res {
        for p in [Some(userns), netns].into_iter().flatten() {
            let _ = netns::remove(p);
        }
        return Err(e);
    }
    status?;
    Ok(())
}

fn pin(
    child: &mut std::process::Child,
    map: IdMap,
    userns: &Path,
    netns: Option<&Path>,
) -> io::Result<()> {
    let mut ready = [0u8; 1];
    child
        .stdout
        .as_mut()
        .ok_or_else(|| io::Error::other("no pipe from the namespace helper"))?
        .read_exact(&mut ready)
        .map_err(|e| io::Error::other(format!("the namespace helper did not start: {e}")))?;
    let proc = Path::new("/proc").join(child.id().to_string());
    let line = map.line();
    for file in ["uid_map", "gid_map"] {
        fs::write(proc.join(file), &line)
            .map_err(|e| io::Error::new(e.kind(), format!("write {file} {line:?}: {e}")))?;
    }
    netns::pin(&proc.join("ns/user"), userns)?;
    if let Some(net) = netns {
        netns::pin(&proc.join("ns/net"), net)?;
        netns::loopback_up_in(net)?;
    }
    Ok(())
}

// From <linux/mount.h>; the syscall numbers are the same on every architecture skiff builds for.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// `struct mount_attr` of <linux/mount.h>.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Mounts `src` at `target` (an existing directory) as an idmapped bind mount through the user
/// namespace pinned at `userns`: a file owned by host id `n` shows as host id `base + n` (so as
/// `n` inside the namespace), and a file created through it as id `base + n` is stored as `n`.
/// Fails on filesystems that can't be idmapped (`EINVAL`) and on kernels before 5.12.
pub(crate) fn idmapped_bind(src: &Path, target: &Path, userns: &Path) -> io::Result<()> {
    let ns = File::open(userns)?;
    let src_c = std::ffi::CString::new(src.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: open_tree takes a NUL-terminated path and flags and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("open_tree: fd out of range"))?;
    // SAFETY: open_tree returned this fd, owned from here on.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes of `attr`, which lives across
    // the call; the path is NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let target_c = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: move_mount takes the detached tree's fd, an empty path and the NUL-terminated
    // target path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_and_map_line() {
        let m = IdMap {
            base: 100_000,
            size: 65_536,
        };
        assert_eq!(m.host_id(0), Some(100_000));
        assert_eq!(m.host_id(65_535), Some(165_535));
        assert_eq!(m.host_id(65_536), None);
        assert_eq!(m.line(), "0 100000 65536\n");
    }
}
