package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// BenchmarkDataExecStreamClients streams -data.stream-mb of output through
// POST …/exec/stream to every client — the CLI (`orkestr sandbox exec`,
// its stdout a pipe to this process, and again a file), the Go SDK, the
// TypeScript SDK (sdk/js/dist, built by `make test-js-run`) and the Python
// SDK (sdk/python/.venv, made by `make test-python`) — for three commands:
// zeros (`head -c N /dev/zero`, 8 KiB writes), the same zeros in 1 MB
// writes (`dd`) and random bytes (a file of N random bytes made once, then
// `cat` of it, 128 KiB writes), each against the same command to
// /dev/null inside the sandbox in the same iteration.
// Reported per client and command: MB/s (median) and the client's CPU per
// GB (the CLI process's rusage; for the SDKs the CPU the process spent over
// the stream alone, without its start-up). The SDK scripts stream the
// command twice in one process: cpu-s/GB is the second stream's, what a
// long-lived program pays per GB, and first-cpu-s/GB the first's, which
// also pays once for growing the process's memory (in Node ≈ 100 MB of
// fresh pages, since V8 frees chunks only at a collection: about 0.1 s,
// half a second per GB of a 200 MB stream). A client whose SDK is not
// built is skipped with a log line.
func BenchmarkDataExecStreamClients(b *testing.B) {
	s := startServer(b, 0, templateName)
	ctx := timeout(b, 40*time.Minute)
	sb := s.create(ctx, "medium")
	b.Cleanup(func() { s.terminate(sb) })
	n := int64(*dataStreamMB) * 1e6
	inSandbox(ctx, b, sb, fmt.Sprintf("head -c %d /dev/urandom > /tmp/random.bin", n))
	commands := []struct{ name, cmd string }{
		{"zeros", fmt.Sprintf("head -c %d /dev/zero", n)},
		// The same zeros in writes of 1 MB instead of head's 8 KiB: what
		// the path from the agent to the client carries when the command's
		// write syscalls do not set the pace.
		{"zeros-1mb", fmt.Sprintf("dd if=/dev/zero bs=1000000 count=%d status=none", *dataStreamMB)},
		{"random", "cat /tmp/random.bin"},
	}
	clients := streamClients(b, s)
	type key struct{ client, cmd string }
	speed := map[key]*rates{}
	cpu := map[key]*samples{}
	firstCPU := map[key]*samples{}
	inside := map[string]*rates{}
	piped := map[string]*rates{}
	for _, c := range commands {
		inside[c.name] = &rates{}
		piped[c.name] = &rates{}
		for _, cl := range clients {
			speed[key{cl.name, c.name}] = &rates{}
			cpu[key{cl.name, c.name}] = &samples{}
			firstCPU[key{cl.name, c.name}] = &samples{}
		}
	}
	for b.Loop() {
		for _, c := range commands {
			res := inSandbox(ctx, b, sb, c.cmd+" >/dev/null")
			inside[c.name].add(mbps(n, time.Duration(max(res.DurationMS, 1))*time.Millisecond))
			// The same bytes through a pipe to another process in the
			// sandbox, as they go to the agent: what gVisor's pipe costs.
			res = inSandbox(ctx, b, sb, c.cmd+" | cat >/dev/null")
			piped[c.name].add(mbps(n, time.Duration(max(res.DurationMS, 1))*time.Millisecond))
			line := fmt.Sprintf("%s: inside %.0f MB/s, piped %.0f MB/s", c.name, inside[c.name].samples[len(inside[c.name].samples)-1],
				piped[c.name].samples[len(piped[c.name].samples)-1])
			for _, cl := range clients {
				r := cl.stream(ctx, b, sb, c.cmd)
				if r.bytes != n {
					b.Fatalf("%s, %s: %d bytes of %d", cl.name, c.name, r.bytes, n)
				}
				k := key{cl.name, c.name}
				speed[k].add(mbps(n, r.wall))
				cpu[k].add(r.cpu.Seconds() / (float64(n) / 1e9))
				line += fmt.Sprintf(", %s %.0f MB/s %.2f s/GB", cl.name, mbps(n, r.wall), r.cpu.Seconds()/(float64(n)/1e9))
				if r.firstCPU > 0 {
					firstCPU[k].add(r.firstCPU.Seconds() / (float64(n) / 1e9))
					line += fmt.Sprintf(" (first %.2f)", r.firstCPU.Seconds()/(float64(n)/1e9))
				}
			}
			b.Log(line)
		}
	}
	for _, c := range commands {
		inside[c.name].report(b, c.name+"-inside-MB/s")
		piped[c.name].report(b, c.name+"-piped-MB/s")
		for _, cl := range clients {
			speed[key{cl.name, c.name}].report(b, c.name+"-"+cl.name+"-MB/s")
			b.ReportMetric(cpu[key{cl.name, c.name}].median(), c.name+"-"+cl.name+"-cpu-s/GB")
			if f := firstCPU[key{cl.name, c.name}]; len(*f) > 0 {
				b.ReportMetric(f.median(), c.name+"-"+cl.name+"-first-cpu-s/GB")
			}
		}
	}
	b.ReportMetric(serverPeakRSS(b, s), "server-peak-MiB")
	b.ReportMetric(agentPeakRSS(ctx, b, sb), "agent-peak-MiB")
}

