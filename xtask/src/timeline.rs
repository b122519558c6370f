//! The spike as a picture (issue 11 item 5): one SVG of stacked panels over
//! the run's seconds — claims completed per 100 ms, p50 and p99 latency per
//! second, errors per second, the workers' consumer lag on the claims topic.
//! Hand-written, no plotting dependency (the approach of the drills'
//! timeline in tests/it/drills/timeline.rs).

use std::fmt::Write as _;
use std::time::Duration;

use crate::load::ClaimResult;

/// One panel: a title, and one value per `step_s` seconds from the start
/// (`lines`: several series drawn together, e.g. p50 and p99).
pub struct Panel {
    pub title: String,
    pub step_s: f64,
    pub lines: Vec<(String, Vec<f64>)>,
}

const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 100.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const PANEL_GAP: f64 = 38.0;
const COLOURS: [&str; 3] = ["#1f5fbf", "#d9480f", "#2b8a3e"];

/// The panels of a spike from its results and the lag samples (seconds from the start, messages).
pub fn spike_panels(results: &[ClaimResult], lag: &[(f64, i64)]) -> Vec<Panel> {
    let end = results.iter().map(|r| r.done_at).max().unwrap_or_default();
    let bins = |step: Duration| (end.as_micros() / step.as_micros()) as usize + 1;
    let (tenths, secs) = (bins(Duration::from_millis(100)), bins(Duration::from_secs(1)));
    let mut completed = vec![0.0; tenths];
    let mut errors = vec![0.0; secs];
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); secs];
    for r in results {
        let (tenth, sec) = ((r.done_at.as_millis() / 100) as usize, r.done_at.as_secs() as usize);
        if r.status == 201 {
            completed[tenth] += 1.0;
        } else if !(r.status == 409 && r.code.as_deref() == Some("claim_in_progress")) {
            errors[sec] += 1.0;
        }
        latencies[sec].push(r.latency.as_millis() as u64);
    }
    for l in &mut latencies {
        l.sort_unstable();
    }
    let quantile = |q: f64| -> Vec<f64> {
        latencies
            .iter()
            .map(|l| match l.len() {
                0 => 0.0,
                n => l[((n as f64 * q).ceil() as usize).clamp(1, n) - 1] as f64,
            })
            .collect()
    };
    let (p50, p99) = (quantile(0.50), quantile(0.99));
    let mut panels = vec![
        Panel {
            title: "claims completed (201) per 100 ms".into(),
            step_s: 0.1,
            lines: vec![("201".into(), completed)],
        },
        Panel {
            title: "latency per second of completion, ms".into(),
            step_s: 1.0,
            lines: vec![("p50".into(), p50), ("p99".into(), p99)],
        },
        Panel {
            title: "errors per second (not 201, not 409 claim_in_progress)".into(),
            step_s: 1.0,
            lines: vec![("errors".into(), errors)],
        },
    ];
    if !lag.is_empty() {
        // Sampled every ~250 ms: spread over 250 ms bins, each bin the last sample in it.
        let step = 0.25;
        let n = (lag.iter().map(|(t, _)| *t).fold(0.0, f64::max) / step) as usize + 1;
        let mut values = vec![f64::NAN; n];
        for (t, v) in lag {
            values[(*t / step) as usize] = *v as f64;
        }
        let mut last = 0.0;
        for v in &mut values {
            if v.is_nan() {
                *v = last;
            }
            last = *v;
        }
        panels.push(Panel {
            title: "consumer lag, claims topic (messages, all workers)".into(),
            step_s: step,
            lines: vec![("lag".into(), values)],
        });
    }
    panels
}

/// Renders the panels over `seconds`.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let seconds = panels
        .iter()
        .flat_map(|p| p.lines.iter().map(move |(_, v)| v.len() as f64 * p.step_s))
        .fold(1.0, f64::max)
        .ceil();
    let height = PANEL_GAP + panels.len() as f64 * (PANEL_HEIGHT + PANEL_GAP);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        out,
        r#"<text x="{MARGIN_LEFT}" y="18" font-size="13">{}</text>"#,
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        let top = PANEL_GAP + i as f64 * (PANEL_HEIGHT + PANEL_GAP);
        out.push_str(&panel_svg(panel, top, seconds));
    }
    out.push_str("</svg>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn x_of(second: f64, seconds: f64) -> f64 {
    MARGIN_LEFT + second / seconds * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT)
}

fn panel_svg(panel: &Panel, top: f64, seconds: f64) -> String {
    let max = panel
        .lines
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max);
    let scale = if max > 0.0 { max } else { 1.0 };
    let bottom = top + PANEL_HEIGHT;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<line x1="{MARGIN_LEFT}" y1="{bottom}" x2="{:.1}" y2="{bottom}" stroke="#888"/><line x1="{MARGIN_LEFT}" y1="{top}" x2="{MARGIN_LEFT}" y2="{bottom}" stroke="#888"/>"##,
        WIDTH - MARGIN_RIGHT
    );
    let legend = if panel.lines.len() > 1 {
        let names: Vec<String> = panel
            .lines
            .iter()
            .zip(COLOURS.iter().cycle())
            .map(|((name, _), c)| format!(r#"<tspan fill="{c}">{}</tspan>"#, escape(name)))
            .collect();
        format!(" ({})", names.join(" "))
    } else {
        String::new()
    };
    let _ = write!(
        out,
        r#"<text x="{MARGIN_LEFT}" y="{:.1}">{}{legend}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{max:.0}</text><text x="{:.1}" y="{bottom}" text-anchor="end">0</text>"#,
        top - 6.0,
        escape(&panel.title),
        MARGIN_LEFT - 4.0,
        top + 10.0,
        MARGIN_LEFT - 4.0
    );
    for ((_, values), colour) in panel.lines.iter().zip(COLOURS.iter().cycle()) {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    x_of((i as f64 + 0.5) * panel.step_s, seconds),
                    bottom - v / scale * PANEL_HEIGHT
                )
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{seconds} s</text>"#,
        WIDTH - MARGIN_RIGHT,
        bottom + 13.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(status: u16, latency_ms: u64, done_ms: u64) -> ClaimResult {
        ClaimResult {
            account: "a".into(),
            status,
            first_status: status,
            replayed: false,
            code: None,
            business_date: None,
            latency: Duration::from_millis(latency_ms),
            done_at: Duration::from_millis(done_ms),
        }
    }

    #[test]
    fn the_panels_count_completions_latencies_errors_and_lag() {
        let results = vec![
            claim(201, 10, 50),
            claim(201, 20, 60),
            claim(201, 30, 150),
            claim(503, 900, 1_200),
            claim(201, 40, 1_250),
        ];
        let panels = spike_panels(&results, &[(0.1, 5), (0.6, 2)]);
        assert_eq!(panels.len(), 4);
        let completed = &panels[0].lines[0].1;
        assert_eq!(&completed[..3], &[2.0, 1.0, 0.0]);
        assert_eq!(completed.iter().sum::<f64>(), 4.0);
        assert_eq!(panels[1].lines[0].1, vec![20.0, 40.0], "p50 per second");
        assert_eq!(panels[1].lines[1].1, vec![30.0, 900.0], "p99 per second");
        assert_eq!(panels[2].lines[0].1, vec![0.0, 1.0], "errors per second");
        assert_eq!(panels[3].lines[0].1, vec![5.0, 5.0, 2.0], "lag held between samples");
        let svg = svg("spike <test>", &panels);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 5, "one per series");
        assert!(svg.contains("spike &lt;test&gt;") && svg.contains("consumer lag"));
    }
}
