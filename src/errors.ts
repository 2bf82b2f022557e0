/**
 * Errors a user can cause. Each has a stable code (catalogued in docs/errors.md), a one-line
 * message, a hint, and the process exit code the CLI uses.
 */

/** Exit codes: 0 success, 1 usage, 2 input problem, 3 constraint or assertion failed, 4 internal error. */
export const ExitCode = { OK: 0, USAGE: 1, INPUT: 2, CONSTRAINT: 3, INTERNAL: 4 } as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export const ErrorCodes = {
  USAGE: { exit: ExitCode.USAGE, hint: "Run the command with --help for its options and an example." },
  FILE_NOT_FOUND: { exit: ExitCode.INPUT, hint: "Check the path; relative paths are resolved from the current directory." },
  NOT_A_FILE: { exit: ExitCode.INPUT, hint: "Give the path of a file, not a directory." },
  READ_FAILED: { exit: ExitCode.INPUT, hint: "Check the file's permissions." },
  WRITE_FAILED: { exit: ExitCode.INPUT, hint: "Check that the output directory exists and is writable." },
  NOT_ONNX: { exit: ExitCode.INPUT, hint: "The file is not an ONNX ModelProto; check that it is the exported .onnx file and not truncated." },
  MODEL_INVALID: { exit: ExitCode.INPUT, hint: "The model's graph is inconsistent; check it with onnx.checker or re-export it." },
  EXTERNAL_DATA_PATH: { exit: ExitCode.INPUT, hint: "External data must live in the model's directory or below it, named by a relative path without '..'." },
  EXTERNAL_DATA_MISSING: { exit: ExitCode.INPUT, hint: "Copy the external data file next to the model (it is named by the tensor's 'location')." },
  EXTERNAL_DATA_SHORT: { exit: ExitCode.INPUT, hint: "The external data file is shorter than the model says; it is probably truncated or from another export." },
  EXTERNAL_DATA_INVALID: { exit: ExitCode.INPUT, hint: "The tensor's external_data entries (location, offset, length) are malformed." },
  TENSOR_INVALID: { exit: ExitCode.INPUT, hint: "The tensor's data does not match its dims and data_type." },
  UNSUPPORTED: { exit: ExitCode.INPUT, hint: "This case is not supported yet; see the docs for what is." },
  MODEL_TOO_LARGE: { exit: ExitCode.INPUT, hint: "Protobuf cannot hold more than 2 GB: save with --external-data." },
  CALIB_INVALID: { exit: ExitCode.INPUT, hint: "Calibration data must be .npy (C order, little-endian), .npz, or a directory of ONNX input_N.pb files." },
  CALIB_MISMATCH: { exit: ExitCode.INPUT, hint: "Give one array per model input (--calib name=file.npy,...), with the model's dtype and shape and the same number of samples." },
  CONFIG_INVALID: { exit: ExitCode.INPUT, hint: "Check the configuration against docs/run.schema.json (every field is described there)." },
  FIXED_BATCH: { exit: ExitCode.INPUT, hint: "Re-export the model with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={'<input>': {0: 'batch'}}), or dynamo=True with dynamic_shapes), or use the batch size it fixes." },
  NOT_A_CLASSIFIER: { exit: ExitCode.INPUT, hint: "ee-tool needs a classifier whose output is logits of shape [N, classes]; choose the logits output with --output." },
  EXIT_NOT_FOUND: { exit: ExitCode.INPUT, hint: "Run `ee-tool inspect <model>` to list the candidate exit points and their ids." },
  NO_EXIT_POINTS: { exit: ExitCode.INPUT, hint: "The graph has no single tensor that all paths pass through; ramps need one." },
  NO_RAMPS: { exit: ExitCode.INPUT, hint: "Run `ee-tool insert` on the model first and use its output." },
  TOO_FEW_SAMPLES: { exit: ExitCode.INPUT, hint: "Give more calibration samples: those that fitted the ramps are never scored." },
  PROFILE_INVALID: { exit: ExitCode.INPUT, hint: "Re-run `ee-tool profile`; keep the profile's .bin sidecar next to its JSON." },
  PROFILE_MISMATCH: { exit: ExitCode.INPUT, hint: "Merge only shards of one model, profiled with the same settings and calibration data." },
  CONSTRAINT_INFEASIBLE: { exit: ExitCode.CONSTRAINT, hint: "Relax the constraint (--max-drop, --confidence) or give more data." },
  TELEMETRY_INVALID: { exit: ExitCode.INPUT, hint: "Log telemetry with the plan's own operating points (ee-tool's FeedbackLog, or lines of {\"conf\": [...], \"pred\": [...], \"final\": k} after the header); see docs/serve.md." },
  MODEL_CHANGED: { exit: ExitCode.INPUT, hint: "Profile and plan the model again." },
  RUNTIME_FAILED: { exit: ExitCode.INPUT, hint: "onnxruntime could not load or run the model; re-run with --debug for its message." },
  INTERNAL: { exit: ExitCode.INTERNAL, hint: "This is a bug in ee-tool; re-run with --debug and report the stack trace." },
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export class EeToolError extends Error {
  readonly code: ErrorCode;
  readonly hint: string;
  readonly exitCode: ExitCodeValue;

  constructor(code: ErrorCode, message: string, options?: { hint?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "EeToolError";
    this.code = code;
    this.hint = options?.hint ?? ErrorCodes[code].hint;
    this.exitCode = ErrorCodes[code].exit;
  }
}

export function isEeToolError(e: unknown): e is EeToolError {
  return e instanceof EeToolError;
}

/** The message of any thrown value. */
export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
