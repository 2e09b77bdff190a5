//! glibc's allocator settings for a long-running node (issue 15: memory unchanged after many large prompts).
//!
//! glibc serves a large allocation with its own mapping, but raises that threshold each time such a block is freed
//! (up to 32 MiB). After the first freed 1 MB prompt buffer, later ones come from the per-thread arenas, which keep
//! the freed memory: the node of rank 0 held +66 MB after 1,000 prompts of 1 MB, none of it in use. With the
//! threshold fixed at glibc's own starting value, every large buffer is a mapping returned on free, and the growth
//! is the one-time load of the tokenizer (BENCHMARKS.md, "Security"). Setting it also stops glibc from moving the
//! trim threshold, which stays at its 128 KiB default, so a freed top of a heap goes back too.
//!
//! glibc reads these tunables only at start-up, and changing them later (`mallopt`) is an unsafe foreign call, which
//! this project keeps to measured kernels. So the process replaces itself once, before doing anything, with the same
//! program, arguments and pid, and `GLIBC_TUNABLES` extended. Runners inherit the setting. A user who sets
//! `glibc.malloc.mmap_threshold` in `GLIBC_TUNABLES` keeps their value (and no re-exec happens).

/// glibc's initial (and, here, fixed) mmap threshold.
pub const LARGE_ALLOCATION_BYTES: usize = 128 * 1024;

const TUNABLES_VAR: &str = "GLIBC_TUNABLES";

/// The tunable that fixes the threshold.
const MMAP_THRESHOLD: &str = "glibc.malloc.mmap_threshold";

/// `current` with the mmap threshold put first, or `None` when it already sets one (this process was re-executed
/// already, or the user chose a value). First, because glibc 2.36 rewrites the variable it hands to child processes
/// keeping only the first tunable (seen on Debian 12), and the runners must inherit this one.
pub fn tuned(current: &str) -> Option<String> {
    let sets = current
        .split(':')
        .any(|entry| entry.split_once('=').is_some_and(|(key, _)| key == MMAP_THRESHOLD));
    if sets {
        return None;
    }
    let ours = format!("{MMAP_THRESHOLD}={LARGE_ALLOCATION_BYTES}");
    Some(if current.is_empty() {
        ours
    } else {
        format!("{ours}:{current}")
    })
}

/// Re-executes this program with the tunables set, unless they are set already. Returns only when there is nothing
/// to do or the exec failed (then the process runs with glibc's defaults, and the error says why).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn reexec_if_untuned() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    let current = std::env::var_os(TUNABLES_VAR).unwrap_or_default();
    // A value that is not UTF-8 is the user's business: leave it alone.
    let tuned = tuned(current.to_str()?)?;
    let mut args = std::env::args_os();
    let program_name = args.next().unwrap_or_default();
    // `/proc/self/exe` still names this program if its file was replaced or deleted since it started.
    Some(
        std::process::Command::new("/proc/self/exe")
            .arg0(program_name)
            .args(args)
            .env(TUNABLES_VAR, tuned)
            .exec(),
    )
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn reexec_if_untuned() -> Option<std::io::Error> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tunables_get_the_threshold() {
        assert_eq!(tuned("").as_deref(), Some("glibc.malloc.mmap_threshold=131072"));
    }

    #[test]
    fn other_tunables_are_kept_after_it() {
        assert_eq!(
            tuned("glibc.malloc.arena_max=2").as_deref(),
            Some("glibc.malloc.mmap_threshold=131072:glibc.malloc.arena_max=2")
        );
    }

    #[test]
    fn a_set_mmap_threshold_means_nothing_to_do_so_the_reexec_cannot_loop() {
        let once = tuned("").unwrap();
        assert_eq!(tuned(&once), None);
        assert_eq!(tuned("glibc.malloc.mmap_threshold=4194304"), None);
        // A name that only contains the tunable's name is a different tunable.
        assert!(tuned("glibc.malloc.mmap_threshold_x=1").is_some());
    }
}
