import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { CNN, ROOT, runCli, tmpDir } from "./helpers/fixtures.js";
import { niceTicks } from "../src/report/svg.js";

const FIX = (p: string): string => path.join(ROOT, "fixtures", p);

describe("ee-tool report", () => {
  it("writes one self-contained HTML file with the frontier, latency bars, exit rates and agreement curves", () => {
    const dir = tmpDir();
    const ee = path.join(dir, "m.ee.onnx");
    expect(runCli(["insert", CNN, "--calib", FIX("cnn/calib.npz"), "-o", ee, "-q"]).code).toBe(0);
    expect(runCli(["profile", ee, "--calib", FIX("cnn/calib.npz"), "--batch", "1", "--budget", "1500", "-o", path.join(dir, "p.json"), "-q"]).code).toBe(0);
    expect(runCli(["plan", path.join(dir, "p.json"), "--no-measure", "-o", path.join(dir, "plan.json"), "-q"]).code).toBe(0);
    const out = path.join(dir, "report.html");
    const r = runCli(["report", path.join(dir, "p.json"), path.join(dir, "plan.json"), "-o", out]);
    expect(r.code).toBe(0);
    const html = fs.readFileSync(out, "utf8");
    for (const heading of ["Latency against accuracy drop", "Measured latency", "Exit rates", "Agreement with the model"]) expect(html).toContain(heading);
    expect((html.match(/<svg /g) ?? []).length).toBe(4);
    // The frontier as the search saw it (fitted tuning drops, the default), with observed drops beside it.
    for (const series of ["tuning set, fitted drop", "tuning set, observed drop", "certification set"]) expect(html).toContain(series);
    // The frontier is zoomed to four times the constraint (1 point by default), with round ticks,
    // the constraint and the model drawn, the rest summarised, and its operating points tabled.
    const frontier = html.slice(html.indexOf("Latency against accuracy drop"), html.indexOf("Measured latency"));
    const xTicks = [...frontier.matchAll(/<text x="[\d.]+" y="270" font-size="11" text-anchor="middle">([^<]+)<\/text>/g)].map((m) => m[1]);
    expect(xTicks).toEqual(["0", "1", "2", "3", "4"]);
    expect(frontier).toContain("max drop 1.00 pts");
    expect(frontier).toMatch(/model \d\.\d{3} ms/);
    expect(frontier).toMatch(/<h3>Configurations along the frontier<\/h3>/);
    expect(frontier).toMatch(/<tr class="plan">.*plan \(certified\)/);
    const rows = frontier.match(/<tr>/g)?.length ?? 0;
    expect(rows).toBeGreaterThanOrEqual(4);
    expect(rows).toBeLessThanOrEqual(13);
    // Legends sit below the plot area (y > 300), never on the lines.
    const legendY = [...frontier.matchAll(/<text x="[\d.]+" y="([\d.]+)" font-size="11">(tuning set|certification set)/g)].map((m) => Number(m[1]));
    expect(legendY.length).toBe(3);
    for (const y of legendY) expect(y).toBeGreaterThan(300);
    // Self-contained: no scripts, no external resources.
    expect(html).not.toMatch(/<script|<link|src=|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    // A plan with operating points lists them.
    expect(runCli(["plan", path.join(dir, "p.json"), "--points", "--no-measure", "-o", path.join(dir, "points.json"), "-q"]).code).toBe(0);
    expect(runCli(["report", path.join(dir, "p.json"), path.join(dir, "points.json"), "-o", path.join(dir, "r3.html")]).code).toBe(0);
    const withPoints = fs.readFileSync(path.join(dir, "r3.html"), "utf8");
    expect(withPoints).toContain("<h2>Operating points</h2>");
    expect(withPoints.slice(withPoints.indexOf("<h2>Operating points")).match(/<tr( class="plan")?><td class="n">\d<\/td>/g)?.length).toBe(5);
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

describe("chart ticks", () => {
  it("are round values covering the range", () => {
    expect(niceTicks(0, 13.6)).toEqual([0, 5, 10, 15]);
    expect(niceTicks(0, 4)).toEqual([0, 1, 2, 3, 4]);
    expect(niceTicks(0.2, 0.826)).toEqual([0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(0.21, 0.52)).toEqual([0.2, 0.3, 0.4, 0.5, 0.6]);
    expect(niceTicks(87.79, 100)).toEqual([87.5, 90, 92.5, 95, 97.5, 100]);
    expect(niceTicks(0, 1)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(5, 5)).toEqual([5, 6, 7, 8, 9, 10]);
  });
});
