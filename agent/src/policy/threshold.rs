//! The threshold policy: a table of `min_snr_db,max_loss_rate,k` rows read from a CSV file.
//!
//! Rows are evaluated top to bottom; the first row with `snr_db >= min_snr_db` and
//! `loss_rate <= max_loss_rate` gives `k`. The last row must be a catch-all (`-inf,1,k`), so every
//! observation maps to a split. `#` starts a comment; blank lines are skipped.
//!
//! Hysteresis: a row *above* the current one (a better channel) needs `snr_db >= min_snr_db +
//! hysteresis_db`, so an SNR hovering at a threshold does not flip the split back and forth. The
//! current row is the one that gave the split in force; when several rows give the same `k`, the
//! one this policy chose last, else the first of them; a `k` no row gives (an override) means no
//! current row and no hysteresis.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Policy, Proposal};
use crate::error::ConfigError;
use crate::observation::Observation;

pub const HEADER: [&str; 3] = ["min_snr_db", "max_loss_rate", "k"];

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub min_snr_db: f64,
    pub max_loss_rate: f64,
    pub k: u32,
    /// Line in the file (1-based), for error messages.
    pub line: usize,
}

impl Row {
    fn is_catch_all(&self) -> bool {
        self.min_snr_db == f64::NEG_INFINITY && self.max_loss_rate >= 1.0
    }
}

/// A parsed threshold file.
#[derive(Debug, Clone)]
pub struct Table {
    path: PathBuf,
    rows: Vec<Row>,
}

