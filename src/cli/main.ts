/** The ee-tool command line: a thin layer over the library. */
import { Command, CommanderError } from "commander";
import { createRequire } from "node:module";
import { EeToolError, ExitCode, isEeToolError, messageOf } from "../errors.js";
import { registerInspect } from "./inspect.js";
import { registerConvert } from "./convert.js";
import { registerInsert } from "./insert.js";
import { registerProfile } from "./profile.js";
import { registerPlan } from "./plan.js";
import { registerEval } from "./eval.js";
import { registerReport } from "./report.js";
import { registerRun } from "./run.js";
import { registerReplan } from "./replan.js";
import { setQuiet } from "./io.js";

const require = createRequire(import.meta.url);
const pkg = require("../../package.json") as { version: string };

export function buildProgram(): Command {
  const program = new Command();
  program
    .name("ee-tool")
    .description("Turn an ONNX classifier or decoder LM into an early-exit model")
    .version(pkg.version)
    .option("--debug", "print stack traces for errors")
    .option("-q, --quiet", "no progress or messages on stderr")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride()
    .hook("preAction", (cmd) => setQuiet(Boolean(cmd.opts().quiet)));
  registerInspect(program);
  registerConvert(program);
  registerInsert(program);
  registerProfile(program);
  registerPlan(program);
  registerEval(program);
  registerReport(program);
  registerReplan(program);
  registerRun(program);
  for (const c of program.commands) c.exitOverride();
  return program;
}

/** Print an error as the CLI does (one line and a hint); returns the exit code it calls for. */
export function printError(e: unknown, debug = false): number {
  if (e instanceof CommanderError) {
    // Commander already printed its message (or the help/version text).
    return e.exitCode === 0 ? ExitCode.OK : ExitCode.USAGE;
  }
  if (isEeToolError(e)) {
    process.stderr.write(`ee-tool: error [${e.code}]: ${e.message}\n  hint: ${e.hint}\n`);
    if (debug && e.stack) process.stderr.write(e.stack + "\n");
    return e.exitCode;
  }
  const err = new EeToolError("INTERNAL", messageOf(e));
  process.stderr.write(`ee-tool: internal error: ${err.message}\n  hint: ${err.hint}\n`);
  if (debug && e instanceof Error && e.stack) process.stderr.write(e.stack + "\n");
  return ExitCode.INTERNAL;
}

/** Run the CLI; resolves to the process exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return (process.exitCode as number | undefined) ?? ExitCode.OK;
  } catch (e) {
    return printError(e, argv.includes("--debug"));
  }
}
