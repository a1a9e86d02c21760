//! `leash <command>`: a session through leashd, with the user's terminal.
#![allow(clippy::print_stderr, reason = "leash's own messages go to stderr")]

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;

use anyhow::{Context, bail};
use leash_proto::v1 as pb;
use leash_proto::v1::manager_client::ManagerClient;
use leash_proto::v1::session_input::Input;
use leash_proto::v1::session_output::Output;
use tokio::sync::mpsc;

use crate::args::Args;

/// Variables of the user's environment that configure a session.
const FORWARDED_ENV: [&str; 16] = [
    "LEASH_TARGET_IMAGE",
    "TARGET_IMAGE",
    "LEASH_HOME",
    "XDG_CONFIG_HOME",
    "XDG_STATE_HOME",
    "XDG_DATA_HOME",
    "CLAUDE_CONFIG_DIR",
    "TERM",
    "ANTHROPIC_API_KEY",
    "IS_SANDBOX",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "OPENAI_API_KEY",
    "CODEX_API_KEY",
    "GEMINI_API_KEY",
    "DASHSCOPE_API_KEY",
    "COLORTERM",
];

/// Go leash variables that mean nothing here: accepted with a warning.
const IGNORED_ENV: [&str; 11] = [
    "TARGET_CONTAINER",
    "LEASH_CONTAINER",
    "LEASH_IMAGE",
    "LEASH_WORK_DIR",
    "LEASH_SHARE_DIR",
    "LEASH_LOG_DIR",
    "LEASH_CFG_DIR",
    "LEASH_WORKSPACE_DIR",
    "LEASH_BOOTSTRAP_TIMEOUT",
    "LEASH_EXTRA_ARGS",
    "LEASH_PROXY_PORT",
];

/// `--open` or `OPEN=1`.
pub fn wants_open(args: &Args, env: &HashMap<String, String>) -> bool {
    args.open || env.get("OPEN").is_some_and(|v| truthy(v))
}

/// `leash --listen ADDR` is accepted only when it is leashd's own address:
/// leash starts no UI of its own and never moves leashd's.
pub async fn check_listen(channel: tonic::transport::Channel, listen: &str) -> anyhow::Result<()> {
    let want = leash_core::listen::parse(listen).map_err(|e| anyhow::anyhow!("--listen: {e}"))?;
    let status = leash_proto::v1::manager_client::ManagerClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let api = status.api.unwrap_or_default();
    let have = leash_core::listen::parse(&api.listen).ok().flatten();
    if want != have {
        let theirs = have.map_or_else(|| "disabled".to_owned(), |a| a.to_string());
        let mine = want.map_or_else(|| "disabled".to_owned(), |a| a.to_string());
        anyhow::bail!(
            "--listen {mine}: leashd serves the Control UI on {theirs}; change it with leashd's --listen (or [leashd] listen), not per session"
        );
    }
    Ok(())
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "t" | "true")
}

