//! A drill's timeline as a picture: one SVG of stacked panels, one polyline
//! per series over the drill's seconds, with a shaded band for the fault.
//! Hand-written (no plotting dependency): a person looks at it to see the
//! gap, or that there is none.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One panel: a title and a value per second.
pub struct Series {
    pub title: String,
    pub values: Vec<f64>,
}

const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 110.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const PANEL_GAP: f64 = 36.0;

/// Where drills write their pictures and JSON: `<target>/drills/`.
pub fn output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("drills")
}

/// Renders the panels over `seconds` seconds; `fault` is the shaded [from, to) band.
pub fn svg(title: &str, seconds: usize, fault: (f64, f64), panels: &[Series]) -> String {
    let height = PANEL_GAP + panels.len() as f64 * (PANEL_HEIGHT + PANEL_GAP);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(out, r#"<text x="{MARGIN_LEFT}" y="18" font-size="13">{title}</text>"#);
    for (i, panel) in panels.iter().enumerate() {
        let top = PANEL_GAP + i as f64 * (PANEL_HEIGHT + PANEL_GAP);
        out.push_str(&panel_svg(panel, top, seconds.max(1), fault));
    }
    out.push_str("</svg>\n");
    out
}

fn x_of(second: f64, seconds: usize) -> f64 {
    MARGIN_LEFT + second / seconds as f64 * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT)
}

fn panel_svg(panel: &Series, top: f64, seconds: usize, fault: (f64, f64)) -> String {
    let max = panel.values.iter().copied().fold(0.0, f64::max);
    let scale = if max > 0.0 { max } else { 1.0 };
    let bottom = top + PANEL_HEIGHT;
    let (x0, x1) = (x_of(fault.0, seconds), x_of(fault.1, seconds));
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{PANEL_HEIGHT}" fill="#fde2e2"/>"##,
        (x1 - x0).max(0.0)
    );
    let _ = write!(
        out,
        r##"<line x1="{MARGIN_LEFT}" y1="{bottom}" x2="{:.1}" y2="{bottom}" stroke="#888"/><line x1="{MARGIN_LEFT}" y1="{top}" x2="{MARGIN_LEFT}" y2="{bottom}" stroke="#888"/>"##,
        WIDTH - MARGIN_RIGHT
    );
    let _ = write!(
        out,
        r#"<text x="{MARGIN_LEFT}" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{max:.0}</text><text x="{:.1}" y="{bottom}" text-anchor="end">0</text>"#,
        top - 6.0,
        panel.title,
        MARGIN_LEFT - 4.0,
        top + 10.0,
        MARGIN_LEFT - 4.0
    );
    let points: Vec<String> = panel
        .values
        .iter()
        .enumerate()
        .map(|(s, v)| {
            format!(
                "{:.1},{:.1}",
                x_of(s as f64 + 0.5, seconds),
                bottom - v / scale * PANEL_HEIGHT
            )
        })
        .collect();
    let _ = write!(
        out,
        r##"<polyline fill="none" stroke="#1f5fbf" stroke-width="1.5" points="{}"/>"##,
        points.join(" ")
    );
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{seconds} s</text>"#,
        WIDTH - MARGIN_RIGHT,
        bottom + 13.0
    );
    out
}

/// Writes `name.svg` and `name.json` under [`output_dir`]; returns the SVG's path.
pub fn write(name: &str, svg: &str, json: &serde_json::Value) -> PathBuf {
    let dir = output_dir();
    std::fs::create_dir_all(&dir).expect("drills output dir");
    let path = dir.join(format!("{name}.svg"));
    std::fs::write(&path, svg).expect("write the timeline SVG");
    std::fs::write(dir.join(format!("{name}.json")), format!("{json}\n")).expect("write the drill JSON");
    path
}
