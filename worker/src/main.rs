fn main() {
    limit_malloc_arenas();
    std::process::exit(milvus_backfill::cli::main());
}

/// glibc gives each thread that allocates its own arena (up to 8 per core) and keeps what is
/// freed in it, so a pass's large, short-lived buffers stay resident on every runtime thread.
/// Two arenas cut the exchange benchmark's peak RSS (200 segments, `memoryMiB: 64`) from 329 to
/// 128 MiB (docs/benchmarks.md). Called before any thread starts. musl has no arenas.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
