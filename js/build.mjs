// Bundle the widgets' TypeScript into ../widgets/static (one ESM file per widget),
// or, with --tests, the JS unit tests into dist-tests/ for `node --test`.
import * as esbuild from "esbuild";
import { readdirSync, rmSync } from "node:fs";

const tests = process.argv.includes("--tests");
const widgets = ["attention", "neurons", "steering", "patching", "lens", "neuron-dashboard", "feature-list", "feature-dashboard", "agent", "circuit", "attribution", "static-runtime"];

if (tests) {
  rmSync("dist-tests", { recursive: true, force: true });
  const entries = readdirSync("tests").filter((f) => f.endsWith(".test.ts")).map((f) => `tests/${f}`);
  await esbuild.build({
    entryPoints: entries,
    outdir: "dist-tests",
    outExtension: { ".js": ".mjs" },
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node18",
  });
} else {
  await esbuild.build({
    entryPoints: widgets.map((w) => `src/${w}.ts`),
    outdir: "../widgets/static",
    bundle: true,
    format: "esm",
    target: "es2020",
    minify: !process.argv.includes("--dev"),
    sourcemap: false,
    loader: { ".css": "text" },
  });
}
