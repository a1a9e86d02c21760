//! Helpers of more than one test (each test uses some of them).
#![allow(dead_code, reason = "each test binary uses a part")]

pub mod otlp;