/// Checks the flags and builds the start message. Fails before anything
/// is contacted.
pub fn start_message(args: &Args, env: &HashMap<String, String>) -> anyhow::Result<(pb::SessionStart, Vec<String>)> {
    let mut warnings = Vec::new();
    if let Some(l) = &args.listen {
        leash_core::listen::parse(l).map_err(|e| anyhow::anyhow!("--listen: {e}"))?;
    }
    if args.leash_image.is_some() {
        warnings.push("ignored: --leash-image (leash runs no manager container)".to_owned());
    }
    for k in IGNORED_ENV {
        if env.contains_key(k) {
            warnings.push(format!("ignored: {k} (it has no meaning for this leash)"));
        }
    }
    if args.command.is_empty() {
        bail!("a command is required; provide one after '--'");
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let mut resolved_env = Vec::new();
    for spec in &args.env {
        if spec.is_empty() {
            bail!("environment variable specification cannot be empty");
        }
        if spec.starts_with('-') {
            bail!("environment variable {spec:?} must not start with '-'; did you forget the value?");
        }
        if spec.starts_with('=') {
            bail!("environment variable name is required in {spec:?}");
        }
        match spec.split_once('=') {
            Some(_) => resolved_env.push(spec.clone()),
            // KEY alone passes your value, and nothing when unset (as docker does).
            None => {
                if let Some(v) = env.get(spec) {
                    resolved_env.push(format!("{spec}={v}"));
                }
            }
        }
    }
    let secrets = args.secrets.iter().map(|spec| resolve_secret(spec, env)).collect::<anyhow::Result<Vec<_>>>()?;
    for v in &args.volumes {
        if !v.contains(':') {
            bail!("invalid volume mount {v:?}; expected src:dst[:ro]");
        }
    }
    let policy_path = args.policy.clone().or_else(|| env.get("LEASH_POLICY_FILE").cloned());
    let policy = match &policy_path {
        Some(p) => {
            let path = expand_home(p, env);
            std::fs::read_to_string(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => anyhow::anyhow!("Cedar policy file not found: {}", path.display()),
                _ => anyhow::anyhow!("cannot read the Cedar policy file {}: {e}", path.display()),
            })?
        }
        None => String::new(),
    };
    // The project's MCP servers, read as you: the container sees their
    // stdio servers wrapped in leash's relay. Regular files only (a link
    // is not followed).
    // So are your home's (where the agent's settings are mounted), and
    // claude's global configuration, whose copy the container gets.
    use leash_core::stdio_mcp::{CLAUDE_GLOBAL, HOME_FILES, PROJECT_FILES};
    let claude_global = match env.get("CLAUDE_CONFIG_DIR").filter(|d| d.starts_with('/')) {
        Some(dir) => std::path::Path::new(dir).join(".claude.json"),
        None => expand_home(CLAUDE_GLOBAL, env),
    };
    let mcp_configs = PROJECT_FILES
        .iter()
        .map(|f| ((*f).to_owned(), cwd.join(f), MAX_MCP_CONFIG))
        .chain(HOME_FILES.iter().map(|f| ((*f).to_owned(), expand_home(f, env), MAX_MCP_CONFIG)))
        .chain(std::iter::once((CLAUDE_GLOBAL.to_owned(), claude_global, MAX_CLAUDE_GLOBAL)))
        .filter(|(_, path, max)| std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() <= *max))
        .filter_map(|(name, path, _)| Some((name, std::fs::read_to_string(path).ok()?)))
        .collect();
    let tty = !args.no_interactive && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let size = tty.then(|| rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).ok()).flatten();
    // The configuration's variables, and those a config file's `[secrets]`
    // may name (`env:VAR`): leashd uses a credential only when it is named.
    let client_env = env
        .iter()
        .filter(|(k, _)| FORWARDED_ENV.contains(&k.as_str()) || credential_like(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((
        pb::SessionStart {
            command: args.command.clone(),
            cwd: cwd.display().to_string(),
            tty,
            size: size.map(|s| pb::TerminalSize { rows: s.ws_row.into(), cols: s.ws_col.into() }),
            env: resolved_env,
            volumes: args.volumes.clone(),
            image: args.image.clone().unwrap_or_default(),
            policy,
            // Absolute, so leashd can tell whether the file lies under a
            // writable mount and leash-policy can watch it.
            policy_path: policy_path
                .map(|p| {
                    let p = expand_home(&p, env);
                    std::path::absolute(&p).unwrap_or(p).display().to_string()
                })
                .unwrap_or_default(),
            publish: args.publish.clone(),
            publish_all: args.publish_all,
            client_env,
            memory: args.memory.clone().unwrap_or_default(),
            cpus: args.cpus.clone().unwrap_or_default(),
            pids_limit: args.pids_limit.unwrap_or(0),
            root: args.root,
            no_interactive: args.no_interactive,
            degraded: args.degraded,
            no_protect_host: args.no_protect_host,
            ask: args.ask,
            mcp_configs,
            secrets,
            dns: args.dns.clone(),
            add_hosts: args.add_hosts.clone(),
            detach: args.detach,
        },
        warnings,
    ))
}

/// The largest MCP configuration file sent to leashd (1 MiB).
const MAX_MCP_CONFIG: u64 = 1 << 20;
/// The largest claude global configuration sent (2 MiB; a session start
/// is at most 4 MiB in all).
const MAX_CLAUDE_GLOBAL: u64 = 2 << 20;

/// A variable whose name says it holds a credential.
fn credential_like(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"].iter().any(|w| n.contains(w))
}

/// `--secret NAME` (from the environment), `NAME=VALUE` or `NAME@FILE`
/// (read here, as you; one trailing newline dropped), as `NAME=VALUE`.
fn resolve_secret(spec: &str, env: &HashMap<String, String>) -> anyhow::Result<String> {
    let eq = spec.find('=');
    let at = spec.find('@');
    let (name, value) = match (eq, at) {
        (Some(i), _) if at.is_none_or(|a| i < a) => (&spec[..i], spec[i + 1..].to_owned()),
        (_, Some(a)) => {
            let path = expand_home(&spec[a + 1..], env);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("--secret {spec}: cannot read {}: {e}", path.display()))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            (&spec[..a], text.strip_suffix('\r').unwrap_or(text).to_owned())
        }
        _ => {
            let v = env.get(spec).filter(|v| !v.is_empty()).ok_or_else(|| {
                anyhow::anyhow!(
                    "--secret {spec}: {spec} is not set in your environment (or write {spec}=VALUE or {spec}@FILE)"
                )
            })?;
            (spec, v.clone())
        }
    };
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        bail!("--secret {spec:?}: a secret is named as an environment variable (A-Z, 0-9, _)");
    }
    if value.is_empty() {
        bail!("--secret {name}: the value is empty");
    }
    Ok(format!("{name}={value}"))
}

