//! Waiting for processes that are not our children.

use std::io;

use tokio::io::unix::AsyncFd;

/// Resolves when process `pid` has exited (a zombie counts as exited).
/// Uses a pidfd, so it works for adopted processes and cannot be fooled by
/// pid reuse after it was opened.
pub async fn wait_exit(pid: u32) -> io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("pid 0"))?;
    let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        // Already gone.
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    #[allow(
        deprecated,
        reason = "sound here: the AsyncFd owns the OwnedFd, so the fd lives as long as its registration; the replacement is unsafe"
    )]
    let fd = AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?;
    let _ready = fd.readable().await?;
    Ok(())
}

/// A process's proportional share of memory (`Pss` of
/// `/proc/PID/smaps_rollup`), in bytes; 0 when it cannot be read.
pub fn pss_bytes(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// A process's resident memory (`VmRSS`), in bytes; 0 when it cannot be read.
pub fn rss_bytes(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// The `NAME: N kB` line of a /proc file, in bytes.
fn kib_field(path: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
