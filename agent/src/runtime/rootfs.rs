//! Container root filesystems: an overlay of the shared, read-only image rootfs with a
//! per-container upper directory, or a private copy where overlayfs is not available (for
//! example when the run directory itself is on overlayfs).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

use super::cgroup::unescape_mountinfo;
use super::userns::{idmapped_bind, IdMap};

/// How a rootfs was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RootfsKind {
    Overlay,
    Copy,
}

/// A rootfs for a container in a remapped user namespace (see `userns.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remap<'a> {
    /// The task's pinned user namespace.
    pub userns: &'a Path,
    pub map: IdMap,
    /// An empty directory for the idmapped image rootfs while the overlay is mounted.
    pub lower_mnt: &'a Path,
}

/// Mounts `lower` (read-only) + `upper`/`work` as overlayfs on `target`; on failure copies
/// `lower` into `target`. The three directories must exist. With `remap`, the lower layer is an
/// idmapped mount of `lower` through the task's user namespace and `upper` belongs to the
/// container's root; the copy has every owner shifted.
pub(crate) fn make_rootfs(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
    remap: Option<Remap<'_>>,
) -> io::Result<RootfsKind> {
    let mounted = match remap {
        None => mount_overlay(lower, upper, work, target),
        Some(r) => mount_remapped_overlay(lower, upper, work, target, r),
    };
    match mounted {
        Ok(()) => Ok(RootfsKind::Overlay),
        Err(e) => {
            tracing::warn!(
                lower = %lower.display(),
                target = %target.display(),
                error = %e,
                "overlay mount failed, copying the image rootfs instead"
            );
            copy_tree(lower, target, remap.map(|r| r.map))?;
            Ok(RootfsKind::Copy)
        }
    }
}

fn mount_remapped_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
    r: Remap<'_>,
) -> io::Result<()> {
    // The upper directory is the rootfs's `/`: the container's root owns it.
    std::os::unix::fs::lchown(upper, Some(r.map.base), Some(r.map.base))?;
    fs::create_dir_all(r.lower_mnt)?;
    idmapped_bind(lower, r.lower_mnt, r.userns).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("idmapped mount of {}: {e}", lower.display()),
        )
    })?;
    let res = mount_overlay(r.lower_mnt, upper, work, target);
    // The overlay holds its own reference to the layer; the mount point is not needed.
    let gone = unmount(r.lower_mnt);
    res?;
    gone
}

fn overlay_path(p: &Path) -> io::Result<&str> {
    let s = p
        .to_str()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"))?;
    // These separate overlay options or lower layers; the kernel's escaping is not worth it.
    if s.contains([',', ':', '\\']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s} contains ',', ':' or '\\'"),
        ));
    }
    Ok(s)
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        overlay_path(lower)?,
        overlay_path(upper)?,
        overlay_path(work)?
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(io::Error::from)
}

/// Recursively copies `src` into the existing directory `dst`, keeping modes, owners, symlinks
/// and device nodes (owners shifted into `shift`'s range when given; an id outside it is kept).
/// Hard links become separate files.
pub(crate) fn copy_tree(src: &Path, dst: &Path, shift: Option<IdMap>) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    copy_attrs(&meta, dst, shift)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&to)?;
            copy_tree(&from, &to, shift)?;
        } else if ft.is_symlink() {
            symlink(fs::read_link(&from)?, &to)?;
            let (uid, gid) = owner(&meta, shift);
            std::os::unix::fs::lchown(&to, Some(uid), Some(gid))?;
        } else if ft.is_file() {
            fs::copy(&from, &to)?;
            copy_attrs(&meta, &to, shift)?;
        } else {
            let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
            mknod(
                &to,
                kind,
                Mode::from_bits_truncate(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(io::Error::from)?;
            copy_attrs(&meta, &to, shift)?;
        }
    }
    Ok(())
}

fn owner(meta: &fs::Metadata, shift: Option<IdMap>) -> (u32, u32) {
    let (uid, gid) = (meta.uid(), meta.gid());
    match shift {
        Some(m) => (m.host_id(uid).unwrap_or(uid), m.host_id(gid).unwrap_or(gid)),
        None => (uid, gid),
    }
}

fn copy_attrs(meta: &fs::Metadata, to: &Path, shift: Option<IdMap>) -> io::Result<()> {
    // chown first: it clears setuid/setgid bits, which the chmod restores.
    let (uid, gid) = owner(meta, shift);
    std::os::unix::fs::lchown(to, Some(uid), Some(gid))?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
}

/// Unmounts `path` if something is mounted there (lazily, so a busy mount cannot block).
pub(crate) fn unmount(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        // Not a mount point, or gone.
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Mount points at or below `dir`, deepest first, from the text of `/proc/self/mountinfo`.
pub(crate) fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Unmounts everything at or below `dir`, deepest first.
pub(crate) fn unmount_all_under(dir: &Path) -> io::Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    for m in mounts_under(&mountinfo, dir) {
        unmount(&m)?;
    }
    Ok(())
}

