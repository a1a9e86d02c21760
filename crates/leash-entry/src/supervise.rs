//! The supervised calls: a seccomp filter, installed before the command's
//! first instruction, that hands the calls which make a name appear or
//! change a file's attributes to leash-sensor (a user notification), and
//! refuses io_uring (whose operations no seccomp filter sees).
//!
//! Handed over: renames, links, symbolic links, device nodes and fifos,
//! mode, owner and time changes, truncation by path, and every open that
//! may create (`O_CREAT`; `openat2` always, its flags are in memory). The
//! sensor decides each as a write of the path it names and performs the
//! ones it allows itself, with the caller's credentials, so that nothing
//! the caller changes in its memory afterwards can redirect them.
//!
//! The filter also refuses every system call of another ABI (x32, i386),
//! whose numbers it would otherwise not recognise, and `open_by_handle_at`.
//! It needs `no_new_privs`: set-user-ID programs do not gain privileges in
//! a session.

use std::os::fd::{FromRawFd, OwnedFd};

use nix::libc;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const O_CREAT: u32 = 0o100;

/// Calls handed to the sensor whatever their arguments.
const SUPERVISED: &[libc::c_long] = &[
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchmodat2,
    libc::SYS_chown,
    libc::SYS_fchown,
    libc::SYS_lchown,
    libc::SYS_fchownat,
    libc::SYS_utime,
    libc::SYS_utimes,
    libc::SYS_futimesat,
    libc::SYS_utimensat,
    libc::SYS_truncate,
    libc::SYS_creat,
    libc::SYS_openat2,
];

/// Calls refused outright.
const REFUSED: &[libc::c_long] =
    &[libc::SYS_io_uring_setup, libc::SYS_io_uring_enter, libc::SYS_io_uring_register, libc::SYS_open_by_handle_at];

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt, jf, k }
}

/// What the filter does with one system call number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Notify,
    Refuse,
    /// An open: handed over when the flags at this offset of
    /// `seccomp_data` have `O_CREAT`.
    NotifyIfCreating(u32),
}

/// The numbers the filter does not simply allow, sorted.
fn special() -> Vec<(u32, Act)> {
    // The low halves of args[1] and args[2] (little-endian).
    const ARG1: u32 = 16 + 8;
    const ARG2: u32 = 16 + 2 * 8;
    let mut v: Vec<(u32, Act)> = SUPERVISED.iter().map(|n| (*n as u32, Act::Notify)).collect();
    v.extend(REFUSED.iter().map(|n| (*n as u32, Act::Refuse)));
    v.push((libc::SYS_open as u32, Act::NotifyIfCreating(ARG1)));
    v.push((libc::SYS_openat as u32, Act::NotifyIfCreating(ARG2)));
    v.sort_by_key(|(n, _)| *n);
    v
}

/// The filter program: the architecture and ABI checks, then a binary
/// search over [`special`] (every system call passes the filter, so the
/// common ones must not walk a list of thirty).
pub fn program() -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let enosys = stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
    let mut p = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        enosys,
        stmt(BPF_LD | BPF_W | BPF_ABS, NR),
        jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1),
        enosys,
    ];
    p.extend(search(&special()));
    p
}

/// The code for one range of [`special`]: every path ends in a return
/// (jumps only go forward, so each subtree is self-contained).
fn search(calls: &[(u32, Act)]) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let ret = |v: u32| stmt(BPF_RET | BPF_K, v);
    let allow = ret(libc::SECCOMP_RET_ALLOW);
    let notify = ret(libc::SECCOMP_RET_USER_NOTIF);
    if calls.len() <= 3 {
        let mut code = Vec::new();
        for (nr, act) in calls {
            let block = match act {
                Act::Notify => vec![notify],
                Act::Refuse => vec![ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32)],
                Act::NotifyIfCreating(flags) => vec![
                    stmt(BPF_LD | BPF_W | BPF_ABS, *flags),
                    jump(BPF_JMP | BPF_JSET | BPF_K, O_CREAT, 0, 1),
                    notify,
                    allow,
                ],
            };
            code.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *nr, 0, block.len() as u8));
            code.extend(block);
        }
        code.push(allow);
        return code;
    }
    let (low, high) = calls.split_at(calls.len() / 2);
    let left = search(low);
    let skip = u8::try_from(left.len()).expect("a subtree of the filter fits a jump");
    let mut code = vec![jump(BPF_JMP | BPF_JGE | BPF_K, high[0].0, skip, 0)];
    code.extend(left);
    code.extend(search(high));
    code
}

