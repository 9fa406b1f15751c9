use std::process::ExitCode;

fn main() -> ExitCode {
    tresor::cli::main()
}
