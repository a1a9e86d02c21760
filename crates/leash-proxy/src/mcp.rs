//! MCP over HTTP: JSON-RPC 2.0 messages in request bodies (the streamable
//! HTTP transport's POST, the SSE transport's POST to its message endpoint)
//! and in responses (JSON, or Server-Sent Events).
//!
//! A request body that starts like JSON-RPC is read whole (up to
//! [`BODY_LIMIT`]; beyond it the request is refused, never passed through
//! unchecked) and its `tools/call`s are authorized; any other body streams
//! through untouched.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyStream, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

/// The largest MCP message body the proxy reads (4 MiB).
pub const BODY_LIMIT: usize = 4 << 20;
/// How much of a body is read to tell JSON-RPC from anything else.
const SNIFF: usize = 4096;
/// The JSON-RPC error code of a refused call.
pub const DENIED_CODE: i64 = -32000;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// What reading a request body found.
pub enum Read {
    /// Not JSON-RPC: the body, unchanged, streaming.
    Other(Body),
    /// JSON-RPC messages, and the body read whole.
    Messages(Vec<Value>, Bytes),
    /// Larger than [`BODY_LIMIT`].
    TooLarge,
    /// It looked like JSON-RPC but did not parse.
    Invalid(String),
}

/// Reads enough of `body` to tell whether it carries JSON-RPC.
pub async fn read(body: Body) -> Result<Read, hyper::Error> {
    let mut stream = BodyStream::new(body);
    let mut prefix = BytesMut::new();
    let mut trailers = Vec::new();
    while prefix.len() < SNIFF {
        match stream.next().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => prefix.extend_from_slice(&d),
                Err(f) => trailers.push(f),
            },
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    let looks_like = {
        let head = String::from_utf8_lossy(&prefix[..prefix.len().min(SNIFF)]);
        let t = head.trim_start();
        (t.starts_with('{') || t.starts_with('[')) && head.contains("\"jsonrpc\"")
    };
    if !looks_like {
        let first = futures_util::stream::iter(
            std::iter::once(Ok(Frame::data(prefix.freeze()))).chain(trailers.into_iter().map(Ok)),
        );
        return Ok(Read::Other(UnsyncBoxBody::new(StreamBody::new(first.chain(stream)))));
    }
    while prefix.len() <= BODY_LIMIT
        && let Some(frame) = stream.next().await
    {
        if let Ok(d) = frame?.into_data() {
            prefix.extend_from_slice(&d);
        }
    }
    if prefix.len() > BODY_LIMIT {
        return Ok(Read::TooLarge);
    }
    let bytes = prefix.freeze();
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Array(items)) if !items.is_empty() && items.iter().all(is_jsonrpc) => {
            Ok(Read::Messages(items, bytes))
        }
        Ok(v) if is_jsonrpc(&v) => Ok(Read::Messages(vec![v], bytes)),
        Ok(_) => Ok(Read::Invalid("not a JSON-RPC 2.0 message".into())),
        Err(e) => Ok(Read::Invalid(format!("not JSON: {e}"))),
    }
}

fn is_jsonrpc(v: &Value) -> bool {
    v.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
}

/// A message's method, if it is a request or notification.
pub fn method(m: &Value) -> Option<&str> {
    m.get("method").and_then(Value::as_str)
}

/// The tool a `tools/call` names.
pub fn tool(m: &Value) -> Option<&str> {
    (method(m) == Some("tools/call")).then(|| m["params"]["name"].as_str()).flatten()
}

