// One minified ESM file of the hooks (dist/sluice-react.min.js), with React
// and @sluice/client left out (the app has them): what the size in the
// README measures.
import { build } from "esbuild";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const out = new URL("../dist/sluice-react.min.js", import.meta.url).pathname;
await build({
  entryPoints: [new URL("../dist/index.js", import.meta.url).pathname],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  external: ["react", "@sluice/client"],
  outfile: out,
  logLevel: "warning",
});
const bytes = readFileSync(out);
console.log(`dist/sluice-react.min.js: ${bytes.length} bytes minified, ${gzipSync(bytes, { level: 9 }).length} bytes gzipped`);
