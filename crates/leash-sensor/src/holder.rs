//! A session's file decider runs in a holder process of its own
//! (`leash-sensor --hold …`), so it outlives the sensor: killing or
//! restarting the sensor never leaves a session's opens undecided.
//!
//! The holder gets the session's fanotify group as its stdin and a control
//! socket as its stdout. Over the socket the sensor sends tables (on every
//! policy or mode change) and the holder sends its decisions as events.
//! When the sensor goes away the holder keeps deciding with the last tables
//! and waits on `<runtime dir>/holders/<session>.sock` for a restarted
//! sensor, which takes its group (`pidfd_getfd`, fd 0) and a new control
//! socket. The sensor keeps a duplicate of every group, so the group never
//! closes while the session runs (a closing group lets every pending open
//! through); when a holder dies, the sensor freezes the session's cgroup,
//! starts another holder on the same group, and thaws it. The new holder
//! first answers what the dead one received and left unanswered (refuses
//! its permission events, decides its supervised call again: see
//! `fan::Group::refuse_unanswered` and `calls::Inbox`).
//! The holder exits when its session's cgroup is gone or the sensor says stop.
//!
//! A session whose leash-entry installed the supervised-calls filter also
//! has the filter's listener decided here (`calls`), on a thread of its
//! own, with the same tables; the sensor keeps a duplicate of it too, and
//! a holder takes its copy from the sensor (`pidfd_getfd`, the descriptor
//! number is its last argument).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use leash_core::Mode;
use leash_core::tables::Tables;
use leash_proto::v1 as pb;
use prost::Message;

use crate::fan;

/// The hidden flag that makes the sensor binary a holder.
pub const HOLD_FLAG: &str = "--hold";

const FRAME_TABLES: u8 = 1;
const FRAME_EVENT: u8 = 2;
const FRAME_STOP: u8 = 3;
const FRAME_ANSWER: u8 = 4;
const MAX_FRAME: usize = 64 << 20;

/// Writes one frame: kind, length, payload.
pub fn write_frame(mut w: impl Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    // One write: a frame is one send, not two (the sensor reads many per
    // wakeup).
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(kind);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame)
}

