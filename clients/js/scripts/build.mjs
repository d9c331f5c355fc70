// npm run build: dist/index.js + declarations for Node (tsc), and dist/browser.js, one
// self-contained ES module with no imports at all (esbuild), checked after bundling.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
process.chdir(root);

// `npm install ./clients/js` from another folder runs this (prepare) in a fresh clone
// without the build tools: install them here first, from the lock file.
const tools = ["node_modules/typescript/bin/tsc", "node_modules/esbuild/package.json", "node_modules/ws/package.json"];
if (!tools.every((f) => existsSync(join(root, f)))) {
  console.log("clients/js: installing the build tools from package-lock.json (npm ci --include=dev --ignore-scripts)");
  const npmCli = process.env.npm_execpath;
  const args = ["ci", "--include=dev", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"];
  if (npmCli && npmCli.endsWith(".js")) execFileSync(process.execPath, [npmCli, ...args], { stdio: "inherit" });
  else execFileSync("npm", args, { stdio: "inherit" });
}
const { build } = await import("esbuild");
rmSync("dist", { recursive: true, force: true });
const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
execFileSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], { stdio: "inherit" });
await build({
  entryPoints: ["src/browser.ts"],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2020",
  outfile: "dist/browser.js",
  legalComments: "none",
  logLevel: "warning",
});
const text = readFileSync("dist/browser.js", "utf8");
if (/(^|[;\s])import\s*[\s{*"'(]|\brequire\s*\(|^\s*export\s+[^;]*\bfrom\s/m.test(text)) {
  console.error("dist/browser.js must not import anything, but it does");
  process.exit(1);
}
console.log("built dist/index.js, dist/browser.js and declarations");
