// The package's JavaScript, built by esbuild from src/ (tsc emits only the
// .d.ts files):
// - dist/index.js and dist/adapters.js, the entries package.json "exports"
//   names: one ESM file each, not minified (the app's bundler minifies), with
//   the private and @internal members renamed (see mangleProps below), so an
//   app that bundles the package gets the small names too;
// - dist/sluice-client.min.js, dist/index.js minified: what the demo page of
//   `sluice dev` loads.
// Then it prints the sizes, gzip -9: the minified bundle, and what an app
// gets, i.e. each entry of the package bundled and minified as an app's
// bundler does (esbuild --minify, no property renaming).
import { build } from "esbuild";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";

const path = (p) => new URL(`../${p}`, import.meta.url).pathname;
const dist = path("dist");

// JavaScript left by an older build (tsc used to emit one file per module).
for (const f of readdirSync(dist)) {
  if (f.endsWith(".js") || f.endsWith(".js.map")) rmSync(join(dist, f));
}

const common = {
  bundle: true,
  format: "esm",
  target: "es2020",
  logLevel: "warning",
};
// Private and @internal members are named `_name` (src/): renamed to a
// letter or two. Public names, wire fields and the fields kept in storage
// have no leading underscore, so they are never renamed. One cache for all
// the entries, so a name is renamed alike in each (dist/adapters.js imports
// only types of the core today; the cache keeps that safe if that changes).
let mangleCache = {};
for (const entry of ["index", "adapters"]) {
  const r = await build({
    ...common,
    entryPoints: [path(`src/${entry}.ts`)],
    tsconfig: path("tsconfig.json"),
    mangleProps: /^_/,
    mangleCache,
    outfile: path(`dist/${entry}.js`),
  });
  mangleCache = r.mangleCache;
}
await build({
  ...common,
  entryPoints: [path("dist/index.js")],
  minify: true,
  outfile: path("dist/sluice-client.min.js"),
});

const gz = (bytes) => gzipSync(bytes, { level: 9 }).length;
const min = readFileSync(path("dist/sluice-client.min.js"));
console.log(`dist/sluice-client.min.js: ${min.length} bytes minified, ${gz(min)} bytes gzipped`);

// What an app gets: `export * from` the entry, bundled and minified.
const tmp = mkdtempSync(join(tmpdir(), "sluice-client-app-"));
try {
  for (const entry of ["index", "adapters"]) {
    const app = join(tmp, `${entry}.mjs`);
    writeFileSync(app, `export * from ${JSON.stringify(path(`dist/${entry}.js`))};\n`);
    const r = await build({ ...common, entryPoints: [app], minify: true, write: false });
    const bytes = r.outputFiles[0].contents;
    console.log(`an app bundling dist/${entry}.js (esbuild --minify): ${bytes.length} bytes minified, ${gz(bytes)} bytes gzipped`);
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
