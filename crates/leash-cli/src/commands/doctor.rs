//! `leashctl doctor`: what this kernel lets leash enforce, per action, and
//! a self-test that a governed process is really denied.

use std::process::ExitCode;

use leash_proto::v1 as pb;
use leash_proto::v1::manager_client::ManagerClient;

use super::Ctx;
use crate::output;

/// Prints the capability report and runs the self-test; exits 1 when any
/// forbidden attempt got through.
pub async fn run(ctx: &Ctx, without: &[String]) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let r = ManagerClient::new(conn.channel)
        .doctor(pb::DoctorRequest { without: without.to_vec() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let caps = r.capabilities.unwrap_or_default();
    let test = r.self_test.unwrap_or_default();
    if ctx.json {
        let cap =
            |c: &pb::Capability| serde_json::json!({"action": c.action, "mechanism": c.mechanism, "reason": c.reason});
        output::json(&serde_json::json!({
            "tier": caps.tier,
            "capabilities": test.capabilities.iter().map(cap).collect::<Vec<_>>(),
            "probes": caps.probes.iter().map(|f| (f.name.clone(), serde_json::Value::String(f.value.clone()))).collect::<serde_json::Map<_, _>>(),
            "not_refused": caps.gaps.iter().map(|g| serde_json::json!({"attempt": g.name, "why": g.value})).collect::<Vec<_>>(),
            "self_test": {
                "passed": test.passed,
                "checks": test.checks.iter().map(|c| serde_json::json!({"action": c.action, "outcome": c.outcome, "passed": c.passed})).collect::<Vec<_>>(),
            },
        }));
    } else {
        output::line(&format!("tier: {}", caps.tier));
        let mut table = vec![["ACTION", "MECHANISM", "WHY"].map(str::to_owned)];
        for c in &test.capabilities {
            table.push([c.action.clone(), c.mechanism.clone(), c.reason.clone()]);
        }
        output::text(&output::table(&table));
        for p in &caps.probes {
            output::line(&format!("probe {}: {}", p.name, p.value));
        }
        if !caps.gaps.is_empty() {
            output::line(&format!("not refused on the {} tier:", caps.tier));
            for g in &caps.gaps {
                output::line(&format!("  {}: {}", g.name, g.value));
            }
        }
        output::line(&format!(
            "self-test: a governed process tries a forbidden open, exec, connect and UDP datagram{}",
            if without.is_empty() { String::new() } else { format!(" (without {})", without.join(", ")) }
        ));
        for c in &test.checks {
            output::line(&format!("  {:<8} {} {}", c.action, if c.passed { "ok  " } else { "FAIL" }, c.outcome));
        }
        output::line(if test.passed { "self-test passed" } else { "self-test FAILED: enforcement is not happening" });
    }
    Ok(if test.passed { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILURE) })
}
