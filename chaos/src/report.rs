//! The report: what failed and why on stdout and in `report.txt`, the
//! figures in `report.json`, and the fault timeline, the supervisor's
//! events and the offending keys' records beside them in the run folder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use uuid::Uuid;

use crate::broker::BrokerStorage;
use crate::check;
use crate::cli::{Args, BrokerKind};
use crate::faults::{FaultLog, Kind};
use crate::util::Downtime;
use crate::watchdog::StallReport;
use crate::writer::WriterStats;

/// Everything a finished run hands to the report.
pub struct Outcome<'a> {
    /// The command line.
    pub args: &'a Args,
    /// The seed of the faults and the workload.
    pub seed: u64,
    /// Fewer faults than this fail the run.
    pub min_faults: u32,
    /// The run folder's name.
    pub run_name: String,
    /// The run folder, where the report and the logs go.
    pub run_dir: PathBuf,
    /// Whether the relays published everything after the faults.
    pub drained: Result<()>,
    /// How long the drain took.
    pub drain_secs: f64,
    /// Why the topic could not be read back, if it could not.
    pub read_error: Option<String>,
    /// `outbox.message` rows by status at the end.
    pub statuses: Vec<(String, i64)>,
    /// What the writers did.
    pub writer_stats: WriterStats,
    /// What committed, by id.
    pub committed: check::Committed,
    /// Every record read back from the topic.
    pub seen: Vec<check::Seen>,
    /// The check of `seen` against `committed`.
    pub findings: check::Findings,
    /// What the watchdog found.
    pub stall_report: StallReport,
    /// What the fault injector did.
    pub fault_log: FaultLog,
    /// The fault kinds this run drew from.
    pub fault_kinds: Vec<Kind>,
    /// The relay supervisor's timeline.
    pub relay_events: Vec<String>,
    /// Relay exits the harness did not cause, by how the relay ended.
    pub self_exits: BTreeMap<String, u32>,
    /// Relay generations started, per slot.
    pub generations: Vec<u32>,
    /// The deliberate outages.
    pub downtime: Arc<Downtime>,
}

