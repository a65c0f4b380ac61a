//! Seccomp without libseccomp: the OCI `linux.seccomp` section of a container's spec compiled to
//! a classic BPF program by skiff itself, and installed by the container's init process right
//! before `execve` (in [`super::launcher`]'s executor). Pure Rust, so every build has it, the
//! static ARM ones included; libcontainer's own seccomp support needs the C libseccomp.
//!
//! The program checks the architecture first (the build's own, plus its 32-bit companion: i386
//! on x86_64, ARM on aarch64, so 32-bit images keep working; anything else kills the process,
//! and x32 calls on x86_64 are refused), then finds the syscall number by binary search and
//! runs its rule: allow, an errno, or argument conditions. Names an architecture does not have
//! are skipped, as libseccomp does.
//!
//! Installing a filter without `CAP_SYS_ADMIN` needs `no_new_privileges`: skiff asks for the
//! filter only together with it (see [`skiff_proto::ContainerSecurity::filtered`]).

mod profile;
mod tables;

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

pub use profile::default_profile;

/// Why a profile could not be compiled or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp action {0:?} is not supported by skiff's filter compiler")]
    Action(LinuxSeccompAction),
    #[error("seccomp operator {0:?} is not supported by skiff's filter compiler")]
    Operator(LinuxSeccompOperator),
    #[error("seccomp argument index {0} is out of range (0..=5)")]
    ArgIndex(usize),
    #[error("the seccomp program has {0} instructions, the kernel takes at most 4096")]
    TooLong(usize),
    #[error("a jump in the seccomp program is too far ({0} instructions)")]
    JumpTooFar(usize),
    #[error("no syscall table for this architecture: containers can't be filtered here")]
    UnsupportedArch,
    #[error("cannot install the seccomp filter: {0}")]
    Install(std::io::Error),
}

/// Whether this build can filter containers' syscalls.
pub const AVAILABLE: bool = !ARCHES.is_empty();

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

// seccomp return values (linux/seccomp.h).
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// struct seccomp_data offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const EPERM: u32 = 1;
const MAX_INSNS: usize = 4096;

/// One architecture the filter accepts: its `AUDIT_ARCH_*` value and syscall table.
struct Arch {
    audit: u32,
    table: &'static [(&'static str, u32)],
    /// x86_64: refuse x32 syscalls (numbers with bit 30), which share the audit value.
    refuse_x32: bool,
}

#[cfg(target_arch = "x86_64")]
const ARCHES: &[Arch] = &[
    Arch {
        audit: 0xC000_003E,
        table: tables::X86_64,
        refuse_x32: true,
    },
    Arch {
        audit: 0x4000_0003,
        table: tables::X86,
        refuse_x32: false,
    },
];
#[cfg(target_arch = "aarch64")]
const ARCHES: &[Arch] = &[
    Arch {
        audit: 0xC000_00B7,
        table: tables::AARCH64,
        refuse_x32: false,
    },
    Arch {
        audit: 0x4000_0028,
        table: tables::ARM,
        refuse_x32: false,
    },
];
#[cfg(target_arch = "arm")]
const ARCHES: &[Arch] = &[Arch {
    audit: 0x4000_0028,
    table: tables::ARM,
    refuse_x32: false,
}];
#[cfg(target_arch = "x86")]
const ARCHES: &[Arch] = &[Arch {
    audit: 0x4000_0003,
    table: tables::X86,
    refuse_x32: false,
}];
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "x86"
)))]
const ARCHES: &[Arch] = &[];

/// A compiled program: `struct sock_filter` entries.
pub type Program = Vec<libc::sock_filter>;

/// A jump target while assembling.
#[derive(Clone, Copy)]
enum To {
    Next,
    Label(usize),
}

enum Ins {
    Ld(u32),
    And(u32),
    Jeq(u32, To, To),
    Jge(u32, To, To),
    Ja(usize),
    Ret(u32),
    Label(usize),
}