/// Removes `dir` recursively, but only once nothing is mounted below it any more: a mount left
/// behind would let the removal reach into the image store or the host.
pub(crate) fn remove_dir_unmounted(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_all_under(dir)?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let left = mounts_under(&mountinfo, dir);
    if let Some(m) = left.first() {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("{} is still mounted", m.display()),
        ));
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Creates the working directory `cwd` inside `rootfs` if it is missing, owned by the
/// container's user, as Docker does. Walks the path without following symlinks: if a component
/// is a symlink or not a directory, nothing is created (the runtime resolves it safely inside
/// the container, or fails with a clear error).
pub(crate) fn ensure_dir(rootfs: &Path, cwd: &str, uid: u32, gid: u32) -> io::Result<()> {
    let mut dir = rootfs.to_path_buf();
    for comp in Path::new(cwd).components() {
        let name: &OsStr = match comp {
            Component::Normal(n) => n,
            Component::RootDir | Component::CurDir => continue,
            // `..` could climb out of the rootfs; leave such a path to the runtime.
            Component::ParentDir | Component::Prefix(_) => return Ok(()),
        };
        dir.push(name);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&dir)?;
                std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_below_a_dir() {
        let mi = "\
22 1 0:21 / /run rw - tmpfs tmpfs rw
90 22 0:50 / /run/skiff/tasks/web/app/rootfs rw - overlay overlay rw,lowerdir=/a
91 22 0:4 net:[4026532] /run/skiff/netns/web rw - nsfs nsfs rw
92 90 0:51 / /run/skiff/tasks/web/app/rootfs/proc rw - proc proc rw
93 22 0:52 / /run/skiff/tasks/web2/app/rootfs rw - overlay overlay rw
94 22 0:53 / /run/skiff/tasks/we\\040b/x rw - overlay overlay rw
";
        assert_eq!(
            mounts_under(mi, Path::new("/run/skiff/tasks/web")),
            vec![
                PathBuf::from("/run/skiff/tasks/web/app/rootfs/proc"),
                PathBuf::from("/run/skiff/tasks/web/app/rootfs"),
            ]
        );
        assert_eq!(
            mounts_under(mi, Path::new("/run/skiff/tasks/we b")),
            vec![PathBuf::from("/run/skiff/tasks/we b/x")]
        );
        assert_eq!(
            mounts_under(mi, Path::new("/run/skiff/tasks/none")),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn copy_keeps_links_and_modes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir_all(src.join("bin")).expect("mkdir");
        fs::create_dir(&dst).expect("mkdir");
        fs::write(src.join("bin/tool"), b"#!/bin/sh\n").expect("write");
        fs::set_permissions(src.join("bin/tool"), fs::Permissions::from_mode(0o4755))
            .expect("chmod");
        symlink("tool", src.join("bin/alias")).expect("symlink");
        symlink("/etc/passwd", src.join("abs")).expect("symlink");
        copy_tree(&src, &dst, None).expect("copy");
        assert_eq!(
            fs::read(dst.join("bin/tool")).expect("read"),
            b"#!/bin/sh\n"
        );
        let mode = fs::metadata(dst.join("bin/tool")).expect("meta").mode() & 0o7777;
        assert_eq!(mode, 0o4755);
        assert_eq!(
            fs::read_link(dst.join("bin/alias")).expect("link"),
            Path::new("tool")
        );
        assert_eq!(
            fs::read_link(dst.join("abs")).expect("link"),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn a_remapped_copy_shifts_owners_into_the_range() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: chown needs root");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir_all(src.join("home")).expect("mkdir");
        fs::create_dir(&dst).expect("mkdir");
        fs::write(src.join("home/f"), b"x").expect("write");
        symlink("f", src.join("home/l")).expect("symlink");
        std::os::unix::fs::lchown(src.join("home"), Some(1000), Some(100)).expect("chown");
        std::os::unix::fs::lchown(src.join("home/l"), Some(7), Some(8)).expect("chown");
        // An id outside the range keeps its number (it reads as nobody inside).
        std::os::unix::fs::lchown(src.join("home/f"), Some(70_000), Some(0)).expect("chown");
        let map = IdMap {
            base: 200_000,
            size: 65_536,
        };
        copy_tree(&src, &dst, Some(map)).expect("copy");
        let owner = |p: &str| {
            let m = fs::symlink_metadata(dst.join(p)).expect("meta");
            (m.uid(), m.gid())
        };
        assert_eq!(owner("."), (200_000, 200_000));
        assert_eq!(owner("home"), (201_000, 200_100));
        assert_eq!(owner("home/l"), (200_007, 200_008));
        assert_eq!(owner("home/f"), (70_000, 200_000));
    }

    #[test]
    fn ensure_dir_never_follows_symlinks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("rootfs");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&root).expect("mkdir");
        fs::create_dir_all(&outside).expect("mkdir");
        symlink(&outside, root.join("escape")).expect("symlink");
        let me = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        ensure_dir(&root, "/srv/app/data", me, gid).expect("create");
        assert!(root.join("srv/app/data").is_dir());
        ensure_dir(&root, "/escape/x", me, gid).expect("skip");
        assert!(!outside.join("x").exists());
        ensure_dir(&root, "/../x", me, gid).expect("skip");
        assert!(!tmp.path().join("x").exists());
        ensure_dir(&root, "/", me, gid).expect("root");
    }

    #[test]
    fn overlay_paths_are_checked() {
        assert!(overlay_path(Path::new("/a/b")).is_ok());
        assert!(overlay_path(Path::new("/a,b")).is_err());
        assert!(overlay_path(Path::new("/a:b")).is_err());
    }
}
