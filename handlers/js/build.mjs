// Builds one JavaScript handler into a component:
//   node build.mjs <handler dir> <wit dir> <world> <out.wasm>
// handlers/build-lang js runs it (see guest-sdk/docs/javascript.md).
import { readFile, writeFile } from 'node:fs/promises';
import { componentize } from '@bytecodealliance/componentize-js';

const [dir, witPath, worldName, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: node build.mjs <handler dir> <wit dir> <world> <out.wasm>');
  process.exit(2);
}
const source = await readFile(`${dir}/handler.js`, 'utf8');
const { component } = await componentize(source, {
  witPath,
  worldName,
  // No outbound HTTP and no fetch event: the host links only an empty WASI
  // context (cli, clocks, filesystem, io, random, sockets) and refuses
  // components that import wasi:http. stdio stays so that uncaught errors
  // are reported on stderr, which the host captures.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
console.error(`wrote ${out} (${component.length} bytes)`);
