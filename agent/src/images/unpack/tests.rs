//! Layer unpacking, with hand-built tars: whiteouts, links, and every way out of the rootfs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A layer tar built entry by entry.
struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

impl Layer {
    fn new() -> Self {
        Layer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn file(mut self, path: &str, mode: u32, content: &[u8]) -> Self {
        let mut h = header(EntryType::Regular, mode, content.len() as u64);
        self.builder
            .append_data(&mut h, path, content)
            .expect("append file");
        self
    }

    fn file_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(EntryType::Regular, mode, 1);
        h.set_uid(uid);
        h.set_gid(gid);
        self.builder
            .append_data(&mut h, path, &b"x"[..])
            .expect("append file");
        self
    }

    fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(EntryType::Directory, mode, 0);
        self.builder
            .append_data(&mut h, path, io::empty())
            .expect("append dir");
        self
    }

    fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        self.builder
            .append_link(&mut h, path, target)
            .expect("append symlink");
        self
    }

    fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(EntryType::Link, 0o644, 0);
        self.builder
            .append_link(&mut h, path, target)
            .expect("append hard link");
        self
    }

    fn device(mut self, path: &str, kind: EntryType) -> Self {
        let mut h = header(kind, 0o666, 0);
        h.set_device_major(1).expect("major");
        h.set_device_minor(3).expect("minor");
        self.builder
            .append_data(&mut h, path, io::empty())
            .expect("append device");
        self
    }

    /// An entry whose name (and link name) bytes are written raw: `tar::Header::set_path`
    /// refuses `..` and absolute paths, which is what these tests need to feed the unpacker.
    fn raw(mut self, kind: EntryType, name: &str, link: &str, content: &[u8]) -> Self {
        let mut h = header(kind, 0o644, content.len() as u64);
        {
            let old = h.as_old_mut();
            assert!(name.len() < old.name.len() && link.len() < old.linkname.len());
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        self.builder.append(&h, content).expect("append raw");
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish tar")
    }

    fn apply(self, root: &Path) -> Result<(), UnpackError> {
        apply_tar(root, &self.bytes()[..])
    }
}

/// A rootfs directory and, beside it, an "outside" directory the layers must not touch.
struct Sandbox {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Sandbox {
    fn new() -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir(&root)?;
        fs::create_dir(&outside)?;
        fs::write(outside.join("secret"), b"orig")?;
        Ok(Sandbox {
            _dir: dir,
            root,
            outside,
        })
    }

    fn outside_str(&self) -> String {
        self.outside.display().to_string()
    }

    /// The outside directory still holds exactly its one untouched file.
    fn assert_outside_untouched(&self) -> TestResult {
        let names: Vec<_> = fs::read_dir(&self.outside)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(
            names,
            vec![OsString::from("secret")],
            "outside was written to"
        );
        assert_eq!(fs::read(self.outside.join("secret"))?, b"orig");
        assert_eq!(fs::metadata(self.outside.join("secret"))?.nlink(), 1);
        Ok(())
    }

