//! `levee_process_*`: the process's memory, CPU, file descriptors, threads
//! and start time, read from `/proc` at scrape time.
//!
//! These are the standard `process_*` metrics of Prometheus's client
//! libraries, named under levee's prefix. They are Linux-only: where
//! `/proc` cannot be read (another OS, a sandbox), the series are left out
//! rather than reported as 0.

use prometheus_client::collector::Collector as CollectorTrait;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second in `/proc/<pid>/stat`: `USER_HZ`, which Linux
/// fixes at 100 for user space on every architecture levee runs on (as
/// Prometheus's own procfs reader assumes).
const USER_HZ: f64 = 100.0;

#[derive(Debug)]
pub(crate) struct Collector;

impl CollectorTrait for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sample = Sample::read();
        if let Some(seconds) = sample.cpu_seconds {
            let metric = ConstCounter::new(seconds);
            let e = encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time the process has used.",
                Some(&Unit::Seconds),
                metric.metric_type(),
            )?;
            metric.encode(e)?;
        }
        // Help ends with a period, as prometheus-client's registry adds one
        // to the help of every metric registered with it.
        let gauges: [(&str, &str, Option<Unit>, Option<f64>); 6] = [
            (
                "process_resident_memory",
                "Resident memory size of the process.",
                Some(Unit::Bytes),
                sample.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size of the process.",
                Some(Unit::Bytes),
                sample.virtual_bytes,
            ),
            (
                "process_open_fds",
                "File descriptors the process has open.",
                None,
                sample.open_fds,
            ),
            (
                "process_max_fds",
                "The process's limit on open file descriptors (the soft RLIMIT_NOFILE).",
                None,
                sample.max_fds,
            ),
            ("process_threads", "Threads in the process.", None, sample.threads),
            (
                "process_start_time",
                "When the process started, in seconds since the Unix epoch.",
                Some(Unit::Seconds),
                sample.start_time,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let Some(value) = value else { continue };
            let metric = ConstGauge::new(value);
            let e = encoder.encode_descriptor(name, help, unit.as_ref(), metric.metric_type())?;
            metric.encode(e)?;
        }
        Ok(())
    }
}

/// One reading of `/proc/self`; `None` for what could not be read.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Sample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub threads: Option<f64>,
    pub start_time: Option<f64>,
}

impl Sample {
    pub fn read() -> Sample {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat");
        let stat = stat.as_deref().and_then(parse_stat);
        let status = read("/proc/self/status");
        let status_kb = |key: &str| status.as_deref().and_then(|s| status_value(s, key));
        let boot = read("/proc/stat").and_then(|s| boot_time(&s));
        Sample {
            cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / USER_HZ),
            resident_bytes: status_kb("VmRSS:").map(|kb| kb * 1024.0),
            virtual_bytes: status_kb("VmSize:").map(|kb| kb * 1024.0),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as f64),
            max_fds: read("/proc/self/limits").and_then(|s| max_open_files(&s)),
            threads: status_kb("Threads:"),
            start_time: stat
                .zip(boot)
                .map(|(s, boot)| boot + s.start_ticks as f64 / USER_HZ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    /// Clock ticks from boot to the process's start.
    start_ticks: u64,
}

/// The fields of `/proc/<pid>/stat` levee reports. The command name (the
/// second field) is in parentheses and may hold spaces and parentheses
/// itself, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state is field 3; utime 14, stime 15, starttime 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
    })
}

/// The number after `key` in `/proc/<pid>/status` (`VmRSS:  2188 kB`).
fn status_value(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The boot time, in seconds since the epoch, from `/proc/stat`.
fn boot_time(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`; `unlimited`
/// is reported as no series.
fn max_open_files(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let text =
            "25762 (a (b) c) R 25760 25760 11738 0 -1 4194304 98 0 0 0 7 3 0 0 20 0 1 0 1971405 3133440 380";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime: 7,
                stime: 3,
                start_ticks: 1_971_405
            })
        );
        assert_eq!(parse_stat("12 (x) R 1 2"), None);
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        let status = "Name:\tlevee\nVmSize:\t    3892 kB\nVmRSS:\t    2188 kB\nThreads:\t5\n";
        assert_eq!(status_value(status, "VmRSS:"), Some(2188.0));
        assert_eq!(status_value(status, "Threads:"), Some(5.0));
        assert_eq!(status_value(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
        let unlimited = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), None);
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1795979871\n"), Some(1_795_979_871.0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausibly() {
        let s = Sample::read();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        let rss = s.resident_bytes.expect("rss");
        assert!(rss > 1e5, "{s:?}");
        assert!(s.virtual_bytes.expect("vsz") >= rss, "{s:?}");
        assert!(s.open_fds.expect("fds") >= 3.0, "{s:?}");
        assert!(s.max_fds.expect("max fds") >= s.open_fds.expect("fds"), "{s:?}");
        assert!(s.threads.expect("threads") >= 1.0, "{s:?}");
        // CPU time grows while this thread works (in 10 ms ticks).
        let cpu = s.cpu_seconds.expect("cpu");
        let began = std::time::Instant::now();
        while Sample::read().cpu_seconds.expect("cpu") <= cpu {
            assert!(began.elapsed().as_secs() < 30, "CPU time stood still");
            let spin = std::time::Instant::now();
            while spin.elapsed().as_millis() < 20 {
                std::hint::black_box(spin.elapsed());
            }
        }
        // Started in the last day, and not in the future (ticks round down).
        let start = s.start_time.expect("start time");
        assert!(start <= now + 1.0 && start > now - 86_400.0, "{start} vs {now}");
    }
}
