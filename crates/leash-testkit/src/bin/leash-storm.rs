//! `leash-storm connect N ADDR:PORT`: a load generator for the sensor's
//! event pipeline, run inside a session (built static by
//! `cargo xtask bench sensor`). Each `connect()` of a UDP socket is one
//! governed decision, one event. Prints the count and the elapsed
//! microseconds.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool's output")]

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [what, n, addr] = args.as_slice() else {
        eprintln!("usage: leash-storm connect N ADDR:PORT");
        return ExitCode::from(64);
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
    for _ in 0..n {
        if socket.connect(addr).is_err() {
            failed += 1;
        }
    }
    println!("{n} {} {failed}", start.elapsed().as_micros());
    ExitCode::SUCCESS
}
