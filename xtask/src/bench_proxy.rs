//! `cargo xtask bench proxy`: HTTPS through leash-proxy against the same
//! requests made directly and through mitmproxy (reverse mode), in the same
//! run on the same machine. The clients (`wrk`, `curl`, Python) run in
//! containers of the test-debian image: the governed one is a leash
//! session (intercepted), the others plain Docker.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::bench_support::{Instance, all_running, component, governed_session, median_f64 as median, write_report};
use crate::util;

const MITMPROXY: &str = "mitmproxy==11.0.2";
const REPEATS: usize = 5;
const UPSTREAM_PORT: u16 = 443;
const MITM_PORT: u16 = 8443;

/// Children killed on drop.
struct Reaper(Vec<Child>, Vec<String>);

/// Removes the bench instance's session containers (a failed run leaves them).
fn remove_bench_containers() {
    if let Ok(out) = Command::new("docker").args(["ps", "-aq", "--filter", "label=leash.instance=bench"]).output() {
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        remove_bench_containers();
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        for name in &self.1 {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
    }
}

/// `12.3us`, `1.2ms`, `2.00s` in milliseconds.
fn millis(s: &str) -> Option<f64> {
    let (n, unit) = s.trim().split_at(s.trim().find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

/// Requests per second and the p50/p99 latency (ms) of a `wrk --latency` run.
fn parse_wrk(out: &str) -> anyhow::Result<(f64, f64, f64)> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:").map(|v| v.trim().parse::<f64>()))
        .with_context(|| format!("no Requests/sec in {out}"))??;
    let pct = |p: &str| out.lines().find_map(|l| l.trim().strip_prefix(p).and_then(millis));
    Ok((rps, pct("50%").unwrap_or(f64::NAN), pct("99%").unwrap_or(f64::NAN)))
}

fn exec(container: &str, script: &str) -> anyhow::Result<String> {
    let out = util::output(Command::new("docker").args(["exec", container, "sh", "-c", script]))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The mitmproxy in a venv of its own under the target dir.
fn mitmdump() -> anyhow::Result<std::path::PathBuf> {
    let venv = util::target_dir()?.join("bench").join("mitmproxy-venv");
    let bin = venv.join("bin").join("mitmdump");
    if !bin.exists() {
        util::out(&format!("installing {MITMPROXY} into {}", venv.display()));
        util::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        util::run(Command::new(venv.join("bin").join("pip")).args(["install", "-q", MITMPROXY]))?;
    }
    Ok(bin)
}

fn rss_kib(pid: u64) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

pub fn run() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("bench proxy runs leashd, Docker and the proxy's redirect rules and needs root");
    }
    let bin = util::build_binaries(true)?;
    let entry = util::build_static_entry(true)?;
    util::run(util::cargo().args(["build", "--release", "-p", "leash-proxy", "--example", "bench-upstream"]))?;
    let upstream_bin = util::target_dir()?.join("release").join("examples").join("bench-upstream");
    crate::image::run(&["test-debian".to_owned()])?;
    let image = crate::image::tag("test-debian");
    let mitmdump = mitmdump()?;
    let gw = util::host_address(&image)?;

    remove_bench_containers();
    let mut inst = Instance::new(&bin)?;
    let project = inst.project()?;
    let certs = project.with_file_name("upstream");
    std::fs::create_dir_all(&certs)?;
    let mut reaper = Reaper(Vec::new(), Vec::new());
    reaper.0.push(
        Command::new(&upstream_bin)
            .arg(&certs)
            .arg(UPSTREAM_PORT.to_string())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the upstream")?,
    );
    let started = Instant::now();
    while !certs.join("ca.pem").exists() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the upstream did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reaper.0.push(
        Command::new(&mitmdump)
            .args(["-q", "--ssl-insecure", "--listen-port", &MITM_PORT.to_string(), "--mode"])
            .arg(format!("reverse:https://127.0.0.1:{UPSTREAM_PORT}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mitmdump")?,
    );
    inst.leashd = Some(
        inst.command("leashd")
            .env("LEASH_ENTRY_BIN", &entry)
            .env("LEASH_UPSTREAM_CA", certs.join("ca.pem"))
            .stdout(Stdio::null())
            .spawn()?,
    );
    inst.wait(Duration::from_secs(20), all_running)?;
    let policy = project.with_file_name("bench-proxy.cedar");
    std::fs::write(
        &policy,
        format!(
            "@id(\"all\") permit (principal, action, resource) unless {{ action == Action::\"SecretUse\" }};\n\
             @id(\"host-side\") permit (principal, action == Action::\"NetworkConnect\", resource in Net::IpRange::\"{gw}/32\");\n\
             @id(\"bench-key\") permit (principal, action == Action::\"SecretUse\", resource == Secret::\"BENCH_KEY\") when {{ context.host == \"bench.test\" && context has location && [\"header\", \"body\"].contains(context.location) }};\n"
        ),
    )?;
    // A credential the session holds as a decoy, and the same-length
    // value sent in its place where nothing is swapped (the baseline).
    let bench_key = format!("sk-bench-{}", "k7Qx".repeat(16));
    let (session, governed) =
        governed_session(&inst, &image, &policy, &project, &["--secret", &format!("BENCH_KEY={bench_key}")])?;
    reaper.0.push(session);
    let plain = "leash-bench-proxy-plain";
    let _ = Command::new("docker").args(["rm", "-f", plain]).output();
    util::output(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        plain,
        "--add-host",
        &format!("bench.test:{gw}"),
        &image,
        "sleep",
        "3600",
    ]))?;
    reaper.1.push(plain.to_owned());
    exec(&governed, &format!("echo '{gw} bench.test' >> /etc/hosts"))?;
    // Requests with a credential in a header, and 64 KiB JSON bodies: each
    // with the decoy (swapped) and with a value of the same length that is
    // not one (passed as it is).
    let other = "sk-bench-".to_owned() + &"z".repeat(bench_key.len() - 9);
    let body = |key: &str| format!("{{\"pad\":\"{}\",\"key\":\"{key}\"}}", "p".repeat(64 << 10));
    let lua = |key: &str| {
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{}'\n",
            body(key)
        )
    };
    std::fs::write(project.join("body-plain.lua"), lua(&other))?;
    std::fs::write(project.join("body-decoy.lua"), lua("DECOY"))?;
    exec(&governed, &format!("cd {} && sed -i \"s/DECOY/$BENCH_KEY/\" body-decoy.lua", project.display()))?;
    let lua_path = |name: &str| project.join(name).display().to_string();
    // mitmproxy listens on the host; warm everything once.
    let targets = [
        ("direct", plain.to_owned(), format!("https://bench.test:{UPSTREAM_PORT}/")),
        ("leash", governed.clone(), "https://bench.test:443/".to_owned()),
        ("mitmproxy", plain.to_owned(), format!("https://{gw}:{MITM_PORT}/")),
        ("leash, header without a decoy", governed.clone(), format!("-H 'x-api-key: {other}' https://bench.test:443/")),
        (
            "leash, header decoy swapped",
            governed.clone(),
            "-H \"x-api-key: $BENCH_KEY\" https://bench.test:443/".to_owned(),
        ),
        (
            "leash, 64 KiB body without a decoy",
            governed.clone(),
            format!("-s {} https://bench.test:443/", lua_path("body-plain.lua")),
        ),
        (
            "leash, 64 KiB body decoy swapped",
            governed.clone(),
            format!("-s {} https://bench.test:443/", lua_path("body-decoy.lua")),
        ),
    ];
    for (_, c, url) in &targets {
        exec(c, &format!("wrk -t1 -c4 -d1s {url} >/dev/null"))?;
    }

    // Keep-alive throughput (2 threads, 32 connections) and latency (one
    // connection), interleaved, REPEATS times.
    let mut results: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); targets.len()];
    for _ in 0..REPEATS {
        for (i, (_, c, url)) in targets.iter().enumerate() {
            let (rps, _, _) = parse_wrk(&exec(c, &format!("wrk -t2 -c32 -d4s --latency {url}"))?)?;
            let (_, p50, p99) = parse_wrk(&exec(c, &format!("wrk -t1 -c1 -d3s --latency {url}"))?)?;
            results[i].0.push(rps);
            results[i].1.push(p50);
            results[i].2.push(p99);
        }
    }
    let summary: Vec<(f64, f64, f64)> =
        results.iter().map(|(r, p50, p99)| (median(r.clone()), median(p50.clone()), median(p99.clone()))).collect();
    let (direct, leash, mitm) = (summary[0], summary[1], summary[2]);
    let (header_plain, header_swap, body_plain, body_swap) = (summary[3], summary[4], summary[5], summary[6]);

    // First requests to a new name: the TLS handshake (a leaf minted for
    // the name) and the whole first request (the proxy's upstream
    // connection made on it), against the same made directly. The client
    // does not verify in either (`-k`): loading a system trust store takes
    // OpenSSL about 30 ms per process, which would swamp what is measured.
    let first_requests = |c: &str, port: u16| -> anyhow::Result<(f64, f64)> {
        let script = format!(
            "for i in $(seq 1 20); do curl -s -k -o /dev/null -w '%{{time_appconnect}} %{{time_total}}\\n' \
             --resolve n$i-$$.bench.test:{port}:{gw} https://n$i-$$.bench.test:{port}/; done"
        );
        let (mut tls, mut total) = (Vec::new(), Vec::new());
        for l in exec(c, &script)?.lines() {
            let mut w = l.split_whitespace().filter_map(|v| v.parse::<f64>().ok());
            if let (Some(a), Some(t)) = (w.next(), w.next()) {
                tls.push(a * 1000.0);
                total.push(t * 1000.0);
            }
        }
        Ok((median(tls), median(total)))
    };
    let (handshake_leash, first_leash) = first_requests(&governed, 443)?;
    let (handshake_direct, first_direct) = first_requests(plain, UPSTREAM_PORT)?;

    // Idle connections: the proxy's memory with 1,000 open TLS connections.
    let proxy_pid = inst.status().map(|s| component(&s, "leash-proxy")["pid"].as_u64().unwrap_or(0)).unwrap_or(0);
    let before = rss_kib(proxy_pid);
    let idle = "import socket, ssl, time\n\
                ctx = ssl.create_default_context()\n\
                conns = []\n\
                for i in range(1000):\n\
                \x20   s = socket.create_connection(('bench.test', 443))\n\
                \x20   conns.append(ctx.wrap_socket(s, server_hostname='bench.test'))\n\
                print('open', len(conns), flush=True)\n\
                time.sleep(4)\n";
    std::fs::write(project.join("idle.py"), idle)?;
    let mut holder = Command::new("docker")
        .args(["exec", &governed, "python3"])
        .arg(project.join("idle.py"))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().context("the idle holder's output")?),
        &mut line,
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let during = rss_kib(proxy_pid);
    let _ = holder.wait();
    let per_thousand_mib = (during - before) / 1024.0;

    drop(reaper);
    inst.stop()?;

    util::out(&format!("proxy (release; HTTPS keep-alive, wrk in containers; medians of {REPEATS} interleaved runs)"));
    util::out(&format!(
        "  requests/s (2 threads, 32 connections): direct {:.0}, leash-proxy {:.0} ({:.2}x direct), mitmproxy {:.0}: leash-proxy is {:.1}x mitmproxy (target >= 5x)",
        direct.0,
        leash.0,
        leash.0 / direct.0,
        mitm.0,
        leash.0 / mitm.0
    ));
    util::out(&format!(
        "  latency, one connection: p50 direct {:.3} ms, leash-proxy {:.3} ms (+{:.3} ms, target < 0.3), mitmproxy {:.3} ms; p99 {:.3} / {:.3} / {:.3} ms",
        direct.1,
        leash.1,
        leash.1 - direct.1,
        mitm.1,
        direct.2,
        leash.2,
        mitm.2
    ));
    util::out(&format!(
        "  first request to a new name: TLS handshake (leaf minted) {handshake_leash:.2} ms vs {handshake_direct:.2} ms direct; \
         whole request (upstream connected) {first_leash:.2} ms vs {first_direct:.2} ms direct ({:.2}x, target <= 2x)",
        first_leash / first_direct
    ));
    util::out(&format!(
        "  memory: {per_thousand_mib:.1} MiB of leash-proxy RSS per 1,000 idle TLS connections ({line})",
        line = line.trim()
    ));
    let swaps = [("header", header_plain, header_swap), ("64 KiB body", body_plain, body_swap)];
    for (what, without, with) in swaps {
        util::out(&format!(
            "  decoy swapped in a {what}: {:.0} req/s vs {:.0} without a decoy ({:.3}x the time per request, target <= 1.05x); p50 {:.3} vs {:.3} ms (+{:.3} ms)",
            with.0,
            without.0,
            without.0 / with.0,
            with.1,
            without.1,
            with.1 - without.1
        ));
    }
    let entry = |s: (f64, f64, f64)| serde_json::json!({"rps": s.0, "p50_ms": s.1, "p99_ms": s.2});
    let report: Value = serde_json::json!({
        "repeats": REPEATS,
        "direct": entry(direct),
        "leash": entry(leash),
        "mitmproxy": entry(mitm),
        "header_without_decoy": entry(header_plain),
        "header_decoy_swapped": entry(header_swap),
        "body_64k_without_decoy": entry(body_plain),
        "body_64k_decoy_swapped": entry(body_swap),
        "header_swap_time_ratio": header_plain.0 / header_swap.0,
        "body_swap_time_ratio": body_plain.0 / body_swap.0,
        "leash_vs_direct_rps": leash.0 / direct.0,
        "leash_vs_mitmproxy_rps": leash.0 / mitm.0,
        "added_p50_ms": leash.1 - direct.1,
        "handshake_new_name_ms": handshake_leash,
        "handshake_direct_ms": handshake_direct,
        "first_request_new_name_ms": first_leash,
        "first_request_direct_ms": first_direct,
        "rss_mib_per_1000_idle": per_thousand_mib,
        "runs": results.iter().map(|(r, p50, p99)| serde_json::json!({"rps": r, "p50_ms": p50, "p99_ms": p99})).collect::<Vec<_>>(),
    });
    write_report("proxy", &report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_output_is_read() {
        let out = "Running 4s test @ https://bench.test/\n  Latency Distribution\n     50%  120.00us\n     75%  1.20ms\n     90%    2.00ms\n     99%    3.50ms\n  1000 requests in 4.00s\nRequests/sec:  12345.67\nTransfer/sec:      1.00MB\n";
        let (rps, p50, p99) = super::parse_wrk(out).unwrap();
        assert_eq!((rps, p50, p99), (12345.67, 0.12, 3.5));
    }
}
