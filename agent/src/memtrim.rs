//! Start-up code out of the resident set (issue 7: agent RSS).
//!
//! Most of an idle agent's resident memory is not heap: it is the pages of its own executable
//! that start-up ran through (argument parsing, configuration, opening the image store, starting
//! the launcher, restoring state), mapped into the process and kept there although the idle loop
//! never runs that code again. The kernel maps file pages in 64 KiB windows around each fault
//! (fault-around), so a few hundred functions touched once keep several MiB of the binary mapped.
//!
//! [`release_startup_pages`] does what the kernel does with its own `__init` sections once booted:
//! when start-up is over it unmaps (`madvise(MADV_DONTNEED)`) this process's read-only, unmodified
//! mappings of its executable. Nothing is lost: the pages stay in the page cache, and whatever the
//! process runs next is mapped again on first use (a minor fault, no I/O while the page is
//! cached). What stays resident afterwards is the code the process actually keeps using, and the
//! page cache may drop the rest under memory pressure without touching the process.
//!
//! Container work does the same on a smaller scale: a burst of starts maps libcontainer's and
//! the runtime's paths, which the idle loop never runs. Both processes release again once they
//! have been quiet for [`RELEASE_AFTER_WORK`] after such work (the launcher after its last
//! request or reaped child, the agent after its last request to the launcher).
//!
//! Only mappings that are not writable and hold no private (anonymous) pages are released: for
//! those, dropping the mapping cannot lose data. Writable data, the heap and relocated
//! read-only data (RELRO of a static-pie build, copied on write at start) are never touched.
//! The one anonymous memory released is the main thread's stack far below the caller's frame
//! (start-up's deepest calls; nothing lives below the stack pointer).

// The one unsafe call is madvise(2) on ranges read from /proc/self/smaps.
#![allow(unsafe_code)]

use std::os::unix::fs::MetadataExt;

/// Quiet time after container work (starting, stopping, exec'ing) before a process releases its
/// executable's pages again: that work maps libcontainer's and the runtime's code paths, which
/// then stay resident although the idle loop does not run them.
pub const RELEASE_AFTER_WORK: std::time::Duration = std::time::Duration::from_secs(20);

/// One mapping of the executable that may be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: usize,
    len: usize,
}

