// The package is "type": "module"; this marks the CommonJS build as such so
// that Node loads dist/cjs/*.js with require().
import { writeFileSync } from "node:fs";
writeFileSync(new URL("../dist/cjs/package.json", import.meta.url), '{\n  "type": "commonjs"\n}\n');
