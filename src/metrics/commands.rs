//! The histograms recorded on every command, kept in plain atomics and rendered in the
//! Prometheus text format beside the exporter's families: per-command call counts and
//! latencies, and live siblings per read.
//!
//! Why not the `metrics` crate's histogram: its exporter stores every sample in a lock-free
//! bucket and sorts them into buckets at scrape time, which cost more per command than a
//! GET itself. Here one record adds to three counters, and a connection records a run of
//! pipelined commands that share a latency (same arrival, same reply write) with one call.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{
    COMMAND_SECONDS, COMMAND_SECONDS_HELP, COMMANDS, COMMANDS_HELP, COUNT_BUCKETS, LATENCY_BUCKETS, SIBLINGS_PER_READ,
    SIBLINGS_PER_READ_HELP,
};
use crate::resp::cmd;
use crate::striped::{STRIPES, stripe};

/// Live siblings per read: buckets as [`COUNT_BUCKETS`], plus one above them all.
#[repr(align(128))]
struct Siblings {
    buckets: [AtomicU64; COUNT_BUCKETS.len() + 1],
    sum: AtomicU64,
}

/// One [`Siblings`] per stripe (see [`crate::striped`]); rendering adds them up.
fn siblings() -> &'static [Siblings] {
    static S: OnceLock<Vec<Siblings>> = OnceLock::new();
    S.get_or_init(|| {
        (0..STRIPES)
            .map(|_| Siblings {
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                sum: AtomicU64::new(0),
            })
            .collect()
    })
}

/// Counts one read that saw `n` live siblings (a read that saw none is not counted).
pub fn record_siblings(n: u64) {
    if n == 0 {
        return;
    }
    let s = &siblings()[stripe()];
    let slot = COUNT_BUCKETS.partition_point(|&b| b < n as f64);
    s.buckets[slot].fetch_add(1, Ordering::Relaxed);
    s.sum.fetch_add(n, Ordering::Relaxed);
}

/// One command's counters: calls, calls per latency bucket (not cumulative; the last
/// slot counts calls above every bound) and the latency sum in nanoseconds.
struct Entry {
    calls: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

/// Bucket bounds in nanoseconds, so recording compares integers.
fn bounds_ns() -> &'static [u64; LATENCY_BUCKETS.len()] {
    static BOUNDS: OnceLock<[u64; LATENCY_BUCKETS.len()]> = OnceLock::new();
    BOUNDS.get_or_init(|| std::array::from_fn(|i| (LATENCY_BUCKETS[i] * 1e9).round() as u64))
}

/// Per stripe (see [`crate::striped`]), one entry per command of the table, then one for
/// unknown commands; rendering adds the stripes up.
fn tables() -> &'static [Vec<Entry>] {
    static TABLES: OnceLock<Vec<Vec<Entry>>> = OnceLock::new();
    TABLES.get_or_init(|| {
        (0..STRIPES)
            .map(|_| {
                (0..=cmd::COMMANDS.len())
                    .map(|_| Entry {
                        calls: AtomicU64::new(0),
                        buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                        sum_ns: AtomicU64::new(0),
                    })
                    .collect()
            })
            .collect()
    })
}

/// The name a command index is reported under.
fn name(index: usize) -> &'static str {
    cmd::COMMANDS.get(index).map_or("unknown", |s| s.name)
}

/// Counts `count` calls of command `index` (`COMMANDS.len()` or above: unknown command)
/// that each took `latency`.
pub fn record(index: usize, count: u64, latency: Duration) {
    let table = &tables()[stripe()];
    let e = &table[index.min(table.len() - 1)];
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    let slot = bounds_ns().partition_point(|&b| b < ns);
    e.calls.fetch_add(count, Ordering::Relaxed);
    e.buckets[slot].fetch_add(count, Ordering::Relaxed);
    e.sum_ns.fetch_add(ns.saturating_mul(count), Ordering::Relaxed);
}

/// Appends the families kept here: `dynkv_commands_total` and
/// `dynkv_command_duration_seconds` for every command called at least once, and
/// `dynkv_siblings_per_read` once a read has seen a value.
pub fn render(out: &mut String) {
    render_commands(out);
    let mut buckets = [0u64; COUNT_BUCKETS.len() + 1];
    let mut sum = 0u64;
    for s in siblings() {
        for (total, b) in buckets.iter_mut().zip(&s.buckets) {
            *total += b.load(Ordering::Relaxed);
        }
        sum += s.sum.load(Ordering::Relaxed);
    }
    if buckets.iter().all(|&b| b == 0) {
        return;
    }
    let name = SIBLINGS_PER_READ;
    let _ = writeln!(out, "# HELP {name} {SIBLINGS_PER_READ_HELP}\n# TYPE {name} histogram");
    write_series(out, name, "", COUNT_BUCKETS, &buckets, &sum.to_string());
}