fn expand_home(p: &str, env: &HashMap<String, String>) -> std::path::PathBuf {
    match (p.strip_prefix("~/").or((p == "~").then_some("")), env.get("HOME")) {
        (Some(rest), Some(home)) => std::path::Path::new(home).join(rest),
        _ => std::path::PathBuf::from(p),
    }
}

/// Puts the terminal in raw mode until dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd()).context("cannot read the terminal's mode")?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .context("cannot set the terminal's mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ =
            rustix::termios::tcsetattr(std::io::stdin().as_fd(), rustix::termios::OptionalActions::Now, &self.saved);
    }
}

/// How a client runs: starting a session, attaching to one, or running a
/// command in one.
#[derive(Debug)]
pub struct Client {
    /// The first message: Start, Attach or Exec.
    pub first: Input,
    /// The detach keys (none: never).
    pub detach_keys: Vec<u8>,
    /// Say what happens.
    pub verbose: bool,
}

impl Client {
    /// A client that starts a session.
    pub fn start(start: pb::SessionStart, detach_keys: Option<&str>, verbose: bool) -> anyhow::Result<Client> {
        Ok(Client { first: Input::Start(start), detach_keys: detach_keys_of(detach_keys)?, verbose })
    }

    /// A client that attaches to session `id`.
    pub fn attach(id: String, detach_keys: Option<&str>) -> anyhow::Result<Client> {
        let first = Input::Attach(pb::SessionAttach { id, from: 0 });
        Ok(Client { first, detach_keys: detach_keys_of(detach_keys)?, verbose: false })
    }

