#!/usr/bin/env node
// Entry point of the GitHub Action (action.yml): inputs come as INPUT_* environment variables.
import { actionMain } from "../dist/cli/action.js";

actionMain(process.env).then((code) => {
  process.exitCode = code;
});
