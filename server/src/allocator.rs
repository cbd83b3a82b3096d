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
//! Thread caches hold freed objects (and so their slabs) for reuse: none
//! at all saved another 0.1 KiB per TLS connection but cost the broadcast
//! run 15-40 % more CPU per delivery, so they stay, 8 objects deep.
//!
//! Measured with `bench/run` on the 2-core bench machine, busy with other
//! builds: RSS per idle connection at 5,000 connections opened at
//! 2,000/s, each run on a fresh surge (bench/results/2026-12-06-tls-memory.md):
//!
//! | allocator | wss:// (idle-5k-tls) | ws:// (idle-5k) | µs CPU per delivery (fanout-10k-broadcast) |
//! |---|---|---|---|
//! | glibc malloc (before) | 5.15 … 6.05 KiB | 0.48 … 0.56 KiB | 12.9 … 15.8 |
//! | glibc + `malloc_trim(0)` each second after handshakes | 3.99 … 5.02 KiB | 0.38 KiB | 13.0 … 14.5 |
//! | glibc tunables (no fastbins / no tcache / one arena) + trim | 4.67 … 5.12 KiB | – | – |
//! | mimalloc, default / purge delay 0 | 7.33 / 4.72 KiB | 2.19 / 0.69 KiB | – |
//! | jemalloc, default options | 5.47 KiB | 0.82 KiB | – |
//! | jemalloc, decay 0 | 4.25 … 4.43 KiB | 0.46 KiB | – |
//! | jemalloc, decay 0, no thread cache | 4.09 … 4.15 KiB | 0.44 KiB | 14.6 … 18.8 |
//! | jemalloc, decay 0, thread cache 8 deep (chosen) | 4.06 … 4.17 KiB | see results | 15.5 … 15.7 |
//!
//! glibc with trimming depends on the machine: 4.0 KiB when the load
//! generator kept its pace, up to 5 KiB when handshakes queued up; jemalloc
//! stays within 0.1 KiB either way. Handshakes per surge CPU-second
//! (churn-tls) did not change beyond the runs' noise.

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
