//! `leash-storm connect N ADDR:PORT [RATE]`: a load generator for the
//! sensor's event pipeline, run inside a session (built static by
//! `cargo xtask bench sensor`). Each `connect()` of a UDP socket is one
//! governed decision, one event; with RATE, paced to that many per second.
//! Prints the count, the elapsed microseconds and the failures.
//!
//! `leash-storm icmp`: opens an unprivileged ICMP ("ping") socket and
//! prints `icmp=ok` or `icmp=<error>`.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool's output")]

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("icmp") {
        let r = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::DGRAM,
            Some(rustix::net::ipproto::ICMP),
        );
        match r {
            Ok(_) => println!("icmp=ok"),
            Err(e) => println!("icmp={e}"),
        }
        return ExitCode::SUCCESS;
    }
    let (what, n, addr, rate) = match args.as_slice() {
        [what, n, addr] => (what, n, addr, None),
        [what, n, addr, rate] => (what, n, addr, rate.parse::<u64>().ok()),
        _ => {
            eprintln!("usage: leash-storm connect N ADDR:PORT [RATE]");
            return ExitCode::from(64);
        }
    };
    let (Ok(n), Ok(addr)) = (n.parse::<u64>(), addr.parse::<SocketAddr>()) else {
        eprintln!("leash-storm: N must be a number and ADDR:PORT an address");
        return ExitCode::from(64);
    };
    if what != "connect" {
        eprintln!("leash-storm: unknown storm {what:?} (connect)");
        return ExitCode::from(64);
    }
    let socket = match UdpSocket::bind("0.0.0.0:0") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("leash-storm: {e}");
            return ExitCode::from(1);
        }
    };
    let start = Instant::now();
    let mut failed = 0u64;
    for i in 0..n {
        if socket.connect(addr).is_err() {
            failed += 1;
        }
        // Paced in steps of 1,000: ahead of schedule, wait for it.
        if let Some(rate) = rate.filter(|r| *r > 0)
            && i % 1000 == 999
        {
            let due = std::time::Duration::from_secs_f64((i + 1) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    println!("{n} {} {failed}", start.elapsed().as_micros());
    ExitCode::SUCCESS
}
