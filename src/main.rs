//! The `worker-controller` binary: parses the command line and runs one command.

fn main() -> std::process::ExitCode {
    worker_controller::cli::main()
}
