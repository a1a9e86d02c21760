//! A running session's terminal in leashd: what it printed, kept in a
//! bounded ring for whoever attaches later (`leash attach`), the clients
//! attached to it, and which of them writes. The client that started the
//! session writes while it is attached; after it detaches, the client that
//! attached first.

use std::sync::{Arc, Mutex};

use leash_core::terminal::{RING_BYTES, Ring, Stream};
use leash_proto::v1 as pb;
use pb::session_input::Input;
use pb::session_output::Output;
use tokio::sync::mpsc;
use tonic::Status;

/// Messages queued for one attached client; a client that falls this far
/// behind is let go (it may attach again and is told what it missed).
const VIEWER_QUEUE: usize = 1024;

/// What an attached client receives.
pub type ToClient = mpsc::Sender<Result<pb::SessionOutput, Status>>;

/// Input from an attached client, for the session's loop.
pub type FromViewer = (u64, Input);

struct Viewer {
    id: u64,
    tx: ToClient,
}

/// One running session's terminal.
pub struct Terminal {
    ring: Ring,
    viewers: Vec<Viewer>,
    next: u64,
    /// The starting client is attached (and writes).
    starter: bool,
    /// Its queue, for questions (its output goes by the session's loop).
    starter_tx: Option<ToClient>,
    tty: bool,
    container: String,
    inputs: mpsc::Sender<FromViewer>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("kept", &(self.ring.end() - self.ring.start()))
            .field("viewers", &self.viewers.len())
            .field("starter", &self.starter)
            .field("tty", &self.tty)
            .finish_non_exhaustive()
    }
}

/// A terminal shared by the session's loop and its attached clients.
pub type Shared = Arc<Mutex<Terminal>>;

/// A client attached: what it missed and saw, and its queue.
pub struct Joined {
    /// Its id, for its input.
    pub id: u64,
    /// The first messages: Attached, then what the ring holds.
    pub replay: Vec<pb::SessionOutput>,
    /// Live output from then on, and the Exit.
    pub live: mpsc::Receiver<Result<pb::SessionOutput, Status>>,
    /// Where its input goes.
    pub inputs: mpsc::Sender<FromViewer>,
}

fn output(stream: Stream, bytes: Vec<u8>) -> pb::SessionOutput {
    let o = match stream {
        Stream::Stderr => Output::Stderr(bytes),
        Stream::Stdout => Output::Stdout(bytes),
    };
    pb::SessionOutput { output: Some(o) }
}

impl Terminal {
    /// The terminal of a session that just started; its input from attached
    /// clients goes to `inputs`.
    pub fn shared(tty: bool, container: String, inputs: mpsc::Sender<FromViewer>) -> Shared {
        Arc::new(Mutex::new(Terminal {
            ring: Ring::new(RING_BYTES),
            viewers: Vec::new(),
            next: 1,
            starter: true,
            starter_tx: None,
            tty,
            container,
            inputs,
        }))
    }

    /// Output of the session: kept, and sent to every attached client (one
    /// that cannot take it is let go: its queue ends without an Exit).
    pub fn output(&mut self, stream: Stream, bytes: &[u8]) {
        self.ring.push(stream, bytes);
        self.viewers.retain(|v| v.tx.try_send(Ok(output(stream, bytes.to_vec()))).is_ok());
    }

    /// Attaches a client: what the ring holds from output offset `from` on
    /// goes first (0: everything it holds).
    pub fn join(&mut self, id: &str, from: u64) -> Joined {
        let since = self.ring.since(from);
        let attached = pb::SessionAttached {
            id: id.to_owned(),
            lost: since.lost,
            tty: self.tty,
            container: self.container.clone(),
        };
        let mut replay = vec![pb::SessionOutput { output: Some(Output::Attached(attached)) }];
        replay.extend(since.chunks.into_iter().map(|(s, b)| output(s, b.to_vec())));
        let (tx, live) = mpsc::channel(VIEWER_QUEUE);
        let vid = self.next;
        self.next += 1;
        self.viewers.push(Viewer { id: vid, tx });
        Joined { id: vid, replay, live, inputs: self.inputs.clone() }
    }

    /// A client left (detached or gone).
    pub fn leave(&mut self, viewer: u64) -> bool {
        let before = self.viewers.len();
        self.viewers.retain(|v| v.id != viewer);
        before != self.viewers.len()
    }

    /// The starting client detached or went away.
    pub fn starter_left(&mut self) {
        self.starter = false;
        self.starter_tx = None;
    }

