/** `ee-tool report`: one self-contained HTML file (inline SVG, no scripts, no network). */
import type { ProfileResult } from "../profile/profile.js";
import { planFromProfile, pointBoundText, type Plan } from "../plan/plan.js";
import { barChart, esc, lineChart } from "./svg.js";

export const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8"];
const pct = (x: number): string => `${(x * 100).toFixed(2)}%`;

export function renderReport(result: ProfileResult, plan?: Plan): string {
  const { profile } = result;
  const batch = plan?.settings.batch ?? profile.settings.batches[0] ?? 1;
  // The frontier: the plan's when it has one, else a fresh uncertified search on the profile.
  const frontierPlan = plan?.frontier ? plan : profile.latency?.[String(batch)] ? planFromProfile(result, { ...(plan ? { maxDrop: plan.settings.maxDrop, metric: plan.settings.metric, against: plan.settings.against, tuningDrop: plan.settings.tuningDrop } : {}), batch, confidence: 0, frontier: true }) : undefined;
  const sections: string[] = [];
  sections.push(`<h1>ee-tool report</h1><p>Model <code>${esc(profile.model.file)}</code> (sha256 ${esc(profile.model.sha256.slice(0, 12))}…), ${profile.ramps.length} ramps, ${profile.samples.scored} scored samples (${profile.samples.skippedFitted} skipped: they fitted the ramps). Profiled ${esc(profile.created)} on ${esc(profile.environment.cpu)}, ${esc(profile.environment.executionProvider)}, onnxruntime ${esc(profile.environment.onnxruntime)}.</p>`);
  if (plan) {
    const e = plan.expected;
    sections.push(`<h2>Plan</h2><table><tr><th>exits</th><td>${plan.exits.map((x) => `ramp ${x.ramp} (threshold ${x.threshold.toFixed(3)})`).join(", ") || "none"}</td></tr>
<tr><th>expected latency</th><td>mean ${e.meanLatencyMs.toFixed(3)} ms, median ${e.medianLatencyMs.toFixed(3)} ms vs ${plan.baselineMs.toFixed(3)} ms: saving ${pct(e.saving)}</td></tr>
<tr><th>accuracy drop</th><td>${pct(e.dropTune)} tuning, ${pct(e.dropCertify)} held back (max ${pct(plan.settings.maxDrop)}, against ${esc(plan.settings.against)})</td></tr>
<tr><th>certificate</th><td>${plan.certificate ? `${esc(plan.certificate.method)}, p = ${plan.certificate.pValue.toExponential(2)}, n = ${plan.certificate.n}${plan.certificate.bound !== null ? `, ${plan.certificate.confidence * 100}% bound ${pct(plan.certificate.bound)}` : ""}` : "none"}</td></tr>
<tr><th>greedy baseline</th><td>saving ${pct(plan.greedy.saving)}, drop ${pct(plan.greedy.dropTune)} tuning / ${pct(plan.greedy.dropCertify)} held back</td></tr></table>`);
  }
  if (frontierPlan?.frontier) sections.push(frontierSection(frontierPlan, plan, batch));
  if (plan?.points) sections.push(pointsSection(plan));
  const lat = profile.latency?.[String(batch)];
  if (lat) {
    const bars = [
      { label: "whole model", value: lat.model.p50, color: "#444" },
      ...lat.inPlace.map((s, i) => ({ label: `stage ${i} in place`, value: Math.max(0, s.p50), color: COLORS[2]! })),
      ...lat.stages.map((s, i) => ({ label: `stage ${i} alone`, value: s.p50, color: COLORS[0]! })),
      ...lat.ramps.map((s, i) => ({ label: `ramp ${i}`, value: s.p50, color: COLORS[1]! })),
      { label: "one call", value: lat.callOverhead.p50, color: "#999" },
    ];
    sections.push(`<h2>Measured latency (p50, batch ${batch})</h2><p>A stage in place is what it adds to one call running the stages before it; alone, it runs in its own call and pays that call's fixed cost.</p>` + barChart(bars, "ms"));
  }
  if (plan) {
    const bars = [...plan.exits].sort((a, b) => a.stage - b.stage).map((e, i) => ({ label: `ramp ${e.ramp}`, value: e.exitRateCertify * 100, color: COLORS[i % COLORS.length]! }));
    bars.push({ label: "no exit", value: Math.max(0, 100 - bars.reduce((a, b) => a + b.value, 0)), color: "#444" });
    sections.push(`<h2>Exit rates (certification set)</h2>` + barChart(bars, "%"));
  }
  const series = profile.summary.ramps.map((r, i) => ({
    name: `ramp ${r.id} (depth ${(profile.ramps[i]!.depth * 100).toFixed(0)}%)`,
    points: r.curve.filter((c) => c.agreement !== null).map((c): [number, number] => [c.threshold, c.agreement! * 100]),
    color: COLORS[i % COLORS.length]!,
  }));
  sections.push(`<h2>Agreement with the model against the max-probability threshold</h2>` + lineChart(series, { xLabel: "threshold", yLabel: "agreement among samples above it (%)", zeroBased: false, xRange: [0, 1], id: "agreement" }));
  return htmlPage(sections);
}

