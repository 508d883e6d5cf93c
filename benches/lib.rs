//! Criterion benchmarks for laggard live in `benches/`; see `README.md`
//! for how to run them and the ratios measured so far.