/// Unmaps the executable's read-only, unmodified pages from this process (see the module doc).
/// Returns the bytes of address space advised. Errors (no /proc, an unexpected format) release
/// nothing: this is an optimisation, never a reason to stop.
pub fn release_startup_pages() -> usize {
    let Ok(exe) = std::fs::metadata("/proc/self/exe") else {
        return 0;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = release_unused_stack(&smaps);
    for r in releasable(&smaps, exe.dev(), exe.ino()) {
        // SAFETY: the range is a whole mapping of the executable file, private, not writable and
        // without anonymous (copied-on-write) pages, as /proc/self/smaps listed it just now: its
        // contents are exactly the file's, which MADV_DONTNEED maps again on the next access.
        // No Rust reference is invalidated, the memory reads the same before and after.
        let rc = unsafe { libc::madvise(r.start as *mut libc::c_void, r.len, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += r.len;
        }
    }
    released
}

/// What stays mapped of the main thread's stack below the caller's frame: start-up goes deeper
/// (configuration, image store, state restore) than the idle loop ever does again.
const STACK_KEEP: usize = 32 * 1024;

/// Drops the main thread's stack pages more than [`STACK_KEEP`] below the caller's frame
/// (`MADV_DONTNEED`: they read as zeros when touched again, and nothing lives below the stack
/// pointer). Only when this runs on the main thread (the agent's and the launcher's loops do);
/// on any other thread its stack is not `[stack]` and nothing is released.
fn release_unused_stack(smaps: &str) -> usize {
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    let Some(r) = unused_stack(smaps, sp, page_size()) else {
        return 0;
    };
    // SAFETY: the range is the part of this thread's own stack mapping lying more than
    // STACK_KEEP below a local of this frame: below the stack pointer of this call and of
    // madvise's few frames under it, so no live frame, local or reference points into it.
    // Signal handlers that run later write their frames afresh. MADV_DONTNEED on private
    // anonymous memory leaves it mapped, reading as zeros.
    let rc = unsafe { libc::madvise(r.start as *mut libc::c_void, r.len, libc::MADV_DONTNEED) };
    if rc == 0 {
        r.len
    } else {
        0
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p)
        .ok()
        .filter(|&p| p.is_power_of_two())
        .unwrap_or(4096)
}

/// The part of the `[stack]` mapping in `smaps` more than [`STACK_KEEP`] below `sp`, whole pages
/// of `page`; `None` when `sp` is not in that mapping (another thread) or nothing is that deep.
fn unused_stack(smaps: &str, sp: usize, page: usize) -> Option<Range> {
    let line = smaps.lines().find(|l| l.trim_end().ends_with(" [stack]"))?;
    let (start, end) = line.split_ascii_whitespace().next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    if !(start..end).contains(&sp) {
        return None;
    }
    let top = sp.checked_sub(STACK_KEEP)? & !(page - 1);
    (top > start).then(|| Range {
        start,
        len: top - start,
    })
}

/// The mappings of the file `(dev, ino)` in `smaps` text that are private, not writable and have
/// no anonymous pages.
fn releasable(smaps: &str, dev: u64, ino: u64) -> Vec<Range> {
    let mut out = Vec::new();
    let mut current: Option<Range> = None;
    for line in smaps.lines() {
        if let Some(range) = header(line, dev, ino) {
            current = range;
            continue;
        }
        // The mapping's fields follow its header; `Anonymous:` decides.
        if let Some(rest) = line.strip_prefix("Anonymous:") {
            let anon_kib = rest.trim().trim_end_matches("kB").trim().parse::<u64>();
            if let (Some(r), Ok(0)) = (current.take(), anon_kib) {
                out.push(r);
            }
        }
    }
    out
}

/// For a mapping header line (`start-end perms offset dev inode path`): `Some(Some(range))` when
/// it maps `(dev, ino)` private and read-only, `Some(None)` for any other mapping, `None` when
/// the line is not a header (a field line such as `Rss: 4 kB`).
fn header(line: &str, dev: u64, ino: u64) -> Option<Option<Range>> {
    let mut f = line.split_ascii_whitespace();
    let (range, perms, _offset, devno, inode) =
        (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    if perms.len() != 4 {
        return None;
    }
    let (major, minor) = devno.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    let inode = inode.parse::<u64>().ok()?;
    let ours = inode == ino
        && libc::makedev(major, minor) == dev
        && perms.starts_with('r')
        && !perms.contains('w')
        && perms.ends_with('p');
    Some((ours && end > start).then_some(Range {
        start,
        len: end - start,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
00400000-00500000 r--p 00000000 08:01 1234                               /usr/bin/skiff
Size:               1024 kB
Rss:                 512 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw
00500000-00900000 r-xp 00100000 08:01 1234                               /usr/bin/skiff
Size:               4096 kB
Anonymous:             0 kB
00900000-00980000 r--p 00500000 08:01 1234                               /usr/bin/skiff
Anonymous:           512 kB
00980000-009a0000 rw-p 00580000 08:01 1234                               /usr/bin/skiff
Anonymous:            64 kB
7f0000000000-7f0000100000 r--p 00000000 08:01 999                        /usr/lib/other.so
Anonymous:             0 kB
7f0000100000-7f0000200000 r-xs 00000000 08:01 1234                       /usr/bin/skiff
Anonymous:             0 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Anonymous:           132 kB
";

    #[test]
    fn only_read_only_private_unmodified_mappings_of_the_executable() {
        let dev = libc::makedev(8, 1);
        let got = releasable(SMAPS, dev, 1234);
        assert_eq!(
            got,
            vec![
                Range {
                    start: 0x40_0000,
                    len: 0x10_0000
                },
                Range {
                    start: 0x50_0000,
                    len: 0x40_0000
                },
            ],
            "text and rodata only: not the relocated RELRO (anonymous pages), not data, not \
             another file, not a shared mapping"
        );
        assert!(
            releasable(SMAPS, libc::makedev(8, 2), 1234).is_empty(),
            "other device"
        );
    }

    #[test]
    fn the_stack_below_the_caller_less_what_it_keeps() {
        let sp = 0x7ffc_0001_8123;
        let r = unused_stack(SMAPS, sp, 4096).expect("sp is in [stack]");
        assert_eq!(r.start, 0x7ffc_0000_0000);
        assert_eq!(r.start + r.len, (sp - STACK_KEEP) & !4095);
        assert!(r.start + r.len + STACK_KEEP <= sp);
        assert_eq!(
            unused_stack(SMAPS, 0x7f00_0000_1000, 4096),
            None,
            "sp outside [stack]: another thread's stack"
        );
        assert_eq!(
            unused_stack(SMAPS, 0x7ffc_0000_4000, 4096),
            None,
            "nothing deeper than STACK_KEEP"
        );
        assert_eq!(unused_stack("", sp, 4096), None, "no [stack] line");
    }

    #[test]
    fn a_live_process_releases_its_text_and_keeps_running() {
        let released = release_startup_pages();
        assert!(released > 0, "the test binary maps its own text");
        // The code runs on: everything this test calls after the release is mapped again.
        let v: Vec<u64> = (0..1000).map(|i| i * 3).collect();
        assert_eq!(v.iter().sum::<u64>(), 1_498_500);
    }
}
