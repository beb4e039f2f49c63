// The published e2b JS SDK, unchanged, against orkestr's E2B-compatible
// API. Run by e2e/e2b_test.go with E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY set; E2B_PKG picks the SDK version (e2b or e2b-latest).
// Prints one line per check and exits non-zero if any failed.
import assert from 'node:assert/strict'

const pkg = process.env.E2B_PKG || 'e2b'
const { Sandbox, CommandExitError, TimeoutError, NotFoundError, SandboxError } = await import(pkg)

let failed = 0
async function check(name, fn) {
  const t0 = Date.now()
  try {
    await fn()
    console.log(`ok   ${name} (${Date.now() - t0} ms)`)
  } catch (err) {
    failed++
    console.log(`FAIL ${name}: ${err?.stack || err}`)
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const tag = `js-${pkg}-${Date.now()}`

const sbx = await Sandbox.create({ metadata: { suite: tag, n: '1', 'odd key%': 'a&b=c d' }, envs: { SBX_VAR: 'from-create' }, timeoutMs: 300_000 })
try {
  await check('lifecycle: info, isRunning', async () => {
    const info = await sbx.getInfo()
    assert.equal(info.sandboxId, sbx.sandboxId)
    assert.equal(info.state, 'running')
    assert.equal(info.metadata.suite, tag)
    assert.ok(info.endAt > info.startedAt)
    assert.equal(await sbx.isRunning(), true)
  })

  await check('lifecycle: setTimeout moves endAt', async () => {
    await sbx.setTimeout(120_000)
    const info = await sbx.getInfo()
    const left = info.endAt.getTime() - Date.now()
    assert.ok(left > 100_000 && left <= 125_000, `endAt in ${left} ms`)
    await sbx.setTimeout(300_000)
  })

  await check('commands: run, stdout, exit code 0, env from create', async () => {
    const r = await sbx.commands.run('echo hi; echo "$SBX_VAR"; echo err >&2')
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'hi\nfrom-create\n')
    assert.equal(r.stderr, 'err\n')
  })

  await check('commands: default user is user with home as cwd; root on request', async () => {
    const r = await sbx.commands.run('whoami; pwd')
    assert.equal(r.stdout, 'user\n/home/user\n')
    const root = await sbx.commands.run('whoami; pwd', { user: 'root' })
    assert.equal(root.stdout, 'root\n/root\n')
  })

  await check('template base: bash, python3, node, git', async () => {
    const r = await sbx.commands.run('python3 -c "print(6*7)" && node -e "console.log(6*7)" && git --version | cut -d" " -f1-2 && echo $BASH')
    assert.equal(r.stdout, '42\n42\ngit version\n/bin/bash\n')
  })

  await check('commands: envs, cwd, callbacks', async () => {
    const seen = []
    const r = await sbx.commands.run('echo "$A-$B"; pwd', {
      envs: { A: 'x', B: 'y z' }, cwd: '/tmp', onStdout: (d) => seen.push(d),
    })
    assert.equal(r.stdout, 'x-y z\n/tmp\n')
    assert.equal(seen.join(''), r.stdout)
  })

  await check('commands: non-zero exit throws CommandExitError', async () => {
    await assert.rejects(sbx.commands.run('echo out; exit 3'), (err) => {
      assert.ok(err instanceof CommandExitError, String(err))
      assert.equal(err.exitCode, 3)
      assert.equal(err.stdout, 'out\n')
      return true
    })
  })

  await check('commands: timeout kills the command', async () => {
    const t0 = Date.now()
    await assert.rejects(sbx.commands.run('sleep 30; echo late', { timeoutMs: 2000 }), (err) => err instanceof TimeoutError || err instanceof SandboxError)
    assert.ok(Date.now() - t0 < 20_000)
    await sleep(500)
    const ps = await sbx.commands.list()
    assert.ok(!ps.some((p) => p.args.join(' ').includes('sleep 30')), JSON.stringify(ps))
  })

  await check('commands: stdin', async () => {
    const h = await sbx.commands.run('cat', { background: true, stdin: true })
    await h.sendStdin('hello stdin\n')
    await sbx.commands.closeStdin(h.pid)
    const r = await h.wait()
    assert.equal(r.stdout, 'hello stdin\n')
  })

  await check('commands: connect, then stdin: the echo reaches the connected handler', async () => {
    const h = await sbx.commands.run('cat', { background: true, stdin: true, timeoutMs: 0 })
    await h.disconnect()
    for (let i = 0; i < 5; i++) {
      const seen = []
      const h2 = await sbx.commands.connect(h.pid, { onStdout: (d) => seen.push(d), timeoutMs: 0 })
      await sbx.commands.sendStdin(h.pid, `line ${i}\n`)
      for (let j = 0; j < 50 && !seen.join('').includes(`line ${i}\n`); j++) await sleep(100)
      assert.equal(seen.join(''), `line ${i}\n`, `connect ${i} sees the echo of what was sent after it returned`)
      await h2.disconnect()
    }
    assert.equal(await sbx.commands.kill(h.pid), true)
  })

  await check('commands: background, list, connect, kill', async () => {
    const h = await sbx.commands.run('for i in $(seq 1 300); do echo tick $i; sleep 0.2; done', { background: true, timeoutMs: 0 })
    assert.ok(h.pid > 0)
    const ps = await sbx.commands.list()
    const p = ps.find((x) => x.pid === h.pid)
    assert.ok(p, JSON.stringify(ps))
    assert.equal(p.cmd, '/bin/bash')
    await h.disconnect()
    const seen = []
    const h2 = await sbx.commands.connect(h.pid, { onStdout: (d) => seen.push(d), timeoutMs: 0 })
    for (let i = 0; i < 50 && !seen.join('').includes('tick'); i++) await sleep(100)
    assert.ok(seen.join('').includes('tick'), 'connect sees output')
    assert.equal(await sbx.commands.kill(h.pid), true)
    await assert.rejects(h2.wait(), (err) => err instanceof CommandExitError)
    assert.equal(await sbx.commands.kill(h.pid), false)
  })

  await check('files: write/read text and bytes, relative to home', async () => {
    const info = await sbx.files.write('notes/a.txt', 'héllo\n')
    assert.equal(info.path, '/home/user/notes/a.txt')
    assert.equal(await sbx.files.read('/home/user/notes/a.txt'), 'héllo\n')
    const bytes = new Uint8Array(256).map((_, i) => i)
    await sbx.files.write('/tmp/bin.dat', bytes)
    assert.deepEqual(await sbx.files.read('/tmp/bin.dat', { format: 'bytes' }), bytes)
    const r = await sbx.commands.run('stat -c %U notes/a.txt; echo more >> notes/a.txt && cat notes/a.txt')
    assert.equal(r.stdout, 'user\nhéllo\nmore\n')
    assert.equal(await sbx.files.read('/tmp/empty-none.txt').catch((e) => e instanceof NotFoundError), true)
  })

  await check('files: gzip upload and download, several files at once', async () => {
    await sbx.files.write('/tmp/gz.txt', 'zipped '.repeat(1000), { gzip: true })
    assert.equal(await sbx.files.read('/tmp/gz.txt', { gzip: true }), 'zipped '.repeat(1000))
    const infos = await sbx.files.write([{ path: '/tmp/m/1.txt', data: 'one' }, { path: '/tmp/m/2.txt', data: 'two' }])
    assert.equal(infos.length, 2)
    assert.equal(await sbx.files.read('/tmp/m/2.txt'), 'two')
  })

  await check('files: list with depth, exists, getInfo, makeDir, rename, remove', async () => {
    assert.equal(await sbx.files.makeDir('/tmp/d/e'), true)
    assert.equal(await sbx.files.makeDir('/tmp/d/e'), false)
    await sbx.files.write('/tmp/d/e/f.txt', 'f')
    const l1 = await sbx.files.list('/tmp/d')
    assert.deepEqual(l1.map((e) => [e.name, e.type]), [['e', 'dir']])
    const l2 = await sbx.files.list('/tmp/d', { depth: 2 })
    assert.deepEqual(l2.map((e) => e.path).sort(), ['/tmp/d/e', '/tmp/d/e/f.txt'])
    assert.equal(await sbx.files.exists('/tmp/d/e/f.txt'), true)
    assert.equal(await sbx.files.exists('/tmp/d/nope'), false)
    const st = await sbx.files.getInfo('/tmp/d/e/f.txt')
    assert.equal(st.type, 'file')
    assert.equal(st.size, 1)
    const moved = await sbx.files.rename('/tmp/d/e/f.txt', '/tmp/d/g.txt')
    assert.equal(moved.path, '/tmp/d/g.txt')
    assert.equal(await sbx.files.read('/tmp/d/g.txt'), 'f')
    await sbx.files.remove('/tmp/d')
    assert.equal(await sbx.files.exists('/tmp/d'), false)
  })

  await check('files: watchDir', async () => {
    await sbx.files.makeDir('/tmp/w')
    const events = []
    const handle = await sbx.files.watchDir('/tmp/w', (e) => events.push(e), { recursive: true })
    await sbx.files.write('/tmp/w/x.txt', 'x')
    await sbx.commands.run('mkdir -p /tmp/w/sub && echo y > /tmp/w/sub/y.txt && rm /tmp/w/x.txt')
    for (let i = 0; i < 50 && !events.some((e) => e.type === 'remove'); i++) await sleep(100)
    await handle.stop()
    const names = events.map((e) => `${e.type}:${e.name}`)
    assert.ok(names.includes('create:x.txt'), names.join(','))
    assert.ok(names.includes('create:sub/y.txt') || names.includes('write:sub/y.txt'), names.join(','))
    assert.ok(names.includes('remove:x.txt'), names.join(','))
  })

  await check('list: metadata filter, state filter, paging', async () => {
    const other = await Sandbox.create({ metadata: { suite: tag, n: '2' } })
    try {
      const p = Sandbox.list({ query: { metadata: { suite: tag } }, limit: 1 })
      const first = await p.nextItems()
      assert.equal(first.length, 1)
      assert.ok(p.hasNext)
      const second = await p.nextItems()
      assert.equal(second.length, 1)
      assert.notEqual(first[0].sandboxId, second[0].sandboxId)
      const only = await Sandbox.list({ query: { metadata: { suite: tag, n: '2' }, state: ['running'] } }).nextItems()
      assert.deepEqual(only.map((s) => s.sandboxId), [other.sandboxId])
      const odd = await Sandbox.list({ query: { metadata: { suite: tag, 'odd key%': 'a&b=c d' } } }).nextItems()
      assert.deepEqual(odd.map((s) => s.sandboxId), [sbx.sandboxId])
      const paused = await Sandbox.list({ query: { metadata: { suite: tag }, state: ['paused'] } }).nextItems()
      assert.equal(paused.length, 0)
    } finally {
      await other.kill()
    }
  })

  await check('pause and resume via connect keep files and processes', async () => {
    await sbx.files.write('/tmp/keep.txt', 'kept')
    assert.equal(await sbx.pause(), true)
    const info = await Sandbox.getInfo(sbx.sandboxId)
    assert.equal(info.state, 'paused')
    const back = await Sandbox.connect(sbx.sandboxId)
    assert.equal((await back.getInfo()).state, 'running')
    assert.equal(await back.files.read('/tmp/keep.txt'), 'kept')
    assert.equal((await back.commands.run('echo alive')).stdout, 'alive\n')
  })

  await check('metrics', async () => {
    const m = await sbx.getMetrics()
    assert.ok(Array.isArray(m))
  })

  await check('killed during a run: the run fails, the sandbox is gone', async () => {
    const victim = await Sandbox.create()
    const run = victim.commands.run('sleep 60').then(() => null, (err) => err)
    await sleep(1500)
    assert.equal(await Sandbox.kill(victim.sandboxId), true)
    const err = await run
    assert.ok(err instanceof TimeoutError || err instanceof SandboxError, String(err))
    await assert.rejects(Sandbox.getInfo(victim.sandboxId), (err) => err instanceof NotFoundError || /not found/i.test(String(err)))
    assert.equal(await Sandbox.kill(victim.sandboxId), false)
  })

  await check('unsupported calls name what orkestr lacks', async () => {
    await assert.rejects(Sandbox.create({ lifecycle: { onTimeout: 'pause' } }), (err) => /orkestr does not support/.test(String(err)))
    await assert.rejects(sbx.files.write('/tmp/md.txt', 'x', { metadata: { a: 'b' } }), (err) => /0\.6\.2|metadata/i.test(String(err)))
  })
} finally {
  await sbx.kill().catch(() => {})
}
console.log(failed ? `${failed} check(s) failed` : 'all checks passed')
process.exit(failed ? 1 : 0)
