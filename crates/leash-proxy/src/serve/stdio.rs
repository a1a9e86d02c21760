//! The proxy's side of leash-entry's stdio MCP relay
//! (`leash_core::stdio_mcp`): a request to [`RELAY_HOST`] on a session's
//! intercepted port 80 is one line of a stdio MCP server's traffic, and
//! is answered here with a verdict, never forwarded. Calls are decided
//! as over HTTP (`McpCall` on the tool of the server the agent's
//! configuration names, the arguments as context; asked about with
//! `--ask`), `tools/list` results lose the tools the policy refuses, and
//! every message is an event (`transport` stdio). What is not JSON-RPC
//! (or is longer than the relay reads) passes in record mode only.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use leash_core::Mode;
use leash_core::stdio_mcp::{Direction, LINE_LIMIT, TOO_LONG_HEADER, VERDICT_HEADER, Verdict};
use serde_json::Value;

use super::{Body, Conn, decide_call, mcp_event, refusal, refused_tools, text};
use crate::decide::Decision;
use crate::mcp;

/// Answers one relayed line.
pub(super) async fn answer(req: Request<Incoming>, c: &Conn) -> Response<Body> {
    let query = req.uri().query().unwrap_or_default().to_owned();
    let param = |k: &str| {
        query.split('&').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')).map(percent_decode).unwrap_or_default()
    };
    let (server, to) = (param("server"), Direction::from_name(&param("to")));
    let Some(to) = to.filter(|_| !server.is_empty() && req.method() == hyper::Method::POST) else {
        return text(
            StatusCode::BAD_REQUEST,
            "leash: a relayed line is POST /stdio?server=NAME&to=server|client\n".into(),
        );
    };
    let too_long = req.headers().get(TOO_LONG_HEADER).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let line = match Limited::new(req.into_body(), LINE_LIMIT + 1).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (verdict, body) = decide(c, &server, to, too_long, &line).await;
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    r.headers_mut().insert(VERDICT_HEADER, hyper::header::HeaderValue::from_static(verdict.name()));
    r
}

/// What becomes of one line, and what the relay writes instead (for
/// [`Verdict::Send`] and [`Verdict::Reply`]).
async fn decide(c: &Conn, server: &str, to: Direction, too_long: Option<usize>, line: &[u8]) -> (Verdict, Vec<u8>) {
    let mode = c.shared.decider.mode(&c.session.id).unwrap_or(Mode::Enforce);
    let mut details = BTreeMap::from([
        ("transport".to_owned(), "stdio".to_owned()),
        ("direction".to_owned(), format!("to {}", to.name())),
    ]);
    let parsed = match too_long {
        Some(n) => Err(format!("a line of more than {n} bytes")),
        None => match serde_json::from_slice::<Value>(line) {
            Ok(v) if v.get("jsonrpc").and_then(Value::as_str) == Some("2.0") => Ok(v),
            Ok(_) => Err("not a JSON-RPC 2.0 message".to_owned()),
            Err(e) => Err(format!("not JSON: {e}")),
        },
    };
    let m = match parsed {
        Ok(m) => m,
        Err(why) => {
            // Passed on untouched in record mode only: what cannot be read
            // cannot be decided.
            details.insert("why".to_owned(), why);
            let d = Decision { allow: false, reasons: vec!["leash:unparsed".into()], mode };
            c.shared.events.publish(mcp_event(c, "mcp.unparsed", server, Some(&d), details));
            return (if d.passes() { Verdict::Pass } else { Verdict::Drop }, Vec::new());
        }
    };
    if let Some(id) = m.get("id") {
        details.insert("id".to_owned(), id.to_string());
    }
    let method = mcp::method(&m).unwrap_or("response");
    details.insert("method".to_owned(), method.to_owned());
    match (to, mcp::tool(&m)) {
        (Direction::ToServer, Some(tool)) => {
            let (d, resource) = decide_call(c, server, tool, &m, &mut details).await;
            c.shared.events.publish(mcp_event(c, "McpCall", &resource, Some(&d), details));
            if d.passes() {
                return (Verdict::Pass, Vec::new());
            }
            match m.get("id") {
                Some(id) => (Verdict::Reply, mcp::error(id, &refusal(tool, server, &d)).to_string().into_bytes()),
                None => (Verdict::Drop, Vec::new()),
            }
        }
        (Direction::ToClient, _) if mcp::listed_tools(&m).is_some() => {
            // A listing: the tools the policy refuses taken out.
            let hidden = refused_tools(c, server, &mcp::listed_tools(&m).unwrap_or_default()).await;
            details.insert("method".to_owned(), "tools/list".to_owned());
            if hidden.is_empty() {
                c.shared.events.publish(mcp_event(c, "mcp.tools/list", server, None, details));
                return (Verdict::Pass, Vec::new());
            }
            let mut m = m;
            mcp::hide_tools(&mut m, &hidden);
            details.insert("hidden".to_owned(), hidden.join(", "));
            c.shared.events.publish(mcp_event(c, "mcp.tools/list", server, None, details));
            (Verdict::Send, m.to_string().into_bytes())
        }
        _ => {
            c.shared.events.publish(mcp_event(c, &format!("mcp.{method}"), server, None, details));
            (Verdict::Pass, Vec::new())
        }
    }
}

/// `%XX` escapes undone (the relay encodes the server's name).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_decoded_as_the_relay_encodes_them() {
        assert_eq!(percent_decode("my%20server%2F1"), "my server/1");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
    }
}
