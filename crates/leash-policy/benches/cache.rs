//! The decision cache on a named workload: 10,000 distinct destinations
//! drawn Zipf(s=1.1), a 100-statement policy, and a policy change every
//! second. Reports decisions per second on one core, the hit ratio and the
//! miss path's p50/p99 (medians of three runs). Run with
//! `cargo xtask bench policy`.
#![allow(clippy::print_stdout, reason = "a benchmark's report")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leash_policy::cache::DecisionCache;
use leash_policy::engine::{Action, Engine, Source};
use leash_policy::resource::{Host, Resource};

const RESOURCES: usize = 10_000;
const STATEMENTS: usize = 100;
const RUN: Duration = Duration::from_secs(3);
const CHANGE_EVERY: Duration = Duration::from_secs(1);

fn policy(variant: usize) -> Arc<Engine> {
    let text: String = (0..STATEMENTS)
        .map(|i| {
            let effect = if (i + variant).is_multiple_of(4) { "forbid" } else { "permit" };
            format!(
                "{effect} (principal, action == Action::\"NetworkConnect\", resource in Host::\"*.zone{i}.example\");\n"
            )
        })
        .collect();
    Arc::new(Engine::load(&[Source { name: "bench".into(), text }]).expect("bench policy loads"))
}

/// Zipf(s) over ranks 1..=n by inverse CDF.
struct Zipf {
    cdf: Vec<f64>,
    state: u64,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf, state: 0x2545_F491_4F6C_DD1D }
    }

    fn sample(&mut self) -> usize {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let u = (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

struct Outcome {
    rate: f64,
    hit_ratio: f64,
    miss_p50: Duration,
    miss_p99: Duration,
}

fn run() -> Outcome {
    let resources: Vec<Resource> = (0..RESOURCES)
        .map(|i| Resource::Host(Host::Name(format!("svc{i}.zone{}.example", i % (STATEMENTS * 2)), Some(443))))
        .collect();
    let mut zipf = Zipf::new(RESOURCES, 1.1);
    let policies = [policy(0), policy(1)];
    let mut cache = DecisionCache::new(policies[0].clone(), "claude", 1, 1 << 20);
    let ctx = BTreeMap::new();
    let mut miss_times = Vec::new();
    let start = Instant::now();
    let mut next_change = start + CHANGE_EVERY;
    let mut generation = 1;
    let mut decisions = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..256 {
            let r = &resources[zipf.sample()];
            let misses = cache.misses;
            let t = Instant::now();
            std::hint::black_box(cache.decide(Action::NetworkConnect, r, &ctx));
            if cache.misses != misses {
                miss_times.push(t.elapsed());
            }
            decisions += 1;
        }
        if Instant::now() >= next_change {
            generation += 1;
            cache.replace(policies[generation as usize % 2].clone(), generation);
            next_change += CHANGE_EVERY;
        }
    }
    let elapsed = start.elapsed();
    miss_times.sort();
    let pct = |p: f64| {
        miss_times
            .get(((miss_times.len() as f64 * p) as usize).min(miss_times.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Outcome {
        rate: decisions as f64 / elapsed.as_secs_f64(),
        hit_ratio: cache.hits as f64 / (cache.hits + cache.misses) as f64,
        miss_p50: pct(0.5),
        miss_p99: pct(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes flags such as --bench; this harness has none.
    let outcomes: Vec<Outcome> = (0..3).map(|_| run()).collect();
    let rate = median(outcomes.iter().map(|o| o.rate).collect());
    let hits = median(outcomes.iter().map(|o| o.hit_ratio).collect());
    let p50 = median(outcomes.iter().map(|o| o.miss_p50.as_secs_f64() * 1e6).collect());
    let p99 = median(outcomes.iter().map(|o| o.miss_p99.as_secs_f64() * 1e6).collect());
    println!(
        "decision cache: {RESOURCES} destinations Zipf(1.1), {STATEMENTS} statements, a policy change every second (medians of 3 runs of 3 s)"
    );
    println!("  {rate:.0} decisions/s on one core, hit ratio {:.1} %", hits * 100.0);
    println!("  miss path (authorizer): p50 {p50:.1} µs, p99 {p99:.1} µs");
}
