/** Small text-formatting helpers for human-readable CLI output. */

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i++;
  } while (v >= 1024 && i < units.length - 1);
  return `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}

export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

/** Left-aligned columns separated by two spaces. */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd()).join("\n");
}

/** Help text of every command's --ep. */
export const EP_HELP = "execution provider: cpu, webgpu, cuda or tensorrt (cuda:1 picks a device; `ee-tool inspect --providers` lists what runs here)";

/** An exit's effect on onnxruntime's optimised graph (Profile.ramps[].fusion, stages/fusion.ts) in words. */
export function describeFusion(f: Record<string, number> | null | undefined): string {
  if (f === undefined || f === null) return "-";
  const entries = Object.entries(f).sort((a, b) => a[1] - b[1] || a[0].localeCompare(b[0]));
  if (!entries.length) return "fuses as without the exit";
  // Ops that run on their own with the cut (+) were fused into others without it (-, or an
  // attribute: onnxruntime's NCHWc Conv takes its Relu and residual Add in, its count unchanged).
  const apart = entries.filter(([, n]) => n > 0);
  const what = entries.map(([op, n]) => `${op} ${n > 0 ? "+" : ""}${n}`).join(", ");
  return apart.length ? `breaks a fusion: ${what}` : `changes ${what}`;
}
