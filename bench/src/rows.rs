//! The report's rows: each measurement's figure beside its limit, as a
//! ratio to it, and against its target.

use crate::db;
use crate::report::{mib, thousands, Row};
use crate::scenarios::{
    CeilingResult, DrainResult, HealthResult, LatencyResult, LimitsResult, OverheadResult,
    ProbeResult,
};

/// Targets from the issue.
const RELAY_VS_CEILING: f64 = 0.70;
const WRITE_OVERHEAD: f64 = 1.15;
const P99_MS_AT_1000_NOTIFY: f64 = 25.0;
/// The relay's p99 at 1,000 msg/s against the broker alone's, same load.
const P99_VS_BROKER: f64 = 1.5;
const MEMORY_GROWTH: f64 = 1.20;
const TABLE_GROWTH: f64 = 1.20;

/// (1): the ceiling's row, the mean of the runs before and after the
/// drain; returns that mean, or None when no ceiling run succeeded.
pub fn ceiling(rows: &mut Vec<Row>, n: u64, ceilings: &[CeilingResult]) -> Option<f64> {
    let ceiling = (!ceilings.is_empty())
        .then(|| ceilings.iter().map(|c| c.rate).sum::<f64>() / ceilings.len() as f64);
    if let Some(c) = ceiling {
        let each: Vec<String> = ceilings.iter().map(|c| thousands(c.rate)).collect();
        rows.push(
            Row::new(
                "1",
                format!("ceiling: raw producer, {} records", thousands(n as f64)),
                format!("{} msg/s", thousands(c)),
            )
            .limit(format!(
                "mean of runs before/after drain: {}",
                each.join(" / ")
            )),
        );
    }
    ceiling
}

/// (2): the drain of the `n` backlog, against the ceiling when there is
/// one, and where its time went.
pub fn drain(rows: &mut Vec<Row>, n: u64, d: &DrainResult, ceiling: Option<f64>) {
    let mut row = Row::new(
        "2",
        format!("relay drain, {} backlog", thousands(n as f64)),
        format!("{} msg/s", thousands(d.rate)),
    );
    if let Some(c) = ceiling {
        let ratio = d.rate / c;
        row = row
            .limit(format!("ceiling {} msg/s", thousands(c)))
            .ratio(ratio)
            .target(
                format!("≥ {RELAY_VS_CEILING:.2} × ceiling"),
                ratio >= RELAY_VS_CEILING,
            );
    }
    rows.push(row);
    rows.push(
        Row::new(
            "2",
            "… where the drain's time went (sampled pg_stat_activity, /proc)",
            d.profile.summary(),
        )
        .limit(format!(
            "{:.0} batches, {:.1} ms each",
            d.batches,
            1e3 * d.batch_seconds_sum / d.batches.max(1.0)
        )),
    );
}

/// (2, isolated): the drain's two parties, alone and side by side, against
/// the ceiling; the last row puts the drain beside the slower of them.
pub fn limits(
    rows: &mut Vec<Row>,
    l: &LimitsResult,
    ceiling: Option<f64>,
    drain: Option<&DrainResult>,
) {
    let against_ceiling = |row: Row, rate: f64| match ceiling {
        Some(c) => row
            .limit(format!("ceiling {} msg/s", thousands(c)))
            .ratio(rate / c),
        None => row,
    };
    rows.push(against_ceiling(
        Row::new(
            "2",
            "… the relay's statements alone (fetch + delete, no broker)",
            format!("{} msg/s", thousands(l.statements_alone)),
        ),
        l.statements_alone,
    ));
    rows.push(against_ceiling(
        Row::new(
            "2",
            "… the raw producer while the relay's statements run",
            format!("{} msg/s", thousands(l.producer_beside_statements)),
        ),
        l.producer_beside_statements,
    ));
    let slower = l
        .statements_beside_producer
        .min(l.producer_beside_statements);
    let ran_out = if l.overlap < 1.0 {
        format!(
            " (ran out after {:.0}% of the producer's run)",
            100.0 * l.overlap
        )
    } else {
        String::new()
    };
    let mut row = Row::new(
        "2",
        "… the relay's statements while the raw producer runs",
        format!("{} msg/s{ran_out}", thousands(l.statements_beside_producer)),
    );
    if let Some(d) = drain {
        row = row
            .limit(format!(
                "drain {} msg/s over the slower side by side",
                thousands(d.rate)
            ))
            .ratio(d.rate / slower);
    }
    rows.push(row);
}

/// (5): the relay's peak RSS draining the big backlog (`b`, of `n`) over
/// the small one (`s`, of `small`).
pub fn memory(rows: &mut Vec<Row>, n: u64, small: u64, s: &DrainResult, b: &DrainResult) {
    let ratio = b.peak_rss_kib as f64 / s.peak_rss_kib as f64;
    rows.push(
        Row::new(
            "5",
            format!(
                "relay peak RSS, {} vs {} backlog",
                thousands(n as f64),
                thousands(small as f64)
            ),
            format!(
                "{} vs {}",
                mib(b.peak_rss_kib as f64 * 1024.0),
                mib(s.peak_rss_kib as f64 * 1024.0)
            ),
        )
        .limit(format!(
            "{} backlog: {}",
            thousands(small as f64),
            mib(s.peak_rss_kib as f64 * 1024.0)
        ))
        .ratio(ratio)
        .target(format!("≤ {MEMORY_GROWTH:.2}"), ratio <= MEMORY_GROWTH),
    );
}

