//! The `skyrules` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    skyrules::cli::main()
}
