//! The `multitune` binary: the engine's command line ([`multitune::cli`]) with
//! `multitune worker` from this crate.

/// mimalloc keeps freed memory for reuse: the training step allocates and frees the same
/// large buffers every step, which glibc's allocator maps and unmaps each time (page
/// faults and zeroing measured at ~10% of an eval step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    multitune::cli::main(multitune_cluster::worker::run_cli);
}
