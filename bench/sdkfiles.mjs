// Upload and download of one local file through the TypeScript SDK (the
// built sdk/js), for BenchmarkDataFilesSDKs. Env: ORKESTR_BASE_URL,
// ORKESTR_API_KEY, SANDBOX_ID, LOCAL. Prints one JSON line: the seconds of
// each direction and the bytes that came back.
import { createReadStream, statSync } from "node:fs";
import { Readable } from "node:stream";
import { Sandbox } from "../sdk/js/dist/esm/index.js";

const sbx = await Sandbox.get(process.env.SANDBOX_ID);
const size = statSync(process.env.LOCAL).size;
let t0 = performance.now();
await sbx.files.writeStream("/workspace/ts.bin", Readable.toWeb(createReadStream(process.env.LOCAL, { highWaterMark: 1 << 20 })));
const up = (performance.now() - t0) / 1000;
t0 = performance.now();
let n = 0;
for await (const b of await sbx.files.readStream("/workspace/ts.bin")) n += b.length;
const down = (performance.now() - t0) / 1000;
if (n !== size) throw new Error(`downloaded ${n} bytes of ${size}`);
console.log(JSON.stringify({ up_s: up, down_s: down, bytes: n }));
