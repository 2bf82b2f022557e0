import type { Command } from "commander";
import { parseEp } from "../ort/providers.js";
import * as path from "node:path";
import { loadModel } from "../onnx/model.js";
import { profileModel, threadsAt, writeProfile, type Profile } from "../profile/profile.js";
import { mergeProfiles } from "../profile/merge.js";
import { EeToolError } from "../errors.js";
import { info, out } from "./io.js";
import { progressBars } from "./progress.js";
import { table, EP_HELP, describeFusion } from "./format.js";
import { additivity } from "../plan/problem.js";
import { readDecoderMetadata } from "../ramps/metadata.js";
import { profileDecoder, writeDecoderProfile, DEFAULT_CONTEXTS, DEFAULT_GENERATED } from "../profile/decoder.js";
import { renderDecoderProfile } from "./decoder.js";

function generateCount(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new EeToolError("USAGE", `--generate must be a count of sequences (0 or more), got '${v}'`);
  return n;
}

function parseBatches(v: string, name = "--batch"): number[] {
  const list = v.split(",").map((s) => s.trim());
  const nums = list.map(Number);
  if (!list.length || nums.some((n) => !Number.isInteger(n) || n < 1)) throw new EeToolError("USAGE", `${name} takes positive integers separated by commas, got '${v}'`);
  return [...new Set(nums)];
}

function parseShard(v: string): { index: number; count: number } {
  const m = /^(\d+)\/(\d+)$/.exec(v);
  if (!m || Number(m[2]) < 1 || Number(m[1]) >= Number(m[2])) throw new EeToolError("USAGE", `--shard takes i/n with 0 <= i < n, got '${v}'`);
  return { index: Number(m[1]), count: Number(m[2]) };
}

