//! `skiff_fuzz::tar_path`: see its doc in fuzz/src/lib.rs.
#![no_main]

include!("../src/limit_alloc.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_fuzz::tar_path(data));
