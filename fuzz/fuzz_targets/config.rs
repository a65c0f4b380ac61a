//! `skiff_fuzz::config`: see its doc in fuzz/src/lib.rs.
#![no_main]

include!("../src/limit_alloc.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_fuzz::config(data));
