//! `cargo xtask bench mcp`: what leash-entry's stdio MCP relay costs. In a
//! governed session of the test-debian image (node, the real
//! `@modelcontextprotocol/server-everything` and the SDK), the SDK's client
//! makes small `tools/call`s (`echo`) one after another to the server
//! started directly and through the relay, interleaved, and reports the
//! median per-call latency of each; then a "server" that writes 100 MB of
//! JSON-RPC results (100 lines of 1 MB) is read directly and through the
//! relay, for the throughput.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::bench_support::{Instance, all_running, governed_session, median_f64, write_report};
use crate::util;

/// Interleaved runs of each measurement.
const RUNS: usize = 5;
/// Calls per latency run.
const CALLS: u32 = 500;
/// Lines of 1 MB the throughput "server" writes.
const MEGABYTES: u32 = 100;

/// The client: CALLS echo calls to the server `argv` names; prints the
/// median per-call microseconds.
const CLIENT: &str = r#"
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StdioClientTransport } = require("@modelcontextprotocol/sdk/client/stdio.js");
async function main() {
  const [n, command, ...args] = process.argv.slice(2);
  const client = new Client({ name: "leash-bench", version: "1.0.0" });
  await client.connect(new StdioClientTransport({ command, args, stderr: "ignore" }));
  for (let i = 0; i < 20; i++) await client.callTool({ name: "echo", arguments: { message: "warm" } });
  const t = [];
  for (let i = 0; i < Number(n); i++) {
    const s = process.hrtime.bigint();
    await client.callTool({ name: "echo", arguments: { message: "hi " + i } });
    t.push(Number(process.hrtime.bigint() - s) / 1000);
  }
  t.sort((a, b) => a - b);
  console.log(t[Math.floor(t.length / 2)].toFixed(1));
  await client.close();
}
main().then(() => process.exit(0), (e) => { console.error(e.message); process.exit(1); });
"#;

pub fn run() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("bench mcp runs leashd and Docker and needs root");
    }
    let bin = util::build_binaries(true)?;
    let entry = util::build_static_entry(true)?;
    crate::image::run(&["test-debian".to_owned()])?;
    let image = crate::image::tag("test-debian");
    let mut inst = Instance::new(&bin)?;
    inst.leashd = Some(inst.command("leashd").env("LEASH_ENTRY_BIN", &entry).stdout(Stdio::null()).spawn()?);
    inst.wait(std::time::Duration::from_secs(20), all_running)?;
    let project = inst.project()?;
    std::fs::write(project.join("client.cjs"), CLIENT)?;
    let policy = project.with_file_name("mcp.cedar");
    // Everything allowed, and decided: calls are asked of the policy.
    std::fs::write(
        &policy,
        "@id(\"all\") permit (principal, action, resource);\n\
         @id(\"no-env\") forbid (principal, action == Action::\"McpCall\", resource == MCP::Tool::\"get-env\");\n",
    )?;
    let (mut session, container) = governed_session(&inst, &image, &policy, &project, &[])?;
    let exec = |script: &str| -> anyhow::Result<String> {
        let out = util::output(Command::new("docker").args([
            "exec",
            "-w",
            &project.display().to_string(),
            &container,
            "sh",
            "-c",
            script,
        ]))?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    };
    let relay = "/leash/leash-entry mcp-relay --server everything --";
    let (mut direct, mut relayed) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let direct_call = || exec(&format!("node client.cjs {CALLS} mcp-server-everything stdio"));
        let relayed_call = || exec(&format!("node client.cjs {CALLS} {relay} mcp-server-everything stdio"));
        let (d, r) = if run % 2 == 0 {
            (direct_call()?, relayed_call()?)
        } else {
            let r = relayed_call()?;
            (direct_call()?, r)
        };
        direct.push(d.parse::<f64>().with_context(|| format!("direct: {d:?}"))?);
        relayed.push(r.parse::<f64>().with_context(|| format!("relayed: {r:?}"))?);
    }
    // 100 lines of 1 MB results, read to the end; nanoseconds each way.
    exec(&format!(
        "i=0; pad=$(head -c 1000000 /dev/zero | tr '\\0' x); while [ $i -lt {MEGABYTES} ]; do \
         printf '{{\"jsonrpc\":\"2.0\",\"id\":%d,\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"%s\"}}]}}}}\\n' $i $pad; \
         i=$((i+1)); done > /tmp/results.jsonl"
    ))?;
    let stream = |via: &str| -> anyhow::Result<f64> {
        let out = exec(&format!(
            "s=$(date +%s%N); {via} cat /tmp/results.jsonl < /dev/null | wc -c > /tmp/bytes; e=$(date +%s%N); \
             echo $((e-s)) $(cat /tmp/bytes)"
        ))?;
        let (ns, bytes) = out.split_once(' ').context("no timing")?;
        let bytes: u64 = bytes.trim().parse()?;
        anyhow::ensure!(bytes >= u64::from(MEGABYTES) * 1_000_000, "{via}: only {bytes} bytes came through");
        Ok(ns.parse::<f64>()? / 1e9)
    };
    let (mut direct_s, mut relayed_s) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        direct_s.push(stream("")?);
        relayed_s.push(stream(relay)?);
    }
    let _ = session.kill();
    let _ = session.wait();
    inst.stop()?;
    let (d, r) = (median_f64(direct), median_f64(relayed));
    let mb = f64::from(MEGABYTES);
    let (ds, rs) = (median_f64(direct_s), median_f64(relayed_s));
    util::out(&format!(
        "mcp (release; a small tools/call over stdio, medians of {RUNS} interleaved runs of {CALLS} calls each)"
    ));
    util::out(&format!("  baseline: the server started directly      p50 {d:.1} µs per call"));
    util::out(&format!(
        "  through leash-entry's relay                 p50 {r:.1} µs per call  (+{:.3} ms; {:.2}x)",
        (r - d) / 1000.0,
        r / d
    ));
    util::out(&format!(
        "  100 MB of results: directly {:.0} MB/s, through the relay {:.0} MB/s ({:.2}x)",
        mb / ds,
        mb / rs,
        ds / rs
    ));
    write_report(
        "mcp",
        &serde_json::json!({
            "runs": RUNS,
            "calls": CALLS,
            "p50_us": { "direct": d, "relayed": r },
            "added_ms": (r - d) / 1000.0,
            "stream_mb_per_s": { "direct": mb / ds, "relayed": mb / rs },
        }),
    )
}
