// Sandbox.create() → commands.run('echo hi') through the published e2b JS
// SDK against orkestr's E2B-compatible API, beside the same through
// orkestr's own TypeScript SDK (sdk/js, built), interleaved in one run.
// Env: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY, ORKESTR_BASE_URL,
// ORKESTR_API_KEY, BENCH_TEMPLATE (default python-3.11), BENCH_N (default 20).
// Prints one JSON line: the medians and quartiles in ms.
import { Sandbox as E2BSandbox } from 'e2b'
import { Sandbox as OrkSandbox } from '../../sdk/js/dist/esm/index.js'

const template = process.env.BENCH_TEMPLATE || 'python-3.11'
const n = Number(process.env.BENCH_N || 20)
const times = { e2b: [], orkestr: [] }

async function viaE2B() {
  const t0 = performance.now()
  const sbx = await E2BSandbox.create(template, { allowInternetAccess: false })
  const r = await sbx.commands.run('echo hi')
  const dt = performance.now() - t0
  if (r.stdout !== 'hi\n') throw new Error(`e2b: ${JSON.stringify(r.stdout)}`)
  await sbx.kill()
  return dt
}

async function viaOrkestr() {
  const t0 = performance.now()
  const sbx = await OrkSandbox.create({ template })
  const r = await sbx.exec('echo hi')
  const dt = performance.now() - t0
  if (r.stdout !== 'hi\n') throw new Error(`orkestr: ${JSON.stringify(r.stdout)}`)
  await sbx.terminate()
  return dt
}

// One untimed warm-up of each (connections, module loading).
await viaE2B()
await viaOrkestr()
for (let i = 0; i < n; i++) {
  // Alternate which goes first, so neither always follows the other's kill.
  if (i % 2 === 0) {
    times.e2b.push(await viaE2B())
    times.orkestr.push(await viaOrkestr())
  } else {
    times.orkestr.push(await viaOrkestr())
    times.e2b.push(await viaE2B())
  }
}
const q = (a, p) => {
  const s = [...a].sort((x, y) => x - y)
  return +s[Math.min(s.length - 1, Math.floor(p * s.length))].toFixed(1)
}
const out = { n, template }
for (const k of Object.keys(times)) {
  out[k] = { p25: q(times[k], 0.25), median: q(times[k], 0.5), p75: q(times[k], 0.75) }
}
out.ratio = +(out.e2b.median / out.orkestr.median).toFixed(2)
console.log(JSON.stringify(out))
