//! `metrics.csv` (written by hand: eleven numeric columns, no quoting needed) and the loss curve.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::run_files::write_atomic;
use crate::trainer::{Baselines, TrainError, invalid, io};

/// What the loop reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub learning_rate: f64,
    /// Mean masked-token cross-entropy over the logging window (nats).
    pub loss: f64,
    /// Masked-token accuracy over the window.
    pub accuracy: f64,
    pub composition_loss: Option<f64>,
    pub density_loss: Option<f64>,
    /// Mean squared error per profile dimension (the label-free niche target).
    pub profile_loss: Option<f64>,
    /// Non-PAD tokens processed per second over the window.
    pub tokens_per_second: f64,
    pub elapsed_seconds: f64,
    pub validation_loss: Option<f64>,
    pub validation_accuracy: Option<f64>,
}

/// `metrics.csv`: one row per logged step; on resume, rows past the checkpoint are dropped.
pub(crate) struct MetricsLog {
    path: PathBuf,
    rows: Vec<StepMetrics>,
}

const HEADER: &str = "step,learning_rate,loss,accuracy,composition_loss,density_loss,tokens_per_second,elapsed_seconds,validation_loss,validation_accuracy,profile_loss";

impl MetricsLog {
    pub(crate) fn open(dir: &Path, resume_step: u64) -> Result<Self, TrainError> {
        let path = dir.join("metrics.csv");
        let mut rows = Vec::new();
        if resume_step > 0
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            rows = text.lines().skip(1).filter_map(parse_row).filter(|r| r.step <= resume_step).collect();
        }
        let log = Self { path, rows };
        log.write()?;
        Ok(log)
    }

    pub(crate) fn append(&mut self, row: &StepMetrics) -> Result<(), TrainError> {
        use std::io::Write;
        self.rows.push(row.clone());
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(io(&self.path))?;
        writeln!(f, "{}", format_row(row)).map_err(io(&self.path))
    }

    fn write(&self) -> Result<(), TrainError> {
        let mut text = format!("{HEADER}\n");
        for r in &self.rows {
            text.push_str(&format_row(r));
            text.push('\n');
        }
        write_atomic(&self.path, text.as_bytes())
    }

    /// `loss.png`: training and validation loss against the unigram baseline.
    pub(crate) fn plot(&self, dir: &Path, baselines: &Baselines) {
        let train: Vec<(f64, f64)> = self.rows.iter().map(|r| (r.step as f64, r.loss)).collect();
        let val: Vec<(f64, f64)> =
            self.rows.iter().filter_map(|r| r.validation_loss.map(|v| (r.step as f64, v))).collect();
        let last = train.last().map_or(1.0, |p| p.0);
        let mut series = vec![
            sof_plot::Series::line("training loss", train, sof_plot::PALETTE[0]),
            sof_plot::Series::line("validation loss", val, sof_plot::PALETTE[1]).with_markers(),
        ];
        if baselines.validation_masked_tokens > 0 {
            series.push(
                sof_plot::Series::line(
                    "unigram baseline",
                    vec![(0.0, baselines.unigram_loss), (last, baselines.unigram_loss)],
                    sof_plot::GREY,
                )
                .dashed(),
            );
        }
        let chart = sof_plot::LineChart {
            title: "Masked-token loss".into(),
            x_label: "step".into(),
            y_label: "cross-entropy (nats)".into(),
            series,
        };
        if let Err(e) = chart.write_png(&dir.join("loss.png"), 900, 540) {
            tracing::warn!("loss.png not written: {e}");
        }
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.6}")).unwrap_or_default()
}

fn format_row(r: &StepMetrics) -> String {
    format!(
        "{},{:.6e},{:.6},{:.6},{},{},{:.1},{:.2},{},{},{}",
        r.step,
        r.learning_rate,
        r.loss,
        r.accuracy,
        opt(r.composition_loss),
        opt(r.density_loss),
        r.tokens_per_second,
        r.elapsed_seconds,
        opt(r.validation_loss),
        opt(r.validation_accuracy),
        opt(r.profile_loss)
    )
}

fn parse_row(line: &str) -> Option<StepMetrics> {
    let f: Vec<&str> = line.split(',').collect();
    // Ten columns before the profile loss existed, eleven since.
    if f.len() != 10 && f.len() != 11 {
        return None;
    }
    let o = |s: &str| if s.is_empty() { None } else { s.parse().ok() };
    Some(StepMetrics {
        step: f[0].parse().ok()?,
        learning_rate: f[1].parse().ok()?,
        loss: f[2].parse().ok()?,
        accuracy: f[3].parse().ok()?,
        composition_loss: o(f[4]),
        density_loss: o(f[5]),
        tokens_per_second: f[6].parse().ok()?,
        elapsed_seconds: f[7].parse().ok()?,
        validation_loss: o(f[8]),
        validation_accuracy: o(f[9]),
        profile_loss: f.get(10).and_then(|s| o(s)),
    })
}

/// Reads a run's `metrics.csv`.
pub fn read_metrics(dir: &Path) -> Result<Vec<StepMetrics>, TrainError> {
    let path = dir.join("metrics.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| invalid(&path, e.to_string(), "is this a run folder?"))?;
    Ok(text.lines().skip(1).filter_map(parse_row).collect())
}