impl Table {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(path, &text)
    }

    /// Parses `text` as the contents of `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let err = |line: usize, what: String| ConfigError::Threshold { path: path.into(), line, what };
        let mut header_line = None;
        let mut rows: Vec<Row> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let cols: Vec<&str> = content.split(',').map(str::trim).collect();
            if header_line.is_none() {
                if cols != HEADER {
                    return Err(err(line, format!("missing header: expected `{}`, got `{content}`", HEADER.join(","))));
                }
                header_line = Some(line);
                continue;
            }
            if cols.len() != HEADER.len() {
                return Err(err(line, format!("expected 3 columns ({}), got {}: `{content}`", HEADER.join(","), cols.len())));
            }
            let number = |name: &str, s: &str| -> Result<f64, ConfigError> {
                let v: f64 = s.parse().map_err(|_| err(line, format!("{name} `{s}` is not a number")))?;
                if v.is_nan() {
                    return Err(err(line, format!("{name} is NaN; write -inf for no lower bound")));
                }
                Ok(v)
            };
            let min_snr_db = number("min_snr_db", cols[0])?;
            let max_loss_rate = number("max_loss_rate", cols[1])?;
            if !(0.0..=1.0).contains(&max_loss_rate) {
                return Err(err(line, format!("max_loss_rate {max_loss_rate} is outside [0, 1]")));
            }
            let k: u32 = cols[2].parse().map_err(|_| err(line, format!("k `{}` is not a whole number of layers", cols[2])))?;
            if let Some(prev) = rows.last().filter(|r| r.is_catch_all()) {
                return Err(err(line, format!("row is unreachable: the catch-all on line {} already matches every observation", prev.line)));
            }
            rows.push(Row { min_snr_db, max_loss_rate, k, line });
        }
        let Some(header_line) = header_line else {
            return Err(err(1, format!("missing header: expected `{}`, the file has no rows", HEADER.join(","))));
        };
        match rows.last() {
            None => Err(err(header_line, "no rows after the header; the last row must be a catch-all such as `-inf,1,24`".into())),
            Some(last) if !last.is_catch_all() => Err(err(
                last.line,
                format!(
                    "the last row must be a catch-all (min_snr_db -inf, max_loss_rate 1) so every observation maps to a k; got `{},{},{}`",
                    last.min_snr_db, last.max_loss_rate, last.k
                ),
            )),
            Some(_) => Ok(Self { path: path.into(), rows }),
        }
    }

    /// Checks every `k` against the model's layer count `n_layers` (k in 0..=L).
    pub fn check_layers(&self, n_layers: u32) -> Result<(), ConfigError> {
        match self.rows.iter().find(|r| r.k > n_layers) {
            Some(r) => Err(ConfigError::Threshold {
                path: self.path.clone(),
                line: r.line,
                what: format!("k {} is more than the model's {n_layers} layers (k must be in 0..={n_layers})", r.k),
            }),
            None => Ok(()),
        }
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub struct Threshold {
    table: Table,
    hysteresis_db: f64,
    /// The file's name, for reasons.
    label: String,
    /// The row of this policy's last proposal.
    last_row: Option<usize>,
}

impl Threshold {
    pub fn new(table: Table, hysteresis_db: f64) -> Self {
        let label = table.path.file_name().map_or_else(|| table.path.display().to_string(), |n| n.to_string_lossy().into_owned());
        Self { table, hysteresis_db, label, last_row: None }
    }

    fn current_row(&self, current_k: Option<u32>) -> Option<usize> {
        let k = current_k?;
        let rows = &self.table.rows;
        self.last_row.filter(|&i| rows[i].k == k).or_else(|| rows.iter().position(|r| r.k == k))
    }
}

fn db(v: f64) -> String {
    if v.is_infinite() { format!("{}inf", if v < 0.0 { "-" } else { "" }) } else { format!("{v:.1}") }
}

/// A rate with at least two decimals and no trailing zeros beyond them (0.02, 0.004, 1.00).
fn rate(v: f64) -> String {
    let s = format!("{v:.4}");
    let trimmed = s.trim_end_matches('0');
    let decimals = trimmed.split_once('.').map_or(0, |(_, d)| d.len());
    if decimals < 2 { format!("{v:.2}") } else { trimmed.to_string() }
}

impl Policy for Threshold {
    fn name(&self) -> &str {
        "threshold"
    }

    fn params(&self) -> BTreeMap<String, String> {
        let rows: Vec<String> = self.table.rows.iter().map(|r| format!("{},{},{}", db(r.min_snr_db), r.max_loss_rate, r.k)).collect();
        BTreeMap::from([
            ("file".to_string(), self.table.path.display().to_string()),
            ("hysteresis_db".to_string(), self.hysteresis_db.to_string()),
            ("rows".to_string(), rows.join("; ")),
        ])
    }

    fn decide(&mut self, obs: &Observation, current_k: Option<u32>) -> Proposal {
        let current = self.current_row(current_k);
        let rows = &self.table.rows;
        let margin = |i: usize| if current.is_some_and(|c| i < c) { self.hysteresis_db } else { 0.0 };
        let fires = |i: usize| obs.snr_db >= rows[i].min_snr_db + margin(i) && obs.loss_rate <= rows[i].max_loss_rate;
        // The table ends with a catch-all, which always fires (its bounds are -inf and 1).
        let chosen = (0..rows.len()).find(|&i| fires(i)).unwrap_or(rows.len() - 1);

        let mut why = Vec::new();
        let snr_bound = |i: usize| {
            let m = margin(i);
            if m > 0.0 { format!("{} dB ({} + {} hysteresis)", db(rows[i].min_snr_db + m), db(rows[i].min_snr_db), m) } else { format!("{} dB", db(rows[i].min_snr_db)) }
        };
        if chosen > 0 {
            // Why the row just above did not fire.
            let above = chosen - 1;
            if obs.snr_db < rows[above].min_snr_db + margin(above) {
                why.push(format!("snr {} dB < {}", db(obs.snr_db), snr_bound(above)));
            }
            if obs.loss_rate > rows[above].max_loss_rate {
                why.push(format!("loss {} > {}", rate(obs.loss_rate), rate(rows[above].max_loss_rate)));
            }
        }
        let row = &rows[chosen];
        if row.min_snr_db > f64::NEG_INFINITY {
            why.push(format!("snr {} dB >= {}", db(obs.snr_db), snr_bound(chosen)));
        }
        if row.max_loss_rate < 1.0 {
            why.push(format!("loss {} <= {}", rate(obs.loss_rate), rate(row.max_loss_rate)));
        }
        if why.is_empty() {
            why.push("catch-all".into());
        }
        self.last_row = Some(chosen);
        Proposal { k: row.k, reason: format!("{}: row {} of {} → k={}", why.join(", "), chosen + 1, self.label, row.k) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# thresholds\nmin_snr_db, max_loss_rate, k\n\n15,0.01,1   # good\n10,0.05,12\n-inf,1,24\n";

    fn table(text: &str) -> Result<Table, ConfigError> {
        Table::parse(Path::new("/etc/t.csv"), text)
    }

    fn parse_error(text: &str) -> String {
        table(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_rows_with_comments_blank_lines_and_spaces() {
        let t = table(GOOD).unwrap();
        let got: Vec<(f64, f64, u32, usize)> = t.rows().iter().map(|r| (r.min_snr_db, r.max_loss_rate, r.k, r.line)).collect();
        assert_eq!(got, [(15.0, 0.01, 1, 4), (10.0, 0.05, 12, 5), (f64::NEG_INFINITY, 1.0, 24, 6)]);
        t.check_layers(30).unwrap();
    }

    #[test]
    fn each_malformed_file_names_the_file_line_and_problem() {
        let cases = [
            ("15,0.01,1\n-inf,1,24\n", "line 1: missing header: expected `min_snr_db,max_loss_rate,k`, got `15,0.01,1`"),
            ("", "line 1: missing header"),
            ("# only a comment\n", "line 1: missing header"),
            ("min_snr_db,max_loss_rate,k\n", "line 1: no rows after the header"),
            ("min_snr_db,max_loss_rate,k\n15,0.01\n-inf,1,24\n", "line 2: expected 3 columns (min_snr_db,max_loss_rate,k), got 2"),
            ("min_snr_db,max_loss_rate,k\n15,0.01,1,9\n", "line 2: expected 3 columns"),
            ("min_snr_db,max_loss_rate,k\n\nhigh,0.01,1\n-inf,1,24\n", "line 3: min_snr_db `high` is not a number"),
            ("min_snr_db,max_loss_rate,k\nNaN,0.01,1\n-inf,1,24\n", "line 2: min_snr_db is NaN"),
            ("min_snr_db,max_loss_rate,k\n15,nan,1\n-inf,1,24\n", "line 2: max_loss_rate is NaN"),
            ("min_snr_db,max_loss_rate,k\n15,1.5,1\n-inf,1,24\n", "line 2: max_loss_rate 1.5 is outside [0, 1]"),
            ("min_snr_db,max_loss_rate,k\n15,0.01,-1\n-inf,1,24\n", "line 2: k `-1` is not a whole number of layers"),
            ("min_snr_db,max_loss_rate,k\n15,0.01,2.5\n-inf,1,24\n", "line 2: k `2.5` is not a whole number"),
            ("min_snr_db,max_loss_rate,k\n15,0.01,1\n0,1,24\n", "line 3: the last row must be a catch-all"),
            ("min_snr_db,max_loss_rate,k\n15,0.01,1\n-inf,0.5,24\n", "line 3: the last row must be a catch-all"),
            ("min_snr_db,max_loss_rate,k\n-inf,1,1\n-inf,1,24\n", "line 3: row is unreachable: the catch-all on line 2"),
        ];
        for (text, want) in cases {
            let e = parse_error(text);
            assert!(e.starts_with("threshold file /etc/t.csv "), "{e}");
            assert!(e.contains(want), "for {text:?}:\n got  {e}\n want {want}");
        }
    }

    #[test]
    fn k_beyond_the_model_names_its_line() {
        let e = table(GOOD).unwrap().check_layers(20).unwrap_err().to_string();
        assert_eq!(e, "threshold file /etc/t.csv line 6: k 24 is more than the model's 20 layers (k must be in 0..=20)");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = Table::load(Path::new("/nonexistent/t.csv")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read threshold file /nonexistent/t.csv: "), "{e}");
    }

    fn policy(h: f64) -> Threshold {
        Threshold::new(table(GOOD).unwrap(), h)
    }

    #[test]
    fn first_matching_row_top_to_bottom() {
        let mut p = policy(0.0);
        let k = |p: &mut Threshold, snr: f64, loss: f64| p.decide(&Observation::with(snr, loss), None).k;
        assert_eq!(k(&mut p, 20.0, 0.0), 1);
        assert_eq!(k(&mut p, 15.0, 0.01), 1, "bounds are inclusive");
        assert_eq!(k(&mut p, 20.0, 0.02), 12, "good SNR but too much loss for row 1");
        assert_eq!(k(&mut p, 12.0, 0.0), 12);
        assert_eq!(k(&mut p, 4.1, 0.02), 24);
        assert_eq!(k(&mut p, 30.0, 0.5), 24);
        assert_eq!(k(&mut p, f64::INFINITY, 0.0), 1, "a clean link");
        assert_eq!(k(&mut p, f64::NEG_INFINITY, 1.0), 24);
    }

    #[test]
    fn reasons_say_what_fired() {
        let mut p = policy(1.0);
        assert_eq!(p.decide(&Observation::with(4.1, 0.02), None).reason, "snr 4.1 dB < 10.0 dB: row 3 of t.csv → k=24");
        assert_eq!(p.decide(&Observation::with(12.0, 0.005), None).reason, "snr 12.0 dB < 15.0 dB, snr 12.0 dB >= 10.0 dB, loss 0.005 <= 0.05: row 2 of t.csv → k=12");
        assert_eq!(p.decide(&Observation::with(12.0, 0.02), None).reason, "snr 12.0 dB < 15.0 dB, loss 0.02 > 0.01, snr 12.0 dB >= 10.0 dB, loss 0.02 <= 0.05: row 2 of t.csv → k=12");
        assert_eq!(p.decide(&Observation::with(20.0, 0.004), None).reason, "snr 20.0 dB >= 15.0 dB, loss 0.004 <= 0.01: row 1 of t.csv → k=1");
        assert_eq!(p.decide(&Observation::with(10.5, 0.0), Some(24)).reason, "snr 10.5 dB < 11.0 dB (10.0 + 1 hysteresis): row 3 of t.csv → k=24");
        assert_eq!(p.decide(&Observation::with(30.0, 0.2), None).reason, "loss 0.20 > 0.05: row 3 of t.csv → k=24");
    }

    #[test]
    fn moving_up_needs_the_hysteresis_margin_moving_down_does_not() {
        let mut p = policy(1.0);
        let mut k = Some(24);
        let mut step = |snr: f64| {
            k = Some(p.decide(&Observation::with(snr, 0.0), k).k);
            k.unwrap()
        };
        assert_eq!(step(10.5), 24, "10.5 < 10 + 1: stay on the catch-all");
        assert_eq!(step(11.0), 12, "10 + 1 reached");
        assert_eq!(step(15.9), 12, "row 1 needs 16");
        assert_eq!(step(16.0), 1);
        assert_eq!(step(14.9), 12, "down at once, no margin");
        assert_eq!(step(10.0), 12, "row 2 is current: its own threshold has no margin");
        assert_eq!(step(9.9), 24);
        assert_eq!(step(10.9), 24);
    }

    #[test]
    fn without_a_current_row_there_is_no_hysteresis() {
        let mut p = policy(3.0);
        assert_eq!(p.decide(&Observation::with(15.0, 0.0), None).k, 1);
        // k = 5 (an override) is no row of the table.
        assert_eq!(p.decide(&Observation::with(15.0, 0.0), Some(5)).k, 1);
    }

    #[test]
    fn params_describe_the_table() {
        let p = policy(1.0);
        let params = p.params();
        assert_eq!(params["rows"], "15.0,0.01,1; 10.0,0.05,12; -inf,1,24");
        assert_eq!(params["hysteresis_db"], "1");
        assert_eq!(params["file"], "/etc/t.csv");
    }
}
