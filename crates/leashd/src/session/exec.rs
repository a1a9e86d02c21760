//! `leash exec`: another command in a running session, started by its
//! leash-entry over the control connection (so the kernel sees one of the
//! session's processes: its cgroup, namespaces, user and supervised-calls
//! filter, and the policy governs it with the session's events), with its
//! terminal or its stdin/stdout/stderr relayed to the client.

use leash_core::terminal::{Frame, Stream};
use leash_daemon::access::Peer;
use leash_proto::v1 as pb;
use pb::session_input::Input;
use pb::session_output::Output;
use tokio::sync::mpsc;
use tonic::Streaming;

use super::{Sessions, emit};

impl Sessions {
    /// Runs `req` in a session the caller owns (root: any) until it exits
    /// or the client goes (its process group is then hung up).
    pub async fn exec(
        self,
        caller: Peer,
        req: pb::SessionExec,
        mut input: Streaming<pb::SessionInput>,
        out: mpsc::Sender<Result<pb::SessionOutput, tonic::Status>>,
    ) {
        let fail = |error: String| Output::Exit(pb::SessionExit { code: 125, error, denied: 0 });
        let info = match self.find(&caller, &req.id) {
            Ok(i) => i,
            Err(e) => {
                emit(&out, fail(e.message().to_owned())).await;
                return;
            }
        };
        if req.command.is_empty() {
            {
                emit(&out, fail("leash exec needs a command".to_owned())).await;
                return;
            }
        }
        let conn = self.controls.lock().unwrap_or_else(|p| p.into_inner()).get(&info.id).cloned();
        let Some(conn) = conn.filter(|_| info.state == "running") else {
            let why = format!(
                "session {} cannot run more commands (state {}; leashd holds no control connection to it)",
                info.id, info.state
            );
            {
                emit(&out, fail(why)).await;
                return;
            }
        };
        let (proc, mut frames) = conn.open();
        let size = req.size.unwrap_or_default();
        let spawn = Frame::Spawn {
            proc,
            tty: req.tty,
            interactive: req.interactive,
            rows: size.rows.try_into().unwrap_or(u16::MAX),
            cols: size.cols.try_into().unwrap_or(u16::MAX),
            argv: req.command.clone(),
            env: req.env.clone(),
            cwd: req.workdir.clone(),
        };
        if let Err(e) = conn.send(&spawn).await {
            conn.close(proc);
            {
                emit(&out, fail(format!("cannot reach session {}'s leash-entry: {e}", info.id))).await;
                return;
            }
        }
        let who = [
            ("uid", caller.uid.to_string()),
            ("pid", caller.pid.unwrap_or_default().to_string()),
            ("command", req.command.join(" ")),
            ("tty", req.tty.to_string()),
        ];
        let mut hung_up = false;
        loop {
            tokio::select! {
                f = frames.recv() => match f {
                    Some(Frame::Spawned { pid, .. }) => {
                        let mut details = who.to_vec();
                        details.push(("exec_pid", pid.to_string()));
                        self.publish("session.exec", &info, &details);
                        let attached = pb::SessionAttached {
                            id: info.id.clone(),
                            lost: 0,
                            tty: req.tty,
                            container: info.container.clone(),
                        };
                        emit(&out, Output::Attached(attached)).await;
                    }
                    Some(Frame::SpawnFailed { code, message, .. }) => {
                        let mut details = who.to_vec();
                        details.extend([("code", code.to_string()), ("error", message.clone())]);
                        self.publish("session.exec.exit", &info, &details);
                        emit(&out, Output::Notice(message)).await;
                        emit(&out, Output::Exit(pb::SessionExit { code, error: String::new(), denied: 0 })).await;
                        break;
                    }
                    Some(Frame::Output { stream, bytes, .. }) => {
                        let o = match stream {
                            Stream::Stdout => Output::Stdout(bytes),
                            Stream::Stderr => Output::Stderr(bytes),
                        };
                        if !emit(&out, o).await {
                            hung_up = true;
                            break;
                        }
                    }
                    Some(Frame::Exit { code, .. }) => {
                        let mut details = who.to_vec();
                        details.push(("code", code.to_string()));
                        self.publish("session.exec.exit", &info, &details);
                        emit(&out, Output::Exit(pb::SessionExit { code, error: String::new(), denied: 0 })).await;
                        break;
                    }
                    Some(_) => {}
                    None => {
                        emit(&out, fail(format!("session {} ended", info.id))).await;
                        break;
                    }
                },
                msg = input.message() => {
                    let sent = match msg {
                        Ok(Some(pb::SessionInput { input: Some(i) })) => match i {
                            Input::Stdin(bytes) => conn.input(proc, &bytes).await,
                            Input::StdinEof(_) => conn.send(&Frame::Eof { proc }).await,
                            Input::Resize(s) => {
                                let (rows, cols) = (s.rows.try_into().unwrap_or(u16::MAX), s.cols.try_into().unwrap_or(u16::MAX));
                                conn.send(&Frame::Resize { proc, rows, cols }).await
                            }
                            Input::Signal(signal) => conn.send(&Frame::Signal { proc, signal }).await,
                            _ => Ok(()),
                        },
                        Ok(Some(_)) => Ok(()),
                        Ok(None) | Err(_) => {
                            hung_up = true;
                            break;
                        }
                    };
                    if let Err(e) = sent {
                        tracing::warn!(session_id = %info.id, error = %e, "cannot reach leash-entry");
                    }
                }
            }
        }
        // The client went: its command is hung up, as a closed terminal would.
        if hung_up {
            if let Err(e) = conn.send(&Frame::Hangup { proc }).await {
                tracing::warn!(session_id = %info.id, error = %e, "cannot reach leash-entry");
            }
            let mut details = who.to_vec();
            details.push(("code", "hangup".to_owned()));
            self.publish("session.exec.exit", &info, &details);
        }
        conn.close(proc);
    }
}
