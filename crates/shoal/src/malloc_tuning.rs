//! glibc's allocator settings for a long-running node (issue 15: memory unchanged after many large prompts).
//!
//! glibc serves a large allocation with its own mapping, but raises that threshold each time such a block is freed
//! (up to 32 MiB). After the first freed 1 MB prompt buffer, later ones come from the per-thread arenas, which keep
//! the freed memory: the node of rank 0 held +66 MB after 1,000 prompts of 1 MB, none of it in use. With the
//! threshold fixed at glibc's own starting value, every large buffer is a mapping returned on free, and the growth
//! is the one-time load of the tokenizer (BENCHMARKS.md, "Security").
//!
//! glibc reads these tunables only at start-up, and changing them later (`mallopt`) is an unsafe foreign call, which
//! this project keeps to measured kernels. So the process replaces itself once, before doing anything, with the same
//! program, arguments and pid, and `GLIBC_TUNABLES` extended. Runners inherit the setting. A user who sets either
//! tunable in `GLIBC_TUNABLES` keeps their value, and setting `glibc.malloc.mmap_threshold` turns the re-exec off.

/// glibc's initial (and, here, fixed) mmap threshold; also the trim threshold, so a freed top of a heap is returned.
pub const LARGE_ALLOCATION_BYTES: usize = 128 * 1024;

const TUNABLES_VAR: &str = "GLIBC_TUNABLES";

/// The tunables that fix the thresholds.
const TUNABLES: [&str; 2] = ["glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold"];

/// `current` with each of [`TUNABLES`] it lacks appended, or `None` when it already fixes the mmap threshold (this
/// process was re-executed already, or the user chose a value).
pub fn tuned(current: &str) -> Option<String> {
    let sets = |name: &str| {
        current
            .split(':')
            .any(|entry| entry.split_once('=').is_some_and(|(key, _)| key == name))
    };
    if sets(TUNABLES[0]) {
        return None;
    }
    let mut out: Vec<String> = current
        .split(':')
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect();
    out.extend(
        TUNABLES
            .iter()
            .filter(|name| !sets(name))
            .map(|name| format!("{name}={LARGE_ALLOCATION_BYTES}")),
    );
    Some(out.join(":"))
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
    fn empty_tunables_get_both_thresholds() {
        assert_eq!(
            tuned("").as_deref(),
            Some("glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072")
        );
    }

    #[test]
    fn other_tunables_are_kept_in_front() {
        assert_eq!(
            tuned("glibc.malloc.arena_max=2").as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072")
        );
    }

    #[test]
    fn a_users_trim_threshold_is_not_overridden() {
        assert_eq!(
            tuned("glibc.malloc.trim_threshold=1").as_deref(),
            Some("glibc.malloc.trim_threshold=1:glibc.malloc.mmap_threshold=131072")
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