#[derive(Default)]
struct Asm {
    code: Vec<Ins>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }

    fn here(&mut self, l: usize) {
        self.code.push(Ins::Label(l));
    }

    fn push(&mut self, i: Ins) {
        self.code.push(i);
    }

    fn finish(self) -> Result<Program, SeccompError> {
        let mut at = vec![0usize; self.labels];
        let mut n = 0;
        for i in &self.code {
            match i {
                Ins::Label(l) => at[*l] = n,
                _ => n += 1,
            }
        }
        if n > MAX_INSNS {
            return Err(SeccompError::TooLong(n));
        }
        let mut out = Vec::with_capacity(n);
        let stmt = |code: u16, k: u32| libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        };
        for i in &self.code {
            let pc = out.len();
            let rel = |to: To| -> Result<u8, SeccompError> {
                match to {
                    To::Next => Ok(0),
                    To::Label(l) => {
                        let d = at[l] - pc - 1;
                        u8::try_from(d).map_err(|_| SeccompError::JumpTooFar(d))
                    }
                }
            };
            let ins = match *i {
                Ins::Label(_) => continue,
                Ins::Ld(off) => stmt(BPF_LD_W_ABS, off),
                Ins::And(k) => stmt(BPF_ALU_AND_K, k),
                Ins::Ret(k) => stmt(BPF_RET_K, k),
                // At most MAX_INSNS, checked above.
                Ins::Ja(l) => stmt(
                    BPF_JMP_JA,
                    u32::try_from(at[l] - pc - 1).map_err(|_| SeccompError::TooLong(n))?,
                ),
                Ins::Jeq(k, t, f) | Ins::Jge(k, t, f) => libc::sock_filter {
                    code: if matches!(i, Ins::Jeq(..)) {
                        BPF_JEQ_K
                    } else {
                        BPF_JGE_K
                    },
                    jt: rel(t)?,
                    jf: rel(f)?,
                    k,
                },
            };
            out.push(ins);
        }
        Ok(out)
    }
}

fn ret_of(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SeccompError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | (errno.unwrap_or(EPERM) & 0xffff),
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        other => return Err(SeccompError::Action(other)),
    })
}

/// One rule of a syscall: conditions on its arguments (all must hold), and the result.
#[derive(Clone)]
struct Rule {
    conds: Vec<(usize, LinuxSeccompOperator, u64, u64)>,
    ret: u32,
}

