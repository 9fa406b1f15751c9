//! Does nothing: profiling it measures the start-up syscalls of a Rust
//! program (libc + std), the baseline the other profile tests allow for.
fn main() {}
