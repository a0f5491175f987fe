//! Figures: one machine-readable `BENCH {...}` line each as it is measured, and a table
//! at the end.

use std::fmt;
use std::sync::Mutex;

use serde::Serialize;

/// What a figure is held against (the targets of issue 5).
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "op", content = "value")]
pub enum Target {
    /// The figure must be at least this.
    AtLeast(f64),
    /// The figure must be at most this.
    AtMost(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Self::AtLeast(target) => value >= target,
            Self::AtMost(target) => value <= target,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AtLeast(value) => write!(f, ">= {}", human(*value)),
            Self::AtMost(value) => write!(f, "<= {}", human(*value)),
        }
    }
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub scenario: &'static str,
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: Option<Target>,
    /// `None` when the figure has no target.
    pub met: Option<bool>,
    /// The 1-minute load average when the figure was taken (others share the machine).
    pub load1: f64,
    pub smoke: bool,
}

/// Collects the figures of a run.
#[derive(Debug)]
pub struct Report {
    smoke: bool,
    figures: Mutex<Vec<Figure>>,
}

impl Report {
    pub fn new(smoke: bool) -> Self {
        Self {
            smoke,
            figures: Mutex::new(Vec::new()),
        }
    }

    /// Records a figure and prints its `BENCH` line at once, so that a run that fails later
    /// still leaves what it measured.
    pub fn record(
        &self,
        scenario: &'static str,
        figure: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Option<Target>,
    ) {
        let figure = Figure {
            scenario,
            figure: figure.into(),
            value,
            unit,
            target,
            met: target.map(|target| target.met(value)),
            load1: load_average(),
            smoke: self.smoke,
        };
        match serde_json::to_string(&figure) {
            Ok(json) => println!("BENCH {json}"),
            Err(error) => eprintln!("cannot print figure {}: {error}", figure.figure),
        }
        self.figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(figure);
    }

    /// The table of every figure recorded.
    pub fn print_table(&self) {
        let figures = self
            .figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if figures.is_empty() {
            return;
        }
        let rows: Vec<[String; 6]> = figures
            .iter()
            .map(|f| {
                [
                    f.scenario.to_owned(),
                    f.figure.clone(),
                    format!("{} {}", human(f.value), f.unit),
                    f.target
                        .map(|t| format!("{t} {}", f.unit))
                        .unwrap_or_default(),
                    match f.met {
                        Some(true) => "met".to_owned(),
                        Some(false) => "MISSED".to_owned(),
                        None => String::new(),
                    },
                    format!("{:.2}", f.load1),
                ]
            })
            .collect();
        let header = ["scenario", "figure", "value", "target", "", "load"];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            println!("| {} |", padded.join(" | "));
        };
        println!();
        if self.smoke {
            println!("(smoke mode: tiny counts, the figures mean nothing)");
        }
        line(&header.map(str::to_owned));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule);
        for row in &rows {
            line(row);
        }
    }
}

/// A number as people read it: thousands separated, at most three significant decimals.
pub fn human(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value.abs() >= 1000.0 {
        let whole = value.round() as i64;
        let digits = whole.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if whole < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// The machine's 1-minute load average (`/proc/loadavg`), or NaN elsewhere.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Percentile (0..=100) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