// streamClient streams a command's output and says how it went.
type streamClient struct {
	name   string
	stream func(ctx context.Context, b *testing.B, sb *orkestr.Sandbox, cmd string) streamRun
}

// streamRun is one measured stream: the bytes that came, its wall time and
// the client's CPU time; firstCPU, for the SDK scripts, the CPU of the same
// stream run first in the process (0 for the others).
type streamRun struct {
	bytes     int64
	wall, cpu time.Duration
	firstCPU  time.Duration
}

func streamClients(b *testing.B, s *apiServer) []streamClient {
	clients := []streamClient{
		{"cli", func(_ context.Context, b *testing.B, sb *orkestr.Sandbox, cmd string) streamRun {
			cw := &countingWriter{}
			wall, used := runCLI(b, s, cw, "sandbox", "exec", "--timeout", "600", sb.ID, "--", cmd)
			return streamRun{bytes: cw.n, wall: wall, cpu: used}
		}},
		// The CLI's output into a file, as with "> out.log": no pipe to
		// this process, whose reader shares the two cores with the stream.
		{"cli-file", func(_ context.Context, b *testing.B, sb *orkestr.Sandbox, cmd string) streamRun {
			out, err := os.CreateTemp(b.TempDir(), "stream-*.out")
			if err != nil {
				b.Fatal(err)
			}
			defer os.Remove(out.Name())
			defer out.Close()
			wall, used := runCLI(b, s, out, "sandbox", "exec", "--timeout", "600", sb.ID, "--", cmd)
			st, err := out.Stat()
			if err != nil {
				b.Fatal(err)
			}
			return streamRun{bytes: st.Size(), wall: wall, cpu: used}
		}},
		{"go", func(ctx context.Context, b *testing.B, sb *orkestr.Sandbox, cmd string) streamRun {
			cw := &countingWriter{}
			c0, t0 := selfCPU(), time.Now()
			r, err := sb.ExecStreamTo(ctx, cmd, orkestr.ExecOptions{TimeoutSeconds: 600}, cw, io.Discard)
			if err != nil || r.ExitCode != 0 {
				b.Fatalf("go: %v", err)
			}
			return streamRun{bytes: cw.n, wall: time.Since(t0), cpu: selfCPU() - c0}
		}},
	}
	root := testenv.RepoRoot()
	dir := b.TempDir()
	if _, err := os.Stat(filepath.Join(root, "sdk/js/dist/esm/index.js")); err != nil {
		b.Log("TypeScript SDK not built (make test-js-run builds it): skipped")
	} else if node, err := exec.LookPath("node"); err != nil {
		b.Log("no node: the TypeScript SDK skipped")
	} else {
		script := filepath.Join(dir, "stream.mjs")
		writeScript(b, script, fmt.Sprintf(tsStreamScript, filepath.Join(root, "sdk/js/dist/esm/index.js")))
		clients = append(clients, streamClient{"ts", scriptClient(s, node, script)})
	}
	if node, err := exec.LookPath("node"); err == nil {
		script := filepath.Join(dir, "floor.mjs")
		writeScript(b, script, nodeFloorScript)
		clients = append(clients, streamClient{"node-floor", scriptClient(s, node, script)})
	}
	script := filepath.Join(dir, "floor.py")
	writeScript(b, script, pyFloorScript)
	clients = append(clients, streamClient{"python-floor", scriptClient(s, "python3", script)})
	py := filepath.Join(root, "sdk/python/.venv/bin/python")
	if _, err := os.Stat(py); err != nil {
		b.Log("Python SDK venv missing (make test-python makes it): skipped")
	} else {
		script := filepath.Join(dir, "stream.py")
		writeScript(b, script, pyStreamScript)
		clients = append(clients, streamClient{"python", scriptClient(s, py, script)})
	}
	return clients
}

func writeScript(b *testing.B, path, text string) {
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		b.Fatal(err)
	}
}

// scriptClient runs `interp script ID CMD`, which prints {"bytes", "wall",
// "cpu"} (seconds) measured around the stream, and "first_cpu" if it ran
// the stream twice.
func scriptClient(s *apiServer, interp, script string) func(context.Context, *testing.B, *orkestr.Sandbox, string) streamRun {
	return func(ctx context.Context, b *testing.B, sb *orkestr.Sandbox, cmd string) streamRun {
		c := exec.CommandContext(ctx, interp, script, sb.ID, cmd)
		c.Env = append(cliEnv(s), fmt.Sprintf("STREAM_BYTES=%d", int64(*dataStreamMB)*1e6))
		var out, stderr bytes.Buffer
		c.Stdout, c.Stderr = &out, &stderr
		if err := c.Run(); err != nil {
			b.Fatalf("%s: %v: %s", script, err, stderr.String())
		}
		var r struct {
			Bytes, Wall, CPU float64
			FirstCPU         float64 `json:"first_cpu"`
		}
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			b.Fatalf("%s printed %q: %v", script, out.String(), err)
		}
		return streamRun{bytes: int64(r.Bytes), wall: time.Duration(r.Wall * 1e9), cpu: time.Duration(r.CPU * 1e9), firstCPU: time.Duration(r.FirstCPU * 1e9)}
	}
}

