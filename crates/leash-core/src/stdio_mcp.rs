//! MCP over stdio, governed through a relay: the agent's MCP configuration
//! is shown to it rewritten so that each stdio server's command is
//! leash-entry's relay (`leash-entry mcp-relay --server NAME -- CMD…`),
//! which starts the real server and hands every message, line by line, to
//! leash-proxy for a verdict before passing it on.
//!
//! The relay reaches the proxy the way every HTTP request of a session
//! does: a TCP connection to port 80 of any outside address is redirected
//! to the session's proxy listener; a request naming [`RELAY_HOST`] is
//! answered by the proxy itself. One request per message:
//! `POST /stdio?server=NAME&to=server|client`, the line as the body
//! (without its newline), and, for a line longer than [`LINE_LIMIT`], no
//! body and [`TOO_LONG_HEADER`] with its length. The answer's
//! [`VERDICT_HEADER`] says what to do with it ([`Verdict`]).

/// The host name the proxy answers itself for the relay.
pub const RELAY_HOST: &str = "mcp-relay.leash";
/// Where the relay connects: an address of TEST-NET-1 (never routed
/// anywhere); the session's redirect takes port 80 to its proxy.
pub const RELAY_ADDRESS: &str = "192.0.2.1:80";
/// The longest line the relay hands to the proxy (4 MiB); a longer one is
/// passed on only in record mode, never read whole.
pub const LINE_LIMIT: usize = 4 << 20;
/// The header naming a line too long to send, with its length so far.
pub const TOO_LONG_HEADER: &str = "x-leash-line-too-long";
/// The header of the proxy's verdict.
pub const VERDICT_HEADER: &str = "x-leash-relay";
/// The project files that name MCP servers, relative to the project:
/// claude's project servers, gemini's and qwen's project settings (JSON,
/// `mcpServers`), and codex's project configuration (TOML, `[mcp_servers]`).
/// The client reads them (as its user) and leashd shows them to the
/// container rewritten.
pub const PROJECT_FILES: [&str; 4] =
    [".mcp.json", ".gemini/settings.json", ".qwen/settings.json", ".codex/config.toml"];

/// claude's global configuration as the client names it when it sends it:
/// `$CLAUDE_CONFIG_DIR/.claude.json`, or `~/.claude.json`. Its user-scope
/// servers (`mcpServers`) and each project's (`projects.P.mcpServers`)
/// start stdio servers; it is also claude's state, rewritten as it runs.
/// The container sees a session copy (never the user's file).
pub const CLAUDE_GLOBAL: &str = "~/.claude.json";
/// The home directory's files that name MCP servers (codex's, gemini's and
/// qwen's user configuration), relative to HOME as the client names them
/// (`~/` before): shown rewritten where the agent's settings are mounted.
pub const HOME_FILES: [&str; 3] = ["~/.codex/config.toml", "~/.gemini/settings.json", "~/.qwen/settings.json"];

/// The relay's subcommand of leash-entry.
pub const RELAY_COMMAND: &str = "mcp-relay";

/// What the relay does with a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on unchanged.
    Pass,
    /// Pass on the answer's body instead (a `tools/list` with tools hidden).
    Send,
    /// Send the answer's body back to whoever wrote the line (a refused
    /// call's JSON-RPC error), and nothing on.
    Reply,
    /// Nothing, either way.
    Drop,
}

impl Verdict {
    /// As the header spells it.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Send => "send",
            Verdict::Reply => "reply",
            Verdict::Drop => "drop",
        }
    }

    /// From the header.
    pub fn from_name(s: &str) -> Option<Verdict> {
        [Verdict::Pass, Verdict::Send, Verdict::Reply, Verdict::Drop].into_iter().find(|v| v.name() == s)
    }
}

/// Which way a line goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the agent to the server.
    ToServer,
    /// From the server to the agent.
    ToClient,
}

impl Direction {
    /// As the request's `to` parameter spells it.
    pub fn name(self) -> &'static str {
        match self {
            Direction::ToServer => "server",
            Direction::ToClient => "client",
        }
    }

    /// From the `to` parameter.
    pub fn from_name(s: &str) -> Option<Direction> {
        [Direction::ToServer, Direction::ToClient].into_iter().find(|d| d.name() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for v in [Verdict::Pass, Verdict::Send, Verdict::Reply, Verdict::Drop] {
            assert_eq!(Verdict::from_name(v.name()), Some(v));
        }
        for d in [Direction::ToServer, Direction::ToClient] {
            assert_eq!(Direction::from_name(d.name()), Some(d));
        }
        assert_eq!(Verdict::from_name("PASS"), None);
    }
}
