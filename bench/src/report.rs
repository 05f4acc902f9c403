//! The report: one row per figure, each beside the limit measured in the
//! same run and, where the issue sets one, its target. Printed as a table
//! and written as Markdown and JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// One figure of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Which measurement (1 to 6).
    pub section: &'static str,
    /// What was measured.
    pub figure: String,
    /// The figure, human-readable.
    pub value: String,
    /// The limit or reference it is compared with, measured in this run.
    pub limit: String,
    /// figure / limit (or the ratio the target is about).
    pub ratio: Option<f64>,
    /// The target, if there is one.
    pub target: Option<String>,
    /// Whether the target was met.
    pub pass: Option<bool>,
}

impl Row {
    pub fn new(section: &'static str, figure: impl Into<String>, value: impl Into<String>) -> Self {
        Row {
            section,
            figure: figure.into(),
            value: value.into(),
            limit: String::new(),
            ratio: None,
            target: None,
            pass: None,
        }
    }

    pub fn limit(mut self, limit: impl Into<String>) -> Self {
        self.limit = limit.into();
        self
    }

    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = Some(ratio);
        self
    }

    pub fn target(mut self, target: impl Into<String>, pass: bool) -> Self {
        self.target = Some(target.into());
        self.pass = Some(pass);
        self
    }

    fn result(&self) -> &'static str {
        match self.pass {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "",
        }
    }

    fn ratio_text(&self) -> String {
        self.ratio.map(|r| format!("{r:.2}")).unwrap_or_default()
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `full` or `smoke`.
    pub mode: &'static str,
    /// Wall time of the run, seconds.
    pub duration_secs: f64,
    /// Sizes, rates, durations and settings the run used.
    pub parameters: serde_json::Value,
    /// The figures.
    pub rows: Vec<Row>,
    /// Raw measurements per scenario.
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Measurements that failed (the run exits non-zero when any did).
    pub errors: Vec<String>,
}

impl Report {
    /// Targets missed.
    pub fn misses(&self) -> usize {
        self.rows.iter().filter(|r| r.pass == Some(false)).count()
    }

    /// The table as Markdown.
    pub fn markdown_table(&self) -> String {
        let mut out = String::new();
        out.push_str("| # | measurement | value | limit (same run) | ratio | target | result |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.section,
                r.figure,
                r.value,
                r.limit,
                r.ratio_text(),
                r.target.as_deref().unwrap_or(""),
                r.result()
            );
        }
        out
    }

    /// The full Markdown report.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# outbox benchmark ({} run, {:.0} s)\n\n",
            self.mode, self.duration_secs
        );
        out.push_str(&self.markdown_table());
        let passed = self.rows.iter().filter(|r| r.pass == Some(true)).count();
        let _ = writeln!(out, "\nTargets: {passed} met, {} missed.", self.misses());
        if !self.errors.is_empty() {
            out.push_str("\n## Failed measurements\n\n");
            for e in &self.errors {
                let _ = writeln!(out, "- {e}");
            }
        }
        out.push_str("\n## Parameters\n\n```json\n");
        out.push_str(&serde_json::to_string_pretty(&self.parameters).unwrap_or_default());
        out.push_str("\n```\n");
        out
    }

    /// The table as aligned plain text, for the terminal.
    pub fn text_table(&self) -> String {
        let header = [
            "#",
            "measurement",
            "value",
            "limit (same run)",
            "ratio",
            "target",
            "result",
        ];
        let rows: Vec<[String; 7]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.section.to_string(),
                    r.figure.clone(),
                    r.value.clone(),
                    r.limit.clone(),
                    r.ratio_text(),
                    r.target.clone().unwrap_or_default(),
                    r.result().to_string(),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                let pad = w - c.chars().count();
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&header.map(String::from));
        out.push_str(&line(&widths.map(|w| "-".repeat(w))));
        for r in &rows {
            out.push_str(&line(r));
        }
        out
    }

    /// Writes `report.md` and `report.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        Ok(())
    }
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_thousands() {
        assert_eq!(super::thousands(0.0), "0");
        assert_eq!(super::thousands(999.4), "999");
        assert_eq!(super::thousands(1000.0), "1,000");
        assert_eq!(super::thousands(1234567.8), "1,234,568");
        assert_eq!(super::thousands(-1234.0), "-1,234");
    }
}