/// Reads one frame; None at the end of the stream.
pub fn read_frame(mut r: impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("a frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

/// Sends tables and mode to a holder.
pub fn send_tables(w: &UnixStream, t: &Tables, mode: Mode) -> std::io::Result<()> {
    write_frame(w, FRAME_TABLES, &leash_proto::tables::to_proto(t, mode.name()).encode_to_vec())
}

/// Sends a holder the user's answer to one of its parked denials.
pub fn send_answer(w: &UnixStream, a: &crate::ask::Answer) -> std::io::Result<()> {
    write_frame(w, FRAME_ANSWER, &a.encode())
}

/// Tells a holder to stop.
pub fn send_stop(w: &UnixStream) -> std::io::Result<()> {
    write_frame(w, FRAME_STOP, &[])
}

/// Reads a holder's decisions until its control socket closes.
pub fn read_events(r: &UnixStream, mut publish: impl FnMut(pb::Event)) {
    // Buffered: the frames a holder sent meanwhile come in one read.
    let mut r = std::io::BufReader::with_capacity(1 << 16, r);
    while let Ok(Some((kind, payload))) = read_frame(&mut r) {
        if kind == FRAME_EVENT
            && let Ok(e) = pb::Event::decode(payload.as_slice())
        {
            publish(e);
        }
    }
}

/// Where a holder listens for a restarted sensor.
pub fn socket_path(runtime_dir: &Path, session: &str) -> PathBuf {
    runtime_dir.join("holders").join(format!("{session}.sock"))
}

/// What a holder is started with.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The session.
    pub session: String,
    /// Its cgroup, relative to the v2 root.
    pub cgroup: String,
    /// Its cgroup directory.
    pub cgroup_dir: PathBuf,
    /// leash-policy's socket.
    pub policy_socket: PathBuf,
    /// Where to listen for a restarted sensor.
    pub listen: PathBuf,
    /// Ask the user about denials, waiting this long for an answer (0: never ask).
    pub ask_ms: u64,
}

/// Starts a holder on (a duplicate of) `group`, and `calls` when the
/// session has a supervised-calls listener; its pid and control socket.
pub fn spawn(spec: &Spec, group: &OwnedFd, calls: Option<&OwnedFd>) -> anyhow::Result<(u32, UnixStream)> {
    use std::os::fd::AsRawFd;
    let (ours, theirs) = UnixStream::pair()?;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .arg(HOLD_FLAG)
        .args([
            OsString::from(&spec.session),
            OsString::from(&spec.cgroup),
            spec.cgroup_dir.clone().into_os_string(),
            spec.policy_socket.clone().into_os_string(),
            spec.listen.clone().into_os_string(),
            OsString::from(spec.ask_ms.to_string()),
            OsString::from(calls.map_or_else(|| "-".to_owned(), |c| c.as_raw_fd().to_string())),
        ])
        .stdin(Stdio::from(group.try_clone()?))
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        // Its own process group: a signal to the sensor's group does not reach it.
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    // A holder that stops reading must not wedge the sensor.
    ours.set_write_timeout(Some(Duration::from_secs(5)))?;
    std::thread::Builder::new().name("holder-reaper".into()).spawn(move || {
        let _ = child.wait();
    })?;
    Ok((pid, ours))
}

/// Reconnects to a running holder: a new control socket and its group.
pub fn reconnect(listen: &Path, pid: u32) -> anyhow::Result<(UnixStream, OwnedFd)> {
    let group = descriptor_of(pid, 0)?;
    let stream = UnixStream::connect(listen)?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok((stream, group))
}

/// Freezes (or thaws) a cgroup: the brake while no decider is live.
pub fn freeze(cgroup_dir: &Path, frozen: bool) -> std::io::Result<()> {
    std::fs::write(cgroup_dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })
}

/// The holder process.
pub fn main(args: &[OsString]) -> ExitCode {
    if let Ok(s) = leash_daemon::trace::settings(&leash_daemon::env::ProcessEnv) {
        leash_daemon::trace::init(s);
    }
    let [session, cgroup, cgroup_dir, policy_socket, listen, ask_ms, calls] = args else {
        tracing::error!("usage: leash-sensor --hold SESSION CGROUP CGROUP_DIR POLICY_SOCKET LISTEN ASK_MS CALLS_FD|-");
        return ExitCode::from(64);
    };
    let spec = Spec {
        session: session.to_string_lossy().into_owned(),
        cgroup: cgroup.to_string_lossy().into_owned(),
        cgroup_dir: PathBuf::from(cgroup_dir),
        policy_socket: PathBuf::from(policy_socket),
        listen: PathBuf::from(listen),
        ask_ms: ask_ms.to_str().and_then(|a| a.parse().ok()).unwrap_or(0),
    };
    let calls = match calls.to_str().filter(|c| *c != "-") {
        None => None,
        Some(n) => match parent_descriptor(n) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::error!(session_id = %spec.session, error = %format!("{e:#}"), "cannot take the supervised-calls listener");
                return ExitCode::from(1);
            }
        },
    };
    match hold(&spec, calls) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(session_id = %spec.session, error = %format!("{e:#}"), "the session's file decider stopped");
            ExitCode::from(1)
        }
    }
}

/// A copy of descriptor `n` of the sensor that started this holder.
fn parent_descriptor(n: &str) -> anyhow::Result<OwnedFd> {
    let n: i32 = n.parse().map_err(|_| anyhow::anyhow!("{n:?} is not a descriptor number"))?;
    let parent = rustix::process::getppid().ok_or_else(|| anyhow::anyhow!("no parent"))?;
    descriptor_of(parent.as_raw_nonzero().get() as u32, n)
}