/// Installs the filter on this process (and so on everything it starts);
/// the listener the sensor takes.
pub fn install() -> Result<OwnedFd, String> {
    let program = program();
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
    let flags = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    // SAFETY: prctl and seccomp are given valid arguments; `prog` points at
    // `program`, alive for the call; the kernel copies the program. The
    // returned number is a new descriptor that nothing else owns.
    #[allow(unsafe_code, reason = "installing a seccomp filter has no safe wrapper in nix")]
    let fd = unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!("cannot set no_new_privs: {}", std::io::Error::last_os_error()));
        }
        let fd =
            libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &prog as *const libc::sock_fprog);
        if fd < 0 {
            return Err(format!("cannot install the seccomp filter: {}", std::io::Error::last_os_error()));
        }
        OwnedFd::from_raw_fd(fd as i32)
    };
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program over one call, as the kernel would.
    fn verdict(nr: libc::c_long, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let p = program();
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            let code = u32::from(i.code);
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                let k = i.k as usize;
                acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                pc += 1;
            } else if code & 0x07 == libc::BPF_RET {
                return i.k;
            } else {
                let taken = match code & 0xf0 {
                    c if c == libc::BPF_JEQ => acc == i.k,
                    c if c == libc::BPF_JGE => acc >= i.k,
                    c if c == libc::BPF_JSET => acc & i.k != 0,
                    other => panic!("unexpected jump {other:#x}"),
                };
                pc += 1 + usize::from(if taken { i.jt } else { i.jf });
            }
        }
    }

    #[test]
    fn the_program_hands_over_what_makes_names_appear_and_nothing_else() {
        let x86 = AUDIT_ARCH_X86_64;
        let notify = libc::SECCOMP_RET_USER_NOTIF;
        for nr in SUPERVISED {
            assert_eq!(verdict(*nr, x86, [0; 6]), notify, "{nr}");
        }
        let creat = u64::from(O_CREAT) | 0o1;
        assert_eq!(verdict(libc::SYS_open, x86, [0, creat, 0, 0, 0, 0]), notify);
        assert_eq!(verdict(libc::SYS_openat, x86, [0, 0, creat, 0, 0, 0]), notify);
        assert_eq!(verdict(libc::SYS_open, x86, [0, 0o2, 0, 0, 0, 0]), libc::SECCOMP_RET_ALLOW);
        assert_eq!(verdict(libc::SYS_openat, x86, [0, creat, 0o2, 0, 0, 0]), libc::SECCOMP_RET_ALLOW);
        for nr in [libc::SYS_read, libc::SYS_execve, libc::SYS_unlink, libc::SYS_mkdir, libc::SYS_ftruncate] {
            assert_eq!(verdict(nr, x86, [0; 6]), libc::SECCOMP_RET_ALLOW, "{nr}");
        }
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        for nr in REFUSED {
            assert_eq!(verdict(*nr, x86, [0; 6]), eperm, "{nr}");
        }
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        assert_eq!(verdict(libc::SYS_rename | X32_SYSCALL_BIT as libc::c_long, x86, [0; 6]), enosys);
        // i386's rename (38) through int 0x80.
        assert_eq!(verdict(38, 0x4000_0003, [0; 6]), enosys);
    }

    #[test]
    fn the_search_answers_every_number_as_the_lists_say() {
        let x86 = AUDIT_ARCH_X86_64;
        let creat = u64::from(O_CREAT);
        for nr in 0..600 {
            let expected = |flags_creat: bool| {
                if SUPERVISED.contains(&nr) {
                    libc::SECCOMP_RET_USER_NOTIF
                } else if REFUSED.contains(&nr) {
                    libc::SECCOMP_RET_ERRNO | libc::EPERM as u32
                } else if (nr == libc::SYS_open || nr == libc::SYS_openat) && flags_creat {
                    libc::SECCOMP_RET_USER_NOTIF
                } else {
                    libc::SECCOMP_RET_ALLOW
                }
            };
            assert_eq!(verdict(nr, x86, [0; 6]), expected(false), "{nr}");
            assert_eq!(verdict(nr, x86, [0, creat, creat, 0, 0, 0]), expected(true), "{nr} with O_CREAT");
        }
        // Short enough to cost little on every call.
        let depth = special().len().ilog2() + 2;
        assert!(depth < 8, "{depth}");
    }
}
