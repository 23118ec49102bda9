#!/usr/bin/env python3
"""Draws a latency/throughput plot (SVG) from `tessera bench --json` reports.

Usage: scripts/bench_plot.py OUT.svg REPORT.json [REPORT.json ...]

Each report is one line on the plot: throughput (items per second) on the
x axis, p99 latency (ms) on the y axis, one point per concurrency level,
labelled with the level. A report made with `--ceiling` also gets its health
ceiling as a dashed line. Standard library only: runs on any Python 3.
"""

import json
import sys
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 800, 500
LEFT, RIGHT, TOP, BOTTOM = 80, 30, 40, 60
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def series(report):
    """(label, [(items/s, p99 ms, concurrency)], [(ceiling calls/s, p99 ms, c)])."""
    label = report["rpc"] + (f" batch {report['batch']}" if report.get("batch") else "")
    points, ceiling = [], []
    for run in report["runs"]:
        points.append((run["items_per_second"], run["latency_us"]["p99"] / 1000, run["concurrency"]))
        if "ceiling" in run:
            c = run["ceiling"]
            ceiling.append((c["calls_per_second"], c["latency_us"]["p99"] / 1000, run["concurrency"]))
    return label, points, ceiling


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 64
    out, paths = argv[1], argv[2:]
    lines = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            lines.append(series(json.load(f)))
    xs = [p[0] for _, pts, ceil in lines for p in pts + ceil] or [1]
    ys = [p[1] for _, pts, ceil in lines for p in pts + ceil] or [1]
    x_max, y_max = max(xs) * 1.1 or 1, max(ys) * 1.1 or 1

    def at(x, y):
        px = LEFT + (WIDTH - LEFT - RIGHT) * x / x_max
        py = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * y / y_max
        return px, py

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">'
           'tessera bench: p99 latency against throughput</text>']
    x0, y0 = at(0, 0)
    x1, y1 = at(x_max, y_max)
    svg.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>')
    svg.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>')
    for i in range(6):
        gx, _ = at(x_max * i / 5, 0)
        _, gy = at(0, y_max * i / 5)
        svg.append(f'<text x="{gx}" y="{y0 + 18}" text-anchor="middle">{x_max * i / 5:,.0f}</text>')
        svg.append(f'<text x="{x0 - 6}" y="{gy + 4}" text-anchor="end">{y_max * i / 5:.1f}</text>')
    svg.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 15}" text-anchor="middle">items per second</text>')
    svg.append(f'<text x="18" y="{HEIGHT / 2}" transform="rotate(-90 18 {HEIGHT / 2})" '
               'text-anchor="middle">p99 latency (ms)</text>')
    for n, (label, points, ceiling) in enumerate(lines):
        colour = COLOURS[n % len(COLOURS)]
        coords = [at(x, y) for x, y, _ in points]
        svg.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(
            colour, " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)))
        for (x, y), (_, _, level) in zip(coords, points):
            svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>')
            svg.append(f'<text x="{x + 6:.1f}" y="{y - 6:.1f}" fill="{colour}">{level}</text>')
        if ceiling:
            svg.append('<polyline fill="none" stroke="{}" stroke-dasharray="6 4" points="{}"/>'.format(
                colour, " ".join("{:.1f},{:.1f}".format(*at(x, y)) for x, y, _ in ceiling)))
        svg.append(f'<text x="{WIDTH - RIGHT - 200}" y="{TOP + 18 * (n + 1)}" fill="{colour}">'
                   f'{escape(label)}{" (dashed: health)" if ceiling else ""}</text>')
    svg.append("</svg>")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(svg) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
