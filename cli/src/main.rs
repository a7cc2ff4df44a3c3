//! The `multitune` binary: the command line ([`multitune_cli`]), `multitune worker`
//! included.

/// mimalloc keeps freed memory for reuse: the training step allocates and frees the same
/// large buffers every step, which glibc's allocator maps and unmaps each time (page
/// faults and zeroing measured at ~10% of an eval step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    multitune_cli::main();
}
