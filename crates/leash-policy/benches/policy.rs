//! Policy costs: the raw authorizer at 10, 100 and 1,000 statements, and
//! compiling 1,000 statements to tables with and without slicing.
//! Run with `cargo xtask bench policy`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use leash_policy::compile::{Mutation, compile_with};
use leash_policy::engine::{Action, Engine, Source};
use leash_policy::resource::Resource;

/// `n` statements over distinct directories, a third of them forbids.
fn policy(n: usize) -> Engine {
    let text: String = (0..n)
        .map(|i| {
            let effect = if i % 3 == 0 { "forbid" } else { "permit" };
            format!("{effect} (principal, action == Action::\"FileOpen\", resource in Dir::\"/d{}/s{i}/\");\n", i % 10)
        })
        .collect();
    Engine::load(&[Source { name: "bench".into(), text }]).expect("bench policy loads")
}

fn authorize(c: &mut Criterion) {
    let mut group = c.benchmark_group("authorize");
    for n in [10, 100, 1000] {
        let engine = policy(n);
        let r = Resource::File(format!("/d5/s{}/file.txt", n / 2 + 1));
        let ctx = BTreeMap::new();
        group.bench_function(format!("{n} statements"), |b| {
            b.iter(|| black_box(engine.authorize_one("claude", Action::FileOpen, black_box(&r), &ctx)))
        });
    }
    group.finish();
}

fn compile(c: &mut Criterion) {
    let engine = policy(1000);
    let mut group = c.benchmark_group("compile 1000 statements");
    group.sample_size(10);
    group.bench_function("sliced", |b| b.iter(|| black_box(compile_with(&engine, "claude", 1, Mutation::None, true))));
    group.bench_function("unsliced", |b| {
        b.iter(|| black_box(compile_with(&engine, "claude", 1, Mutation::None, false)))
    });
    group.finish();
}

criterion_group!(benches, authorize, compile);
criterion_main!(benches);
