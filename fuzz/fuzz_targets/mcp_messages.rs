//! The proxy's MCP parsing: any bytes, as a JSON-RPC body and as an SSE
//! stream, never panic; what is read back from a filtered `tools/list`
//! hides what it was asked to hide.
#![no_main]

use bytes::BytesMut;
use leash_proxy::mcp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    for event in mcp::take_events(&mut buf) {
        let _ = mcp::parse_event(&event);
    }
    let _ = mcp::parse_event(data);
    let Ok(mut message) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = mcp::method(&message);
    let _ = mcp::tool(&message);
    let _ = mcp::argument_names(&message);
    let _ = mcp::error(&message, "refused");
    let _ = mcp::sse_event(&message);
    if let Some(tools) = mcp::listed_tools(&message)
        && let Some(hidden) = tools.first().cloned()
    {
        mcp::hide_tools(&mut message, std::slice::from_ref(&hidden));
        let left = mcp::listed_tools(&message).unwrap_or_default();
        assert!(!left.contains(&hidden), "{hidden} still listed");
    }
});
