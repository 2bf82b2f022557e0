import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { CNN, ROOT, runCli, tmpDir } from "./helpers/fixtures.js";

const FIX = (p: string): string => path.join(ROOT, "fixtures", p);

describe("ee-tool report", () => {
  it("writes one self-contained HTML file with the frontier, latency bars, exit rates and agreement curves", () => {
    const dir = tmpDir();
    const ee = path.join(dir, "m.ee.onnx");
    expect(runCli(["insert", CNN, "--calib", FIX("cnn/calib.npz"), "-o", ee, "-q"]).code).toBe(0);
    expect(runCli(["profile", ee, "--calib", FIX("cnn/calib.npz"), "--batch", "1", "--budget", "1500", "-o", path.join(dir, "p.json"), "-q"]).code).toBe(0);
    expect(runCli(["plan", path.join(dir, "p.json"), "-o", path.join(dir, "plan.json"), "-q"]).code).toBe(0);
    const out = path.join(dir, "report.html");
    const r = runCli(["report", path.join(dir, "p.json"), path.join(dir, "plan.json"), "-o", out]);
    expect(r.code).toBe(0);
    const html = fs.readFileSync(out, "utf8");
    for (const heading of ["Latency against accuracy drop", "Measured latency", "Exit rates", "Agreement with the model"]) expect(html).toContain(heading);
    expect((html.match(/<svg /g) ?? []).length).toBe(4);
    // The frontier as the search saw it (fitted tuning drops, the default), with observed drops beside it.
    for (const series of ["tuning set, fitted drop", "tuning set, observed drop", "certification set"]) expect(html).toContain(series);
    // Self-contained: no scripts, no external resources.
    expect(html).not.toMatch(/<script|<link|src=|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    // Without a plan: the frontier comes from the profile.
    expect(runCli(["report", path.join(dir, "p.json"), "-o", path.join(dir, "r2.html")]).code).toBe(0);
    expect(fs.readFileSync(path.join(dir, "r2.html"), "utf8")).toContain("Latency against accuracy drop");
    // Rendered in headless Chromium when it is installed (Debian package chromium).
    if (fs.existsSync("/usr/bin/chromium")) {
      const png = path.join(dir, "report.png");
      spawnSync("bash", [path.join(ROOT, "bench/report-screenshot.sh"), out, png], { encoding: "utf8", timeout: 60_000 });
      expect(fs.statSync(png).size).toBeGreaterThan(20_000);
    }
  }, 120_000);
});
