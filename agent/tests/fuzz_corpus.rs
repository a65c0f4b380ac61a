//! The fuzz corpus (`fuzz/corpus/<target>/`) replayed through the fuzz targets' checks
//! (`fuzz/src/lib.rs`) under plain `cargo test`: every seed and every input that once crashed a
//! decoder stays a regression test without libFuzzer. Fuzzing itself: `sh fuzz/run.sh`.

use std::path::Path;

#[path = "../../fuzz/src/lib.rs"]
mod checks;

#[test]
fn every_corpus_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, check) in checks::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: empty corpus", dir.display());
        for input in inputs {
            let data = std::fs::read(&input).expect("read corpus input");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} panicked", input.display());
        }
    }
}
