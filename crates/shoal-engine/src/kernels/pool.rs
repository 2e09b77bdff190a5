//! The kernels' worker threads: a small spin-then-park pool (std only, no unsafe).
//!
//! A product is one [`Job`] of work items pulled from an atomic counter. The caller publishes the job, works on it
//! itself, and then waits only for items already claimed, so a worker that wakes late simply finds nothing left.
//! Workers spin for a while after each job (a forward pass issues ~200 products back to back, microseconds apart)
//! and then park on a condition variable, so an idle engine costs no CPU.
//!
//! Jobs are `'static` (they own or share through `Arc` what they read, and write results through atomics), which
//! is what lets long-lived threads run them without unsafe code.
//!
//! Preemption: on a small machine the node's own threads share the cores with these, so a worker can be descheduled
//! in the middle of an item for a whole time slice (milliseconds) while the caller waits for it. [`Items::wait`]
//! does not wait long: once nothing is left to claim, an item still unfinished after about twice the time an item
//! takes is computed again by the caller. Items are deterministic and write their results through atomics into the
//! job's own buffer (which no other job gets while a worker still holds this one), so the late duplicate writes the
//! same bits and is harmless.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_micros(300);

/// Work shared by the caller and the pool's workers.
pub(crate) trait Job: Send + Sync {
    /// Processes work items until none is left to claim.
    fn run(&self);
}

struct Shared {
    epoch: AtomicU64,
    job: Mutex<Option<Arc<dyn Job>>>,
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

/// Worker threads for the kernels: `threads - 1` dedicated workers plus the calling thread, which always takes a
/// share of each product. `Pool::default()` uses 2 threads (or 1 on a single-core machine).
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// Reusable result buffer for products split across threads.
    slab: Mutex<Option<Arc<[AtomicU32]>>>,
    /// How many result buffers were allocated (they should be reused).
    slab_allocs: AtomicUsize,
    /// Items the callers computed again (see [`Items::wait`]).
    redone: AtomicUsize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.threads).finish()
    }
}