/// Compiles `profile` for this build's architectures.
pub fn compile(profile: &LinuxSeccomp) -> Result<Program, SeccompError> {
    if ARCHES.is_empty() {
        return Err(SeccompError::UnsupportedArch);
    }
    let default = ret_of(profile.default_action(), profile.default_errno_ret())?;
    // Rules by name, in profile order (the first rule whose conditions hold decides).
    let mut by_name: BTreeMap<&str, Vec<Rule>> = BTreeMap::new();
    for sc in profile.syscalls().iter().flatten() {
        let ret = ret_of(sc.action(), sc.errno_ret())?;
        let mut conds = Vec::new();
        for a in sc.args().iter().flatten() {
            if a.index() > 5 {
                return Err(SeccompError::ArgIndex(a.index()));
            }
            match a.op() {
                LinuxSeccompOperator::ScmpCmpEq
                | LinuxSeccompOperator::ScmpCmpNe
                | LinuxSeccompOperator::ScmpCmpMaskedEq => {}
                other => return Err(SeccompError::Operator(other)),
            }
            conds.push((a.index(), a.op(), a.value(), a.value_two().unwrap_or(0)));
        }
        for name in sc.names() {
            by_name.entry(name.as_str()).or_default().push(Rule {
                conds: conds.clone(),
                ret,
            });
        }
    }

    let mut asm = Asm::default();
    let kill = asm.label();
    let deny = asm.label();
    asm.push(Ins::Ld(OFF_ARCH));
    let arch_labels: Vec<usize> = ARCHES.iter().map(|_| asm.label()).collect();
    for (a, l) in ARCHES.iter().zip(&arch_labels) {
        let next = asm.label();
        asm.push(Ins::Jeq(a.audit, To::Next, To::Label(next)));
        asm.push(Ins::Ja(*l));
        asm.here(next);
    }
    asm.push(Ins::Ja(kill));
    for (a, l) in ARCHES.iter().zip(&arch_labels) {
        asm.here(*l);
        asm.push(Ins::Ld(OFF_NR));
        if a.refuse_x32 {
            let ok = asm.label();
            asm.push(Ins::Jge(X32_SYSCALL_BIT, To::Next, To::Label(ok)));
            asm.push(Ins::Ja(deny));
            asm.here(ok);
        }
        // Numbers this architecture has, with their rules (a number listed under two names,
        // such as ARM's sync_file_range2 / arm_sync_file_range, keeps the first rules).
        let mut nrs: BTreeMap<u32, &Vec<Rule>> = BTreeMap::new();
        for (name, rules) in &by_name {
            if let Some((_, nr)) = a.table.iter().find(|(n, _)| n == name) {
                nrs.entry(*nr).or_insert(rules);
            }
        }
        // Runs of consecutive numbers with the same plain result become one interval, so the
        // search is over far fewer entries (syscall numbers are dense) and most leaves are a
        // single `ret`; numbers with argument rules get a block of their own.
        let mut intervals: Vec<(u32, Leaf)> = Vec::new();
        let mut blocks = Vec::new();
        push_interval(&mut intervals, 0, Leaf::Ret(default));
        for (nr, rules) in &nrs {
            let leaf = match rules.as_slice() {
                [r] if r.conds.is_empty() => Leaf::Ret(r.ret),
                _ => {
                    let l = asm.label();
                    blocks.push((l, *rules));
                    Leaf::Block(l)
                }
            };
            push_interval(&mut intervals, *nr, leaf);
            if let Some(end) = nr.checked_add(1) {
                if !nrs.contains_key(&end) {
                    push_interval(&mut intervals, end, Leaf::Ret(default));
                }
            }
        }
        search(&mut asm, &intervals);
        for (l, rules) in blocks {
            asm.here(l);
            emit_rules(&mut asm, rules, deny);
        }
    }
    asm.here(deny);
    asm.push(Ins::Ret(default));
    asm.here(kill);
    asm.push(Ins::Ret(RET_KILL_PROCESS));
    asm.finish()
}

/// Adds an interval starting at `start` (not below the last one's start), merged into the
/// previous one when it leads to the same place.
fn push_interval(intervals: &mut Vec<(u32, Leaf)>, start: u32, leaf: Leaf) {
    if intervals.last().is_some_and(|(s, _)| *s == start) {
        intervals.pop();
    }
    if intervals.last().map(|(_, l)| *l) != Some(leaf) {
        intervals.push((start, leaf));
    }
}

/// What a range of syscall numbers leads to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Ret(u32),
    Block(usize),
}

/// Binary search for the number in the accumulator among `intervals` (sorted starts, each up
/// to the next start; the first starts at 0): returns the interval's result or jumps to its
/// block.
fn search(asm: &mut Asm, intervals: &[(u32, Leaf)]) {
    if let [(_, leaf)] = intervals {
        match *leaf {
            Leaf::Ret(k) => asm.push(Ins::Ret(k)),
            Leaf::Block(l) => asm.push(Ins::Ja(l)),
        }
        return;
    }
    let mid = intervals.len() / 2;
    let upper = asm.label();
    let lower = asm.label();
    asm.push(Ins::Jge(intervals[mid].0, To::Next, To::Label(lower)));
    asm.push(Ins::Ja(upper));
    asm.here(lower);
    search(asm, &intervals[..mid]);
    asm.here(upper);
    search(asm, &intervals[mid..]);
}

