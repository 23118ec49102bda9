//! The `tessera` binary: parse the command line and run it (see `cli`).

fn main() -> std::process::ExitCode {
    tessera::cli::main()
}
