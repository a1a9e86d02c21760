//! WebSocket followers of leashd's `/api`, for `cargo xtask bench ui`:
//! `ws_clients ADDR TOKEN CLIENTS SECONDS` connects CLIENTS followers,
//! skips each one's history frame, counts the live events each receives
//! (and those of action `NetworkConnect`) for SECONDS, and prints JSON.

#![allow(clippy::print_stdout, reason = "a benchmark helper reports on stdout")]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, token, clients, seconds] = args.as_slice() else {
        anyhow::bail!("usage: ws_clients ADDR TOKEN CLIENTS SECONDS");
    };
    let (clients, seconds): (usize, u64) = (clients.parse()?, seconds.parse()?);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut req = format!("ws://{addr}/api").into_client_request()?;
        req.headers_mut().insert("Authorization", format!("Bearer {token}").parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
        // The history frame.
        ws.next().await;
        tasks.push(tokio::spawn(async move {
            let (mut all, mut connects) = (0u64, 0u64);
            while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline.into(), ws.next()).await {
                if let Ok(t) = m.into_text() {
                    all += 1;
                    connects += u64::from(t.contains("\"action\":\"NetworkConnect\""));
                }
            }
            (all, connects)
        }));
    }
    println!("ready");
    let mut out = Vec::new();
    for t in tasks {
        let (all, connects) = t.await?;
        out.push(serde_json::json!({ "events": all, "connects": connects }));
    }
    println!("{}", serde_json::json!({ "clients": out }));
    Ok(())
}
