//! Small PNG charts for training runs and reports, drawn with plotters into files written
//! atomically (temporary name, then rename). A font (DejaVu Sans, see `assets/`) is embedded,
//! so labels render on machines with no fonts installed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// A colour-blind-friendly categorical palette (Okabe-Ito, then Tol's muted).
pub const PALETTE: [(u8, u8, u8); 14] = [
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (240, 228, 66),
    (51, 34, 136),
    (136, 204, 238),
    (68, 170, 153),
    (153, 153, 51),
    (136, 34, 85),
    (204, 102, 119),
    (17, 119, 51),
];
pub const GREY: (u8, u8, u8) = (120, 120, 120);

/// A problem drawing or writing a chart.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PlotError {
    pub path: String,
    pub reason: String,
}

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            tracing_free_warning();
        }
    });
}

#[allow(clippy::print_stderr)]
fn tracing_free_warning() {
    eprintln!("sof-plot: the embedded font did not load; labels may be missing");
}

/// Renders into a temporary `.png` beside `path`, then renames it into place.
fn write_atomic(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<(), PlotError> {
    fonts();
    let err = |reason: String| PlotError { path: path.display().to_string(), reason };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("plot");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}.png", std::process::id()));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        draw(root.clone()).map_err(err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

fn rgb(c: (u8, u8, u8)) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// One line of a [`LineChart`].
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: (u8, u8, u8),
    pub markers: bool,
    pub dashed: bool,
}

impl Series {
    pub fn line(name: &str, points: Vec<(f64, f64)>, color: (u8, u8, u8)) -> Self {
        Self { name: name.into(), points, color, markers: false, dashed: false }
    }
    pub fn with_markers(mut self) -> Self {
        self.markers = true;
        self
    }
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// Lines over a shared x axis, with a legend.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

fn bounds(points: impl Iterator<Item = (f64, f64)>) -> ((f64, f64), (f64, f64)) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    let pad = |a: f64, b: f64| {
        let p = if b > a { (b - a) * 0.05 } else { a.abs().max(1.0) * 0.05 };
        (a - p, b + p)
    };
    (pad(x0, x1), pad(y0, y1))
}

impl LineChart {
    /// Writes the chart as a PNG of `width x height` pixels.
    pub fn write_png(&self, path: &Path, width: u32, height: u32) -> Result<(), PlotError> {
        write_atomic(path, (width, height), |root| {
            let ((x0, x1), (y0, y1)) = bounds(self.series.iter().flat_map(|s| s.points.iter().copied()));
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, (FAMILY, 22))
                .margin(14)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc(&self.x_label)
                .y_desc(&self.y_label)
                .label_style((FAMILY, 14))
                .axis_desc_style((FAMILY, 15))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(|e| e.to_string())?;
            for s in self.series.iter().filter(|s| !s.points.is_empty()) {
                let color = rgb(s.color);
                let style = color.stroke_width(2);
                let points = s.points.clone();
                let anno = if s.dashed {
                    chart.draw_series(DashedLineSeries::new(points, 8, 5, style)).map_err(|e| e.to_string())?
                } else {
                    chart.draw_series(LineSeries::new(points, style)).map_err(|e| e.to_string())?
                };
                anno.label(&s.name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2)));
                if s.markers {
                    chart
                        .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                        .map_err(|e| e.to_string())?;
                }
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .label_font((FAMILY, 14))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PNG exists, decodes as the asked size, and is not blank (lines and text were drawn).
    #[test]
    fn line_chart_writes_a_png() {
        let d = std::env::temp_dir().join(format!("sof-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("loss.png");
        let chart = LineChart {
            title: "Masked-token loss".into(),
            x_label: "step".into(),
            y_label: "nats".into(),
            series: vec![
                Series::line("train", (0..50).map(|i| (i as f64, 8.0 - (i as f64).sqrt())).collect(), PALETTE[0]),
                Series::line("baseline", vec![(0.0, 6.0), (49.0, 6.0)], GREY).dashed(),
            ],
        };
        chart.write_png(&path, 400, 300).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let (w, h) = (
            u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
            u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
        );
        assert_eq!((w, h), (400, 300));
        assert!(bytes.len() > 3_000, "drawn content compresses to more than a blank page: {}", bytes.len());
        assert!(std::fs::read_dir(&d).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp-")));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