    /// A client that runs a command in a running session (`leash exec`).
    pub fn exec(args: crate::args::ExecArgs) -> anyhow::Result<Client> {
        let stdin_tty = rustix::termios::isatty(std::io::stdin());
        if args.tty && args.interactive && !stdin_tty {
            anyhow::bail!("leash exec -it: the input device is not a terminal (leave out -t)");
        }
        let mut env = args.env;
        // A terminal's kind travels with it, as `docker exec -t` does.
        if args.tty
            && !env.iter().any(|e| e.starts_with("TERM="))
            && let Ok(term) = std::env::var("TERM")
        {
            env.push(format!("TERM={term}"));
        }
        let size = rustix::termios::tcgetwinsize(std::io::stdout().as_fd())
            .ok()
            .map(|s| pb::TerminalSize { rows: s.ws_row.into(), cols: s.ws_col.into() });
        let first = Input::Exec(pb::SessionExec {
            id: args.id,
            command: args.command,
            tty: args.tty,
            interactive: args.interactive,
            size,
            env,
            workdir: args.workdir.unwrap_or_default(),
        });
        Ok(Client { first, detach_keys: Vec::new(), verbose: false })
    }
}

fn detach_keys_of(spec: Option<&str>) -> anyhow::Result<Vec<u8>> {
    crate::keys::parse_detach_keys(spec.unwrap_or(crate::keys::DEFAULT_DETACH_KEYS))
        .map_err(|e| anyhow::anyhow!("--detach-keys: {e}"))
}

/// How long a client whose leashd went away tries to reattach.
const REATTACH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens a session stream whose first message is `first`; the sender for
/// the rest.
async fn open_stream(
    channel: &tonic::transport::Channel,
    first: Input,
) -> Result<(mpsc::Sender<pb::SessionInput>, tonic::Streaming<pb::SessionOutput>), tonic::Status> {
    let (tx, rx) = mpsc::channel::<pb::SessionInput>(64);
    let _ = tx.send(pb::SessionInput { input: Some(first) }).await;
    let stream = ManagerClient::new(channel.clone())
        .max_decoding_message_size(leash_daemon::serve::MAX_MESSAGE_BYTES)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, stream))
}