export function renderProfile(p: Profile): string {
  const ms = (x: number): string => (x >= 10 ? x.toFixed(1) : x.toFixed(3));
  const lines: string[] = [];
  lines.push(`${p.samples.scored} samples scored (${p.samples.skippedFitted} skipped: they fitted the ramps${p.samples.skippedOtherShards ? `; ${p.samples.skippedOtherShards} in other shards` : ""})`);
  lines.push(table([
    ["ramp", "depth", "agreement", ...(p.summary.finalAccuracy !== null ? ["accuracy"] : []), "coverage@0.9", "agreement@0.9"],
    ...p.summary.ramps.map((r) => {
      const at = r.curve.find((c) => c.threshold === 0.9)!;
      return [String(r.id), `${(p.ramps[r.id]!.depth * 100).toFixed(1)}%`, `${(r.agreement * 100).toFixed(1)}%`, ...(r.accuracy !== null ? [`${(r.accuracy * 100).toFixed(1)}%`] : []), `${(at.coverage * 100).toFixed(1)}%`, at.agreement === null ? "-" : `${(at.agreement * 100).toFixed(1)}%`];
    }),
  ]));
  const pl = p.environment.placement;
  if (pl) {
    const where = Object.entries(pl.nodes).map(([k, n]) => `${n} on ${k}`).join(", ");
    const fell = Object.entries(pl.fallback);
    lines.push(`${fell.length ? "warning: part of the graph falls back from " + p.environment.executionProvider + ": " : "placement: "}${where}; ${pl.copies} copy nodes${fell.length ? ` (fallen back: ${fell.map(([op, n]) => `${op} x${n}`).join(", ")})` : ""}`);
  }
  const tc = p.environment.threadChoice;
  if (tc) {
    const each = Object.entries(tc.batches).map(([b, t]) => `batch ${b}: ${t.threads ? `${t.threads}` : "default"} (${ms(t.oneThreadMs)} against ${ms(t.defaultMs)})`).join(", ");
    lines.push(`threads at each batch size, one thread where at least 3% faster (the model's p50 ms with one thread against onnxruntime's default): ${each}; plans for that batch size, their eval and runtime use the same`);
  }
  for (const [b, l] of Object.entries(p.latency ?? {})) {
    lines.push("");
    const pct = (r: number): string => `${r >= 1 ? "+" : ""}${((r - 1) * 100).toFixed(1)}%`;
    const threads = threadsAt(p, Number(b));
    lines.push(`latency at batch ${b} (ms, ${p.environment.executionProvider}${threads ? `, ${threads} thread${threads > 1 ? "s" : ""}` : ""}): model p50 ${ms(l.model.p50)} mean ${ms(l.model.mean)}`);
    if (l.sessions) lines.push(`  the model's ${l.sessions.model.length} sessions p50 ${l.sessions.model.map(ms).join(", ")}; the runtime without exits ${l.sessions.noExit.map(ms).join(", ")} (the middle one of each is the figure used)`);
    lines.push(`  sum of ${l.stages.length} stages in place (all in one call) p50 ${ms(l.stageSum.inPlaceP50)} (${pct(l.stageSum.inPlaceRatioP50)} vs model)`);
    lines.push(`  sum of ${l.stages.length} stages each alone p50 ${ms(l.stageSum.p50)} (${pct(l.stageSum.ratioP50)} vs model); one call costs ${ms(l.callOverhead.p50)}, net of the ${l.stages.length - 1} extra calls ${ms(l.stageSum.netP50)} (${pct(l.stageSum.netRatioP50)})`);
    lines.push(`  one-call model with all ${l.ramps.length} exits active, none firing: p50 ${ms(l.allExits.p50)} (${pct(l.allExits.p50 / l.model.p50)} vs model)`);
    lines.push(table([
      ["part", "in place p50", "p50", "mean", "p90", "p99", "runs", "converged"],
      ...l.stages.map((s, i) => [`stage ${i}`, ms(l.inPlace[i]!.p50), ms(s.p50), ms(s.mean), ms(s.p90), ms(s.p99), String(s.runs), s.converged ? "yes" : "no"]),
      ...l.ramps.map((s, i) => [`ramp ${i}`, "-", ms(s.p50), ms(s.mean), ms(s.p90), ms(s.p99), String(s.runs), s.converged ? "yes" : "no"]),
    ]));
    if (l.exits) {
      if (l.noExit) lines.push(`  the runtime without exits p50 ${ms(l.noExit.p50)} (${pct(l.noExit.p50 / l.model.p50)} vs model); each exit as the runtime runs it alone (what the planner's cost model is built from):`);
      lines.push(table([
        ["ramp", "exit taken p50", "x model", "after a deeper call", "not taken: adds", "the cut in onnxruntime's graph"],
        ...l.exits.map((e) => {
          const r = p.ramps.find((x) => x.id === e.ramp);
          const adds = Math.max(0, e.adds.p50);
          const after = e.fireAfterDeeper ? `${ms(e.fireAfterDeeper.p50)} (${pct(e.fireAfterDeeper.p50 / e.fire.p50)})` : "-";
          return [String(e.ramp), ms(e.fire.p50), (e.fire.p50 / l.model.p50).toFixed(3), after, `${ms(adds)} (${pct(1 + adds / l.model.p50)})`, describeFusion(r?.fusion)];
        }),
      ]));
      const own = l.sessions?.exits;
      if (own?.length) lines.push(`  each exit timed in ${own[0]!.length} session${own[0]!.length > 1 ? "s taking turns (the figures are over all their runs); not taken, p50 per session" : "; not taken, p50"}: ${own.map((xs, i) => `${l.exits![i]!.ramp}: ${xs.map(ms).join(", ")}`).join("; ")}`);
      const a = additivity(p, Number(b));
      if (a) lines.push(`  all exits active, none firing: measured ${ms(a.measured * Number(b))}, the exits' costs added up ${ms(a.predicted * Number(b))} (${pct(a.measured / a.predicted)})`);
    }
    const f = l.forms;
    if (f) lines.push(`  runtime forms, every exit active and none firing: one call ${ms(f.oneCall)}, one call per segment ${ms(f.segments)}${f.segmentsParts !== undefined ? ` (its parts timed alone add up to ${ms(f.segmentsParts)})` : ""}; plans at this batch size run ${f.faster === "segments" ? "one call per segment" : "one call"}`);
  }
  return lines.join("\n");
}

/** The profile as JSON on stdout (--json) or its summary on stderr, then the files written. */
function printWritten(profile: { samples: object }, written: { json: string; sidecar: string }, render: () => string, json: boolean): void {
  if (json) out(JSON.stringify({ ...profile, samples: { ...profile.samples, file: written.sidecar } }, null, 2));
  else info(render());
  info(`wrote ${written.json} and ${written.sidecar}`);
}

