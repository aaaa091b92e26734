//! The `skyrules` binary: everything lives in the library; see `cli`.

/// jemalloc, because glibc's malloc let resident memory creep up for as
/// long as chats kept ending and starting: each poll's short-lived buffers
/// were interleaved with new chats' long-lived snapshots, and the pages
/// they shared stayed with the process (BENCHMARKS.md, "Memory over a long
/// run").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (`_RJEM_MALLOC_CONF` in the
/// environment overrides them). One arena and no per-thread caches: the
/// engine's threads are mostly idle, and per-thread caches held freed
/// memory that no other thread could reuse (57 → 73 MiB over 150 s with
/// them, 52 → 55 MiB without, at 10,000 chats and 4% of them replaced per
/// poll).
/// Freed pages go back to the system after a second, from jemalloc's own
/// background thread.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &u8 =
    &b"narenas:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true\0"[0];

fn main() -> std::process::ExitCode {
    skyrules::cli::main()
}
