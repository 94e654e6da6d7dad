// Two charts in plain SVG: the loss by step (lines), and the tokens per example (bars).

import { s } from "./dom.js";

// The drawing's width follows the element's (text stays legible on a phone); its height is fixed.
let W = 640;
const H = 260;
const M = { left: 56, right: 16, top: 34, bottom: 42 };

// Round tick values from at or below `low` to at or above `high`: 1, 2 or 5 times a power of
// ten apart.
function ticks(low, high, count = 5) {
  if (!(high > low)) high = low + 1;
  const raw = (high - low) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((v) => v >= raw * (1 - 1e-9));
  const out = [];
  const last = Math.ceil(high / step - 1e-9) * step;
  for (let v = Math.floor(low / step + 1e-9) * step; v <= last + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

function frame(svg, label) {
  W = Math.round(Math.min(760, Math.max(320, svg.getBoundingClientRect().width || 640)));
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  svg.append(s("title", {}, label));
}

function axes(svg, x, y, xTicks, yTicks, xLabel, yLabel, format = (v) => String(v)) {
  const g = s("g", { class: "axis" });
  for (const v of yTicks) {
    g.append(s("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: "grid" }));
    g.append(s("text", { x: M.left - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
  }
  for (const v of xTicks) {
    g.append(s("text", { x: x(v), y: H - M.bottom + 16, "text-anchor": "middle" }, String(v)));
  }
  g.append(s("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }));
  g.append(s("text", { x: (M.left + W - M.right) / 2, y: H - 6, "text-anchor": "middle" }, xLabel));
  g.append(
    s("text", { x: 14, y: (M.top + H - M.bottom) / 2, transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})`, "text-anchor": "middle" }, yLabel),
  );
  svg.append(g);
}

// series: [{name, className, points: [[x, y], ...]}]
export function lineChart(svg, series, { xLabel, yLabel, label }) {
  frame(svg, label);
  const points = series.flatMap((one) => one.points);
  if (!points.length) return;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const xMax = Math.max(...xs, 1);
  const xTicks = ticks(0, xMax, Math.min(W < 500 ? 5 : 8, xMax)).filter((v) => Number.isInteger(v) && v <= xMax);
  const low = Math.min(...ys);
  const high = Math.max(...ys);
  const pad = (high - low) * 0.08 || Math.abs(high) * 0.1 || 1;
  const yTicks = ticks(Math.max(0, low - pad), high + pad);
  const y0 = yTicks[0];
  const y1 = yTicks[yTicks.length - 1];
  const x = (v) => M.left + (v / xMax) * (W - M.left - M.right);
  const y = (v) => H - M.bottom - ((v - y0) / (y1 - y0 || 1)) * (H - M.top - M.bottom);
  axes(svg, x, y, xTicks, yTicks, xLabel, yLabel);
  series.forEach((one, i) => {
    if (!one.points.length) return;
    const g = s("g", { class: `series ${one.className}` });
    const path = one.points.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
    g.append(s("path", { d: path.join(" "), fill: "none" }));
    for (const p of one.points) {
      const dot = s("circle", { cx: x(p[0]), cy: y(p[1]), r: one.points.length > 60 ? 1.5 : 3 });
      dot.append(s("title", {}, `${one.name}, step ${p[0]}: ${p[1].toFixed(4)}`));
      g.append(dot);
    }
    svg.append(g);
    const lx = M.left + i * 160;
    const legend = s("g", { class: `legend series ${one.className}` });
    legend.append(s("line", { x1: lx, x2: lx + 22, y1: 14, y2: 14 }));
    legend.append(s("text", { x: lx + 28, y: 18 }, one.name));
    svg.append(legend);
  });
}

// histogram: {tokens: count}; limit: the context limit, drawn when within reach.
export function histogram(svg, counts, { limit, label }) {
  frame(svg, label);
  const entries = Object.entries(counts || {}).map(([t, n]) => [Number(t), n]);
  if (!entries.length) return;
  const low = Math.min(...entries.map((e) => e[0]));
  const high = Math.max(...entries.map((e) => e[0]));
  const bins = Math.min(24, Math.max(1, high - low + 1));
  const width = Math.max(1, Math.ceil((high - low + 1) / bins));
  const heights = new Array(bins).fill(0);
  for (const [t, n] of entries) heights[Math.min(bins - 1, Math.floor((t - low) / width))] += n;
  const top = Math.max(...heights);
  const yTicks = ticks(0, top, Math.min(5, top)).filter((v) => Number.isInteger(v));
  const yMax = Math.max(top, yTicks[yTicks.length - 1] || 1);
  const span = bins * width;
  const x = (v) => M.left + ((v - low) / span) * (W - M.left - M.right);
  const y = (v) => H - M.bottom - (v / yMax) * (H - M.top - M.bottom);
  const xTicks = ticks(low, low + span, W < 500 ? 4 : 6).filter((v) => v >= low && v <= low + span);
  axes(svg, x, y, xTicks, yTicks, "tokens per example", "examples");
  const g = s("g", { class: "bars" });
  heights.forEach((n, i) => {
    if (!n) return;
    const from = low + i * width;
    const bar = s("rect", {
      x: x(from) + 1,
      y: y(n),
      width: Math.max(1, x(from + width) - x(from) - 2),
      height: H - M.bottom - y(n),
      class: limit && from + width > limit ? "over" : "",
    });
    bar.append(s("title", {}, `${from}–${from + width - 1} tokens: ${n} example${n === 1 ? "" : "s"}`));
    g.append(bar);
  });
  svg.append(g);
  if (limit && limit >= low && limit <= low + span) {
    svg.append(s("line", { x1: x(limit), x2: x(limit), y1: M.top, y2: H - M.bottom, class: "limit" }));
  }
}
