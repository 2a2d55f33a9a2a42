// One minified ESM file of the client (dist/sluice-client.min.js): what the
// demo page loads, and what the bundle size in docs/client.md measures.
import { build } from "esbuild";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const out = new URL("../dist/sluice-client.min.js", import.meta.url).pathname;
await build({
  entryPoints: [new URL("../dist/index.js", import.meta.url).pathname],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  // Private and @internal members are named `_name` (src/): renamed to a
  // letter or two here. Public names, wire fields and the fields kept in
  // storage have no leading underscore, so they are never renamed.
  mangleProps: /^_/,
  outfile: out,
  logLevel: "warning",
});
const bytes = readFileSync(out);
console.log(`dist/sluice-client.min.js: ${bytes.length} bytes minified, ${gzipSync(bytes, { level: 9 }).length} bytes gzipped`);