/// Reattaches to session `id` from output offset `from` through a leashd
/// that came back, trying for [`REATTACH_PATIENCE`]; the new stream, its
/// sender and the Attached message, or why not.
async fn reattach(
    channel: &tonic::transport::Channel,
    id: &str,
    from: u64,
) -> Result<(mpsc::Sender<pb::SessionInput>, tonic::Streaming<pb::SessionOutput>, pb::SessionAttached), String> {
    let deadline = tokio::time::Instant::now() + REATTACH_PATIENCE;
    let mut why = format!("no leashd answered within {REATTACH_PATIENCE:?}");
    while tokio::time::Instant::now() < deadline {
        let first = Input::Attach(pb::SessionAttach { id: id.to_owned(), from });
        if let Ok((tx, mut stream)) = open_stream(channel, first).await {
            match stream.message().await {
                Ok(Some(pb::SessionOutput { output: Some(Output::Attached(a)) })) => return Ok((tx, stream, a)),
                // The new leashd recovered every session it found before it
                // answered: this one ended while no leashd ran.
                Ok(Some(pb::SessionOutput { output: Some(Output::Exit(e)) })) if e.error.starts_with("no session") => {
                    return Err(format!("session {id} ended while leashd was away"));
                }
                // Recovered, its terminal not served yet: again.
                Ok(Some(pb::SessionOutput { output: Some(Output::Exit(e)) })) => why = e.error,
                _ => {}
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(why)
}

/// Runs the session; returns the exit code for `leash`.
pub async fn run(channel: tonic::transport::Channel, client: Client) -> anyhow::Result<u8> {
    let Client { first, detach_keys, verbose } = client;
    let (mut tty, detach) = match &first {
        Input::Start(s) => (s.tty, s.detach),
        _ => (false, false),
    };
    // `leash exec` sends stdin only with -i, and says nothing of denials
    // (they are the session's); its command ends with its client, so it
    // does not reattach.
    let (exec, send_stdin) = match &first {
        Input::Exec(e) => (true, e.interactive),
        _ => (false, true),
    };
    let (mut tx, mut stream) = open_stream(&channel, first).await.context("leashd refused the session")?;
    // What the user types and the signals leash gets, whichever stream is current.
    let (user_tx, mut user_rx) = mpsc::channel::<Input>(64);

    let mut raw: Option<RawMode> = None;
    // A question leashd asks (`--ask`) takes the next key typed that answers it.
    let showing: crate::ask::Showing = Default::default();
    // stdin: a plain thread, started once the session runs (prompts read
    // stdin before that), so a blocked read never holds up the exit.
    // With a terminal, the detach keys leave the session running.
    let start_stdin = |tx: mpsc::Sender<Input>, tty: bool| {
        let mut keys = crate::keys::Detacher::new(if tty { detach_keys.clone() } else { Vec::new() });
        let showing = showing.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut stdin = std::io::stdin().lock();
            loop {
                let input = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.blocking_send(Input::StdinEof(true));
                        return;
                    }
                    Ok(n) if tty && showing.lock().unwrap_or_else(|p| p.into_inner()).is_some() => {
                        let mut asked = showing.lock().unwrap_or_else(|p| p.into_inner());
                        let Some(q) = asked.as_ref() else { continue };
                        match crate::ask::answer_for_read(&buf[..n], &q.choices) {
                            Some(choice) => {
                                let a = pb::PromptAnswer { id: q.id.clone(), choice };
                                *asked = None;
                                Input::Answer(a)
                            }
                            // Keys that answer nothing are not the agent's either.
                            None => continue,
                        }
                    }
                    Ok(n) => match keys.feed(&buf[..n]) {
                        crate::keys::Typed::Send(b) if b.is_empty() => continue,
                        crate::keys::Typed::Send(b) => Input::Stdin(b),
                        crate::keys::Typed::Detach => Input::Detach(true),
                    },
                };
                let detaching = matches!(input, Input::Detach(_));
                if tx.blocking_send(input).is_err() || detaching {
                    return;
                }
            }
        });
    };
    // Signals: resize, and (without a terminal) Ctrl-C and SIGTERM go to the command.
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut winch = signal(SignalKind::window_change())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let tx = user_tx.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = winch.recv() => match terminal_size() {
                        Some(size) => Input::Resize(size),
                        None => continue,
                    },
                    _ = int.recv() => Input::Signal(2),
                    _ = term.recv() => Input::Signal(15),
                    _ = hup.recv() => Input::Signal(1),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut session_id = String::new();
    // Output bytes printed so far, by the session's offsets: where a
    // reattaching client resumes.
    let mut printed: u64 = 0;
    let mut stdin_started = false;
    // leashd's questions, drawn on this terminal.
    let mut questions = crate::ask::Questions::new(showing.clone());
    let size = || terminal_size().unwrap_or(pb::TerminalSize { rows: 24, cols: 80 });
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            Some(i) = user_rx.recv() => {
                let answered = match &i {
                    Input::Answer(a) => Some(a.id.clone()),
                    _ => None,
                };
                let _ = tx.send(pb::SessionInput { input: Some(i) }).await;
                if let Some(id) = answered {
                    redraw_after(&tx, questions.close(&id, size(), &mut stdout)).await;
                }
                continue;
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => {
                // Questions of the leashd that went are no longer open.
                questions.abandon(size(), &mut stdout);
                let nl = if raw.is_some() { "\r\n" } else { "\n" };
                // A running session outlives its leashd: the next one
                // recovers it, and this client joins it again where it was.
                if !session_id.is_empty() && !exec {
                    eprint!("leash: lost the connection to leashd; reattaching to session {session_id}…{nl}");
                    match reattach(&channel, &session_id, printed).await {
                        Ok((t, s, a)) => {
                            (tx, stream) = (t, s);
                            if a.lost > 0 {
                                eprint!("leash: {} bytes of output printed meanwhile are no longer kept{nl}", a.lost);
                            }
                            printed += a.lost;
                            eprint!("leash: reattached{nl}");
                            continue;
                        }
                        Err(why) => eprint!("leash: cannot reattach: {why}{nl}"),
                    }
                }
                drop(raw);
                let what = if session_id.is_empty() {
                    String::new()
                } else {
                    format!(" (session {session_id} may still be running: `leashctl sessions`)")
                };
                eprintln!("leash: lost the connection to leashd{what}");
                return Ok(crate::EXIT_LEASH_FAILURE);
            }
        };
        match msg.output {
            Some(Output::Stdout(b)) => {
                printed += b.len() as u64;
                if questions.hold(&b, tty) {
                    continue;
                }
                let _ = stdout.write_all(&b);
                let _ = stdout.flush();
            }
            Some(Output::Ask(p)) => {
                if tty && raw.is_some() {
                    questions.ask(p, size(), &mut stdout);
                } else {
                    // No terminal of the user's to answer on (and stdin is the command's).
                    let _ = writeln!(stderr, "{} (answer it in the Control UI)", crate::ask::line(&p));
                }
            }
            Some(Output::Asked(id)) => {
                redraw_after(&tx, questions.close(&id, size(), &mut stdout)).await;
            }
            Some(Output::Stderr(b)) => {
                printed += b.len() as u64;
                let _ = stderr.write_all(&b);
                let _ = stderr.flush();
            }
            Some(Output::Notice(n)) => {
                let nl = if tty { "\r\n" } else { "\n" };
                let _ = write!(stderr, "leash: {n}{nl}");
            }
            Some(Output::Started(s)) => {
                session_id = s.id.clone();
                if detach {
                    // `--detach`: the id, as `docker run -d` prints it.
                    let _ = writeln!(stdout, "{}", s.id);
                    return Ok(0);
                }
                if tty {
                    raw = Some(RawMode::enter()?);
                }
                start_stdin(user_tx.clone(), tty);
                stdin_started = true;
                if verbose {
                    let nl = if tty { "\r\n" } else { "\n" };
                    let _ = write!(stderr, "leash: session {} in container {} ({}){nl}", s.id, s.container, s.image);
                }
            }
            Some(Output::Attached(a)) => {
                session_id = a.id.clone();
                tty = a.tty;
                printed = a.lost;
                if tty && rustix::termios::isatty(std::io::stdin()) {
                    raw = Some(RawMode::enter()?);
                }
                if send_stdin && !stdin_started {
                    start_stdin(user_tx.clone(), tty);
                    stdin_started = true;
                }
                if a.lost > 0 {
                    let nl = if tty { "\r\n" } else { "\n" };
                    let _ = write!(stderr, "leash: {} bytes of earlier output are no longer kept{nl}", a.lost);
                }
            }
            Some(Output::Detached(_)) => {
                questions.abandon(size(), &mut stdout);
                drop(raw);
                eprintln!("leash: detached from session {session_id} (`leash attach {session_id}` to return)");
                return Ok(0);
            }
            Some(Output::Prompt(p)) => {
                let id = p.id.clone();
                let choice = tokio::task::spawn_blocking(move || ask(&p)).await?;
                let _ = tx.send(pb::SessionInput { input: Some(Input::Answer(pb::PromptAnswer { id, choice })) }).await;
            }
            Some(Output::Exit(e)) => {
                questions.abandon(size(), &mut stdout);
                drop(raw);
                if !e.error.is_empty() {
                    eprintln!("leash: {}", e.error);
                    return Ok(crate::EXIT_LEASH_FAILURE);
                }
                if e.denied > 0 || (tty && !session_id.is_empty() && !exec) || verbose {
                    eprintln!(
                        "leash: {} operation{} denied; see them with `leashctl events --session {}`",
                        e.denied,
                        if e.denied == 1 { "" } else { "s" },
                        session_id
                    );
                }
                return Ok(u8::try_from(e.code).unwrap_or(crate::EXIT_LEASH_FAILURE));
            }
            None => {}
        }
    }
}

