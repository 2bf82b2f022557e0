/** Minimal inline-SVG charts for the HTML report (no scripts, no network). */

const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
export { esc };

export interface Series {
  name: string;
  points: Array<[number, number]>;
  color: string;
  /** Draw markers only (no line). */
  markers?: boolean;
}

const W = 640;
const PLOT_H = 300;
const M = { left: 64, right: 24, top: 16, bottom: 46 };
const LEGEND_ROW = 18;

/**
 * Round tick values covering [lo, hi]: a step of 1, 2, 2.5 or 5 times a power of ten giving about
 * `n` intervals; the axis runs from the first tick to the last.
 */
export function niceTicks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) hi = lo + (Math.abs(lo) || 1);
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw * 0.999)!;
  const first = Math.floor(lo / step + 1e-9) * step;
  const last = Math.ceil(hi / step - 1e-9) * step;
  const count = Math.round((last - first) / step);
  // Rounded to the step's own precision, so that 0.1 * 3 prints as 0.3.
  const digits = Math.max(0, -Math.floor(Math.log10(step)) + 2);
  return Array.from({ length: count + 1 }, (_, i) => Number((first + i * step).toFixed(digits)));
}

/** A tick label with as many decimals as the finest tick needs. */
function tickLabel(v: number, ticks: number[]): string {
  const digits = Math.max(0, ...ticks.map((t) => (String(t).split(".")[1] ?? "").length));
  return v.toFixed(Math.min(digits, 4));
}

const fmt = (v: number): string => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3));

export interface LineChartOptions {
  xLabel: string;
  yLabel: string;
  /** A marked point with a label (the plan). */
  highlight?: { x: number; y: number; label: string };
  /** Axis ranges (default: the data's, x from 0; y from 0 when zeroBased). Points outside are clipped. */
  xRange?: [number, number];
  yRange?: [number, number];
  zeroBased?: boolean;
  /** Dashed reference lines with a label at their end. */
  vLines?: Array<{ x: number; label: string }>;
  hLines?: Array<{ y: number; label: string }>;
  /** Unique within the page (the clip path's id). */
  id: string;
}