/// Prints the report, writes it and its companions into the run folder,
/// and returns whether the run passed.
pub fn write(outcome: Outcome<'_>) -> Result<bool> {
    let Outcome {
        args,
        seed,
        min_faults,
        run_name,
        run_dir,
        drained,
        drain_secs,
        read_error,
        statuses,
        writer_stats,
        committed,
        seen,
        findings,
        stall_report,
        fault_log,
        fault_kinds,
        relay_events,
        self_exits,
        generations,
        downtime,
    } = outcome;
    let minutes = args.minutes;
    let self_exit_total: u32 = self_exits.values().sum();
    let mut details = String::new();
    let d = &mut details;
    if let Err(e) = &drained {
        let _ = writeln!(d, "drain: {e:#}");
    }
    if let Some(e) = &read_error {
        let _ = writeln!(d, "reading the topic: {e}");
    }
    let statuses_text = statuses
        .iter()
        .map(|(s, n)| format!("{s}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    if statuses.iter().any(|(s, _)| s == "pending" || s == "dead") {
        let _ = writeln!(d, "outbox.message left behind: {statuses_text}");
    }
    if writer_stats.committed != committed.len() as u64 {
        let _ = writeln!(
            d,
            "harness check failed: the writers counted {} committed messages, chaos_committed has {}",
            writer_stats.committed,
            committed.len()
        );
    }
    if !findings.lost.is_empty() {
        let mut lost: Vec<String> = findings
            .lost
            .iter()
            .take(10)
            .map(|id| {
                let (k, n) = &committed[id];
                format!("{k}:{n} ({id})")
            })
            .collect();
        if findings.lost.len() > 10 {
            lost.push(format!("… {} more", findings.lost.len() - 10));
        }
        let _ = writeln!(d, "lost: {}", lost.join(", "));
    }
    if !findings.phantom.is_empty() {
        let ids: Vec<String> = findings
            .phantom
            .iter()
            .take(10)
            .map(Uuid::to_string)
            .collect();
        let _ = writeln!(d, "phantom (never committed) ids: {}", ids.join(", "));
    }
    write_bad_keys(&run_dir, &seen, &findings, &committed)?;
    for bad in findings.order_violations.iter().take(5) {
        let _ = writeln!(d, "order violation: {}", check::render(bad));
    }
    // Reported, not a failure: at least once allows a late re-send of an
    // older message after newer ones (a relay killed after the broker's
    // ack but before its mark, or paused with records queued). A consumer
    // that de-duplicates ignores it; a compacted topic would not.
    for bad in findings.stale_tails.iter().take(5) {
        let _ = writeln!(
            d,
            "stale tail (reported, not a failure): {}",
            check::render(bad)
        );
    }
    if !findings.order_violations.is_empty() || !findings.stale_tails.is_empty() {
        let _ = writeln!(
            d,
            "every record of these keys, with offsets and ids: {}",
            run_dir.join("bad-keys.txt").display()
        );
    }
    for m in findings.malformed.iter().take(10) {
        let _ = writeln!(d, "malformed: {m}");
    }
    for s in stall_report.details.iter().take(10) {
        let _ = writeln!(d, "{s}");
    }
    for e in &fault_log.errors {
        let _ = writeln!(d, "fault error: {e}");
    }
    if self_exit_total > 0 {
        let by: Vec<String> = self_exits
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            d,
            "relay self-exits ({}); see relay-*.log in {}",
            by.join(", "),
            run_dir.display()
        );
    }
    let broker_panics = tansu_panics(&run_dir);
    for p in &broker_panics {
        let _ = writeln!(
            d,
            "BROKER FAILURE: tansu panicked ({p}); it answers nothing sensible after that, so \
             lost/stalls in this run are the broker's, not evidence against the relay"
        );
    }
    if read_error.is_some() && !committed.is_empty() && findings.records == 0 {
        let _ = writeln!(
            d,
            "the topic could not be read back at all: lost counts every committed message"
        );
    }
    if args.broker == BrokerKind::Tansu
        && args.broker_storage == BrokerStorage::Sqlite
        && (!findings.lost.is_empty() || drained.is_err() || self_exit_total > 0)
    {
        let _ = writeln!(
            d,
            "note: tansu 0.6.0 with SQLite storage is known to fail idempotent producers after a \
             restart (docs/limits.md, \"The test broker\"); relay exits or undelivered messages after a \
             broker_restart may be that broker gap rather than the relay's"
        );
    }
    let fault_total = fault_log.total();
    let mut kinds_text = String::new();
    for kind in &fault_kinds {
        let n = fault_log.counts.get(kind).copied().unwrap_or(0);
        let _ = write!(kinds_text, " {}={n}", kind.name());
    }
    let summary = format!(
        "chaos: seed={seed} minutes={minutes} committed={} lost={} phantom={} duplicates={} \
         order_violations={} stale_tails={} stalls={} (longest {:.1}s) faults={fault_total}{kinds_text} \
         relay_self_exits={self_exit_total}",
        committed.len(),
        findings.lost.len(),
        findings.phantom.len(),
        findings.duplicates,
        findings.order_violations.len(),
        findings.stale_tails.len(),
        stall_report.stalls,
        stall_report.longest.as_secs_f64(),
    );
    let failed = !findings.lost.is_empty()
        || !findings.phantom.is_empty()
        || !findings.order_violations.is_empty()
        || stall_report.stalls > 0
        || fault_total < min_faults
        || !findings.malformed.is_empty()
        || read_error.is_some()
        || writer_stats.committed != committed.len() as u64;
    if fault_total < min_faults {
        let _ = writeln!(
            d,
            "only {fault_total} faults ran; at least {min_faults} required"
        );
    }
    let info = format!(
        "run: {run_name}; records read {} ({} distinct ids); writer: {} tx committed, {} rolled back on purpose ({} msgs), \
         {} retried (last error: {}), {} unknown COMMITs ({} had committed); drain took {drain_secs:.1}s; \
         outbox.message at the end: {}; deliberate downtime {:.1}s; watchdog samples {} ({} failed); relay generations {generations:?}",
        findings.records,
        findings.distinct,
        writer_stats.committed_tx,
        writer_stats.rolled_back_tx,
        writer_stats.rolled_back,
        writer_stats.retried_tx,
        writer_stats.last_error.as_deref().unwrap_or("none"),
        writer_stats.unknown_commits,
        writer_stats.unknown_committed,
        if statuses_text.is_empty() { "empty" } else { &statuses_text },
        downtime.total().as_secs_f64(),
        stall_report.samples,
        stall_report.failed_samples,
    );
    let mut report = String::new();
    report.push_str(&details);
    report.push_str(&info);
    report.push('\n');
    report.push_str(&summary);
    report.push('\n');
    print!("{report}");
    std::fs::write(run_dir.join("report.txt"), &report)?;
    let mut timeline = fault_log.events.join("\n");
    timeline.push('\n');
    std::fs::write(run_dir.join("faults.log"), timeline)?;
    let mut sup = relay_events.join("\n");
    sup.push('\n');
    std::fs::write(run_dir.join("supervisor.log"), sup)?;
    let json = serde_json::json!({
        "seed": seed,
        "minutes": minutes,
        "committed": committed.len(),
        "records": findings.records,
        "lost": findings.lost.len(),
        "phantom": findings.phantom.len(),
        "duplicates": findings.duplicates,
        "order_violations": findings.order_violations.len(),
        "stale_tails": findings.stale_tails.len(),
        "stalls": stall_report.stalls,
        "longest_stuck_seconds": stall_report.longest.as_secs_f64(),
        "faults": fault_log.counts.iter().map(|(k, v)| (k.name(), *v)).collect::<BTreeMap<_, _>>(),
        "relay_self_exits": self_exits,
        "passed": !failed,
    });
    std::fs::write(
        run_dir.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(!failed)
}

/// Writes every record of the offending keys (partition, offset, n, id,
/// and the id's UUIDv7 time, i.e. when it was enqueued) and the lost
/// messages to `bad-keys.txt`, for the post-mortem.
fn write_bad_keys(
    run_dir: &std::path::Path,
    seen: &[check::Seen],
    findings: &check::Findings,
    committed: &check::Committed,
) -> Result<()> {
    let bad: std::collections::BTreeSet<&str> = findings
        .order_violations
        .iter()
        .chain(&findings.stale_tails)
        .map(|b| b.key.as_str())
        .collect();
    if bad.is_empty() && findings.lost.is_empty() && findings.phantom.is_empty() {
        return Ok(());
    }
    let time = |id: &Uuid| {
        id.get_timestamp()
            .map(|t| {
                let (s, ns) = t.to_unix();
                chrono::DateTime::from_timestamp(s as i64, ns)
                    .map(|d| d.format("%H:%M:%S%.3f").to_string())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    };
    let mut out = String::new();
    let mut records: Vec<&check::Seen> = seen.iter().collect();
    records.sort_by_key(|r| (r.partition, r.offset));
    for key in bad {
        let _ = writeln!(out, "{key}: partition/offset n id (enqueued at)");
        for r in &records {
            if let (Some((k, n)), Some(id)) = (&r.payload, r.id) {
                if k == key {
                    let _ = writeln!(
                        out,
                        "  {}/{} {n} {id} ({})",
                        r.partition,
                        r.offset,
                        time(&id)
                    );
                }
            }
        }
    }
    for id in &findings.lost {
        let (k, n) = &committed[id];
        let _ = writeln!(out, "lost: {k}:{n} {id} ({})", time(id));
    }
    for id in &findings.phantom {
        let _ = writeln!(out, "phantom: {id} ({})", time(id));
    }
    std::fs::write(run_dir.join("bad-keys.txt"), out)?;
    Ok(())
}

/// `tansu-N.log: <panic message>` for every tansu start that panicked.
fn tansu_panics(run_dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return out;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("tansu-") && n.ends_with(".log"))
        .collect();
    names.sort();
    for name in names {
        let text = std::fs::read_to_string(run_dir.join(&name)).unwrap_or_default();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.contains("panicked at") {
                let why = lines.next().unwrap_or_default().trim();
                out.push(format!("{name}: {} {why}", line.trim()));
                break;
            }
        }
    }
    out
}