/// The names of a `tools/call`'s arguments (never their values: they may be secrets).
pub fn argument_names(m: &Value) -> Vec<String> {
    m["params"]["arguments"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

/// The JSON-RPC error answering a refused request.
pub fn error(id: &Value, message: &str) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": DENIED_CODE, "message": message}})
}

/// One SSE event carrying a JSON-RPC message.
pub fn sse_event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

/// The tool names of a `tools/list` result, if `m` is one (a response
/// whose result has a `tools` array). Every entry with a name counts,
/// with an input schema or not: a server cannot keep a forbidden tool in
/// the agent's view by listing one entry out of shape.
pub fn listed_tools(m: &Value) -> Option<Vec<String>> {
    let tools = m.get("result")?.get("tools")?.as_array()?;
    Some(tools.iter().filter_map(|t| t.get("name")?.as_str().map(str::to_owned)).collect())
}

/// Removes the tools named in `hidden` from a `tools/list` result.
pub fn hide_tools(m: &mut Value, hidden: &[String]) {
    if let Some(tools) = m.get_mut("result").and_then(|r| r.get_mut("tools")).and_then(Value::as_array_mut) {
        tools.retain(|t| !t["name"].as_str().is_some_and(|n| hidden.iter().any(|h| h == n)));
    }
}

/// Splits complete SSE events (ending with a blank line) off `buf`.
pub fn take_events(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    loop {
        let text = &buf[..];
        let end = text
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| i + 2)
            .or_else(|| text.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4));
        match end {
            Some(n) => out.push(buf.split_to(n).freeze()),
            None => return out,
        }
    }
}

/// An SSE event's type and data.
pub fn parse_event(raw: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (mut kind, mut data) = (String::from("message"), Vec::new());
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            kind = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
        }
    }
    (kind, data.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, hyper::Error>> =
            parts.iter().map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes())))).collect();
        UnsyncBoxBody::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn json_rpc_is_read_whole_and_anything_else_streams_through() {
        let call =
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get-env","arguments":{"k":"secret"}}}"#;
        let Ok(Read::Messages(m, _)) = read(body(&[&call[..20], &call[20..]])).await else { panic!("not read") };
        assert_eq!((tool(&m[0]), argument_names(&m[0])), (Some("get-env"), vec!["k".to_owned()]));
        let batch = format!("[{call},{call}]");
        let batch: &'static str = Box::leak(batch.into_boxed_str());
        assert!(matches!(read(body(&[batch])).await, Ok(Read::Messages(m, _)) if m.len() == 2));
        let Ok(Read::Other(b)) = read(body(&["{\"model\":\"x\",", "\"messages\":[]}"])).await else { panic!() };
        assert_eq!(http_body_util::BodyExt::collect(b).await.unwrap().to_bytes(), "{\"model\":\"x\",\"messages\":[]}");
        assert!(matches!(read(body(&["{\"jsonrpc\":\"2.0\", oops"])).await, Ok(Read::Invalid(_))));
        let big: &'static str =
            Box::leak(format!("{{\"jsonrpc\":\"2.0\",\"x\":\"{}\"}}", "a".repeat(BODY_LIMIT)).into_boxed_str());
        assert!(matches!(read(body(&[big])).await, Ok(Read::TooLarge)));
    }

    #[test]
    fn tools_lists_are_recognized_and_filtered() {
        let mut m = serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"tools":[
            {"name":"echo","inputSchema":{}},{"name":"get-env","inputSchema":{}}]}});
        assert_eq!(listed_tools(&m), Some(vec!["echo".to_owned(), "get-env".to_owned()]));
        hide_tools(&mut m, &["get-env".to_owned()]);
        assert_eq!(listed_tools(&m), Some(vec!["echo".to_owned()]));
        assert_eq!(listed_tools(&serde_json::json!({"result":{"content":[]}})), None);
        // One entry out of shape does not keep the others from the filter.
        let mut m = serde_json::json!({"jsonrpc":"2.0","id":2,"result":{"tools":[
            {"name":"get-env","inputSchema":{}},{"name":"odd"},7]}});
        assert_eq!(listed_tools(&m), Some(vec!["get-env".to_owned(), "odd".to_owned()]));
        hide_tools(&mut m, &["get-env".to_owned()]);
        assert_eq!(listed_tools(&m), Some(vec!["odd".to_owned()]));
    }

    #[test]
    fn sse_events_split_on_blank_lines() {
        let mut buf =
            BytesMut::from("event: endpoint\ndata: /message?sessionId=1\n\nevent: message\r\ndata: {}\r\n\r\npartial");
        let events = take_events(&mut buf);
        assert_eq!(events.len(), 2);
        assert_eq!(parse_event(&events[0]), ("endpoint".into(), "/message?sessionId=1".into()));
        assert_eq!(parse_event(&events[1]), ("message".into(), "{}".into()));
        assert_eq!(&buf[..], b"partial");
        assert_eq!(error(&serde_json::json!(3), "no")["error"]["code"], -32000);
    }
}
