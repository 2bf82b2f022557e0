/** `ee-tool report` for decoder LMs: per-layer latency, exit rates, the frontier and truncation. */
import type { DecoderProfile } from "../profile/decoder.js";
import type { DecoderPlan } from "../plan/decoder.js";
import { barChart, esc, lineChart } from "./svg.js";
import { COLORS, htmlPage } from "./report.js";

const pct = (x: number): string => `${(x * 100).toFixed(2)}%`;

export function renderDecoderReport(profile: DecoderProfile, plan?: DecoderPlan): string {
  const sections: string[] = [];
  sections.push(`<h1>ee-tool report: decoder LM</h1><p>Model <code>${esc(profile.model.file)}</code> (sha256 ${esc(profile.model.sha256.slice(0, 12))}…), ${profile.decoder.layers} layers, ${profile.decoder.exits.length} exit heads, ${profile.samples.sequences} scored sequences (${profile.samples.scored} tokens; ${profile.samples.skippedFitted} sequences skipped: they fitted the heads). Profiled ${esc(profile.created)} on ${esc(profile.environment.cpu)}, ${esc(profile.environment.executionProvider)}, onnxruntime ${esc(profile.environment.onnxruntime)}.</p>`);
  if (plan) {
    const e = plan.predicted;
    const c = plan.certificate;
    const sp = plan.speculative;
    sections.push(`<h2>Plan</h2><table>
<tr><th>certified exits</th><td>${plan.exits.map((x) => `after layer ${x.layers} (threshold ${x.threshold.toFixed(3)})`).join(", ") || "none"}</td></tr>
<tr><th>predicted decode step</th><td>${e.stepMs.toFixed(3)} ms vs ${e.fullStepMs.toFixed(3)} ms: saving ${pct(e.saving)}</td></tr>
<tr><th>differing tokens</th><td>${pct(e.differingTune)} tuning, ${pct(e.differingCertify)} held back (max ${pct(plan.settings.maxDrop)})</td></tr>
<tr><th>certificate</th><td>${c ? `${esc(c.method)}, p = ${c.pValue.toExponential(2)}, n = ${c.n} sequences, ${c.confidence * 100}% bound ${pct(c.bound)}` : "none"}</td></tr>
<tr><th>truncation</th><td>${plan.truncation.chosen ? `after layer ${plan.truncation.chosen.layers}: differing ${pct(plan.truncation.chosen.predicted.differingCertify)}, saving ${pct(plan.truncation.chosen.predicted.saving)}` : "none certified"}</td></tr>
<tr><th>speculative (lossless)</th><td>${sp ? `draft after layer ${sp.layers} while confidence &ge; ${sp.threshold.toFixed(3)}, at most ${sp.maxDraft} a cycle; kept drafts ${pct(sp.draftedCertify)} of tokens; predicted saving ${pct(sp.predicted.saving)}` : "not available (no KV cache, or an older profile)"}</td></tr>
<tr><th>runs</th><td>${plan.kvMode === "speculative" ? "speculative decoding (every token the full model's)" : `the exits above (KV mode ${esc(plan.kvMode)})`}</td></tr></table>`);
    const pts = plan.frontier.map((f): [number, number] => [f.differing * 100, f.saving * 100]);
    sections.push(`<h2>Saving against differing tokens (tuning sequences)</h2>` + lineChart([{ name: "frontier", points: pts, color: COLORS[0]!, markers: true }], {
      xLabel: "tokens differing from the full model (%)", yLabel: "predicted saving per token (%)", id: "frontier",
      vLines: [{ x: plan.settings.maxDrop * 100, label: `max ${pct(plan.settings.maxDrop)}` }],
      highlight: { x: e.differingCertify * 100, y: e.saving * 100, label: `plan: ${pct(e.saving)}` },
    }));
    const bars = plan.exits.map((x, i) => ({ label: `after layer ${x.layers}`, value: x.rateCertify * 100, color: COLORS[i % COLORS.length]! }));
    bars.push({ label: "full model", value: Math.max(0, 100 - bars.reduce((a, b) => a + b.value, 0)), color: "#444" });
    sections.push(`<h2>Exit rates (certification sequences)</h2>` + barChart(bars, "%"));
    const rows = plan.truncation.rows.map((r) => `<tr><td class="n">${r.layers}</td><td class="n">${pct(r.needDeeper)}</td><td class="n">${(r.weightBytesSaved / 2 ** 20).toFixed(2)} MB</td><td class="n">${r.kvBytesPerTokenSaved}</td><td class="n">${pct(r.differingCertify)}</td><td class="n">${pct(r.saving)}</td></tr>`);
    sections.push(`<h2>Truncation (HELIOS)</h2><table><tr><th>loaded up to layer</th><th>tokens needing deeper layers</th><th>weights never loaded</th><th>KV bytes/token saved</th><th>differing (held back)</th><th>saving</th></tr>${rows.join("")}</table>`);
  }
  const lat = profile.latency;
  if (lat) {
    const ci = 0;
    const single = lat.segments.filter((s) => s.layers[1] - s.layers[0] >= 1 && lat.segments.every((o) => o === s || !(o.layers[0] >= s.layers[0] && o.layers[1] <= s.layers[1] && o.layers[1] - o.layers[0] < s.layers[1] - s.layers[0])));
    const bars = [
      { label: `full decode step`, value: lat.fullStep[ci]!, color: "#444" },
      ...single.map((s, i) => ({ label: `layers ${s.layers[0] + 1}-${s.layers[1]}${s.to === null ? " + head" : ""}`, value: s.p50[ci]![0]!, color: COLORS[i % COLORS.length]! })),
      ...Object.entries(lat.heads).map(([id, v]) => ({ label: `exit head ${id}`, value: v, color: "#999" })),
    ];
    sections.push(`<h2>Measured latency per segment (p50, one decode step after ${lat.contexts[ci]} tokens)</h2><p>Each segment in its own call (what the early-exit runtime pays), the full model in one.</p>` + barChart(bars, "ms"));
    const series = single.map((s, i) => ({
      name: `layers ${s.layers[0] + 1}-${s.layers[1]}`,
      points: lat.carried.map((n, ni): [number, number] => [n, s.p50[ci]![ni]!]),
      color: COLORS[i % COLORS.length]!, markers: true,
    }));
    sections.push(`<h2>Deferred layers: cost against the positions a call carries</h2>` + lineChart(series, { xLabel: "positions in one call", yLabel: "p50 (ms)", id: "carried", zeroBased: true }));
    const checks = lat.verify;
    if (checks?.segments.length) {
      const lines = checks.segments.map((s, i) => ({
        name: `layers ${s.layers[0] + 1}-${s.layers[1]} + head at every position`,
        points: checks.carried.map((n, ni): [number, number] => [n, s.p50[ci]![ni]!]),
        color: COLORS[i % COLORS.length]!, markers: true,
      }));
      sections.push(`<h2>Speculative check: cost against the positions it checks</h2>` + lineChart(lines, { xLabel: "positions in one call", yLabel: "p50 (ms)", id: "verify", zeroBased: true }));
    }
  }
  return htmlPage(sections);
}
