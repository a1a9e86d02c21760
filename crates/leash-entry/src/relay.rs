//! `leash-entry mcp-relay --server NAME -- COMMAND [ARG…]`: the relay
//! between an agent and a stdio MCP server it starts (see
//! `leash_core::stdio_mcp`). It starts the server as its child, reads
//! newline-delimited messages both ways, asks the session's proxy what to
//! do with each, and does it; it exits with the server's code.
//!
//! Each direction is a thread of its own with its own connection to the
//! proxy, so a full pipe one way never holds up the other. The relay
//! fails closed: a line the proxy cannot be asked about is not passed on.
//! It runs as the agent (it is the agent's child): it governs what the
//! agent asks of the server through its configuration, not an agent that
//! goes around it (the kernel's layer governs that).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};

use leash_core::stdio_mcp::{
    Direction, LINE_LIMIT, RELAY_ADDRESS, RELAY_HOST, TOO_LONG_HEADER, VERDICT_HEADER, Verdict,
};

/// What the relay is asked to run.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// The server's name in the agent's configuration.
    pub server: String,
    /// Where the proxy is reached (tests point it elsewhere).
    pub proxy: String,
    /// The server's command.
    pub command: Vec<String>,
}

/// Parses the arguments after `mcp-relay`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let (mut server, mut proxy) = (None, RELAY_ADDRESS.to_owned());
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--server" => server = Some(it.next().ok_or("--server needs a value")?),
            "--proxy" => proxy = it.next().ok_or("--proxy needs a value")?,
            "--" => {
                let command: Vec<String> = it.collect();
                let server = server.ok_or("mcp-relay needs --server NAME")?;
                if command.is_empty() {
                    return Err("mcp-relay needs the server's command after --".into());
                }
                return Ok(Args { server, proxy, command });
            }
            other => return Err(format!("mcp-relay: unknown argument {other:?}")),
        }
    }
    Err("usage: leash-entry mcp-relay --server NAME [--proxy HOST:PORT] -- COMMAND [ARG...]".into())
}

/// One line read: whole (without its newline), or too long (its first
/// [`LINE_LIMIT`] bytes, the rest still unread), or the end.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Whole(Vec<u8>),
    TooLong(Vec<u8>),
    End,
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(LINE_LIMIT as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Line::Whole(buf));
    }
    if buf.len() > LINE_LIMIT {
        return Ok(Line::TooLong(buf));
    }
    // The last line, without a newline.
    Ok(Line::Whole(buf))
}

/// Copies (or skips, with no `to`) the rest of a too-long line, through its newline.
fn rest_of_line(r: &mut impl BufRead, mut to: Option<&mut dyn Write>) -> std::io::Result<()> {
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        let (n, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if let Some(w) = to.as_mut() {
            w.write_all(&chunk[..n])?;
        }
        r.consume(n);
        if done {
            return Ok(());
        }
    }
}

/// A keep-alive HTTP/1.1 connection to the proxy.
struct Proxy {
    address: String,
    server: String,
    to: Direction,
    stream: Option<BufReader<TcpStream>>,
}

impl Proxy {
    /// The proxy's verdict on `line` (None: too long, with its length so far) and its body.
    fn ask(&mut self, line: &[u8], too_long: Option<usize>) -> Result<(Verdict, Vec<u8>), String> {
        // One retry: a kept-alive connection the proxy closed meanwhile.
        let mut last = String::new();
        for _ in 0..2 {
            match self.ask_once(line, too_long) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    self.stream = None;
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn ask_once(&mut self, line: &[u8], too_long: Option<usize>) -> Result<(Verdict, Vec<u8>), String> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.address).map_err(|e| format!("connecting to {}: {e}", self.address))?;
            let _ = s.set_nodelay(true);
            self.stream = Some(BufReader::new(s));
        }
        let stream = self.stream.as_mut().expect("connected");
        let body: &[u8] = if too_long.is_some() { &[] } else { line };
        let mut head = format!(
            "POST /stdio?server={}&to={} HTTP/1.1\r\nHost: {RELAY_HOST}\r\nContent-Length: {}\r\n",
            percent_encode(&self.server),
            self.to.name(),
            body.len()
        );
        if let Some(n) = too_long {
            head.push_str(&format!("{TOO_LONG_HEADER}: {n}\r\n"));
        }
        head.push_str("\r\n");
        let w = stream.get_mut();
        w.write_all(head.as_bytes()).and_then(|()| w.write_all(body)).map_err(|e| e.to_string())?;
        let mut status = String::new();
        stream.read_line(&mut status).map_err(|e| e.to_string())?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("the proxy answered {:?}", status.trim()));
        }
        let (mut length, mut verdict) = (0usize, None);
        loop {
            let mut h = String::new();
            stream.read_line(&mut h).map_err(|e| e.to_string())?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse().map_err(|_| format!("a bad length {v:?}"))?;
                } else if k == VERDICT_HEADER {
                    verdict = Verdict::from_name(v);
                }
            }
        }
        let mut answer = vec![0u8; length];
        stream.read_exact(&mut answer).map_err(|e| e.to_string())?;
        Ok((verdict.ok_or("the proxy gave no verdict")?, answer))
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Moves the lines of one direction until its reader ends: each asked
/// about, then passed on, replaced, answered back or dropped.
fn pump(mut from: impl BufRead, to: &Mutex<dyn Write + Send>, back: &Mutex<dyn Write + Send>, mut proxy: Proxy) {
    let mut warned = false;
    let server = proxy.server.clone();
    let mut say = |what: &str| {
        if !warned {
            #[allow(clippy::print_stderr, reason = "the relay's one line, on the server's stderr")]
            {
                eprintln!("leash-entry mcp-relay ({server}): {what}; lines are not passed on");
            }
            warned = true;
        }
    };
    loop {
        let line = match read_line(&mut from) {
            Ok(l) => l,
            Err(_) => return,
        };
        let (bytes, too_long) = match &line {
            Line::End => return,
            Line::Whole(b) => (b.as_slice(), None),
            Line::TooLong(b) => (b.as_slice(), Some(b.len())),
        };
        let (verdict, answer) = match proxy.ask(bytes, too_long) {
            Ok(v) => v,
            Err(e) => {
                say(&format!("cannot ask leash-proxy: {e}"));
                (Verdict::Drop, Vec::new())
            }
        };
        let written = match verdict {
            Verdict::Pass => {
                let mut w = to.lock().unwrap_or_else(|p| p.into_inner());
                match too_long {
                    // A too-long line passed on (record mode): the rest streams through.
                    Some(_) => w.write_all(bytes).and_then(|()| rest_of_line(&mut from, Some(&mut *w))),
                    None => w.write_all(bytes).and_then(|()| w.write_all(b"\n")),
                }
                .and_then(|()| w.flush())
            }
            Verdict::Send | Verdict::Reply => {
                let mut w = if verdict == Verdict::Send { to } else { back }.lock().unwrap_or_else(|p| p.into_inner());
                w.write_all(&answer).and_then(|()| w.write_all(b"\n")).and_then(|()| w.flush())
            }
            Verdict::Drop => Ok(()),
        };
        if too_long.is_some() && verdict != Verdict::Pass && rest_of_line(&mut from, None).is_err() {
            return;
        }
        if written.is_err() {
            return;
        }
    }
}

