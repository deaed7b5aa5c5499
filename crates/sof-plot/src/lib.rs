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

/// How category `code` is drawn in [`CategoricalMaps`]: a palette colour and a marker shape
/// (0 = filled circle, 1 = filled triangle, 2 = cross). The first 14 categories are circles; the
/// next 14 reuse the colours as triangles, then as crosses, so 42 categories stay distinct
/// (STARmap has 15 cell types; one colour alone repeated past 14).
pub fn category_marker(code: usize) -> ((u8, u8, u8), usize) {
    (PALETTE[code % PALETTE.len()], (code / PALETTE.len()) % 3)
}

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
    /// Points only, no line.
    pub scatter: bool,
}

impl Series {
    pub fn line(name: &str, points: Vec<(f64, f64)>, color: (u8, u8, u8)) -> Self {
        Self { name: name.into(), points, color, markers: false, dashed: false, scatter: false }
    }
    /// A point cloud (no line), small translucent markers.
    pub fn points(name: &str, points: Vec<(f64, f64)>, color: (u8, u8, u8)) -> Self {
        Self { name: name.into(), points, color, markers: false, dashed: false, scatter: true }
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
                if s.scatter {
                    chart
                        .draw_series(points.iter().map(|&p| Circle::new(p, 2, color.mix(0.5).filled())))
                        .map_err(|e| e.to_string())?
                        .label(&s.name)
                        .legend(move |(x, y)| Circle::new((x + 11, y), 4, color.filled()));
                    continue;
                }
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

/// One map panel: title, coordinates, category code per cell.
pub type Panel = (String, Vec<(f64, f64)>, Vec<usize>);

/// Side-by-side maps of cells coloured by category (e.g. true and predicted layer), sharing
/// one legend and one coordinate frame.
#[derive(Debug, Clone)]
pub struct CategoricalMaps {
    pub categories: Vec<String>,
    /// (panel title, coordinates, category code per cell)
    pub panels: Vec<Panel>,
}

impl CategoricalMaps {
    /// Writes the panels side by side, each `panel_width` wide, at least `height` tall (taller
    /// where the legend needs it).
    pub fn write_png(&self, path: &Path, panel_width: u32, height: u32) -> Result<(), PlotError> {
        let n = self.panels.len().max(1) as u32;
        let legend_w = 170;
        // Tall enough for every legend entry (22 px each below a 40 px top).
        let height = height.max(60 + 22 * self.categories.len() as u32);
        write_atomic(path, (panel_width * n + legend_w, height), |root| {
            let (maps, legend) = root.split_horizontally(panel_width * n);
            let areas = maps.split_evenly((1, n as usize));
            let ((x0, x1), (y0, y1)) = bounds(self.panels.iter().flat_map(|p| p.1.iter().copied()));
            for (area, (title, pts, codes)) in areas.iter().zip(&self.panels) {
                let mut chart = ChartBuilder::on(area)
                    .caption(title, (FAMILY, 18))
                    .margin(8)
                    .x_label_area_size(24)
                    .y_label_area_size(40)
                    .build_cartesian_2d(x0..x1, y0..y1)
                    .map_err(|e| e.to_string())?;
                chart
                    .configure_mesh()
                    .disable_mesh()
                    .x_labels(5)
                    .y_labels(5)
                    .label_style((FAMILY, 11))
                    .draw()
                    .map_err(|e| e.to_string())?;
                for shape in 0..3 {
                    let cells = pts.iter().zip(codes).filter(|(_, c)| category_marker(**c).1 == shape);
                    let style = |c: usize| rgb(category_marker(c).0);
                    match shape {
                        0 => chart.draw_series(cells.map(|(&p, &c)| Circle::new(p, 2, style(c).filled()))),
                        1 => chart.draw_series(cells.map(|(&p, &c)| TriangleMarker::new(p, 3, style(c).filled()))),
                        _ => chart.draw_series(cells.map(|(&p, &c)| Cross::new(p, 3, style(c).stroke_width(1)))),
                    }
                    .map_err(|e| e.to_string())?;
                }
            }
            for (i, name) in self.categories.iter().enumerate() {
                let y = 40 + 22 * i as i32;
                let (colour, shape) = category_marker(i);
                match shape {
                    0 => legend.draw(&Circle::new((14, y), 6, rgb(colour).filled())),
                    1 => legend.draw(&TriangleMarker::new((14, y), 7, rgb(colour).filled())),
                    _ => legend.draw(&Cross::new((14, y), 6, rgb(colour).stroke_width(2))),
                }
                .map_err(|e| e.to_string())?;
                legend
                    .draw(&Text::new(name.clone(), (28, y - 8), (FAMILY, 14).into_font()))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }
}

/// A confusion matrix: rows = truth, columns = prediction, shaded by the row fraction, with
/// the counts written in.
#[derive(Debug, Clone)]
pub struct ConfusionMatrix {
    pub title: String,
    pub classes: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

impl ConfusionMatrix {
    pub fn write_png(&self, path: &Path, size: u32) -> Result<(), PlotError> {
        let n = self.classes.len().max(1);
        write_atomic(path, (size + 160, size + 150), |root| {
            let (left, top) = (150i32, 50i32);
            let cell = (size as i32 - 20) / n as i32;
            root.draw(&Text::new(self.title.clone(), (left, 12), (FAMILY, 18).into_font()))
                .map_err(|e| e.to_string())?;
            for (r, row) in self.counts.iter().enumerate() {
                let total: u64 = row.iter().sum::<u64>().max(1);
                for (c, &v) in row.iter().enumerate() {
                    let f = v as f64 / total as f64;
                    let shade = (255.0 * (1.0 - 0.85 * f)) as u8;
                    let (x, y) = (left + c as i32 * cell, top + r as i32 * cell);
                    root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], RGBColor(shade, shade, 255).filled()))
                        .map_err(|e| e.to_string())?;
                    root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], RGBColor(200, 200, 200)))
                        .map_err(|e| e.to_string())?;
                    let color = if f > 0.6 { WHITE } else { BLACK };
                    root.draw(&Text::new(
                        v.to_string(),
                        (x + 4, y + cell / 2 - 7),
                        (FAMILY, 12).into_font().color(&color),
                    ))
                    .map_err(|e| e.to_string())?;
                }
            }
            for (i, name) in self.classes.iter().enumerate() {
                let short: String = name.chars().take(18).collect();
                root.draw(&Text::new(
                    short.clone(),
                    (6, top + i as i32 * cell + cell / 2 - 7),
                    (FAMILY, 12).into_font(),
                ))
                .map_err(|e| e.to_string())?;
                let style = (FAMILY, 12).into_font().transform(FontTransform::Rotate90);
                root.draw(&Text::new(short, (left + i as i32 * cell + cell / 2 + 6, top + n as i32 * cell + 6), style))
                    .map_err(|e| e.to_string())?;
            }
            root.draw(&Text::new(
                "rows: truth, columns: prediction",
                (left, top + n as i32 * cell + 96),
                (FAMILY, 13).into_font(),
            ))
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
        let maps = CategoricalMaps {
            categories: vec!["L1".into(), "L2".into()],
            panels: vec![
                (
                    "truth".into(),
                    (0..100).map(|i| (i as f64, (i % 10) as f64)).collect(),
                    (0..100).map(|i| i % 2).collect(),
                ),
                ("predicted".into(), (0..100).map(|i| (i as f64, (i % 10) as f64)).collect(), vec![0; 100]),
            ],
        };
        maps.write_png(&d.join("maps.png"), 300, 300).unwrap();
        // A long legend makes the picture taller, never clips it.
        let many = CategoricalMaps {
            categories: (0..30).map(|i| format!("type {i}")).collect(),
            panels: vec![("cells".into(), (0..30).map(|i| (i as f64, i as f64)).collect(), (0..30).collect())],
        };
        many.write_png(&d.join("many.png"), 300, 300).unwrap();
        let b = std::fs::read(d.join("many.png")).unwrap();
        assert_eq!(u32::from_be_bytes(b[20..24].try_into().unwrap()), 60 + 22 * 30);
        // Past the 14 palette colours, categories differ by marker shape.
        let markers: std::collections::HashSet<_> = (0..42).map(category_marker).collect();
        assert_eq!(markers.len(), 42, "42 categories, 42 distinct colour-and-shape pairs");
        assert_eq!(category_marker(15).0, category_marker(1).0);
        assert_ne!(category_marker(15).1, category_marker(1).1);
        let cm = ConfusionMatrix {
            title: "layer".into(),
            classes: vec!["a".into(), "b".into()],
            counts: vec![vec![5, 1], vec![0, 7]],
        };
        cm.write_png(&d.join("cm.png"), 300).unwrap();
        for f in ["maps.png", "cm.png"] {
            assert!(std::fs::read(d.join(f)).unwrap().len() > 2_000, "{f}");
        }
        if std::env::var_os("SOF_PLOT_KEEP").is_none() {
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
}