/// The rules of one syscall: the first whose conditions all hold returns its action; none:
/// the default.
fn emit_rules(asm: &mut Asm, rules: &[Rule], deny: usize) {
    for r in rules {
        let fail = asm.label();
        for &(i, op, value, value_two) in &r.conds {
            // i <= 5, checked when the rules were read.
            let lo = OFF_ARGS + 8 * u32::try_from(i).unwrap_or(5);
            let hi = lo + 4;
            let half = |v: u64, high: bool| {
                let v = if high { v >> 32 } else { v & 0xffff_ffff };
                u32::try_from(v).unwrap_or(u32::MAX)
            };
            match op {
                LinuxSeccompOperator::ScmpCmpNe => {
                    // Holds unless both halves are equal.
                    let pass = asm.label();
                    asm.push(Ins::Ld(lo));
                    asm.push(Ins::Jeq(half(value, false), To::Next, To::Label(pass)));
                    asm.push(Ins::Ld(hi));
                    asm.push(Ins::Jeq(half(value, true), To::Next, To::Label(pass)));
                    asm.push(Ins::Ja(fail));
                    asm.here(pass);
                }
                _ => {
                    // EQ: arg == value; MASKED_EQ: arg & value == value_two.
                    let (mask, want) = if op == LinuxSeccompOperator::ScmpCmpMaskedEq {
                        (Some(value), value_two)
                    } else {
                        (None, value)
                    };
                    for high in [false, true] {
                        asm.push(Ins::Ld(if high { hi } else { lo }));
                        if let Some(m) = mask {
                            asm.push(Ins::And(half(m, high)));
                        }
                        let ok = asm.label();
                        asm.push(Ins::Jeq(half(want, high), To::Label(ok), To::Next));
                        asm.push(Ins::Ja(fail));
                        asm.here(ok);
                    }
                }
            }
        }
        asm.push(Ins::Ret(r.ret));
        asm.here(fail);
    }
    asm.push(Ins::Ja(deny));
}

