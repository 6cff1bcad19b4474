//! The plot of clone time against data size, as a small SVG written by
//! hand: four lines, a log2 x axis (1, 4, 16 GiB fall evenly), a linear y
//! axis in seconds. No plotting crate: nothing to build, no system library.

use super::report::DataFamily;
use std::fmt::Write as _;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;

/// (label, colour, seconds at each point)
type Series = (&'static str, &'static str, Vec<f64>);

pub fn clone_time_svg(data: &DataFamily, caption: &str) -> String {
    let sizes: Vec<f64> = data.points.iter().map(|p| p.size_gib as f64).collect();
    let series: Vec<Series> = vec![
        ("envclone linked", "#1b7f3b", data.points.iter().map(|p| p.linked_ms / 1000.0).collect()),
        ("envclone full", "#1f5fbf", data.points.iter().map(|p| p.full_ms / 1000.0).collect()),
        ("virt-clone", "#c0392b", data.points.iter().map(|p| p.virt_clone_ms / 1000.0).collect()),
        ("qemu-img convert", "#7f7f7f", data.points.iter().map(|p| p.convert_ms / 1000.0).collect()),
    ];
    let y_max = nice_ceiling(series.iter().flat_map(|(_, _, v)| v.iter().copied()).fold(0.0, f64::max));
    let (x_min, x_max) =
        (sizes.iter().copied().fold(f64::INFINITY, f64::min).log2(), sizes.iter().copied().fold(0.0, f64::max).log2());
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |gib: f64| {
        let span = (x_max - x_min).max(1e-9);
        LEFT + (gib.log2() - x_min) / span * plot_w
    };
    let y = |s: f64| TOP + plot_h - s / y_max * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">Clone time against data size</text>"#,
        LEFT + plot_w / 2.0
    );
    // Axes, ticks and grid.
    let _ =
        writeln!(svg, r##"<path d="M{LEFT},{TOP} V{} H{}" stroke="black" fill="none"/>"##, TOP + plot_h, LEFT + plot_w);
    for i in 0..=4 {
        let value = y_max * i as f64 / 4.0;
        let yy = y(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            trim(value)
        );
    }
    for &size in &sizes {
        let xx = x(size);
        let _ = writeln!(
            svg,
            r#"<line x1="{xx:.1}" y1="{}" x2="{xx:.1}" y2="{}" stroke="black"/><text x="{xx:.1}" y="{}" text-anchor="middle">{} GiB</text>"#,
            TOP + plot_h,
            TOP + plot_h + 5.0,
            TOP + plot_h + 18.0,
            trim(size)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">data written in the guest's disk (log scale)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">seconds</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // The lines, each with its points and a legend entry.
    for (index, (label, colour, values)) in series.iter().enumerate() {
        let points: Vec<String> =
            sizes.iter().zip(values).map(|(&size, &value)| format!("{:.1},{:.1}", x(size), y(value))).collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            points.join(" ")
        );
        for (&size, &value) in sizes.iter().zip(values) {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{label}: {} GiB in {value:.2} s</title></circle>"#,
                x(size),
                y(value),
                trim(size)
            );
        }
        let ly = TOP + 10.0 + index as f64 * 20.0;
        let lx = LEFT + plot_w + 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{label}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" font-size="10" fill="#555">{}</text>"##,
        LEFT + plot_w + 16.0,
        TOP + 100.0,
        escape(caption)
    );
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `value` (and at least 1).
fn nice_ceiling(value: f64) -> f64 {
    let value = value.max(1.0);
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * power).find(|c| *c >= value).unwrap_or(10.0 * power)
}

fn trim(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::bench::report::DataPoint;

    fn point(size_gib: u64, seconds: f64) -> DataPoint {
        DataPoint {
            size_gib,
            written_bytes: size_gib << 30,
            write_s: 1.0,
            linked_ms: 500.0,
            linked_reported_ms: None,
            linked_overlay_bytes: 0,
            full_ms: seconds * 1000.0,
            full_reported_ms: None,
            full_runs_ms: vec![seconds * 1000.0],
            virt_clone_ms: seconds * 1200.0,
            convert_ms: seconds * 900.0,
            convert_runs_ms: vec![seconds * 900.0],
            full_mib_s: 1.0,
            convert_mib_s: 1.0,
            full_vs_convert: 1.0,
            linked_vs_smallest: 1.0,
            virt_clone_vs_full: 1.2,
        }
    }

    #[test]
    fn the_plot_has_a_line_per_method_and_a_tick_per_size() {
        let data = DataFamily { points: vec![point(1, 4.0), point(4, 16.0), point(16, 64.0)] };

        let svg = clone_time_svg(&data, "2 cores & TCG");

        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains(">16 GiB</text>"));
        assert!(svg.contains("2 cores &amp; TCG"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(76.8), 100.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(0.2), 1.0);
    }
}