/// (6): the table's size at each stage of the health measurement.
pub fn health(rows: &mut Vec<Row>, n: u64, h: &HealthResult) {
    let show = |s: &db::Sizes| {
        format!(
            "{} (indexes {}, {} rows)",
            mib(s.total_bytes as f64),
            mib(s.index_bytes as f64),
            thousands(s.rows as f64)
        )
    };
    let k = thousands(n as f64);
    rows.push(Row::new(
        "6",
        format!("outbox.message, {k} loaded"),
        show(&h.loaded),
    ));
    rows.push(Row::new(
        "6",
        "… drained (rows deleted on acknowledgement, space not yet reclaimed)",
        show(&h.drained),
    ));
    rows.push(Row::new(
        "6",
        "… swept (sweeper, --retention 0s)",
        show(&h.swept),
    ));
    rows.push(Row::new("6", "… after VACUUM", show(&h.vacuumed)));
    rows.push(
        Row::new("6", format!("… refilled with {k}"), show(&h.refilled))
            .limit(format!("first load {}", mib(h.loaded.total_bytes as f64)))
            .ratio(h.growth)
            .target(
                format!("≤ {TABLE_GROWTH:.2} (bounded)"),
                h.growth <= TABLE_GROWTH,
            ),
    );
    rows.push(
        Row::new(
            "6",
            "… second cycle: drained, VACUUM, refilled",
            show(&h.refilled_again),
        )
        .limit(format!("first load {}", mib(h.loaded.total_bytes as f64)))
        .ratio(h.growth_again)
        .target(
            format!("≤ {TABLE_GROWTH:.2} (bounded)"),
            h.growth_again <= TABLE_GROWTH,
        ),
    );
}

/// (3): the order transaction with an outbox message against it alone,
/// and the two diagnostics beside it.
pub fn overhead(rows: &mut Vec<Row>, o: &OverheadResult) {
    rows.push(
        Row::new(
            "3",
            format!("order tx + 1 outbox message, {} clients", o.clients),
            format!("{} tx/s", thousands(o.with_outbox_rate)),
        )
        .limit(format!("order tx alone {} tx/s", thousands(o.alone_rate)))
        .ratio(o.ratio)
        .target(
            format!("alone/with ≤ {WRITE_OVERHEAD:.2}"),
            o.ratio <= WRITE_OVERHEAD,
        ),
    );
    rows.push(
        Row::new(
            "3",
            "… diagnostic: same while a relay waits (every commit notifies)",
            format!("{} tx/s", thousands(o.waiting_rate)),
        )
        .limit(format!("order tx alone {} tx/s", thousands(o.alone_rate)))
        .ratio(o.waiting_ratio),
    );
    rows.push(
        Row::new(
            "3",
            "… floor: order tx + a plain second INSERT of the same width",
            format!("{} tx/s", thousands(o.floor_rate)),
        )
        .limit(format!("order tx alone {} tx/s", thousands(o.alone_rate)))
        .ratio(o.floor_ratio),
    );
}

/// The median of `v` (the mean of the middle two when even).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `12.3 (11.0–14.2)`: the median, then the smallest and largest run, so
/// one lucky or unlucky run shows as such.
fn median_spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() < 2 {
        format!("{:.1}", median(v))
    } else {
        format!("{:.1} ({lo:.1}–{hi:.1})", median(v))
    }
}

/// (4): the repeated latency runs of one mode, rate and load (`hogged`: a
/// busy loop held one core), against the broker alone measured between
/// them in the same conditions. The target applies to notify at 1,000
/// msg/s, quiet and hogged alike: the median p99 within
/// [`P99_MS_AT_1000_NOTIFY`] and within [`P99_VS_BROKER`] of the broker's.
pub fn latency(
    wakeup: &str,
    rate: u32,
    hogged: bool,
    runs: &[LatencyResult],
    probes: &[ProbeResult],
) -> Row {
    let p99: Vec<f64> = runs.iter().map(|l| l.latency.p99_ms).collect();
    let p50: Vec<f64> = runs.iter().map(|l| l.latency.p50_ms).collect();
    let max = runs
        .iter()
        .map(|l| l.latency.max_ms)
        .fold(0.0_f64, f64::max);
    let reached = median(&runs.iter().map(|l| l.achieved_rate).collect::<Vec<_>>());
    let mut row = Row::new(
        "4",
        format!(
            "latency, {wakeup}, {} msg/s{} ({} msg/tx; reached {}; {} run{})",
            thousands(rate as f64),
            if hogged {
                ", one core held by a busy loop"
            } else {
                ""
            },
            runs[0].per_tx,
            thousands(reached),
            runs.len(),
            if runs.len() == 1 { "" } else { "s" },
        ),
        format!(
            "p99 {} / p50 {} / max {:.1} ms",
            median_spread(&p99),
            median_spread(&p50),
            max
        ),
    );
    let broker_p99: Vec<f64> = probes.iter().map(|p| p.latency.p99_ms).collect();
    let ratio = (!probes.is_empty()).then(|| median(&p99) / median(&broker_p99).max(0.001));
    if let Some(ratio) = ratio {
        row = row
            .limit(format!(
                "broker alone p99 {} / p50 {} ms",
                median_spread(&broker_p99),
                median_spread(&probes.iter().map(|p| p.latency.p50_ms).collect::<Vec<_>>())
            ))
            .ratio(ratio);
    }
    if wakeup == "notify" && rate == 1000 {
        let pass =
            median(&p99) <= P99_MS_AT_1000_NOTIFY && ratio.is_some_and(|r| r <= P99_VS_BROKER);
        row = row.target(
            format!("median p99 ≤ {P99_MS_AT_1000_NOTIFY:.0} ms and ≤ {P99_VS_BROKER:.1} × broker"),
            pass,
        );
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median_spread(&[20.0, 10.0, 30.0]), "20.0 (10.0–30.0)");
        assert_eq!(median_spread(&[7.25]), "7.2");
    }
}
