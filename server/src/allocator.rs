//! The `surge` binary's allocator: jemalloc, handing freed pages back at
//! once and with small per-thread caches.
//!
//! Why: an idle TLS connection keeps about 3.7 KiB of heap (rustls' keys
//! and key schedule, surge's session and connection), but a TLS handshake
//! allocates and frees far more around it. glibc's malloc left the
//! sessions that stay scattered over pages that are mostly free, so the
//! resident memory per idle connection grew with the handshakes in flight
//! at once. jemalloc keeps small objects of one size together in slabs
//! and, with no decay delay, returns a slab's pages as soon as it empties.
//! Thread caches hold freed objects (and so their slabs) for reuse: 16
//! deep cost 0.1 KiB per TLS connection, none at all saved nothing more
//! than 8 deep but cost the broadcast about a fifth more CPU per delivery.
//!
//! Measured with `bench/run` on the 2-core bench machine, busy with other
//! builds: RSS per connection with 5,000 idle ones opened at 2,000/s, each
//! run on a fresh surge; ranges over interleaved runs
//! (bench/results/2026-12-06-tls-memory.md has every candidate):
//!
//! | allocator | wss:// (idle-5k-tls) | ws:// (idle-5k) | µs CPU per delivery (fanout-10k-broadcast) |
//! |---|---|---|---|
//! | glibc malloc (before) | 5.08 … 6.05 KiB | 0.48 … 0.56 KiB | 12.9 … 15.8 |
//! | glibc + `malloc_trim(0)` each second after handshakes | 3.99 … 5.02 KiB | 0.38 KiB | 13.0 … 14.5 |
//! | mimalloc, default / purge delay 0 | 7.33 / 4.72 … 5.06 KiB | 2.19 / 0.59 … 0.69 KiB | – |
//! | jemalloc, default options | 5.47 KiB | 0.82 KiB | – |
//! | jemalloc, decay 0 | 4.25 … 4.43 KiB | 0.46 KiB | – |
//! | jemalloc, decay 0, no thread cache | 4.09 … 4.15 KiB | 0.44 KiB | 14.6 … 18.8 |
//! | jemalloc, decay 0, thread cache 16 deep | 4.18 … 4.31 KiB | 0.46 … 0.48 KiB | 13.1 … 13.3 |
//! | jemalloc, decay 0, thread cache 8 deep (chosen) | 4.06 … 4.17 KiB | 0.45 … 0.48 KiB | 13.6 … 15.7 |
//!
//! One arena for all threads (`_RJEM_MALLOC_CONF=narenas:1` on top of the
//! chosen options) measured 4.12 and 4.12 KiB against 4.16 and 4.18 KiB in
//! interleaved runs of the same session: 0.05 KiB, not worth serialising
//! every thread's allocations on one arena.
//!
//! glibc with trimming depends on the machine: 4.0 KiB when the load
//! generator kept its pace, up to 5 KiB when handshakes queued up; jemalloc
//! stays within about 0.1 KiB either way. glibc's tunables (one arena, no
//! fastbins, no tcache) did not help. Handshakes per surge CPU-second
//! (churn-tls) moved within the runs' noise (glibc 2,551 … 3,378; chosen
//! 2,976 … 3,030). The 4 KiB goal is still missed by about 0.1 KiB: the
//! session itself is about 3.3 KiB of it (runtime-tokio/tests/tls_memory.rs).

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: freed pages go back to the
/// kernel at once (no dirty or muzzy decay), thread caches stay small.
/// `_RJEM_MALLOC_CONF` in the environment still overrides them.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Conf = Conf(
    c"dirty_decay_ms:0,muzzy_decay_ms:0,tcache_nslots_small_min:4,tcache_nslots_small_max:8,tcache_nslots_large:2"
        .as_ptr(),
);

/// A C string pointer jemalloc reads as `const char *malloc_conf`.
#[repr(transparent)]
struct Conf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string.
unsafe impl Sync for Conf {}
