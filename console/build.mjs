// console/build.mjs — builds the web console (run by contrib/build-console):
//   1. generates the typed API client from proto/openapi.yaml into
//      src/generated/openapi.ts (openapi-typescript);
//   2. type-checks everything with tsc --noEmit (strict): a changed
//      contract breaks here, not in a user's browser;
//   3. bundles src/main.ts (and the CSS it imports) with esbuild into
//      <out>/assets/<name>-<hash>.{js,css} and writes <out>/index.html
//      pointing at them (files under assets/ are served immutable).
// Usage: node console/build.mjs [OUT_DIR]   (default: build/console)
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const top = path.resolve(here, "..");
const bin = (name) => path.join(top, "node_modules", ".bin", name);
const out = path.resolve(process.argv[2] ?? path.join(top, "build", "console"));
const say = (m) => process.stderr.write(`console/build: ${m}\n`);

// 1. the typed client
const genDir = path.join(here, "src", "generated");
fs.mkdirSync(genDir, { recursive: true });
const genFile = path.join(genDir, "openapi.ts");
const spec = path.join(top, "proto", "openapi.yaml");
say(`openapi-typescript ${path.relative(top, spec)} -> ${path.relative(top, genFile)}`);
execFileSync(bin("openapi-typescript"), [spec, "-o", genFile, "--alphabetize"], {
	stdio: ["ignore", "ignore", "inherit"],
});

// 2. types
say("tsc --noEmit (strict)");
execFileSync(bin("tsc"), ["--noEmit", "-p", path.join(here, "tsconfig.json")], { stdio: "inherit" });

// 3. bundle
const esbuild = await import(path.join(top, "node_modules", "esbuild", "lib", "main.js"));
const staging = `${out}.tmp-${process.pid}`;
fs.rmSync(staging, { recursive: true, force: true });
const result = await esbuild.build({
	entryPoints: [path.join(here, "src", "main.ts")],
	bundle: true,
	format: "esm",
	target: ["es2022"],
	minify: true,
	sourcemap: false,
	legalComments: "none",
	outdir: staging,
	entryNames: "assets/[name]-[hash]",
	assetNames: "assets/[name]-[hash]",
	metafile: true,
	logLevel: "warning",
});
const outputs = Object.keys(result.metafile.outputs).map((p) => path.relative(staging, path.resolve(top, p)));
const js = outputs.find((p) => p.endsWith(".js"));
const css = outputs.find((p) => p.endsWith(".css"));
if (!js || !css) throw new Error(`esbuild wrote no JS or CSS: ${outputs.join(", ")}`);
let html = fs.readFileSync(path.join(here, "index.html"), "utf8");
html = html.replace("{{APP_JS}}", `./${js}`).replace("{{APP_CSS}}", `./${css}`);
if (/\{\{[A-Z_]+\}\}/.test(html)) throw new Error("index.html has an unreplaced placeholder");
fs.writeFileSync(path.join(staging, "index.html"), html);
// swap in the new tree at once, so the daemon never serves half a build
const old = `${out}.old-${process.pid}`;
if (fs.existsSync(out)) fs.renameSync(out, old);
fs.renameSync(staging, out);
fs.rmSync(old, { recursive: true, force: true });
const digest = createHash("sha256").update(html).digest("hex").slice(0, 12);
say(`wrote ${path.relative(top, out) || out}: index.html (${digest}), ${js}, ${css}`);