impl Default for Pool {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores.min(2))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// A pool of `threads` threads in all, the caller included (`threads` of 0 counts as 1). Workers that cannot
    /// be spawned are left out (with a warning); the caller can always do all the work itself.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let mut handles = Vec::new();
        for i in 1..threads.max(1) {
            let s = shared.clone();
            match std::thread::Builder::new()
                .name(format!("shoal-kernel-{i}"))
                .spawn(move || worker(&s))
            {
                Ok(h) => handles.push(h),
                Err(e) => {
                    tracing::warn!("cannot start kernel worker thread {i}: {e}");
                    break;
                }
            }
        }
        Self {
            threads: handles.len() + 1,
            shared,
            handles,
            slab: Mutex::new(None),
            slab_allocs: AtomicUsize::new(0),
            redone: AtomicUsize::new(0),
        }
    }

    /// Threads in all, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on the caller and on every worker that picks it up in time, and returns when the caller's call
    /// has returned: `work` must itself hand out its pieces (e.g. from an atomic counter) and wait for the pieces
    /// other threads claimed. With no work inside, this measures the pool's bare hand-out cost.
    pub fn run(&self, work: Arc<dyn Fn() + Send + Sync>) {
        struct FnJob(Arc<dyn Fn() + Send + Sync>);
        impl Job for FnJob {
            fn run(&self) {
                (self.0)()
            }
        }
        let job = Arc::new(FnJob(work));
        self.submit(job.clone());
        job.run();
    }

    /// Publishes `job` to the workers (the caller is expected to run it too).
    pub(crate) fn submit(&self, job: Arc<dyn Job>) {
        if self.handles.is_empty() {
            return;
        }
        *lock(&self.shared.job) = Some(job);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        if self.shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = lock(&self.shared.park);
            self.shared.wake.notify_all();
        }
    }

    /// Drops the pool's reference to the last job once its caller is done with it, so what the job holds (e.g. the
    /// result slab) can be reused. A worker still inside the job keeps its own reference.
    pub(crate) fn retire(&self) {
        if !self.handles.is_empty() {
            *lock(&self.shared.job) = None;
        }
    }

    /// A result buffer of at least `len` values that no running job holds.
    pub(crate) fn slab(&self, len: usize) -> Arc<[AtomicU32]> {
        let mut cached = lock(&self.slab);
        if let Some(s) = cached.as_ref()
            && s.len() >= len
            && Arc::strong_count(s) == 1
        {
            return s.clone();
        }
        let s: Arc<[AtomicU32]> = (0..len).map(|_| AtomicU32::new(0)).collect();
        *cached = Some(s.clone());
        self.slab_allocs.fetch_add(1, Ordering::Relaxed);
        s
    }

    #[cfg(test)]
    pub(crate) fn slab_allocs(&self) -> usize {
        self.slab_allocs.load(Ordering::Relaxed)
    }

    /// Runs `job` on the caller and on every worker that picks it up: the caller claims items like the workers, then
    /// waits for the claimed ones, computing again any a worker is late with ([`Items::wait`], with the caller's own
    /// time per item as the measure). Returns once every item is finished.
    pub(crate) fn run_items<J: ItemJob>(&self, job: &Arc<J>) {
        self.submit(Arc::new(ItemsJob(job.clone())));
        let started = Instant::now();
        let mine = job.work();
        let item_time = started.elapsed() / u32::try_from(mine.max(1)).unwrap_or(u32::MAX);
        job.items().wait(item_time, |i| job.item(i));
        self.count_redone(job.items().redone());
        self.retire();
    }

    /// Items computed twice because a worker was late with them (see [`Items::wait`]), since the pool started.
    pub fn redone_items(&self) -> usize {
        self.redone.load(Ordering::Relaxed)
    }

    fn count_redone(&self, n: usize) {
        if n > 0 {
            self.redone.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = lock(&self.shared.park);
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(shared: &Shared) {
    let mut seen = shared.epoch.load(Ordering::SeqCst);
    loop {
        // Spin for new work, then park until a submit wakes us.
        let mut since = Instant::now();
        let mut spins = 0u32;
        loop {
            if shared.shutdown.load(Ordering::Relaxed) {
                return;
            }
            let e = shared.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && since.elapsed() > SPIN {
                let mut g = lock(&shared.park);
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                while shared.epoch.load(Ordering::SeqCst) == seen && !shared.shutdown.load(Ordering::SeqCst) {
                    g = shared.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                shared.sleepers.fetch_sub(1, Ordering::SeqCst);
                since = Instant::now();
            }
            std::hint::spin_loop();
        }
        let job = lock(&shared.job).clone();
        if let Some(job) = job {
            // A job records its own failures (see `Job::run`); never let one take the worker down.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()));
        }
    }
}

/// A job made of [`Items`], each computed by [`ItemJob::item`] (which stores its results and calls
/// [`Items::finish`]); [`Pool::run_items`] runs one on the caller and the workers.
pub(crate) trait ItemJob: Send + Sync + 'static {
    fn items(&self) -> &Items;
    /// Computes item `i`, stores its results and marks it finished. Deterministic: it may run twice.
    fn item(&self, i: usize);

    /// Claims and computes items until none is left; returns how many this thread computed.
    fn work(&self) -> usize {
        let mut count = 0;
        while let Some(i) = self.items().claim() {
            self.item(i);
            count += 1;
        }
        count
    }
}

/// A pool worker runs an item job by claiming items until none is left.
struct ItemsJob<J: ItemJob>(Arc<J>);

impl<J: ItemJob> Job for ItemsJob<J> {
    fn run(&self) {
        self.0.work();
    }
}

/// The least the caller waits for a claimed item before computing it again itself.
const MIN_GRACE: Duration = Duration::from_micros(20);

/// The work items of one job: handed out from a counter, each marked finished by whoever completes it first.
pub(crate) struct Items {
    next: AtomicUsize,
    finished: Box<[AtomicBool]>,
    done: AtomicUsize,
    /// Items the caller computed again because their worker was late (a measure of preemption).
    redone: AtomicUsize,
}

impl Items {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            next: AtomicUsize::new(0),
            finished: (0..n).map(|_| AtomicBool::new(false)).collect(),
            done: AtomicUsize::new(0),
            redone: AtomicUsize::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.finished.len()
    }

    /// The next unclaimed item, if any is left.
    pub(crate) fn claim(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.len()).then_some(i)
    }

    /// Marks item `i` finished (its results already stored).
    pub(crate) fn finish(&self, i: usize) {
        if !self.finished[i].swap(true, Ordering::AcqRel) {
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    /// How many items the caller computed again.
    pub(crate) fn redone(&self) -> usize {
        self.redone.load(Ordering::Relaxed)
    }

    /// The caller's wait once it has claimed all it could: returns when every item is finished. An item still
    /// unfinished `2 × item_time` (at least [`MIN_GRACE`]) after the wait began is handed to `redo`, which computes
    /// it (and calls [`Items::finish`]) on the caller's thread.
    pub(crate) fn wait(&self, item_time: Duration, mut redo: impl FnMut(usize)) {
        let deadline = Instant::now() + (item_time * 2).max(MIN_GRACE);
        let mut spins = 0u32;
        while self.done.load(Ordering::Acquire) < self.len() {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && Instant::now() >= deadline {
                for (i, f) in self.finished.iter().enumerate() {
                    if !f.load(Ordering::Acquire) {
                        self.redone.fetch_add(1, Ordering::Relaxed);
                        redo(i);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that stops in the middle of its item (as a preempted thread does) does not hold the caller: the
    /// caller computes that item itself and returns long before the worker wakes.
    #[test]
    fn a_late_item_is_computed_again_by_the_caller() {
        const STALL: Duration = Duration::from_secs(5);
        let items = Arc::new(Items::new(4));
        let stalled = {
            let items = items.clone();
            std::thread::spawn(move || {
                let i = items.claim().expect("item 0 is free");
                std::thread::sleep(STALL);
                items.finish(i);
                i
            })
        };
        while items.next.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let t = Instant::now();
        let mut mine = Vec::new();
        while let Some(i) = items.claim() {
            mine.push(i);
            items.finish(i);
        }
        let mut redone = Vec::new();
        items.wait(Duration::from_micros(1), |i| {
            redone.push(i);
            items.finish(i);
        });
        assert!(
            t.elapsed() < STALL / 2,
            "the caller waited {:?} for a stalled worker",
            t.elapsed()
        );
        assert_eq!(mine, [1, 2, 3]);
        assert_eq!(redone, [0]);
        assert_eq!(items.redone(), 1);
        // The worker's late finish of the same item changes nothing.
        assert_eq!(stalled.join().unwrap_or(usize::MAX), 0);
        assert_eq!(items.done.load(Ordering::SeqCst), 4);
    }

    /// Workers that keep up are waited for, not duplicated.
    #[test]
    fn items_finished_in_time_are_not_redone() {
        let pool = Pool::new(2);
        let items = Arc::new(Items::new(64));
        let work = {
            let items = items.clone();
            Arc::new(move || {
                while let Some(i) = items.claim() {
                    items.finish(i);
                }
            })
        };
        pool.run(work);
        items.wait(Duration::from_secs(1), |_| panic!("nothing is late"));
        assert_eq!(items.redone(), 0);
    }
}
