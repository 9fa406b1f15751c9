//! `profile_signal`: prints a line, then dies of SIGABRT.
fn main() {
    println!("about to abort");
    std::process::abort();
}
