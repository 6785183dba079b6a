//! The `segvault` command line: a thin layer over the library.

mod cli;

// glibc serves 128 KiB allocations with mmap/munmap, which costs more per segment than
// decrypting it; mimalloc reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