/// Installs `prog` on the calling thread. Needs `no_new_privileges` (or `CAP_SYS_ADMIN`).
#[allow(unsafe_code)]
pub fn install(prog: &Program) -> Result<(), SeccompError> {
    let len = u16::try_from(prog.len()).map_err(|_| SeccompError::TooLong(prog.len()))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies the program.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(SeccompError::Install(std::io::Error::last_os_error()))
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the subset the compiler emits, to run programs in tests.
    fn run(prog: &Program, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().expect("4 bytes"));
                }
                BPF_ALU_AND_K => acc &= i.k,
                BPF_JMP_JA => pc += i.k as usize,
                BPF_JEQ_K | BPF_JGE_K => {
                    let hit = if i.code == BPF_JEQ_K {
                        acc == i.k
                    } else {
                        acc >= i.k
                    };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
                BPF_RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn nr(table: &[(&str, u32)], name: &str) -> u32 {
        table
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, nr)| *nr)
            .unwrap_or_else(|| panic!("{name} not in the table"))
    }

    #[test]
    // libc's numbers are c_long: i64 here, i32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    fn the_native_table_agrees_with_libc() {
        let native = ARCHES[0].table;
        for (name, want) in [
            ("read", libc::SYS_read),
            ("write", libc::SYS_write),
            ("openat", libc::SYS_openat),
            ("clone", libc::SYS_clone),
            ("clone3", libc::SYS_clone3),
            ("execve", libc::SYS_execve),
            ("socket", libc::SYS_socket),
            ("personality", libc::SYS_personality),
            ("unshare", libc::SYS_unshare),
            ("mount", libc::SYS_mount),
            ("ptrace", libc::SYS_ptrace),
        ] {
            assert_eq!(i64::from(nr(native, name)), i64::from(want), "{name}");
        }
    }

    #[test]
    fn default_profile_decisions() {
        let a = &ARCHES[0];
        let t = a.table;
        let prog =
            compile(&default_profile(&["CHOWN", "KILL"]).expect("profile")).expect("compile");
        assert!(prog.len() < MAX_INSNS, "{} instructions", prog.len());
        let call = |name: &str, args: [u64; 6]| run(&prog, a.audit, nr(t, name), args);
        let none = [0; 6];
        assert_eq!(call("read", none), RET_ALLOW);
        assert_eq!(call("execve", none), RET_ALLOW);
        assert_eq!(call("mount", none), RET_ERRNO | 1, "mount needs SYS_ADMIN");
        assert_eq!(call("unshare", none), RET_ERRNO | 1);
        assert_eq!(call("reboot", none), RET_ERRNO | 1);
        assert_eq!(call("clone3", none), RET_ERRNO | 38, "clone3: ENOSYS");
        // clone: threads and fork yes, new namespaces no.
        assert_eq!(call("clone", [0x3d0f00, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call("clone", [0x11, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            call("clone", [0x2000_0000 | 0x11, 0, 0, 0, 0, 0]),
            RET_ERRNO | 1,
            "CLONE_NEWPID"
        );
        assert_eq!(call("socket", [2, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            call("socket", [40, 1, 0, 0, 0, 0]),
            RET_ERRNO | 1,
            "AF_VSOCK"
        );
        assert_eq!(call("socket", [40 | (1 << 32), 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call("personality", [8, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call("personality", [0xffff_ffff, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            call("personality", [0x0040_0000, 0, 0, 0, 0, 0]),
            RET_ERRNO | 1
        );
        // A number in no table, and another architecture.
        assert_eq!(run(&prog, a.audit, 4000, none), RET_ERRNO | 1);
        assert_eq!(
            run(&prog, 0xdead_beef, nr(t, "read"), none),
            RET_KILL_PROCESS
        );
        if a.refuse_x32 {
            assert_eq!(
                run(&prog, a.audit, X32_SYSCALL_BIT | nr(t, "read"), none),
                RET_ERRNO | 1
            );
        }
        // The 32-bit companion architecture has its own numbers.
        if let Some(b) = ARCHES.get(1) {
            assert_eq!(run(&prog, b.audit, nr(b.table, "read"), none), RET_ALLOW);
            assert_eq!(
                run(&prog, b.audit, nr(b.table, "mount"), none),
                RET_ERRNO | 1
            );
        }
        // Every name of the table: allowed if the base list has it, else refused (but for the
        // ones with argument rules).
        for (name, n) in t {
            if ["clone", "clone3", "socket", "personality"].contains(name) {
                continue;
            }
            let r = run(&prog, a.audit, *n, none);
            let want = if profile::BASE.contains(name) {
                RET_ALLOW
            } else {
                RET_ERRNO | 1
            };
            assert_eq!(r, want, "{name}");
        }
    }

    #[test]
    fn capabilities_unlock_their_syscalls() {
        let a = &ARCHES[0];
        let prog = compile(&default_profile(&["SYS_ADMIN", "SYS_TIME"]).expect("profile"))
            .expect("compile");
        let call =
            |name: &str, arg0: u64| run(&prog, a.audit, nr(a.table, name), [arg0, 0, 0, 0, 0, 0]);
        assert_eq!(call("mount", 0), RET_ALLOW);
        assert_eq!(call("clone3", 0), RET_ALLOW);
        assert_eq!(call("clone", 0x2000_0000), RET_ALLOW);
        assert_eq!(call("clock_settime", 0), RET_ALLOW);
        assert_eq!(call("reboot", 0), RET_ERRNO | 1);
    }

    #[test]
    fn filter_applies_in_a_child_process() {
        // A forked child with no_new_privs and the filter: an allowed call works, a refused
        // one fails with EPERM, clone3 with ENOSYS.
        let prog = compile(&default_profile(&[]).expect("profile")).expect("compile");
        // SAFETY: the child only makes raw syscalls and exits; no locks are taken after fork.
        match unsafe { libc::fork() } {
            0 => {
                let code = (|| unsafe {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        return 10;
                    }
                    if install(&prog).is_err() {
                        return 11;
                    }
                    if libc::getpid() <= 0 {
                        return 12;
                    }
                    let r = libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS);
                    if r != -1 || *libc::__errno_location() != libc::EPERM {
                        return 13;
                    }
                    let r = libc::syscall(libc::SYS_clone3, 0usize, 0usize);
                    if r != -1 || *libc::__errno_location() != libc::ENOSYS {
                        return 14;
                    }
                    0
                })();
                unsafe { libc::_exit(code) }
            }
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status), "status {status:#x}");
                assert_eq!(libc::WEXITSTATUS(status), 0, "child's failed check");
            }
            _ => panic!("fork failed"),
        }
    }
}
