/** What the CLI prints for decoder LMs (insert, profile, plan, eval). */
import type { DecoderInsertResult } from "../ramps/decoder-heads.js";
import type { DecoderProfile } from "../profile/decoder.js";
import type { DecoderPlan } from "../plan/decoder.js";
import type { DecoderEvalReport } from "../eval/decoder.js";
import { describeDecoder } from "../analysis/decoder.js";
import { table } from "./format.js";

const pct = (x: number | null | undefined): string => (x === null || x === undefined || Number.isNaN(x) ? "-" : `${(x * 100).toFixed(2)}%`);
const ms = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : "-");
const mb = (b: number): string => `${(b / 2 ** 20).toFixed(2)} MB`;

export function renderDecoderInsert(r: DecoderInsertResult): string {
  const m = r.metadata;
  return [
    describeDecoder(m.layout),
    `${m.exits.length} exit heads (the model's own norm and LM head after a fitted ${m.exits[0]?.width ?? "?"}x${m.exits[0]?.width ?? "?"} correction), fitted on ${m.calibration.fitSequences} of ${m.calibration.sequences} calibration sequences (${m.calibration.length} tokens each)`,
    table([
      ["exit", "after layer", "depth", "tensor", "params", "held-out agreement", "without correction", "kept"],
      ...m.exits.map((e) => [String(e.id), `${e.layers} of ${m.layers}`, `${(e.depth * 100).toFixed(1)}%`, e.tensor, String(e.parameters), `${pct(e.fit.holdoutAgreement)} (${e.fit.holdoutTokens} tokens)`, pct(e.fit.identityAgreement), e.fit.corrected ? "corrected" : "identity"]),
    ]),
    `analysis ${(r.timings.analyzeMs / 1000).toFixed(2)} s, hidden states ${(r.timings.extractMs / 1000).toFixed(2)} s, fitting ${(r.timings.fitMs / 1000).toFixed(2)} s`,
  ].join("\n");
}

