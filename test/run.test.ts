import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { parse as parseYaml } from "yaml";
import { Lexer, type Tokens } from "marked";
import { ROOT, runCli, tmpDir, type CliResult } from "./helpers/fixtures.js";
import { RUN_CONFIG_SCHEMA, loadRunConfig } from "../src/pipeline/config.js";
import { machineFingerprint, stepKey, type StepRecord } from "../src/pipeline/cache.js";
import { ACTION_INPUTS, ACTION_OUTPUTS, actionArgv } from "../src/cli/action.js";
import { validate } from "../src/util/schema.js";

const FIX = (p: string): string => path.join(ROOT, "fixtures", p);

interface RunJson {
  passed: boolean;
  failures: string[];
  out: string;
  steps: Array<{ step: string; status: "ran" | "cached"; note?: string }>;
  eval: { assertions: { passed: boolean }; latency: { saving: number }; accuracy: { dropVsModel: number } };
}

/** A CI-like environment: no GitHub variables but those given. */
function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("GITHUB_") && !k.startsWith("INPUT_")) e[k] = v;
  return { ...e, ...extra };
}

function writeConfig(dir: string, name: string, extra: Record<string, unknown> = {}): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, JSON.stringify({
    $schema: path.join(ROOT, "docs/run.schema.json"),
    model: FIX("cnn/model.onnx"),
    calibration: { data: FIX("cnn/calib.npz"), labels: FIX("cnn/calib_labels.npy") },
    evaluation: { data: FIX("cnn/eval.npz"), labels: FIX("cnn/eval_labels.npy") },
    out: "out",
    profile: { budgetMs: 1500 },
    plan: { measureBudgetMs: 1000 },
    // The verdict's saving check on a loaded 2-core test machine: generous, it is not what is tested here.
    eval: { savingTolerance: 0.5 },
    ...extra,
  }, null, 2));
  return file;
}

const statuses = (r: RunJson): string[] => r.steps.map((s) => `${s.step}:${s.status}`);
const parseRun = (r: CliResult): RunJson => JSON.parse(r.stdout) as RunJson;

