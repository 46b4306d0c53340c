//! The binaries' allocator, shared by `connstate` and `connstate-bench`
//! (the library forbids `unsafe`; setting an allocator option needs it).
//!
//! mimalloc: the service allocates and frees many small buffers per event
//! and per packet, where glibc's allocator spent half of the writer's time.
//! `RUSTFLAGS="--cfg connstate_system_allocator"` builds with the system's
//! allocator instead, for heap profilers that hook malloc (heaptrack).

#[cfg(not(connstate_system_allocator))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e`; the enum keeps its
/// numbering across versions (retired options stay as placeholders), and
/// the crate does not name this one.
#[cfg(not(connstate_system_allocator))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns freed memory to the system at once instead of after mimalloc's
/// default delay (one second, ten for whole arena ranges). A delayed purge
/// runs only when some thread frees or allocates pages again, and after a
/// burst (10,000 clients leaving, 19,800 clients' pings written through)
/// the service's threads go quiet, so the burst's peak stayed resident.
/// Measured with 10,000 clients connecting, held, then leaving (9 runs
/// each, BENCHMARKS.md): RSS 5 s after they left 78–84 MB with no delay
/// against 90–102 MB with the default, RSS while held 58–61 against
/// 65–69 MB, at the same CPU. `MIMALLOC_PURGE_DELAY` in the environment
/// still decides when it is set. Also sets the library's idle hook
/// ([`collect_when_idle`]); the binaries' tokio workers call it when they
/// park.
pub fn configure() {
    connstate::idle::set_hook(collect_when_idle);
    #[cfg(not(connstate_system_allocator))]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set stores a value in mimalloc's option table
        // (an atomic per option); it is called before any thread is
        // started, with a valid option number.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// The least time between two collects of one thread's heap: a worker
/// parks thousands of times a second under load, and a collect walks the
/// thread's pages.
#[cfg(not(connstate_system_allocator))]
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The idle hook (`connstate::idle`): collects the calling thread's heap,
/// at most once per [`COLLECT_EVERY`], so that the memory other threads
/// freed into it and its own emptied pages go back to the system while it
/// waits. Measured with 10,000 clients connecting, held and leaving
/// (7 runs each, BENCHMARKS.md): RSS 15 s after they left 60–66 MiB, 2–10 %
/// over the held level, against 73–85 MiB (22–35 % over) without it, at
/// the same CPU.
pub fn collect_when_idle() {
    #[cfg(not(connstate_system_allocator))]
    {
        use std::cell::Cell;
        use std::time::Instant;
        thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
        let now = Instant::now();
        let due = LAST.with(|last| match last.get() {
            Some(at) if now.duration_since(at) < COLLECT_EVERY => false,
            _ => {
                last.set(Some(now));
                true
            }
        });
        if due {
            // SAFETY: mi_collect works on the calling thread's own heap,
            // which this thread is not using while it runs.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    }
}