    /// `path` (absolute) as seen from inside the rootfs.
    fn inside(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

fn mode(path: &Path) -> io::Result<u32> {
    Ok(fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
}

#[test]
fn unpacks_files_dirs_and_links() -> TestResult {
    let sb = Sandbox::new()?;
    Layer::new()
        .dir("bin/", 0o755)
        .file("bin/busybox", 0o755, b"#!binary")
        .symlink("bin/sh", "busybox")
        .hardlink("bin/ash", "bin/busybox")
        .dir("tmp/", 0o1777)
        .file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n")
        .apply(&sb.root)?;
    assert_eq!(fs::read(sb.root.join("bin/busybox"))?, b"#!binary");
    assert_eq!(mode(&sb.root.join("bin/busybox"))?, 0o755);
    assert_eq!(fs::read_link(sb.root.join("bin/sh"))?, Path::new("busybox"));
    assert_eq!(
        fs::metadata(sb.root.join("bin/ash"))?.ino(),
        fs::metadata(sb.root.join("bin/busybox"))?.ino()
    );
    assert_eq!(mode(&sb.root.join("tmp"))?, 0o1777);
    // The implicit parent `etc` was created.
    assert!(sb.root.join("etc").is_dir());
    assert_eq!(fs::metadata(sb.root.join("bin/busybox"))?.mtime(), 0);
    Ok(())
}

#[test]
fn keeps_setuid_bits_only_as_in_the_tar_and_owners() -> TestResult {
    let sb = Sandbox::new()?;
    Layer::new()
        .file("bin/su", 0o4755, b"su")
        .file("bin/wall", 0o2755, b"wall")
        .file("bin/plain", 0o755, b"plain")
        .file_owned("home/user/file", 0o4750, 1000, 1001)
        .apply(&sb.root)?;
    assert_eq!(mode(&sb.root.join("bin/su"))?, 0o4755);
    assert_eq!(mode(&sb.root.join("bin/wall"))?, 0o2755);
    assert_eq!(mode(&sb.root.join("bin/plain"))?, 0o755);
    if nix::unistd::geteuid().is_root() {
        let m = fs::metadata(sb.root.join("home/user/file"))?;
        assert_eq!((m.uid(), m.gid()), (1000, 1001));
        // chown ran before chmod, so the setuid bit survived.
        assert_eq!(m.permissions().mode() & 0o7777, 0o4750);
    }
    Ok(())
}

#[test]
fn rejects_dotdot_entry_names() -> TestResult {
    for name in [
        "../outside/pwned",
        "a/../../outside/pwned",
        "./../x",
        "a/..",
    ] {
        let sb = Sandbox::new()?;
        let err = Layer::new()
            .raw(EntryType::Regular, name, "", b"pwned")
            .apply(&sb.root)
            .expect_err(name);
        assert!(matches!(err, UnpackError::Escape { .. }), "{name}: {err}");
        assert!(
            err.to_string().contains("escapes the root filesystem"),
            "{err}"
        );
        sb.assert_outside_untouched()?;
    }
    Ok(())
}

#[test]
fn absolute_entry_names_stay_inside() -> TestResult {
    let sb = Sandbox::new()?;
    let name = format!("{}/pwned", sb.outside_str());
    Layer::new()
        .raw(EntryType::Regular, &name, "", b"pwned")
        .raw(EntryType::Directory, "/etc/", "", b"")
        .apply(&sb.root)?;
    sb.assert_outside_untouched()?;
    assert_eq!(fs::read(sb.inside(Path::new(&name)))?, b"pwned");
    assert!(sb.root.join("etc").is_dir());
    Ok(())
}

#[test]
fn writes_through_absolute_symlink_stay_inside() -> TestResult {
    let sb = Sandbox::new()?;
    Layer::new()
        .symlink("evil", &sb.outside_str())
        .file("evil/pwned", 0o644, b"pwned")
        .dir("evil/newdir/", 0o755)
        .apply(&sb.root)?;
    sb.assert_outside_untouched()?;
    let inside = sb.inside(&sb.outside);
    assert_eq!(fs::read(inside.join("pwned"))?, b"pwned");
    assert!(inside.join("newdir").is_dir());
    // The symlink itself is kept as the image wrote it.
    assert_eq!(fs::read_link(sb.root.join("evil"))?, sb.outside);
    Ok(())
}

#[test]
fn writes_through_relative_symlink_stay_inside() -> TestResult {
    let sb = Sandbox::new()?;
    Layer::new()
        .symlink("up", "../../../../../../../../..")
        .file("up/pwned-root", 0o644, b"x")
        .symlink("sib", "../outside")
        .file("sib/pwned", 0o644, b"x")
        .apply(&sb.root)?;
    sb.assert_outside_untouched()?;
    // `..` stops at the rootfs: `up` is the rootfs itself, `sib` is /outside inside it.
    assert!(sb.root.join("pwned-root").is_file());
    assert!(sb.root.join("outside/pwned").is_file());
    Ok(())
}

#[test]
fn symlink_in_a_parent_created_by_an_earlier_entry_stays_inside() -> TestResult {
    let sb = Sandbox::new()?;
    Layer::new()
        .dir("dir/", 0o755)
        .symlink("dir/sub", &sb.outside_str())
        .file("dir/sub/deeper/pwned", 0o644, b"x")
        .apply(&sb.root)?;
    sb.assert_outside_untouched()?;
    assert!(sb.inside(&sb.outside).join("deeper/pwned").is_file());
    Ok(())
}

#[test]
fn symlink_from_an_earlier_layer_stays_inside() -> TestResult {
    let sb = Sandbox::new()?;
    Layer::new()
        .symlink("lib", &sb.outside_str())
        .apply(&sb.root)?;
    Layer::new()
        .file("lib/pwned", 0o644, b"x")
        .apply(&sb.root)?;
    sb.assert_outside_untouched()?;
    assert!(sb.inside(&sb.outside).join("pwned").is_file());
    Ok(())
}

#[test]
fn in_root_symlinked_dirs_are_followed() -> TestResult {
    // Merged /usr: `lib -> usr/lib` and `/bin -> /usr/bin`, then files written through them.
    let sb = Sandbox::new()?;
    Layer::new()
        .dir("usr/lib/", 0o755)
        .dir("usr/bin/", 0o755)
        .symlink("lib", "usr/lib")
        .symlink("bin", "/usr/bin")
        .apply(&sb.root)?;
    Layer::new()
        .file("lib/libc.so", 0o644, b"libc")
        .file("bin/sh", 0o755, b"sh")
        .apply(&sb.root)?;
    assert_eq!(fs::read(sb.root.join("usr/lib/libc.so"))?, b"libc");
    assert_eq!(fs::read(sb.root.join("usr/bin/sh"))?, b"sh");
    assert!(fs::symlink_metadata(sb.root.join("lib"))?
        .file_type()
        .is_symlink());
    Ok(())
}

#[test]
fn replaces_a_final_symlink_instead_of_writing_through_it() -> TestResult {
    let sb = Sandbox::new()?;
    let secret = sb.outside.join("secret").display().to_string();
    Layer::new()
        .symlink("etc/passwd", &secret)
        .symlink("etc/dir", &sb.outside_str())
        .apply(&sb.root)?;
    Layer::new()
        .file("etc/passwd", 0o644, b"new")
        .dir("etc/dir/", 0o700)
        .apply(&sb.root)?;
    sb.assert_outside_untouched()?;
    assert_eq!(fs::read(sb.root.join("etc/passwd"))?, b"new");
    assert!(fs::symlink_metadata(sb.root.join("etc/dir"))?.is_dir());
    assert_eq!(mode(&sb.root.join("etc/dir"))?, 0o700);
    Ok(())
}

#[test]
fn rejects_hard_links_leading_outside() -> TestResult {
    let sb = Sandbox::new()?;
    let err = Layer::new()
        .hardlink("h", "../outside/secret")
        .apply(&sb.root)
        .expect_err("dotdot hard link");
    assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
    sb.assert_outside_untouched()?;

    // An absolute target is taken inside the rootfs, where it does not exist.
    let secret = sb.outside.join("secret").display().to_string();
    let err = Layer::new()
        .hardlink("h", &secret)
        .apply(&sb.root)
        .expect_err("absolute hard link");
    assert!(matches!(err, UnpackError::BadEntry { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    sb.assert_outside_untouched()?;

    // Through a symlinked parent: resolved inside too.
    let err = Layer::new()
        .symlink("s", &sb.outside_str())
        .hardlink("h", "s/secret")
        .apply(&sb.root)
        .expect_err("hard link through symlink");
    assert!(matches!(err, UnpackError::BadEntry { .. }), "{err}");
    sb.assert_outside_untouched()?;
    assert!(!sb.root.join("h").exists());
    Ok(())
}

#[test]
fn hard_link_to_a_symlink_links_the_symlink_itself() -> TestResult {
    let sb = Sandbox::new()?;
    let secret = sb.outside.join("secret").display().to_string();
    Layer::new()
        .symlink("s", &secret)
        .hardlink("h", "s")
        .apply(&sb.root)?;
    sb.assert_outside_untouched()?;
    assert!(fs::symlink_metadata(sb.root.join("h"))?
        .file_type()
        .is_symlink());
    Ok(())
}

#[test]
fn rejects_hard_links_to_directories_and_missing_targets() -> TestResult {
    let sb = Sandbox::new()?;
    let err = Layer::new()
        .dir("d/", 0o755)
        .hardlink("h", "d")
        .apply(&sb.root)
        .expect_err("hard link to dir");
    assert!(err.to_string().contains("hard link to directory"), "{err}");
    let err = Layer::new()
        .hardlink("h2", "nope")
        .apply(&sb.root)
        .expect_err("missing target");
    assert!(err.to_string().contains("does not exist"), "{err}");
    Ok(())
}

#[test]
fn skips_device_nodes_and_makes_fifos() -> TestResult {
    let sb = Sandbox::new()?;
    Layer::new()
        .device("dev/null", EntryType::Char)
        .device("dev/sda", EntryType::Block)
        .raw(EntryType::Fifo, "run/fifo", "", b"")
        .file("dev/keep", 0o644, b"")
        .apply(&sb.root)?;
    assert!(!sb.root.join("dev/null").exists());
    assert!(!sb.root.join("dev/sda").exists());
    assert!(sb.root.join("dev/keep").exists());
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(sb.root.join("run/fifo"))?.file_type()
    ));
    Ok(())
}

#[test]
fn whiteouts_remove_lower_layer_files() -> TestResult {
    let sb = Sandbox::new()?;
    Layer::new()
        .file("a/x", 0o644, b"x")
        .file("a/y", 0o644, b"y")
        .file("b/z", 0o644, b"z")
        .file("keep", 0o644, b"k")
        .apply(&sb.root)?;
    Layer::new()
        .file("a/.wh.x", 0o644, b"")
        .file(".wh.b", 0o644, b"")
        .file(".wh.never-existed", 0o644, b"")
        .apply(&sb.root)?;
    assert!(!sb.root.join("a/x").exists());
    assert!(sb.root.join("a/y").exists());
    assert!(!sb.root.join("b").exists());
    assert!(sb.root.join("keep").exists());
    // Whiteout files themselves are never created.
    assert!(!sb.root.join("a/.wh.x").exists());
    assert!(!sb.root.join(".wh.b").exists());
    Ok(())
}

#[test]
fn whiteouts_leave_same_layer_files_alone() -> TestResult {
    let sb = Sandbox::new()?;
    Layer::new()
        .file("f", 0o644, b"same layer")
        .file(".wh.f", 0o644, b"")
        .apply(&sb.root)?;
    assert_eq!(fs::read(sb.root.join("f"))?, b"same layer");
    Ok(())
}

#[test]
fn opaque_whiteout_hides_lower_directory_contents() -> TestResult {
    let sb = Sandbox::new()?;
    Layer::new()
        .file("c/old", 0o644, b"old")
        .file("c/sub/old", 0o644, b"old")
        .file("other", 0o644, b"")
        .apply(&sb.root)?;
    Layer::new()
        .dir("c/", 0o755)
        .file("c/sub/new-before", 0o644, b"new")
        .file("c/.wh..wh..opq", 0o644, b"")
        .file("c/new-after", 0o644, b"new")
        .apply(&sb.root)?;
    let mut names: Vec<_> = fs::read_dir(sb.root.join("c"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(
        names,
        vec![OsString::from("new-after"), OsString::from("sub")]
    );
    // `sub` was recreated by this layer, but its lower content is hidden all the same.
    let sub: Vec<_> = fs::read_dir(sb.root.join("c/sub"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(sub, vec![OsString::from("new-before")]);
    assert!(sb.root.join("other").exists());
    assert!(!sb.root.join("c/.wh..wh..opq").exists());
    Ok(())
}

#[test]
fn whiteouts_cannot_escape() -> TestResult {
    let sb = Sandbox::new()?;
    // A whiteout under a symlink to outside removes nothing outside.
    Layer::new()
        .symlink("s", &sb.outside_str())
        .apply(&sb.root)?;
    Layer::new()
        .file("s/.wh.secret", 0o644, b"")
        .file("s/.wh..wh..opq", 0o644, b"")
        .apply(&sb.root)?;
    sb.assert_outside_untouched()?;
    let err = Layer::new()
        .raw(EntryType::Regular, "x/.wh...", "", b"")
        .apply(&sb.root)
        .expect_err("whiteout of ..");
    assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
    sb.assert_outside_untouched()?;
    Ok(())
}

#[test]
fn replaces_directories_with_files_and_back() -> TestResult {
    let sb = Sandbox::new()?;
    Layer::new()
        .file("d/inner", 0o644, b"")
        .file("f", 0o644, b"")
        .apply(&sb.root)?;
    Layer::new()
        .file("d", 0o600, b"now a file")
        .dir("f/", 0o755)
        .file("f/inner", 0o644, b"inner")
        .apply(&sb.root)?;
    assert_eq!(fs::read(sb.root.join("d"))?, b"now a file");
    assert_eq!(mode(&sb.root.join("d"))?, 0o600);
    assert_eq!(fs::read(sb.root.join("f/inner"))?, b"inner");
    Ok(())
}

#[test]
fn file_in_place_of_a_parent_directory_is_an_error() -> TestResult {
    let sb = Sandbox::new()?;
    let err = Layer::new()
        .file("f", 0o644, b"")
        .file("f/inner", 0o644, b"")
        .apply(&sb.root)
        .expect_err("parent is a file");
    assert!(err.to_string().contains("/f is not a directory"), "{err}");
    Ok(())
}

#[test]
fn symlink_loops_are_an_error() -> TestResult {
    let sb = Sandbox::new()?;
    let err = Layer::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("a/x", 0o644, b"")
        .apply(&sb.root)
        .expect_err("loop");
    assert!(err.to_string().contains("too many levels"), "{err}");
    Ok(())
}

#[test]
fn gzip_layers_and_diff_ids() -> TestResult {
    let sb = Sandbox::new()?;
    let tar = Layer::new().file("hello", 0o644, b"hi").bytes();
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    let gz = gz.finish()?;

    unpack_layer(
        &sb.root,
        &gz[..],
        media_type::OCI_LAYER_GZIP,
        Some(&diff_id),
    )?;
    assert_eq!(fs::read(sb.root.join("hello"))?, b"hi");
    unpack_layer(
        &sb.root,
        &gz[..],
        media_type::DOCKER_LAYER_GZIP,
        Some(&diff_id),
    )?;
    unpack_layer(&sb.root, &tar[..], media_type::OCI_LAYER, Some(&diff_id))?;

    let wrong = Digest::of(b"other");
    let err = unpack_layer(&sb.root, &tar[..], media_type::OCI_LAYER, Some(&wrong))
        .expect_err("diff id mismatch");
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
    Ok(())
}

#[test]
fn unknown_media_types_are_rejected() {
    let err = compression_of("application/x-rar").expect_err("unknown");
    assert!(err.to_string().contains("application/x-rar"), "{err}");
}

#[test]
fn zstd_layers_unpack_and_are_checked_against_their_diff_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "etc/zstd-file", &b"hello"[..])
        .expect("append");
    let tar = b.into_inner().expect("tar");
    let blob =
        ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    assert_eq!(
        compression_of(media_type::OCI_LAYER_ZSTD).ok(),
        Some(Compression::Zstd)
    );
    unpack_layer(
        dir.path(),
        &blob[..],
        media_type::OCI_LAYER_ZSTD,
        Some(&Digest::of(&tar)),
    )
    .expect("unpack");
    assert_eq!(
        std::fs::read(dir.path().join("etc/zstd-file")).expect("read"),
        b"hello"
    );
    // Not zstd at all, and a wrong diff_id: both errors.
    let other = tempfile::tempdir().expect("tempdir");
    let err = unpack_layer(other.path(), &tar[..], media_type::OCI_LAYER_ZSTD, None)
        .expect_err("not zstd");
    assert!(matches!(err, UnpackError::Zstd { .. }), "{err}");
    let err = unpack_layer(
        other.path(),
        &blob[..],
        media_type::OCI_LAYER_ZSTD,
        Some(&Digest::of(b"x")),
    )
    .expect_err("diff id");
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
}

#[test]
fn corrupt_archives_are_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = unpack_layer(
        dir.path(),
        &b"not gzip at all"[..],
        media_type::OCI_LAYER_GZIP,
        None,
    )
    .expect_err("corrupt gzip");
    assert!(matches!(err, UnpackError::Archive { .. }), "{err}");
}
