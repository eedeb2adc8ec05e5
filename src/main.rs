#![forbid(unsafe_code)]

/// mimalloc: the relay allocates and frees small buffers per request on
/// several threads; glibc's allocator spent about 12 % of the relay's CPU on
/// it in the end-to-end benchmark (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ipn_relay::cli::main()
}
