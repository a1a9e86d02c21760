//! The `main` every daemon shares: environment, tracing, runtime, exit codes.

use std::future::Future;
use std::process::ExitCode;

use leash_core::{Component, Layout};
use tokio_util::sync::CancellationToken;

use crate::{BindError, BoundSocket, DaemonInfo, ProcessEnv, SocketMode, env, runtime_dir, signals, trace};

/// Exit code for usage and configuration errors.
pub const EXIT_USAGE: u8 = 64;
/// Exit code for runtime failures.
pub const EXIT_FAILURE: u8 = 1;

/// What a daemon's `run` gets.
#[derive(Debug)]
pub struct Ctx {
    /// Where sockets and state live.
    pub layout: Layout,
    /// Who this daemon is.
    pub info: DaemonInfo,
    /// Cancelled on SIGTERM/SIGINT or a Shutdown call.
    pub shutdown: CancellationToken,
}

impl Ctx {
    /// Prepares the runtime dir and binds `socket`; returns the `leash`
    /// group id when there is one (for [`SocketMode::Group`]).
    pub fn bind(
        &self,
        socket: &std::path::Path,
        mode: impl FnOnce(Option<u32>) -> SocketMode,
    ) -> anyhow::Result<BoundSocket> {
        let group = runtime_dir::prepare(&self.layout.runtime_dir)
            .map_err(|e| anyhow::anyhow!("cannot prepare runtime dir {}: {e}", self.layout.runtime_dir.display()))?;
        crate::bind(socket, mode(group)).map_err(|e: BindError| anyhow::Error::new(e))
    }

    /// Binds a component's private socket.
    pub fn bind_component(&self, c: Component) -> anyhow::Result<BoundSocket> {
        self.bind(&self.layout.component_socket(c), |_| SocketMode::Private)
    }
}

/// Parses the command line; help and version go to stdout with exit 0,
/// errors to stderr with `usage_code` (64 for leashctl and daemons, 125 for
/// leash), instead of clap's own exit code 2.
pub fn parse_args<T: clap::Parser>(usage_code: u8) -> Result<T, ExitCode> {
    parse_args_from(std::env::args(), usage_code)
}

/// [`parse_args`] over given arguments. Usage errors are one line:
/// `prog: what is wrong (see prog --help)`.
pub fn parse_args_from<T: clap::Parser>(args: impl IntoIterator<Item = String>, usage_code: u8) -> Result<T, ExitCode> {
    T::try_parse_from(args).map_err(|e| {
        if !e.use_stderr() {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        let prog = T::command().get_name().to_owned();
        let rendered = e.render().to_string();
        let first = rendered.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ").to_owned();
        error_line(&prog, &format!("{first} (see {prog} --help)"));
        ExitCode::from(usage_code)
    })
}

/// Handles `--version` and `--help` for daemons that take no other
/// arguments. Returns `Some(code)` when the process should exit now.
pub fn simple_args(name: &str, about: &str) -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = |s: String| {
        #[allow(clippy::print_stdout, reason = "the daemon's --help and --version output")]
        {
            println!("{s}");
        }
    };
    match args.first().map(String::as_str) {
        None => None,
        Some("--version" | "-V") => {
            out(format!("{name} {}", leash_core::VERSION));
            Some(ExitCode::SUCCESS)
        }
        Some("--help" | "-h") => {
            out(format!(
                "{name} {}: {about}\n\nUsage: {name} [--version] [--help]\n\n\
                 Normally started and supervised by leashd. Environment:\n  \
                 LEASH_RUNTIME_DIR  sockets (default /run/leash)\n  \
                 LEASH_STATE_DIR    state (default /var/lib/leash)\n  \
                 LEASH_INSTANCE     instance name (default `default`)\n  \
                 LEASH_LOG          log filter (default warn,leash=info)\n  \
                 LEASH_LOG_FORMAT   plain, json or journal (default: journal under systemd)",
                leash_core::VERSION
            ));
            Some(ExitCode::SUCCESS)
        }
        Some(other) => {
            error_line(name, &format!("unexpected argument {other:?} (see --help)"));
            Some(ExitCode::from(EXIT_USAGE))
        }
    }
}

fn error_line(name: &str, msg: &str) {
    #[allow(clippy::print_stderr, reason = "errors before tracing is set up")]
    {
        eprintln!("{name}: {msg}");
    }
}

/// How this daemon gives freed memory back to the system when a thread
/// goes idle (none unless its allocator keeps it: see [`give_back_mimalloc`]).
static GIVE_BACK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// For a daemon whose global allocator is mimalloc: memory one thread
/// allocated and another freed (an event made by the reader of the kernel's
/// ring and dropped once sent, one decoded by a runtime thread and dropped by
/// the audit store's writer) stays in the allocating thread's heap until
/// that thread allocates again. After a burst, an idle thread would keep it
/// for good; each thread now collects its heap when it goes idle.
pub fn give_back_mimalloc() {
    #[allow(unsafe_code, reason = "mimalloc's collect has no safe binding")]
    fn collect() {
        // SAFETY: `mi_collect` takes no pointer and may be called by any
        // thread at any time; it only frees what the heap no longer uses.
        unsafe { libmimalloc_sys::mi_collect(false) }
    }
    let _ = GIVE_BACK.set(collect);
}

/// Called by a thread going idle: gives back what its heap freed, at most
/// once a second per thread (a no-op unless the daemon asked for it).
pub fn idle() {
    thread_local!(static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) });
    let Some(give_back) = GIVE_BACK.get() else { return };
    LAST.with(|last| {
        let now = std::time::Instant::now();
        if last.get().is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1)) {
            last.set(Some(now));
            give_back();
        }
    });
}

/// Reads the environment, initialises tracing, builds a runtime and runs
/// `run`. Configuration errors exit 64, runtime errors 1.
pub fn run_main<F, Fut>(name: &'static str, multi_thread: bool, run: F) -> ExitCode
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = match trace::settings(&ProcessEnv) {
        Ok(s) => s,
        Err(e) => {
            error_line(name, &e.to_string());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let layout = match env::layout(&ProcessEnv) {
        Ok(l) => l,
        Err(e) => {
            error_line(name, &e.to_string());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    trace::init(settings);
    let runtime = if multi_thread {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().on_thread_park(idle).build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().on_thread_park(idle).build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            error_line(name, &format!("cannot start the async runtime: {e}"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        signals::cancel_on_signals(shutdown.clone())?;
        let info = DaemonInfo::new(name, &layout.instance);
        run(Ctx { layout, info, shutdown }).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            error_line(name, &format!("{e:#}"));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// A copy of descriptor `n` of process `pid` (`pidfd_getfd`: it needs the
/// right to trace the process, which a non-dumpable process grants only to
/// a caller with `CAP_SYS_PTRACE` over it).
pub fn descriptor_of(pid: u32, n: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("pid {pid}")))?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    Ok(rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty())?)
}
