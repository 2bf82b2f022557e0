/** Loading profiles, and merging the shards of a sharded profile. */
import * as fs from "node:fs";
import * as path from "node:path";
import { EeToolError } from "../errors.js";
import { relocateDataArg } from "../data/calib.js";
import { decodeSamples, emptySamples, pickSamples, type SampleData } from "./samples.js";
import { summarizeSamples } from "./summary.js";
import { PROFILE_FORMAT, type Profile, type ProfileResult } from "./profile.js";

export function loadProfile(file: string): ProfileResult {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    throw new EeToolError("FILE_NOT_FOUND", `profile not found: ${file}`);
  }
  let profile: Profile;
  try {
    profile = JSON.parse(text) as Profile;
  } catch (e) {
    throw new EeToolError("PROFILE_INVALID", `${file} is not JSON: ${(e as Error).message}`);
  }
  if (profile.format !== PROFILE_FORMAT) {
    const format: unknown = profile.format;
    const plan = typeof format === "string" && format.startsWith("ee-tool.plan/");
    throw new EeToolError("PROFILE_INVALID", `${file} is not an ee-tool profile (format ${JSON.stringify(profile.format)})`, plan ? {
      hint: "That file is a plan; pass the profile it was made from (its profile.file), e.g. ee-tool report <profile.json> <plan.json>.",
    } : {});
  }
  // Latency without prefix timings and the all-exits model: written by an earlier ee-tool, whose
  // stage figures the planner's cost model can no longer use.
  if (Object.values(profile.latency ?? {}).some((l) => !l.prefixes || !l.inPlace || !l.allExits)) {
    throw new EeToolError("PROFILE_INVALID", `${file} was written by an earlier ee-tool: its latency has no prefix or all-exits timings`, { hint: "Profile the model again with this version." });
  }
  const sidecar = path.join(path.dirname(file), profile.samples.file);
  const samples = decodeSamples(sidecar, profile.samples.arrays, profile.samples.scored, profile.ramps.length, profile.samples.sha256);
  return { profile, samples };
}

function concat(parts: SampleData[]): SampleData {
  const n = parts.reduce((a, p) => a + p.count, 0);
  const out = emptySamples(n, parts[0]!.ramps.length);
  let o = 0;
  for (const p of parts) {
    out.index.set(p.index, o);
    out.hash.set(p.hash, o * 8);
    out.final.set(p.final, o);
    out.label.set(p.label, o);
    p.ramps.forEach((r, j) => {
      out.ramps[j]!.pred.set(r.pred, o);
      out.ramps[j]!.maxprob.set(r.maxprob, o);
      out.ramps[j]!.margin.set(r.margin, o);
      out.ramps[j]!.entropy.set(r.entropy, o);
    });
    o += p.count;
  }
  return out;
}

/** Merge shards: same model, settings and calibration data; distinct shard indices. */
export function mergeProfiles(files: string[]): ProfileResult {
  if (files.length === 0) throw new EeToolError("USAGE", "merge needs at least one profile");
  const shards = files.map(loadProfile);
  const first = shards[0]!.profile;
  const same = (p: Profile): string | undefined => {
    if (p.model.sha256 !== first.model.sha256) return "they profile different models";
    if (p.settings.calibrationHash !== first.settings.calibrationHash) return "they used different calibration data";
    if (p.settings.labels !== first.settings.labels) return "some were given labels and some not";
    if (JSON.stringify(p.settings.batches) !== JSON.stringify(first.settings.batches) || p.environment.executionProvider !== first.environment.executionProvider || p.environment.threads !== first.environment.threads) {
      return "they were profiled with different settings (batch sizes, execution provider or threads)";
    }
    if (!p.settings.shard || !first.settings.shard || p.settings.shard.count !== first.settings.shard.count) return "they are not shards of one --shard i/n split";
    return undefined;
  };
  for (const s of shards) {
    const why = same(s.profile);
    if (why) throw new EeToolError("PROFILE_MISMATCH", `cannot merge ${files[shards.indexOf(s)]} with ${files[0]}: ${why}`);
  }
  const indices = shards.map((s) => s.profile.settings.shard!.index);
  if (new Set(indices).size !== indices.length) throw new EeToolError("PROFILE_MISMATCH", `shard ${indices.find((v, i) => indices.indexOf(v) !== i)} is given twice`);
  const all = concat(shards.map((s) => s.samples));
  const order = Array.from({ length: all.count }, (_, i) => i).sort((a, b) => all.index[a]! - all.index[b]!);
  const samples = pickSamples(all, order);
  const count = first.settings.shard!.count;
  const complete = indices.length === count;
  // Latency: from the lowest-index shard that measured it.
  const timed = [...shards].sort((a, b) => a.profile.settings.shard!.index - b.profile.settings.shard!.index).find((s) => s.profile.latency);
  // The shards' calibration data, where all name the same files (absolute: writeProfile makes them relative).
  const data = shards.map((s, i) => s.profile.settings.calibrationData === undefined ? undefined : relocateDataArg(s.profile.settings.calibrationData, (f) => path.resolve(path.dirname(files[i]!), f)));
  const { calibrationData: _drop, ...settings } = first.settings;
  const profile: Profile = {
    ...first,
    created: new Date().toISOString(),
    settings: { ...settings, shard: complete ? null : { index: Math.min(...indices), count }, ...(data[0] !== undefined && data.every((d) => d === data[0]) ? { calibrationData: data[0] } : {}) },
    latency: timed?.profile.latency ?? null,
    samples: {
      ...first.samples,
      scored: samples.count,
      skippedFitted: shards.reduce((a, s) => a + s.profile.samples.skippedFitted, 0),
      skippedOtherShards: complete ? 0 : first.settings.calibrationSamples - samples.count - shards.reduce((a, s) => a + s.profile.samples.skippedFitted, 0),
    },
    summary: summarizeSamples(samples),
  };
  return { profile, samples };
}
