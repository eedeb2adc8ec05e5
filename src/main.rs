fn main() -> std::process::ExitCode {
    ipn_relay::cli::main()
}
