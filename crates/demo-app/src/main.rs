//! `demo-app`: run one demo-app instance (see the library docs for endpoints and knobs).

fn main() -> std::process::ExitCode {
    demo_app::cli::main(std::env::args_os())
}
