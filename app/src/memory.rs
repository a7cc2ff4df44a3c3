//! Memory figures (Linux `/proc`): this process's peak and current resident set size, a
//! sampler that gives a stretch of work its own peak, and the machine's RAM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A `kB` line of a `/proc` file (`VmHWM` of `/proc/self/status`, `MemTotal` of
/// `/proc/meminfo`, …), in MiB.
fn proc_mib(file: &str, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(file).ok()?;
    let line = s.lines().find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn status_mib(key: &str) -> Option<f64> {
    proc_mib("/proc/self/status", key)
}

/// The machine's memory (Linux `MemTotal`), MiB.
pub fn total_ram_mib() -> Option<f64> {
    proc_mib("/proc/meminfo", "MemTotal")
}

/// The process's peak resident set size (Linux `VmHWM`), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM")
}

/// The process's current resident set size (Linux `VmRSS`), MiB.
pub fn rss_mib() -> Option<f64> {
    status_mib("VmRSS")
}

/// Samples the resident set size on a thread (every 20 ms) and keeps the largest, so a
/// stretch of work can report its own peak: the kernel's `VmHWM` only ever grows.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Option<f64>>>,
}

impl RssSampler {
    /// Starts sampling.
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = rss_mib();
            loop {
                // Read before the sample: once stopping, the last sample is one taken after
                // `stop` was called, however late this thread was scheduled.
                let stopping = flag.load(Ordering::Acquire);
                if let Some(now) = rss_mib() {
                    peak = Some(peak.map_or(now, |p: f64| p.max(now)));
                }
                if stopping {
                    return peak;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        Self { stop, handle: Some(handle) }
    }

    /// Stops sampling and returns the peak seen, MiB.
    pub fn stop(mut self) -> Option<f64> {
        self.stop.store(true, Ordering::Release);
        self.handle.take().and_then(|h| h.join().ok().flatten())
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_sizes_are_read_and_the_peak_bounds_the_current() {
        let (now, peak) = (rss_mib().expect("VmRSS on Linux"), peak_rss_mib().expect("VmHWM on Linux"));
        assert!(now > 0.0 && peak >= now, "{now} {peak}");
        // The resident size is the whole process's: tests running beside this one free
        // memory while it measures (seen once: +6 MiB "after allocating 64"). The sampler
        // is checked in a process of its own, running only `sampler_in_its_own_process`.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "memory::tests::sampler_in_its_own_process", "--ignored", "--test-threads", "1"])
            .env("MULTITUNE_SAMPLER_CHILD", "1")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && said.contains("1 passed"), "{said}{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Run alone by the test above (ignored in the suite).
    #[test]
    #[ignore = "run in its own process by resident_sizes_are_read_and_the_peak_bounds_the_current"]
    fn sampler_in_its_own_process() {
        assert_eq!(std::env::var("MULTITUNE_SAMPLER_CHILD").as_deref(), Ok("1"), "run by the test above");
        let now = rss_mib().expect("VmRSS on Linux");
        let s = RssSampler::start();
        // black_box: an allocation nobody reads may be optimised away.
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        // No wait needed: `stop` always takes one more sample, after it was called.
        let seen = s.stop().expect("a sample");
        assert!(seen >= now + 32.0, "sampled {seen} MiB after allocating 64 MiB on top of {now}");
        drop(block);
    }
}