/** A line chart with its legend below the plot, so that it never covers a line. */
export function lineChart(series: Series[], o: LineChartOptions): string {
  const all = series.flatMap((s) => s.points).concat(o.highlight ? [[o.highlight.x, o.highlight.y]] : []);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const xt = niceTicks(...(o.xRange ?? [Math.min(0, ...xs), Math.max(...xs)]));
  const yt = niceTicks(...(o.yRange ?? [o.zeroBased === false ? Math.min(...ys) : Math.min(0, ...ys), Math.max(...ys, ...(o.hLines ?? []).map((l) => l.y))]));
  const [x0, x1] = [xt[0]!, xt.at(-1)!];
  const [y0, y1] = [yt[0]!, yt.at(-1)!];
  const pw = W - M.left - M.right;
  const ph = PLOT_H - M.top - M.bottom;
  const sx = (x: number): number => M.left + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number): number => PLOT_H - M.bottom - ((y - y0) / (y1 - y0)) * ph;
  const inside = ([x, y]: [number, number]): boolean => x >= x0 - 1e-9 && x <= x1 + 1e-9 && y >= y0 - 1e-9 && y <= y1 + 1e-9;
  // Legend rows below the plot: entries laid left to right, wrapping.
  const legend: Array<{ x: number; row: number; s: Series }> = [];
  let lx = M.left;
  let row = 0;
  for (const s of series) {
    const w = 26 + s.name.length * 6.6;
    if (lx + w > W - M.right && lx > M.left) {
      row++;
      lx = M.left;
    }
    legend.push({ x: lx, row, s });
    lx += w;
  }
  const H = PLOT_H + (row + 1) * LEGEND_ROW + 6;
  const clip = `clip-${o.id}`;
  const parts: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img">`];
  parts.push(`<defs><clipPath id="${clip}"><rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}"/></clipPath></defs>`);
  parts.push(`<rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="#fafafa" stroke="#ccc"/>`);
  for (const t of xt) parts.push(`<text x="${sx(t).toFixed(1)}" y="${PLOT_H - M.bottom + 16}" font-size="11" text-anchor="middle">${tickLabel(t, xt)}</text><line x1="${sx(t).toFixed(1)}" x2="${sx(t).toFixed(1)}" y1="${M.top}" y2="${PLOT_H - M.bottom}" stroke="#eee"/>`);
  for (const t of yt) parts.push(`<text x="${M.left - 6}" y="${(sy(t) + 4).toFixed(1)}" font-size="11" text-anchor="end">${tickLabel(t, yt)}</text><line x1="${M.left}" x2="${W - M.right}" y1="${sy(t).toFixed(1)}" y2="${sy(t).toFixed(1)}" stroke="#eee"/>`);
  parts.push(`<text x="${(M.left + W - M.right) / 2}" y="${PLOT_H - 10}" font-size="12" text-anchor="middle">${esc(o.xLabel)}</text>`);
  parts.push(`<text x="14" y="${(M.top + PLOT_H - M.bottom) / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 14 ${(M.top + PLOT_H - M.bottom) / 2})">${esc(o.yLabel)}</text>`);
  const g: string[] = [];
  for (const l of o.vLines ?? []) {
    if (l.x < x0 || l.x > x1) continue;
    g.push(`<line x1="${sx(l.x).toFixed(1)}" x2="${sx(l.x).toFixed(1)}" y1="${M.top}" y2="${PLOT_H - M.bottom}" stroke="#d62728" stroke-dasharray="5 4" stroke-width="1.2"/><text x="${(sx(l.x) + 4).toFixed(1)}" y="${M.top + 12}" font-size="11" fill="#d62728">${esc(l.label)}</text>`);
  }
  for (const l of o.hLines ?? []) {
    if (l.y < y0 || l.y > y1) continue;
    g.push(`<line x1="${M.left}" x2="${W - M.right}" y1="${sy(l.y).toFixed(1)}" y2="${sy(l.y).toFixed(1)}" stroke="#555" stroke-dasharray="5 4" stroke-width="1.2"/><text x="${W - M.right - 4}" y="${(sy(l.y) - 4).toFixed(1)}" font-size="11" fill="#555" text-anchor="end">${esc(l.label)}</text>`);
  }
  for (const s of series) {
    const pts = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`);
    if (!s.markers && pts.length > 1) g.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${pts.join(" ")}"/>`);
    s.points.forEach((p, i) => {
      if (!inside(p)) return;
      const [px, py] = pts[i]!.split(",");
      g.push(`<circle cx="${px}" cy="${py}" r="${s.markers ? 3 : 2}" fill="${s.color}"/>`);
    });
  }
  parts.push(`<g clip-path="url(#${clip})">${g.join("")}</g>`);
  if (o.highlight && inside([o.highlight.x, o.highlight.y])) {
    const hx = sx(o.highlight.x);
    const hy = sy(o.highlight.y);
    parts.push(`<circle cx="${hx.toFixed(1)}" cy="${hy.toFixed(1)}" r="7" fill="none" stroke="#d62728" stroke-width="2.5"/>`);
    // The label on the side with room.
    const right = hx < M.left + pw * 0.75;
    parts.push(`<text x="${(right ? hx + 11 : hx - 11).toFixed(1)}" y="${(hy - 9).toFixed(1)}" font-size="12" font-weight="bold" fill="#d62728" text-anchor="${right ? "start" : "end"}">${esc(o.highlight.label)}</text>`);
  }
  for (const { x, row: r, s } of legend) {
    const y = PLOT_H + r * LEGEND_ROW;
    parts.push(s.markers ? `<circle cx="${x + 6}" cy="${y + 5}" r="3.5" fill="${s.color}"/>` : `<line x1="${x}" x2="${x + 14}" y1="${y + 5}" y2="${y + 5}" stroke="${s.color}" stroke-width="2.5"/>`);
    parts.push(`<text x="${x + 20}" y="${y + 9}" font-size="11">${esc(s.name)}</text>`);
  }
  parts.push("</svg>");
  return parts.join("");
}

export function barChart(bars: Array<{ label: string; value: number; color?: string }>, unit: string): string {
  const rowH = 22;
  const h = M.top + bars.length * rowH + 30;
  const max = Math.max(...bars.map((b) => b.value), 1e-9);
  const left = 110;
  const width = W - left - 80;
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${h}" viewBox="0 0 ${W} ${h}" role="img">`];
  bars.forEach((b, i) => {
    const y = M.top + i * rowH;
    const w = (b.value / max) * width;
    parts.push(`<text x="${left - 8}" y="${y + 14}" font-size="12" text-anchor="end">${esc(b.label)}</text>`);
    parts.push(`<rect x="${left}" y="${y + 2}" width="${w.toFixed(1)}" height="${rowH - 6}" fill="${b.color ?? "#1f77b4"}"/>`);
    parts.push(`<text x="${left + w + 6}" y="${y + 14}" font-size="11">${fmt(b.value)} ${esc(unit)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("");
}