    /// Where the starting client's questions go while it is attached.
    pub fn starter_asks(&mut self, tx: ToClient) {
        if self.starter {
            self.starter_tx = Some(tx);
        }
    }

    /// Shows a question to the client that writes (the starter while
    /// attached, else the first attached client); false when none can show it.
    pub fn ask(&mut self, prompt: pb::Prompt) -> bool {
        let ask = || Ok(pb::SessionOutput { output: Some(Output::Ask(prompt.clone())) });
        match (&self.starter_tx, self.viewers.first()) {
            (Some(tx), _) if self.starter => tx.try_send(ask()).is_ok(),
            (_, Some(v)) => v.tx.try_send(ask()).is_ok(),
            _ => false,
        }
    }

    /// A question is closed: whoever shows it takes it down.
    pub fn asked(&mut self, id: &str) {
        let closed = || Ok(pb::SessionOutput { output: Some(Output::Asked(id.to_owned())) });
        if let Some(tx) = &self.starter_tx {
            let _ = tx.try_send(closed());
        }
        for v in &self.viewers {
            let _ = v.tx.try_send(closed());
        }
    }

    /// Whether input from `viewer` reaches the command: the starter's while
    /// it is attached, else the first attached client's.
    pub fn writes(&self, viewer: u64) -> bool {
        !self.starter && self.viewers.first().is_some_and(|v| v.id == viewer)
    }

    /// How many clients are attached besides the starter.
    pub fn viewers(&self) -> usize {
        self.viewers.len()
    }

    /// How many clients are attached, the starter included.
    pub fn clients(&self) -> u32 {
        u32::from(self.starter) + self.viewers.len() as u32
    }

    /// The session ended: every attached client is told its code and how many operations were refused.
    pub fn exit(&mut self, code: i32, denied: u32) {
        for v in self.viewers.drain(..) {
            let exit = pb::SessionExit { code, error: String::new(), denied };
            let _ = v.tx.try_send(Ok(pb::SessionOutput { output: Some(Output::Exit(exit)) }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[pb::SessionOutput]) -> Vec<String> {
        v.iter()
            .filter_map(|o| match &o.output {
                Some(Output::Stdout(b)) => Some(format!("out:{}", String::from_utf8_lossy(b))),
                Some(Output::Stderr(b)) => Some(format!("err:{}", String::from_utf8_lossy(b))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_late_client_sees_what_was_printed_then_live_output_and_the_writer_is_one() {
        let (inputs, _rx) = mpsc::channel(8);
        let t = Terminal::shared(false, "c".into(), inputs);
        let mut t = t.lock().unwrap();
        t.output(Stream::Stdout, b"one\n");
        t.output(Stream::Stderr, b"warn\n");
        let mut a = t.join("s1", 0);
        assert!(matches!(&a.replay[0].output, Some(Output::Attached(x)) if x.id == "s1" && x.lost == 0 && !x.tty));
        assert_eq!(texts(&a.replay), ["out:one\n", "err:warn\n"]);
        // A client that reattaches gets what follows what it has seen.
        let again = t.join("s1", 4);
        assert_eq!(texts(&again.replay), ["err:warn\n"]);
        t.leave(again.id);
        t.output(Stream::Stdout, b"two\n");
        let live = a.live.try_recv().unwrap().unwrap();
        assert_eq!(texts(&[live]), ["out:two\n"]);
        // The starter writes while attached; then the first client.
        let b = t.join("s1", 0);
        assert!(!t.writes(a.id) && !t.writes(b.id));
        t.starter_left();
        assert!(t.writes(a.id) && !t.writes(b.id));
        assert!(t.leave(a.id));
        assert!(t.writes(b.id), "the next client is promoted");
        t.exit(3, 0);
        assert_eq!(t.viewers(), 0);
    }

    #[test]
    fn a_client_that_falls_behind_is_let_go_and_told() {
        let (inputs, _rx) = mpsc::channel(8);
        let t = Terminal::shared(true, "c".into(), inputs);
        let mut t = t.lock().unwrap();
        let mut slow = t.join("s1", 0);
        for _ in 0..VIEWER_QUEUE + 1 {
            t.output(Stream::Stdout, b"x");
        }
        assert_eq!(t.viewers(), 0, "let go, not waited for");
        let mut got = 0;
        while let Ok(m) = slow.live.try_recv() {
            assert!(m.is_ok());
            got += 1;
        }
        assert_eq!(got, VIEWER_QUEUE);
    }
}