function githubOutputs(file: string): Record<string, string> {
  return Object.fromEntries(fs.readFileSync(file, "utf8").trim().split("\n").map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
}

describe("ee-tool run", () => {
  it("runs every step once, then skips each while nothing changed, with the same verdict; a changed setting reruns only the steps after it", () => {
    const dir = tmpDir("ee-run-");
    const config = writeConfig(dir, "ee.json");
    const summary = path.join(dir, "summary.md");
    const outputs = path.join(dir, "outputs.txt");
    const junit = path.join(dir, "junit.xml");
    const t0 = performance.now();
    const first = runCli(["run", config, "--json", "--junit", junit], { env: env({ GITHUB_STEP_SUMMARY: summary, GITHUB_OUTPUT: outputs }) });
    const firstMs = performance.now() - t0;
    expect(first.stderr).not.toMatch(/error/);
    expect(first.code).toBe(0);
    const a = parseRun(first);
    expect(statuses(a)).toEqual(["insert:ran", "profile:ran", "plan:ran", "eval:ran", "report:ran"]);
    const out = path.join(dir, "out");
    expect(a.out).toBe(out);
    for (const f of ["model.ee.onnx", "profile.json", "profile.bin", "plan.json", "single.onnx", "eval.json", "report.html"]) expect(fs.existsSync(path.join(out, f)), f).toBe(true);
    for (const s of ["insert", "profile", "plan", "eval", "report"]) {
      const rec = JSON.parse(fs.readFileSync(path.join(out, "steps", `${s}.json`), "utf8")) as StepRecord;
      expect(Object.keys(rec.inputs).length).toBeGreaterThan(0);
      expect(Object.values(rec.inputs).every((h) => /^[0-9a-f]{64}$/.test(h))).toBe(true);
      // The timed steps: profile, plan (it measures the chosen plan's paths) and eval.
      expect(rec.machine === null).toBe(!["profile", "plan", "eval"].includes(s));
    }
    const evalBefore = fs.readFileSync(path.join(out, "eval.json"), "utf8");

    // Unchanged: every step skipped, each said in one line, the same verdict and figures.
    const t1 = performance.now();
    const second = runCli(["run", config, "--json"], { env: env() });
    const secondMs = performance.now() - t1;
    expect(second.code).toBe(a.passed ? 0 : 3);
    const b = parseRun(second);
    expect(statuses(b)).toEqual(["insert:cached", "profile:cached", "plan:cached", "eval:cached", "report:cached"]);
    expect(second.stderr.match(/^\[\d\/5\] \w+: skipped, inputs and settings unchanged/gm)?.length).toBe(5);
    expect(b.passed).toBe(a.passed);
    expect(b.eval).toEqual(a.eval);
    expect(fs.readFileSync(path.join(out, "eval.json"), "utf8")).toBe(evalBefore);
    expect(secondMs).toBeLessThan(firstMs / 3);

    // A stricter constraint: insert and profile stay, plan, eval and report run again.
    const stricter = writeConfig(dir, "ee.json", { maxDrop: 0.005 });
    const c = parseRun(runCli(["run", stricter, "--json"], { env: env() }));
    expect(statuses(c)).toEqual(["insert:cached", "profile:cached", "plan:ran", "eval:ran", "report:ran"]);
    // A tampered output is not trusted: the step runs again.
    fs.appendFileSync(path.join(out, "report.html"), "<!-- edited -->");
    expect(statuses(parseRun(runCli(["run", stricter, "--json"], { env: env() })))).toEqual(["insert:cached", "profile:cached", "plan:cached", "eval:cached", "report:ran"]);

    // JUnit: valid against the structure CI reporters read (xmllint, test/helpers/junit.xsd), one case per assertion.
    const lint = spawnSync("xmllint", ["--noout", "--schema", path.join(ROOT, "test/helpers/junit.xsd"), junit], { encoding: "utf8" });
    expect(lint.error, "xmllint (Debian libxml2-utils) is needed; .ci/run installs it").toBeUndefined();
    expect(lint.stderr).toMatch(/validates/);
    expect(lint.status).toBe(0);
    const xml = fs.readFileSync(junit, "utf8");
    expect(xml.match(/<testcase /g)?.length).toBe(2);
    expect(xml).toMatch(/<testcase name="accuracy drop" classname="ee-tool.eval"/);
    expect(xml.includes("<failure")).toBe(!a.passed);

    // Markdown: GitHub-flavoured tables whose rows all have the header's cells.
    const tokens = new Lexer({ gfm: true }).lex(fs.readFileSync(summary, "utf8"));
    const heading = tokens.find((t) => t.type === "heading") as Tokens.Heading;
    expect(heading.text).toMatch(/^ee-tool: (passed|FAILED) \(/);
    const tables = tokens.filter((t) => t.type === "table") as Tokens.Table[];
    expect(tables.map((t) => t.header.map((h) => h.text).join("|"))).toEqual(["|measured|plan predicted", "exit|threshold|measured rate|predicted rate", "step|status|time"]);
    for (const t of tables) for (const r of t.rows) expect(r.length).toBe(t.header.length);
    expect(tables[2]!.rows.map((r) => `${r[0]!.text}:${r[1]!.text}`)).toEqual(["insert:ran", "profile:ran", "plan:ran", "eval:ran", "report:ran"]);

    // Step outputs in GitHub's format.
    const o = githubOutputs(outputs);
    expect(Object.keys(o).sort()).toEqual([...ACTION_OUTPUTS].sort());
    expect(o.verdict).toBe(a.passed ? "pass" : "fail");
    expect(Number(o.saving)).toBeCloseTo(a.eval.latency.saving, 4);
    expect(Number(o.drop)).toBeCloseTo(a.eval.accuracy.dropVsModel, 4);
    expect(o.artifacts).toBe(out);

    // The GitHub Action's script on the same directory: every step cached, outputs written; a failed
    // assertion fails the step unless assert is false.
    const actionOut = path.join(dir, "action-outputs.txt");
    const act = runCli([], { bin: "bin/ee-tool-action.js", env: env({ INPUT_CONFIG: stricter, INPUT_FORCE: "false", INPUT_ASSERT: "true", GITHUB_OUTPUT: actionOut }) });
    expect(act.code).toBe(0);
    expect(act.stderr.match(/skipped, inputs and settings unchanged/g)?.length).toBe(5);
    expect(githubOutputs(actionOut).verdict).toBe("pass");
    // Against labels, with none for the evaluation set: the drop assertion fails (exit 3), deterministically.
    const labelsOnly = writeConfig(dir, "labels.json", { maxDrop: 0.005, against: "labels", evaluation: FIX("cnn/eval.npz") });
    const failing = runCli([], { bin: "bin/ee-tool-action.js", env: env({ INPUT_CONFIG: labelsOnly, GITHUB_OUTPUT: actionOut }) });
    expect(failing.code).toBe(3);
    expect(failing.stderr).toMatch(/^ee-tool: assertion failed: the plan is against labels but no --labels were given$/m);
    expect(githubOutputs(actionOut).verdict).toBe("fail");
    const lenient = runCli([], { bin: "bin/ee-tool-action.js", env: env({ INPUT_CONFIG: labelsOnly, INPUT_ASSERT: "false", GITHUB_OUTPUT: actionOut }) });
    expect(lenient.code).toBe(0);
    const bad = runCli([], { bin: "bin/ee-tool-action.js", env: env({ INPUT_CONFIG: labelsOnly, INPUT_FORCE: "yes" }) });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^ee-tool: error \[USAGE\]: action input 'force' must be true or false, got 'yes'/);
  });

  it("a cached timing step from another machine is measured again (same-machine) or reused and said so (any-machine)", () => {
    const dir = tmpDir("ee-run-machine-");
    // Two linear ramps: a quick insert, as what is tested here is the cache.
    const quick = { insert: { exits: "2", ramp: "linear" } };
    const config = writeConfig(dir, "ee.json", { ...quick, cache: { latency: "any-machine" } });
    expect(runCli(["run", config, "-q"], { env: env() }).code).toBe(0);
    // Pretend the profile was measured elsewhere.
    const recFile = path.join(dir, "out", "steps", "profile.json");
    const rec = JSON.parse(fs.readFileSync(recFile, "utf8")) as StepRecord;
    const elsewhere = { ...rec.machine!, cpu: "Some Other CPU", cores: 64 };
    fs.writeFileSync(recFile, JSON.stringify({ ...rec, machine: elsewhere }));
    const reused = runCli(["run", config, "--json"], { env: env() });
    expect(statuses(parseRun(reused))).toEqual(["insert:cached", "profile:cached", "plan:cached", "eval:cached", "report:cached"]);
    expect(reused.stderr).toMatch(/^\[2\/5\] profile: skipped, inputs and settings unchanged \(profile.json, profile.bin\); measured on another machine \(Some Other CPU, 64 cores, .*\); cache.latency is any-machine$/m);
    // Under same-machine the key holds the machine: a record from elsewhere does not match.
    const strict = writeConfig(dir, "ee.json", { ...quick, cache: { latency: "same-machine" } });
    const here = machineFingerprint("cpu", null);
    fs.writeFileSync(recFile, JSON.stringify({ ...rec, machine: elsewhere, key: stepKey("profile", rec.inputs, rec.settings, elsewhere) }));
    expect(stepKey("profile", rec.inputs, rec.settings, here)).not.toBe(stepKey("profile", rec.inputs, rec.settings, elsewhere));
    const remeasured = runCli(["run", strict, "--json"], { env: env() });
    expect(remeasured.stderr).toMatch(/^\[2\/5\] profile: running \(the cached result was measured on another machine \(Some Other CPU, 64 cores/m);
    expect(statuses(parseRun(remeasured)).slice(0, 2)).toEqual(["insert:cached", "profile:ran"]);
    // --force redoes everything.
    expect(statuses(parseRun(runCli(["run", strict, "--json", "--force"], { env: env() })))).toEqual(["insert:ran", "profile:ran", "plan:ran", "eval:ran", "report:ran"]);
  });

  it("configuration: docs/run.schema.json is the schema the parser checks; errors name the field", () => {
    expect(JSON.parse(fs.readFileSync(path.join(ROOT, "docs/run.schema.json"), "utf8"))).toEqual(RUN_CONFIG_SCHEMA);
    const fixtureConfig = JSON.parse(fs.readFileSync(FIX("cnn/run.json"), "utf8")) as unknown;
    expect(validate(fixtureConfig, RUN_CONFIG_SCHEMA)).toEqual([]);
    const c = loadRunConfig(FIX("cnn/run.json"));
    expect(c.model).toBe(FIX("cnn/model.onnx"));
    expect(c.insert.ramp).toBe("auto");
    expect(c.profile.batches).toEqual([1]);
    expect(c.cache.latency).toBe("same-machine");
    const dir = tmpDir();
    const bad = path.join(dir, "bad.json");
    fs.writeFileSync(bad, JSON.stringify({ model: "m.onnx", calibration: "c.npz", evaluation: { labels: "y.npy" }, maxDrop: 2, plan: { emit: ["everything"] } }));
    const r = runCli(["run", bad]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^ee-tool: error \[CONFIG_INVALID\]: .*bad.json: \$.evaluation: missing 'data'; \$.maxDrop: above 1; \$.plan.emit\[0\]: not one of/);
    expect(r.stderr.trim().split("\n").length).toBe(2);
    fs.writeFileSync(bad, JSON.stringify({ model: "m.onnx", calibration: "c.npz", evaluation: "e.npz", batch: 8, profile: { batches: [1] } }));
    expect(runCli(["run", bad]).stderr).toMatch(/profile.batches \[1\] does not include the run's batch 8/);
    // A decoder LM: run is not built for it; one line says what to run instead, nothing is written.
    const lm = path.join(dir, "lm.json");
    fs.writeFileSync(lm, JSON.stringify({ model: FIX("lm/model.onnx"), calibration: FIX("lm/calib.npy"), evaluation: FIX("lm/prompts.npy"), out: path.join(dir, "lm-out") }));
    const d = runCli(["run", lm]);
    expect(d.code).toBe(2);
    expect(d.stderr).toMatch(/^ee-tool: error \[UNSUPPORTED\]: ee-tool run takes classifiers; .*lm\/model\.onnx is a decoder LM\n  hint: Run its steps one by one: ee-tool insert, profile, plan, then eval --prompts/);
    expect(fs.existsSync(path.join(dir, "lm-out"))).toBe(false);
  });

  it("action.yml passes every input the script reads and declares every output it writes", () => {
    const action = parseYaml(fs.readFileSync(path.join(ROOT, "action.yml"), "utf8")) as {
      inputs: Record<string, unknown>; outputs: Record<string, { value: string }>;
      runs: { using: string; steps: Array<{ id?: string; run?: string; env?: Record<string, string> }> };
    };
    expect(action.runs.using).toBe("composite");
    const step = action.runs.steps.find((s) => s.run?.includes("bin/ee-tool-action.js"))!;
    expect(step.id).toBe("ee-tool");
    for (const [input, variable] of Object.entries(ACTION_INPUTS)) {
      expect(action.inputs[input], input).toBeDefined();
      expect(step.env?.[variable]).toBe(`\${{ inputs.${input} }}`);
    }
    expect(Object.keys(action.outputs).sort()).toEqual([...ACTION_OUTPUTS].sort());
    for (const [name, o] of Object.entries(action.outputs)) expect(o.value).toBe(`\${{ steps.ee-tool.outputs.${name} }}`);
    expect(actionArgv({ INPUT_CONFIG: "ci/ee.json", INPUT_OUT: "build/ee", INPUT_FORCE: "true", INPUT_JUNIT: "j.xml" })).toEqual(["run", "ci/ee.json", "--out", "build/ee", "--force", "--junit", "j.xml"]);
    expect(() => actionArgv({})).toThrow(/action input 'config' is empty/);
  });
});