// The SDK scripts stream the command twice (see
// BenchmarkDataExecStreamClients) and check both streams' byte counts.
const tsStreamScript = `import { Sandbox } from %q;
const [id, cmd] = process.argv.slice(2);
const sbx = await Sandbox.get(id);
const once = async () => {
  const c0 = process.cpuUsage(); const t0 = performance.now();
  let n = 0;
  const st = sbx.execStream(cmd, { timeoutSeconds: 600 });
  for await (const c of st) n += c.bytes.length;
  if ((await st.wait()).exitCode !== 0) throw new Error("exit code");
  const wall = (performance.now() - t0) / 1000; const u = process.cpuUsage(c0);
  return { bytes: n, wall, cpu: (u.user + u.system) / 1e6 };
};
const first = await once();
const again = await once();
if (first.bytes !== again.bytes) throw new Error("byte counts differ");
console.log(JSON.stringify({ ...again, first_cpu: first.cpu }));
`

const pyStreamScript = `import json, resource, sys, time
from orkestr import Sandbox
sbx = Sandbox.get(sys.argv[1])
def once():
    r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
    n = 0
    st = sbx.exec_stream(sys.argv[2], timeout_seconds=600)
    for c in st:
        n += len(c.raw)
    assert st.result is not None and st.result.exit_code == 0
    wall = time.perf_counter() - t0; r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"bytes": n, "wall": wall, "cpu": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime}
first = once()
again = once()
assert first["bytes"] == again["bytes"]
print(json.dumps({**again, "first_cpu": first["cpu"]}))
`

// The floors: the least a Node or Python process can spend to take the same
// stream off its socket. Each sends the SDKs' request by hand, reads every
// piece into one reused 1 MiB buffer and does nothing with it but look for
// the end of the chunked body; the bytes counted are the payload's (n, from
// the command), the framing is not checked.
const nodeFloorScript = `import net from "node:net";
const [id, cmd] = process.argv.slice(2);
const u = new URL(process.env.ORKESTR_BASE_URL);
const body = JSON.stringify({ command: cmd, timeout_seconds: 600 });
const n = Number(process.env.STREAM_BYTES);
const c0 = process.cpuUsage(); const t0 = performance.now();
const buf = new Uint8Array(1 << 20);
let tail = "";
await new Promise((resolve, reject) => {
  const s = net.connect({ host: u.hostname, port: Number(u.port), onread: { buffer: buf, callback: (k, b) => {
    tail = (tail + Buffer.from(b.subarray(Math.max(0, k - 5), k)).toString("latin1")).slice(-5);
    if (tail === "0\r\n\r\n") { s.destroy(); resolve(); }
  } } });
  s.on("error", reject);
  s.write("POST /v1/sandboxes/" + id + "/exec/stream HTTP/1.1\r\nHost: " + u.host + "\r\nAuthorization: Bearer " + process.env.ORKESTR_API_KEY +
    "\r\nAccept: application/vnd.orkestr.exec-frames\r\nContent-Type: application/json\r\nContent-Length: " + body.length + "\r\n\r\n" + body);
});
const wall = (performance.now() - t0) / 1000; const u2 = process.cpuUsage(c0);
console.log(JSON.stringify({ bytes: n, wall, cpu: (u2.user + u2.system) / 1e6 }));
`

const pyFloorScript = `import json, os, resource, socket, sys, time
from urllib.parse import urlsplit
sid, cmd = sys.argv[1], sys.argv[2]
u = urlsplit(os.environ["ORKESTR_BASE_URL"])
body = json.dumps({"command": cmd, "timeout_seconds": 600}).encode()
n = int(os.environ["STREAM_BYTES"])
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
s = socket.create_connection((u.hostname, u.port))
s.sendall(("POST /v1/sandboxes/%s/exec/stream HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
    "Accept: application/vnd.orkestr.exec-frames\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    % (sid, u.netloc, os.environ["ORKESTR_API_KEY"], len(body))).encode() + body)
buf = bytearray(1 << 20); view = memoryview(buf); tail = b""
while True:
    k = s.recv_into(view)
    if k == 0:
        break
    tail = (tail + bytes(view[max(0, k - 5):k]))[-5:]
    if tail == b"0\r\n\r\n":
        break
s.close()
wall = time.perf_counter() - t0; r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"bytes": n, "wall": wall, "cpu": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime}))
`