/// The terminal's size, when stdout is one.
fn terminal_size() -> Option<pb::TerminalSize> {
    let s = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).ok()?;
    Some(pb::TerminalSize { rows: s.ws_row.into(), cols: s.ws_col.into() })
}

/// Has the session's program redraw what a question covered on its
/// screen: two resizes, each its SIGWINCH.
async fn redraw_after(tx: &mpsc::Sender<pb::SessionInput>, size: Option<pb::TerminalSize>) {
    let Some(size) = size else { return };
    let smaller = pb::TerminalSize { rows: size.rows.saturating_sub(1).max(1), cols: size.cols };
    let _ = tx.send(pb::SessionInput { input: Some(Input::Resize(smaller)) }).await;
    let _ = tx.send(pb::SessionInput { input: Some(Input::Resize(size)) }).await;
}

/// Asks a prompt's question on the terminal; returns the chosen answer.
fn ask(p: &pb::Prompt) -> String {
    let default = p.choices.get(p.default_choice as usize).cloned().unwrap_or_default();
    let mut err = std::io::stderr();
    let _ = writeln!(err, "leash: {}", p.question);
    for (i, c) in p.choices.iter().enumerate() {
        let _ = writeln!(err, "  {}) {c}", i + 1);
    }
    let _ = write!(err, "Choose 1-{} [{}]: ", p.choices.len(), p.default_choice + 1);
    let _ = err.flush();
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        return default;
    }
    choose(p, line.trim(), &default)
}