/// One histogram series: cumulative `_bucket` lines from per-bucket counts (`counts` has
/// one more entry than `bounds`: above them all), then `_sum` and `_count`. `labels` is
/// empty or `key="value",` pairs, each with its trailing comma.
fn write_series(out: &mut String, name: &str, labels: &str, bounds: &[f64], counts: &[u64], sum: &str) {
    let mut cumulative = 0u64;
    for (bound, count) in bounds
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_string()])
        .zip(counts)
    {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
    }
    let labels = labels.trim_end_matches(',');
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {sum}");
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

/// One command's counters summed over the stripes.
struct Totals {
    calls: u64,
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum_ns: u64,
}

fn render_commands(out: &mut String) {
    let tables = tables();
    let called: Vec<(usize, Totals)> = (0..=cmd::COMMANDS.len())
        .map(|i| {
            let mut t = Totals {
                calls: 0,
                buckets: [0; LATENCY_BUCKETS.len() + 1],
                sum_ns: 0,
            };
            for e in tables.iter().map(|table| &table[i]) {
                t.calls += e.calls.load(Ordering::Relaxed);
                for (total, b) in t.buckets.iter_mut().zip(&e.buckets) {
                    *total += b.load(Ordering::Relaxed);
                }
                t.sum_ns += e.sum_ns.load(Ordering::Relaxed);
            }
            (i, t)
        })
        .filter(|(_, t)| t.calls > 0)
        .collect();
    if called.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {COMMANDS} {COMMANDS_HELP}\n# TYPE {COMMANDS} counter");
    for (i, t) in &called {
        let _ = writeln!(out, "{COMMANDS}{{cmd=\"{}\"}} {}", name(*i), t.calls);
    }
    let _ = writeln!(
        out,
        "# HELP {COMMAND_SECONDS} {COMMAND_SECONDS_HELP}\n# TYPE {COMMAND_SECONDS} histogram"
    );
    for (i, t) in &called {
        let labels = format!("cmd=\"{}\",", name(*i));
        let sum = (t.sum_ns as f64 / 1e9).to_string();
        write_series(out, COMMAND_SECONDS, &labels, LATENCY_BUCKETS, &t.buckets, &sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the first sample line starting with `prefix`.
    fn sample<T: std::str::FromStr>(text: &str, prefix: &str) -> Option<T> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    fn family_lines(text: &str, cmd: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(&format!("cmd=\"{cmd}\"")))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn buckets_are_cumulative_and_counts_add_up() {
        let echo = cmd::lookup_index(b"echo").expect("echo is a command");
        record(echo, 3, Duration::from_micros(7)); // first bucket (10 µs)
        record(echo, 2, Duration::from_millis(3)); // 5 ms bucket
        record(echo, 1, Duration::from_secs(60)); // above every bound
        let mut text = String::new();
        render(&mut text);
        let lines = family_lines(&text, "echo");
        assert!(
            lines.contains(&"dynkv_commands_total{cmd=\"echo\"} 6".to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"dynkv_command_duration_seconds_bucket{cmd=\"echo\",le=\"0.00001\"} 3".to_string()));
        assert!(lines.contains(&"dynkv_command_duration_seconds_bucket{cmd=\"echo\",le=\"0.0025\"} 3".to_string()));
        assert!(lines.contains(&"dynkv_command_duration_seconds_bucket{cmd=\"echo\",le=\"0.005\"} 5".to_string()));
        assert!(lines.contains(&"dynkv_command_duration_seconds_bucket{cmd=\"echo\",le=\"10\"} 5".to_string()));
        assert!(lines.contains(&"dynkv_command_duration_seconds_bucket{cmd=\"echo\",le=\"+Inf\"} 6".to_string()));
        assert!(lines.contains(&"dynkv_command_duration_seconds_count{cmd=\"echo\"} 6".to_string()));
        let sum: f64 = sample(&lines.join("\n"), "dynkv_command_duration_seconds_sum").expect("a sum line");
        assert!((sum - (3.0 * 7e-6 + 2.0 * 3e-3 + 60.0)).abs() < 1e-9, "{sum}");
        assert!(text.contains("# TYPE dynkv_command_duration_seconds histogram"));
        assert!(text.contains("# HELP dynkv_commands_total "));
    }

    #[test]
    fn siblings_per_read_is_a_histogram() {
        record_siblings(1);
        record_siblings(3);
        let mut text = String::new();
        render(&mut text);
        assert!(text.contains("# TYPE dynkv_siblings_per_read histogram"), "{text}");
        assert!(text.contains("dynkv_siblings_per_read_bucket{le=\"2\"}"), "{text}");
        let count: u64 = sample(&text, "dynkv_siblings_per_read_count ").expect("a count line");
        assert!(count >= 2);
    }

    #[test]
    fn unknown_commands_have_their_own_label() {
        record(usize::MAX, 1, Duration::from_micros(1));
        let mut text = String::new();
        render(&mut text);
        assert!(text.contains("dynkv_commands_total{cmd=\"unknown\"}"), "{text}");
    }
}