/// A copy of descriptor `n` of process `pid` (`pidfd_getfd`).
pub fn descriptor_of(pid: u32, n: i32) -> anyhow::Result<OwnedFd> {
    Ok(leash_daemon::process::descriptor_of(pid, n)?)
}

/// Where a holder keeps the supervised call it is deciding, for its
/// successor (`calls::Inbox`).
fn inbox_path(listen: &Path) -> PathBuf {
    listen.with_extension("calls")
}

fn hold(spec: &Spec, calls: Option<OwnedFd>) -> anyhow::Result<()> {
    // Every event this holder reads gets a descriptor number below this,
    // which is how a successor finds the ones it leaves unanswered.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, fan::DECIDER_FDS, fan::DECIDER_FDS)?;
    let group = Arc::new(fan::Group::from_owned(std::io::stdin().as_fd().try_clone_to_owned()?));
    // A holder that died mid-decision left its callers waiting: refuse
    // those before reading anything (the first holder finds none).
    let refused = group.refuse_unanswered();
    if refused > 0 {
        tracing::warn!(session_id = %spec.session, refused, "refused the opens the previous decider left unanswered");
    }
    let control = UnixStream::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    // Decisions never wait on a sensor that stopped reading: a late event is dropped.
    control.set_write_timeout(Some(Duration::from_millis(100)))?;
    if let Some(dir) = spec.listen.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&spec.listen);
    let listener = UnixListener::bind(&spec.listen)?;
    std::fs::set_permissions(&spec.listen, std::fs::Permissions::from_mode(0o600))?;
    // The first tables, before the first decision.
    let first = match read_frame(&control)? {
        Some((FRAME_TABLES, payload)) => tables_of(&payload)?,
        _ => anyhow::bail!("the sensor sent no tables"),
    };
    let governed = Arc::new(RwLock::new(first));
    // Ask ids start from the time, so that a holder replacing one that
    // died never answers with an id the other asked with.
    let seed = leash_core::time::id_seed();
    let asks = (spec.ask_ms > 0).then(|| Arc::new(crate::ask::Asks::new(Duration::from_millis(spec.ask_ms), seed)));
    let writer: Arc<Mutex<Option<UnixStream>>> = Arc::new(Mutex::new(Some(control.try_clone()?)));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (governed, writer, stop, session) = (governed.clone(), writer.clone(), stop.clone(), spec.session.clone());
        let (group, asks) = (group.clone(), asks.clone());
        std::thread::Builder::new().name("holder-control".into()).spawn(move || {
            let mut stream = control;
            loop {
                match read_frame(&stream) {
                    Ok(Some((FRAME_TABLES, payload))) => match tables_of(&payload) {
                        Ok(g) => {
                            *governed.write().unwrap_or_else(|p| p.into_inner()) = g;
                            // Cached allows belong to the previous policy or mode.
                            group.flush_cache();
                        }
                        Err(e) => tracing::warn!(session_id = %session, error = %e, "bad tables; the previous stay"),
                    },
                    Ok(Some((FRAME_ANSWER, payload))) => {
                        let answered = match (&asks, crate::ask::Answer::decode(&payload)) {
                            (Some(asks), Some(a)) => asks.answer(&group, &a),
                            _ => false,
                        };
                        if !answered {
                            tracing::info!(session_id = %session, "an answer for no waiting question (answered, or too late)");
                        }
                    }
                    Ok(Some((FRAME_STOP, _))) => {
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        // The sensor is gone: keep deciding, wait for the next one.
                        *writer.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        match listener.accept() {
                            Ok((next, _)) => {
                                let _ = next.set_write_timeout(Some(Duration::from_millis(100)));
                                *writer.lock().unwrap_or_else(|p| p.into_inner()) = next.try_clone().ok();
                                stream = next;
                                tracing::info!(session_id = %session, "a sensor reconnected");
                            }
                            Err(_) => return,
                        }
                    }
                }
            }
        })?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (policy_socket, session) = (spec.policy_socket.clone(), spec.session.clone());
    let evaluate: fan::Evaluate = Arc::new(move |action, path| {
        let req = pb::CheckRequest {
            principal: String::new(),
            action: fan::action_name(action).to_owned(),
            resource: path.to_owned(),
            context: Default::default(),
            session: session.clone(),
        };
        runtime.block_on(async {
            let ask = async {
                let conn = leash_daemon::client::connect(&policy_socket, "leash-sensor").await.ok()?;
                pb::policy_client::PolicyClient::new(conn.channel).check(req).await.ok()
            };
            let r = tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()?.into_inner();
            // The mode is applied by the decider, not the service.
            Some((r.allow && !r.would_deny, r.reasons))
        })
    });
    // Repeated allows are folded here, before they cross to the sensor:
    // the owner, mode and times of a file just created are the same write
    // of the same file as its creating open (`leash_daemon::fold`).
    let fold = Arc::new(Mutex::new(leash_daemon::fold::Fold::default()));
    let send = {
        let writer = writer.clone();
        move |events: Vec<pb::Event>| {
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            for e in events {
                if let Some(s) = w.as_ref()
                    && write_frame(s, FRAME_EVENT, &e.encode_to_vec()).is_err()
                {
                    *w = None;
                }
            }
        }
    };
    {
        let (fold, send, stop) = (Arc::downgrade(&fold), send.clone(), stop.clone());
        std::thread::Builder::new().name("holder-fold".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(leash_daemon::fold::WINDOW / 4);
                let Some(fold) = fold.upgrade() else { return };
                let due = fold.lock().unwrap_or_else(|p| p.into_inner()).due(std::time::Instant::now());
                send(due);
            }
        })?;
    }
    let publish = {
        let fold = fold.clone();
        move |e: leash_core::Event| {
            let e = leash_proto::event::to_proto(&e, 0);
            let mut out = Vec::with_capacity(1);
            fold.lock().unwrap_or_else(|p| p.into_inner()).offer(e, std::time::Instant::now(), &mut out);
            send(out);
        }
    };
    if let Some(listener) = calls {
        let inbox = crate::calls::Inbox::open(&inbox_path(&spec.listen))?;
        let s = crate::calls::Supervisor {
            session: spec.session.clone(),
            governed: governed.clone(),
            evaluate: evaluate.clone(),
            stop: stop.clone(),
            group: Some(group.clone()),
        };
        let publish = publish.clone();
        std::thread::Builder::new().name("holder-calls".into()).spawn(move || {
            if let Err(e) = crate::calls::run(&s, &listener, &inbox, publish) {
                // The calls wait in the kernel for the next decider.
                tracing::error!(session_id = %s.session, error = %format!("{e:#}"), "the supervised-calls decider stopped");
            }
        })?;
    }
    let l = fan::Loop {
        session: spec.session.clone(),
        cgroup: spec.cgroup.clone(),
        governed,
        evaluate,
        stop,
        cache: true,
        ask: asks,
    };
    let result = fan::run(&l, &group, Some(&spec.cgroup_dir), |o| publish(o.into_event()));
    let _ = std::fs::remove_file(&spec.listen);
    if result.is_ok() {
        // The session is over (or stopped): nothing waits on its calls.
        let _ = std::fs::remove_file(inbox_path(&spec.listen));
    }
    result
}

fn tables_of(payload: &[u8]) -> anyhow::Result<fan::Governed> {
    let (tables, mode) =
        leash_proto::tables::decode(&pb::DecisionTables::decode(payload)?).map_err(|e| anyhow::anyhow!(e))?;
    Ok(fan::Governed { tables: Arc::new(tables), mode })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FRAME_EVENT, b"hello").unwrap();
        write_frame(&mut buf, FRAME_STOP, &[]).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_frame(&mut r).unwrap(), Some((FRAME_EVENT, b"hello".to_vec())));
        assert_eq!(read_frame(&mut r).unwrap(), Some((FRAME_STOP, Vec::new())));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }
}