/// Maps what the user typed to a choice: a number, a choice's name, or
/// nothing (the default). Anything else is the last choice (skip), so a typo
/// never mounts anything.
fn choose(p: &pb::Prompt, typed: &str, default: &str) -> String {
    let lower = typed.to_ascii_lowercase();
    if let Ok(n) = lower.parse::<usize>()
        && (1..=p.choices.len()).contains(&n)
    {
        return p.choices[n - 1].clone();
    }
    if let Some(c) = p.choices.iter().find(|c| c.to_ascii_lowercase() == lower) {
        return c.clone();
    }
    if lower.is_empty() { default.to_owned() } else { p.choices.last().cloned().unwrap_or_default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_resolve_from_the_environment_a_value_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "from-file\n").unwrap();
        let env = HashMap::from([("GH_TOKEN".to_owned(), "from-env".to_owned())]);
        assert_eq!(resolve_secret("GH_TOKEN", &env).unwrap(), "GH_TOKEN=from-env");
        assert_eq!(resolve_secret("A=b@c=d", &env).unwrap(), "A=b@c=d");
        assert_eq!(resolve_secret(&format!("T@{}", f.display()), &env).unwrap(), "T=from-file");
        let e = resolve_secret("MISSING", &env).unwrap_err().to_string();
        assert!(e.contains("--secret MISSING") && e.contains("not set"), "{e}");
        let e = resolve_secret("T@/nonexistent/x", &env).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x"), "{e}");
        assert!(resolve_secret("1X=y", &env).is_err());
        assert!(resolve_secret("X=", &env).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn prompt_answers() {
        let p = pb::Prompt {
            id: "x".into(),
            question: "?".into(),
            choices: ["Always", "This project only", "Just this once", "Skip"].map(String::from).to_vec(),
            default_choice: 2,
        };
        let d = "Just this once";
        assert_eq!(choose(&p, "", d), "Just this once");
        assert_eq!(choose(&p, "1", d), "Always");
        assert_eq!(choose(&p, "4", d), "Skip");
        assert_eq!(choose(&p, "n", d), "Skip");
        assert_eq!(choose(&p, "always", d), "Always");
        assert_eq!(choose(&p, "9", d), "Skip");
        assert_eq!(choose(&p, "yse", d), "Skip");
    }
}
