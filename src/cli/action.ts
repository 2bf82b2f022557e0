/**
 * The GitHub Action (action.yml at the repository root): its inputs arrive as environment
 * variables, become an `ee-tool run` command line, and the run writes the step outputs and the job
 * summary (ci-output.ts). Everything here runs without GitHub: tests set the same variables.
 */
import { EeToolError } from "../errors.js";
import { main, printError } from "./main.js";

/** action.yml's inputs and the variables its step passes them in. */
export const ACTION_INPUTS = {
  config: "INPUT_CONFIG",
  out: "INPUT_OUT",
  force: "INPUT_FORCE",
  junit: "INPUT_JUNIT",
  assert: "INPUT_ASSERT",
} as const;

/** action.yml's outputs: what `run` appends to $GITHUB_OUTPUT. */
export const ACTION_OUTPUTS = ["verdict", "saving", "predicted-saving", "drop", "max-drop", "artifacts"] as const;

function flag(env: NodeJS.ProcessEnv, name: keyof typeof ACTION_INPUTS, dflt: boolean): boolean {
  const v = (env[ACTION_INPUTS[name]] ?? "").trim().toLowerCase();
  if (v === "") return dflt;
  if (v === "true" || v === "false") return v === "true";
  throw new EeToolError("USAGE", `action input '${name}' must be true or false, got '${v}'`, { hint: "Set it in the workflow's `with:` block as 'true' or 'false'." });
}

/** The `ee-tool run` arguments for the action's inputs. */
export function actionArgv(env: NodeJS.ProcessEnv): string[] {
  const get = (name: keyof typeof ACTION_INPUTS): string => (env[ACTION_INPUTS[name]] ?? "").trim();
  const config = get("config");
  if (!config) throw new EeToolError("USAGE", "action input 'config' is empty", { hint: "Give the path of an ee-tool run configuration (docs/run.schema.json) in the workflow's `with: config:`." });
  return ["run", config, ...(get("out") ? ["--out", get("out")] : []), ...(flag(env, "force", false) ? ["--force"] : []), ...(get("junit") ? ["--junit", get("junit")] : [])];
}

/**
 * Run the action; resolves to the step's exit status. A failed assertion (status 3) fails the step
 * unless the input `assert` is false; the outputs say `verdict=fail` either way.
 */
export async function actionMain(env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let argv: string[];
  let assert: boolean;
  try {
    argv = actionArgv(env);
    assert = flag(env, "assert", true);
  } catch (e) {
    return printError(e);
  }
  const code = await main(["node", "ee-tool", ...argv]);
  if (code === 3 && env.GITHUB_ACTIONS === "true") process.stdout.write("::error title=ee-tool::the early-exit plan failed its assertions (see the job summary)\n");
  return code === 3 && !assert ? 0 : code;
}