/** The report's page: sections inside one self-contained HTML document. */
export function htmlPage(sections: string[]): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ee-tool report</title>
<style>body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}table{border-collapse:collapse}th,td{text-align:left;padding:4px 10px;border-bottom:1px solid #ddd}td.n{text-align:right;font-variant-numeric:tabular-nums}tr.plan{background:#fdecea;font-weight:600}code{background:#f3f3f3;padding:1px 4px}h2{margin-top:1.6em}p.note{color:#555;font-size:0.92em}</style>
</head><body>${sections.join("\n")}</body></html>
`;
}

type FrontierPoint = NonNullable<Plan["frontier"]>[number];

/** At most `n` items spread evenly over a list, first and last included. */
function spread<T>(xs: T[], n: number): T[] {
  if (xs.length <= n) return xs;
  return Array.from({ length: n }, (_, i) => xs[Math.round((i * (xs.length - 1)) / (n - 1))]!);
}

/**
 * The frontier zoomed to the drops anyone would ship (up to four times the constraint, and wide
 * enough for the plan), with the rest summarised in a sentence, and its operating points as a table.
 */
function frontierSection(frontierPlan: Plan, plan: Plan | undefined, batch: number): string {
  const frontier = frontierPlan.frontier!;
  const base = frontierPlan.baselineMs;
  const maxDrop = frontierPlan.settings.maxDrop;
  const fitted = frontierPlan.settings.tuningDrop === "fitted";
  const searched = (f: FrontierPoint): number => f.dropSearched ?? f.dropTune;
  const xMax = Math.max(4 * maxDrop, plan ? 1.5 * plan.expected.dropCertify : 0) * 100;
  const shown = frontier.filter((f) => Math.min(searched(f), f.dropTune, f.dropCertify) * 100 <= xMax);
  const hidden = frontier.filter((f) => !shown.includes(f));
  const lat = [...shown.map((f) => f.meanLatencyMs), base, ...(plan ? [plan.expected.meanLatencyMs] : [])];
  const yLo = Math.min(...lat);
  const yHi = Math.max(...lat);
  const pad = 0.05 * (yHi - yLo || yHi);
  const points = (drop: (f: FrontierPoint) => number): Array<[number, number]> => frontier.map((f) => [drop(f) * 100, f.meanLatencyMs]);
  const series = [
    { name: fitted ? "tuning set, fitted drop" : "tuning set", points: points(searched), color: COLORS[0]! },
    ...(fitted ? [{ name: "tuning set, observed drop", points: points((f) => f.dropTune), color: COLORS[2]!, markers: true }] : []),
    { name: "certification set", points: points((f) => f.dropCertify), color: COLORS[1]!, markers: true },
  ];
  const chosen = plan ? { x: plan.expected.dropCertify * 100, y: plan.expected.meanLatencyMs, label: `plan: ${pct(plan.expected.saving)} saving` } : undefined;
  const chart = lineChart(series, {
    xLabel: "accuracy drop (percentage points)", yLabel: `expected latency (ms, batch ${batch})`, id: "frontier",
    xRange: [0, xMax], yRange: [Math.max(0, yLo - pad), yHi + pad],
    vLines: [{ x: maxDrop * 100, label: `max drop ${(maxDrop * 100).toFixed(2)} pts` }],
    hLines: [{ y: base, label: `model ${base.toFixed(3)} ms` }],
    ...(chosen ? { highlight: chosen } : {}),
  });
  const beyond = hidden.length
    ? `<p class="note">Not drawn: ${hidden.length} configurations with drops above ${xMax.toFixed(2)} points (up to ${(Math.max(...hidden.map((f) => f.dropCertify)) * 100).toFixed(1)} points held back), the fastest at ${Math.min(...hidden.map((f) => f.meanLatencyMs)).toFixed(3)} ms (saving ${pct(1 - Math.min(...hidden.map((f) => f.meanLatencyMs)) / base)}).</p>`
    : "";
  const th = (ts: Array<number | null>): string => ts.map((t, r) => (t === null ? "" : `ramp ${r}: ${t.toFixed(3)}`)).filter(Boolean).join(", ") || "none";
  const rows = spread(shown.filter((f) => searched(f) <= xMax / 100), 12).map((f) => ({ f, isPlan: false }));
  const n = (x: string): string => `<td class="n">${x}</td>`;
  const tableRows = rows.map(({ f }) => `<tr>${n(pct(searched(f)))}${fitted ? n(pct(f.dropTune)) : ""}${n(pct(f.dropCertify))}${n(f.meanLatencyMs.toFixed(3))}${n(pct(1 - f.meanLatencyMs / base))}<td>${esc(th(f.thresholds))}</td></tr>`);
  if (plan) {
    const e = plan.expected;
    const ts = frontier[0]?.thresholds.map((_, r) => plan.exits.find((x) => x.ramp === r)?.threshold ?? null) ?? [];
    // The plan's tuning drop is the observed one (fitted drops are the search's view of the frontier).
    tableRows.push(`<tr class="plan">${fitted ? `${n("-")}${n(pct(e.dropTune))}` : n(pct(e.dropTune))}${n(pct(e.dropCertify))}${n(e.meanLatencyMs.toFixed(3))}${n(pct(e.saving))}<td>plan (certified): ${esc(th(ts))}</td></tr>`);
  }
  const table = `<table><tr><th>drop, tuning${fitted ? " (fitted)" : ""}</th>${fitted ? "<th>observed</th>" : ""}<th>held back</th><th>mean latency (ms)</th><th>saving</th><th>exits (thresholds)</th></tr>${tableRows.join("")}</table>`;
  return `<h2>Latency against accuracy drop</h2><p>Pareto frontier on the tuning set${fitted ? " in the drop the search saw (each ramp's loss fitted against its confidence), with the same configurations' observed drop there" : ""}, and their drop on the held-back certification set, up to four times the constraint. The original model: ${base.toFixed(3)} ms.</p>` +
    chart + beyond + `<h3>Configurations along the frontier</h3><p class="note">Operating points the search found within the chart, ${rows.length < shown.length ? `${rows.length} of ${shown.length}, ` : ""}as the search saw them; only the plan is certified.</p>` + table;
}

/** The plan's operating points (plan --points): one model, thresholds switched per request. */
function pointsSection(plan: Plan): string {
  const op = plan.points!;
  const batches = Object.keys(op.points[0]?.latency ?? {});
  const n = (x: string): string => `<td class="n">${x}</td>`;
  const rows = op.points.map((p, i) => `<tr${i === op.default ? ' class="plan"' : ""}>${n(String(i))}${n(pct(p.maxDrop))}${n(pct(p.dropCertify))}${n(pointBoundText(p, pct))}${batches.map((b) => n(pct(p.latency[b]!.saving))).join("")}<td>${esc(p.thresholds.map((t, j) => `ramp ${op.exits[j]!.ramp}: ${t === null ? "off" : t.toFixed(3)}`).join(", "))}${i === op.default ? " (the plan)" : ""}</td></tr>`);
  return `<h2>Operating points</h2><p>${op.points.length} points in one model holding exits at ramps ${esc(op.exits.map((e) => e.ramp).join(", "))}; a request picks one through the <code>ee_thresholds</code> input. All certificates hold together with probability ${op.confidence} (each at ${(1 - (1 - op.confidence) / op.points.length).toFixed(4)}, ${op.correction}). Savings per profiled batch size include the exits a point leaves off.</p>` +
    `<table><tr><th>point</th><th>max drop</th><th>held-back drop</th><th>bound</th>${batches.map((b) => `<th>saving, batch ${esc(b)}</th>`).join("")}<th>thresholds</th></tr>${rows.join("")}</table>` +
    (plan.live ? `<p class="note">Re-tuned on ${plan.live.records} live feedback records (ee-tool replan): point ${plan.live.point} (was ${plan.live.previous}).</p>` : "");
}
