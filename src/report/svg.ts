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

const W = 560;
const H = 300;
const M = { left: 60, right: 20, top: 20, bottom: 46 };

function ticks(lo: number, hi: number, n = 5): number[] {
  if (hi <= lo) return [lo];
  const step = (hi - lo) / n;
  return Array.from({ length: n + 1 }, (_, i) => lo + i * step);
}

const fmt = (v: number): string => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3));

export function lineChart(series: Series[], xLabel: string, yLabel: string, highlight?: { x: number; y: number; label: string }, zeroBased = true): string {
  const all = series.flatMap((s) => s.points).concat(highlight ? [[highlight.x, highlight.y]] : []);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const x0 = Math.min(0, ...xs);
  // With a highlight, some headroom so that it and its label are not drawn on the frame.
  const pad = (lo: number, hi: number): number => (highlight ? hi + 0.06 * (hi - lo) : hi);
  const x1 = pad(x0, Math.max(...xs, x0 + 1e-9));
  const y0 = zeroBased ? Math.min(0, ...ys) : Math.min(...ys);
  const y1 = pad(y0, Math.max(...ys, y0 + 1e-9));
  const sx = (x: number): number => M.left + ((x - x0) / (x1 - x0)) * (W - M.left - M.right);
  const sy = (y: number): number => H - M.bottom - ((y - y0) / (y1 - y0)) * (H - M.top - M.bottom);
  const parts: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img">`];
  parts.push(`<rect x="${M.left}" y="${M.top}" width="${W - M.left - M.right}" height="${H - M.top - M.bottom}" fill="#fafafa" stroke="#ccc"/>`);
  for (const t of ticks(x0, x1)) parts.push(`<text x="${sx(t)}" y="${H - M.bottom + 16}" font-size="11" text-anchor="middle">${fmt(t)}</text>`);
  for (const t of ticks(y0, y1)) parts.push(`<text x="${M.left - 6}" y="${sy(t) + 4}" font-size="11" text-anchor="end">${fmt(t)}</text><line x1="${M.left}" x2="${W - M.right}" y1="${sy(t)}" y2="${sy(t)}" stroke="#eee"/>`);
  parts.push(`<text x="${(M.left + W - M.right) / 2}" y="${H - 8}" font-size="12" text-anchor="middle">${esc(xLabel)}</text>`);
  parts.push(`<text x="14" y="${(M.top + H - M.bottom) / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 14 ${(M.top + H - M.bottom) / 2})">${esc(yLabel)}</text>`);
  series.forEach((s, i) => {
    const pts = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`);
    if (!s.markers && pts.length > 1) parts.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${pts.join(" ")}"/>`);
    for (const p of pts) {
      const [px, py] = p.split(",");
      parts.push(`<circle cx="${px}" cy="${py}" r="${s.markers ? 3 : 2}" fill="${s.color}"/>`);
    }
    const lx = W - M.right - 170;
    parts.push(`<rect x="${lx}" y="${M.top + 8 + i * 16}" width="10" height="10" fill="${s.color}"/><text x="${lx + 16}" y="${M.top + 17 + i * 16}" font-size="11">${esc(s.name)}</text>`);
  });
  if (highlight) {
    parts.push(`<circle cx="${sx(highlight.x)}" cy="${sy(highlight.y)}" r="7" fill="none" stroke="#d62728" stroke-width="2.5"/>`);
    parts.push(`<text x="${sx(highlight.x) + 10}" y="${sy(highlight.y) - 10}" font-size="12" fill="#d62728">${esc(highlight.label)}</text>`);
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