/// Runs the relay: the server as a child, both directions pumped; the
/// server's exit code.
pub fn run(args: &Args) -> ExitCode {
    let mut child = match Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "the relay's one line, on the server's stderr")]
            {
                eprintln!("leash-entry mcp-relay ({}): cannot start {:?}: {e}", args.server, args.command[0]);
            }
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
        }
    };
    let proxy = |to| Proxy { address: args.proxy.clone(), server: args.server.clone(), to, stream: None };
    let (Some(server_in), Some(server_out)) = (child.stdin.take(), child.stdout.take()) else {
        return ExitCode::from(125);
    };
    let server_in: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(server_in));
    let agent_out: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(std::io::stdout()));
    let to_server = {
        let (to, back, p) = (server_in.clone(), agent_out.clone(), proxy(Direction::ToServer));
        std::thread::spawn(move || {
            pump(BufReader::with_capacity(1 << 16, std::io::stdin()), &*to, &*back, p);
            // The agent is done: so is the server's input.
            drop(to);
        })
    };
    let to_client = {
        // Nothing is answered back to a server (its requests to the agent
        // are not governed), so this direction holds no copy of its input:
        // the server sees its input end when the agent's does.
        let nowhere: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(std::io::sink()));
        let (to, p) = (agent_out.clone(), proxy(Direction::ToClient));
        std::thread::spawn(move || pump(BufReader::with_capacity(1 << 16, server_out), &*to, &*nowhere, p))
    };
    drop(server_in);
    // The server's output ended: it exits (or has); the agent's side may
    // still be reading stdin, which nothing waits for.
    let _ = to_client.join();
    let status = child.wait();
    drop(to_server);
    let _ = std::io::stdout().flush();
    match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            let code = s.code().or_else(|| s.signal().map(|n| 128 + n)).unwrap_or(1);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(_) => ExitCode::from(125),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let a = parse(["--server", "fs", "--", "npx", "-y", "x"].map(String::from)).unwrap();
        assert_eq!(
            a,
            Args {
                server: "fs".into(),
                proxy: RELAY_ADDRESS.into(),
                command: vec!["npx".into(), "-y".into(), "x".into()]
            }
        );
        assert!(parse(["--", "x"].map(String::from)).unwrap_err().contains("--server"));
        assert!(parse(["--server", "fs", "--"].map(String::from)).unwrap_err().contains("command"));
        assert!(parse(["--bogus"].map(String::from)).is_err());
    }

    #[test]
    fn lines_are_read_whole_or_known_too_long() {
        let mut r = BufReader::new(&b"{\"a\":1}\r\nlast"[..]);
        assert_eq!(read_line(&mut r).unwrap(), Line::Whole(b"{\"a\":1}".to_vec()));
        assert_eq!(read_line(&mut r).unwrap(), Line::Whole(b"last".to_vec()));
        assert_eq!(read_line(&mut r).unwrap(), Line::End);
        let mut long = vec![b'x'; LINE_LIMIT + 10];
        long.extend_from_slice(b"\nnext\n");
        let mut r = BufReader::new(long.as_slice());
        assert!(matches!(read_line(&mut r).unwrap(), Line::TooLong(b) if b.len() == LINE_LIMIT + 1));
        rest_of_line(&mut r, None).unwrap();
        assert_eq!(read_line(&mut r).unwrap(), Line::Whole(b"next".to_vec()));
    }

    #[test]
    fn a_server_name_is_sent_encoded() {
        assert_eq!(percent_encode("my server/1"), "my%20server%2F1");
    }
}