export function renderDecoderProfile(p: DecoderProfile): string {
  const lines = [
    `${p.samples.sequences} sequences scored teacher-forced (${p.samples.scored} tokens; ${p.samples.skippedFitted} skipped: they fitted the heads); the model's next-token accuracy ${pct(p.summary.finalAccuracy)}` +
      (p.samples.generated ? `; ${p.samples.generated.sequences} of them continued greedily by the full model from their first ${p.samples.generated.prompt} tokens and scored too (speculative decoding is tuned on those)` : ""),
    table([
      ["exit", "after layer", "agreement with the model", "next-token accuracy", "mean max prob"],
      ...p.summary.exits.map((e) => [String(e.id), String(e.layers), pct(e.agreement), pct(e.accuracy), e.meanMaxprob.toFixed(3)]),
    ]),
  ];
  const l = p.latency;
  if (l) {
    const tc = p.environment.threadChoice;
    if (tc) lines.push(`threads: ${tc.threads ? `${tc.threads} (measured faster` : `onnxruntime's default (one thread measured not faster`}: full decode step ${ms(tc.oneThreadMs)} ms with one thread, ${ms(tc.defaultMs)} ms with the default); the plan and eval use the same`);
    lines.push(`latency (p50 ms, ${p.environment.executionProvider}${p.environment.threads ? `, ${p.environment.threads} thread${p.environment.threads > 1 ? "s" : ""}` : ""}; ${l.converged[0]} of ${l.converged[1]} timings converged): the full model's decode step and prefill`);
    lines.push(table([["context", ...l.contexts.map(String)], ["decode step", ...l.fullStep.map(ms)], ["prefill", ...l.prefill.map(ms)]]));
    const last = l.contexts.length - 1;
    lines.push(`each segment the runtime can run, one call after a past of ${l.contexts[0]} / ${l.contexts[last]} tokens, carrying ${l.carried.join(" / ")} positions:`);
    lines.push(table([
      ["from", "to", "layers", ...l.carried.map((n) => `n=${n} @${l.contexts[0]}`), ...l.carried.map((n) => `n=${n} @${l.contexts[last]}`)],
      ...l.segments.map((s) => [s.from === null ? "tokens" : `exit ${s.from}`, s.to === null ? "model head" : `exit ${s.to}`, `${s.layers[0]}-${s.layers[1]}`, ...s.p50[0]!.map(ms), ...s.p50[last]!.map(ms)]),
    ]));
    lines.push(`exit heads alone (one position): ${Object.entries(l.heads).map(([id, v]) => `exit ${id} ${ms(v)}`).join(", ")}`);
  }
  lines.push(`weights ${mb(p.decoder.weightBytes)}; KV cache ${p.decoder.kvBytesPerTokenPerLayer} bytes per token per layer`);
  return lines.join("\n");
}

export function renderDecoderPlan(p: DecoderPlan): string {
  const lines: string[] = [];
  if (p.exits.length === 0) {
    // The frontier holds only configurations faster than the full model on the tuning sequences.
    const faster = p.frontier.some((f) => f.exits.length > 0 && f.differing <= p.settings.maxDrop);
    lines.push(faster
      ? "no exit configuration could be certified under this constraint: the plan keeps the full model"
      : "no exit configuration is faster than the full model within this constraint (measured costs, tuning sequences): the plan keeps the full model");
  }
  lines.push(`certified exits: ${p.exits.length}, at most ${pct(p.settings.maxDrop)} of tokens differing from the full model's greedy token, metric ${p.settings.metric}`);
  lines.push(table([
    ["exit", "after layer", "threshold", "exit rate (tune)", "exit rate (certify)"],
    ...p.exits.map((e) => [String(e.id), `${e.layers} of ${p.layers}`, e.threshold.toFixed(4), pct(e.rateTune), pct(e.rateCertify)]),
  ]));
  const e = p.predicted;
  lines.push(`predicted decode step: ${ms(e.stepMs)} ms vs ${ms(e.fullStepMs)} ms (full model): saving ${pct(e.saving)}; ${e.meanExitLayers.toFixed(2)} layers per token before its exit`);
  lines.push(`differing tokens: ${pct(e.differingTune)} on ${p.data.tuneSequences} tuning sequences, ${pct(e.differingCertify)} on ${p.data.certifySequences} held-back sequences`);
  if (p.certificate) {
    const c = p.certificate;
    lines.push(`certified: expected share of differing tokens <= ${pct(c.maxDrop)} with probability ${c.confidence} (${c.method}; p-value ${c.pValue.toExponential(2)}, upper bound ${pct(c.bound)}, n=${c.n} sequences)`);
  }
  lines.push("truncation (HELIOS: load the model only up to an exit; tokens not confident earlier exit there):");
  lines.push(table([
    ["exit", "after layer", "tokens needing deeper layers", "weights never loaded", "KV bytes/token saved", "differing (certify)", "saving"],
    ...p.truncation.rows.map((r) => [String(r.exit), String(r.layers), pct(r.needDeeper), mb(r.weightBytesSaved), String(r.kvBytesPerTokenSaved), pct(r.differingCertify), pct(r.saving)]),
  ]));
  const t = p.truncation.chosen;
  lines.push(t ? `certified truncation: after layer ${t.layers} (exit ${t.exit}), differing ${pct(t.predicted.differingCertify)}, bound ${pct(t.certificate.bound)}, predicted saving ${pct(t.predicted.saving)}` : "no truncation certified under this constraint");
  const sp = p.speculative;
  if (sp) {
    lines.push(`speculative (lossless, every token the full model's; tuned on ${sp.tunedOn === "generated" ? "the full model's own continuations" : "the text"}): draft with exit ${sp.exit} (after layer ${sp.layers}) while its confidence >= ${sp.threshold.toFixed(4)}, at most ${sp.maxDraft} a cycle, then check them with layers ${sp.layers + 1}-${p.layers} at once; kept drafts ${pct(sp.draftedCertify)} of tokens (${pct(sp.keptShare)} of drafts agreed); predicted decode step ${ms(sp.predicted.stepMs)} ms vs ${ms(sp.predicted.fullStepMs)} ms: saving ${pct(sp.predicted.saving)}`);
  }
  lines.push(p.kvMode === "speculative"
    ? `runs: speculative${p.settings.kvMode === "auto" ? ` (predicted ${pct(sp!.predicted.saving)}, faster than the certified exits' ${pct(p.predicted.saving)})` : " (--kv-mode speculative)"}`
    : `runs: the exits above (kv mode ${p.kvMode})${sp && p.settings.kvMode === "auto" ? `; speculative would save ${pct(sp.predicted.saving)}` : ""}`);
  return lines.join("\n");
}

export function renderDecoderEval(r: DecoderEvalReport): string {
  const lines = [
    `${r.prompts} prompts, up to ${r.maxNewTokens} new tokens, greedy, batch 1 on ${r.ep}${r.threads ? ` (${r.threads} intra-op thread${r.threads > 1 ? "s" : ""})` : ""}: ${r.mode === "truncated" ? "the truncated decoder" : "the plan"} (kv mode ${r.kvMode}) against the full model${r.kvMode === "recompute" ? " (no cache: every step recomputes the prefix)" : " with its KV cache"}${r.kvMode === "speculative" ? "; lossless: every token must be the full model's, and the tokens of a cycle share its time" : ""}${r.ep !== r.planEp ? ` (note: the plan was profiled on ${r.planEp}; its latency predictions are for that provider)` : ""}`,
    table([
      ["", "full model", "early exit", "plan predicted"],
      ["decode latency per token mean (ms)", ms(r.full.mean), ms(r.earlyExit.mean), `${ms(r.predicted.fullStepMs)} -> ${ms(r.predicted.stepMs)}`],
      ["p50 / p99 (ms)", `${ms(r.full.p50)} / ${ms(r.full.p99)}`, `${ms(r.earlyExit.p50)} / ${ms(r.earlyExit.p99)}`, ""],
      ["tokens per second", r.full.tokensPerSecond.toFixed(0), r.earlyExit.tokensPerSecond.toFixed(0), ""],
      ["prefill (ms)", ms(r.full.prefillMs), ms(r.earlyExit.prefillMs), ""],
      ["saving (mean per-token latency)", "", pct(r.saving), pct(r.predicted.saving)],
      [r.kvMode === "exact" ? "layers per token: at exit / run (with deferred)" : r.kvMode === "speculative" ? "layers per token: read at (kept drafts) / run (checks, rejected drafts)" : "layers per token: at exit / layer passes (prefix recomputed)", String(r.layers.total), `${r.layers.meanAtExit.toFixed(2)} / ${r.layers.meanRun.toFixed(2)}`, `${r.predicted.meanExitLayers.toFixed(2)} at exit`],
      ["generated tokens equal to the full model's", "", pct(r.agreement.tokens), ""],
      ["continuations identical / ROUGE-L", "", `${pct(r.agreement.exactMatch)} / ${r.agreement.rougeL.toFixed(3)}`, ""],
      ...(r.teacherForced ? [
        ["teacher-forced perplexity", r.teacherForced.perplexityFull.toFixed(3), r.teacherForced.perplexityEarlyExit.toFixed(3), ""],
        ["differing tokens (teacher-forced)", "", pct(r.teacherForced.differing), r.kvMode === "speculative" ? "0 (lossless)" : `${pct(r.predicted.differing)} (bound ${pct(r.predicted.bound)}, max ${pct(r.predicted.maxDrop)})`],
      ] : []),
      ...(r.memory ? [
        ["weights (bytes)", mb(r.memory.weightBytesFull), mb(r.memory.weightBytesTruncated), ""],
        ["resident memory of a session (measured)", `${r.memory.rssFullMB.toFixed(1)} MB`, `${r.memory.rssTruncatedMB.toFixed(1)} MB`, ""],
      ] : []),
    ]),
    "exits (generated tokens; plan, teacher-forced): " + r.exits.map((e) => `${e.exit === -1 ? "model" : `exit ${e.exit}`} (layer ${e.layers}) ${pct(e.measured)}${r.predicted.exitRates[String(e.exit)] !== undefined ? ` (${pct(r.predicted.exitRates[String(e.exit)])})` : ""}`).join(", "),
  ];
  return lines.join("\n");
}