export function registerProfile(program: Command): void {
  program
    .command("profile")
    .description("Measure every stage's and ramp's latency, and every ramp's confidence and agreement on calibration samples it was not fitted on")
    .argument("<model>", "augmented model written by ee-tool insert")
    .requiredOption("-o, --out <profile.json>", "profile to write (its per-sample data goes to <profile>.bin beside it)")
    .requiredOption("--calib <data>", "calibration inputs (same forms as insert); samples that fitted the ramps are skipped")
    .option("--labels <y.npy>", "ground-truth labels, for accuracy against labels")
    .option("--ep <provider>", EP_HELP, "cpu")
    .option("--batch <sizes>", "batch sizes to time, comma-separated (default: 1,8 on the CPU, 1,8,32,64 on GPU providers)")
    .option("--threads <n>", "onnxruntime intra-op threads (default: onnxruntime's choice)")
    .option("--shard <i/n>", "profile only every n-th slice of 256 samples, starting at slice i (merge shards with ee-tool merge)")
    .option("--budget <ms>", "time budget for the latency measurement of each batch size", "10000")
    .option("--no-latency", "skip latency measurement (per-sample data only)")
    .option("--contexts <lengths>", `decoders: past lengths at which decode steps are timed (default ${DEFAULT_CONTEXTS.join(",")})`)
    .option("--generate <n>", `decoders: profiled sequences the full model continues greedily from their first half, scored too (speculative decoding is tuned on them; 0: none)`, String(DEFAULT_GENERATED))
    .option("--json", "print the profile JSON on stdout")
    .addHelpText(
      "after",
      "\nExamples:\n  $ ee-tool profile cnn.ee.onnx --calib fixtures/cnn/calib.npz -o cnn.profile.json\n" +
        "  $ ee-tool profile model.ee.onnx --calib data.npz --ep cuda --batch 1,8,32 -o profile.json\n" +
        "  $ ee-tool profile model.ee.onnx --calib data.npz --shard 0/4 --no-latency -o shard0.json",
    )
    .action(async (file: string, opts: { out: string; calib: string; labels?: string; ep: string; batch?: string; threads?: string; shard?: string; budget: string; latency: boolean; contexts?: string; generate: string; json?: boolean }) => {
      parseEp(opts.ep); // a bad --ep fails before any work
      const threads = opts.threads === undefined ? undefined : Number(opts.threads);
      if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) throw new EeToolError("USAGE", `--threads must be a positive integer, got '${opts.threads}'`);
      const budget = Number(opts.budget);
      if (!(budget > 0)) throw new EeToolError("USAGE", `--budget must be a positive number of milliseconds, got '${opts.budget}'`);
      const batches = opts.batch === undefined ? undefined : parseBatches(opts.batch);
      const shard = opts.shard ? parseShard(opts.shard) : undefined;
      const model = loadModel(file);
      const bars = progressBars();
      if (readDecoderMetadata(model.proto)) {
        const contexts = opts.contexts === undefined ? undefined : parseBatches(opts.contexts, "--contexts").sort((a, b) => a - b);
        const result = await profileDecoder(model, {
          calib: opts.calib, settings: { ep: opts.ep, ...(threads ? { threads } : {}) }, ...(contexts ? { contexts } : {}),
          budgetMs: budget, latency: opts.latency, generate: generateCount(opts.generate),
          onProgress: (phase, done, total) => bars.update(phase, done, total),
        });
        bars.stop();
        printWritten(result.profile, writeDecoderProfile(opts.out, result, file), () => renderDecoderProfile(result.profile), !!opts.json);
        return;
      }
      const result = await profileModel(model, {
        calib: opts.calib,
        ...(opts.labels ? { labels: opts.labels } : {}),
        ...(batches ? { batches } : {}),
        settings: { ep: opts.ep, ...(threads ? { threads } : {}) },
        ...(shard ? { shard } : {}),
        budgetMs: budget,
        latency: opts.latency,
        onProgress: (phase, done, total) => bars.update(phase, done, total),
      });
      bars.stop();
      printWritten(result.profile, writeProfile(opts.out, result, file), () => renderProfile(result.profile), !!opts.json);
    });

  program
    .command("merge")
    .description("Combine the shards of a sharded profile into one profile")
    .argument("<profiles...>", "shard profiles written by ee-tool profile --shard i/n")
    .requiredOption("-o, --out <profile.json>", "merged profile to write")
    .addHelpText("after", "\nExamples:\n  $ ee-tool merge shard0.json shard1.json shard2.json shard3.json -o profile.json")
    .action((files: string[], opts: { out: string }) => {
      const merged = mergeProfiles(files);
      const written = writeProfile(opts.out, merged, path.resolve(path.dirname(files[0]!), merged.profile.model.file));
      info(`merged ${files.length} shards: ${merged.profile.samples.scored} samples`);
      info(`wrote ${written.json} and ${written.sidecar}`);
    });
}
