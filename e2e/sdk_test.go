package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

func sdkClient(t *testing.T, s *apiServer, key string) *orkestr.Client {
	t.Helper()
	c, err := orkestr.NewClient(orkestr.WithAPIKey(key), orkestr.WithBaseURL(s.url))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestGoSDKEndToEnd walks the TypeScript README's examples in Go against a
// real server on real gVisor.
func TestGoSDKEndToEnd(t *testing.T) {
	s := startAPI(t, serverOpts{})
	c := sdkClient(t, s, s.key)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	limits, err := c.Limits(ctx)
	if err != nil || limits.Plan != "team" || !limits.SizeAllowed("large") || len(limits.Sizes) != 3 || limits.UsageResetsAt.Day() != 1 {
		t.Fatalf("limits: %+v %v", limits, err)
	}
	tmpls, err := c.Templates(ctx)
	if err != nil || len(tmpls) == 0 {
		t.Fatalf("templates: %v %v", tmpls, err)
	}

	// Quick start: withTemp terminates the sandbox when the callback returns.
	var tempID string
	err = c.WithTempSandbox(ctx, orkestr.CreateParams{Template: "debian-12"}, func(sbx *orkestr.Sandbox) error {
		tempID = sbx.ID
		if err := sbx.Files().Write(ctx, "/workspace/main.sh", "echo $((999999*1000000/2))"); err != nil {
			return err
		}
		res, err := sbx.Exec(ctx, "sh /workspace/main.sh", orkestr.ExecOptions{})
		if err != nil {
			return err
		}
		if res.Stdout != "499999500000\n" || res.ExitCode != 0 {
			t.Errorf("quick start result: %+v", res)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if sb, err := c.GetSandbox(ctx, tempID); err != nil || sb.Status != "terminated" {
		t.Fatalf("withTemp left %s in %v (%v)", tempID, sb, err)
	}

	// The callback's error comes back and the sandbox still goes.
	boom := errors.New("boom")
	if err := c.WithTempSandbox(ctx, orkestr.CreateParams{Template: "debian-12"}, func(sbx *orkestr.Sandbox) error {
		tempID = sbx.ID
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("withTemp error: %v", err)
	}
	if sb, _ := c.GetSandbox(ctx, tempID); sb.Status != "terminated" {
		t.Fatal("withTemp did not terminate after the callback failed")
	}

	sbx, err := c.CreateSandbox(ctx, orkestr.CreateParams{
		Template: "debian-12", Size: "small", Network: "off", TimeoutSeconds: 600,
		Env: map[string]string{"OPENAI_API_KEY": "sk-test"}, Metadata: map[string]string{"agentRun": "r_123"}, Region: "fsn1",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sbx.Terminate(context.Background())
	if !strings.HasPrefix(sbx.ID, "sbx_") || sbx.Status != "running" || sbx.Metadata["agentRun"] != "r_123" || sbx.EnvKeys[0] != "OPENAI_API_KEY" {
		t.Fatalf("created: %+v", sbx)
	}

	// Streaming: the first chunk arrives while the command still runs.
	start := time.Now()
	st, err := sbx.ExecStream(ctx, "echo first; sleep 1; echo second >&2", orkestr.ExecOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var chunks []orkestr.ExecChunk
	var firstAt time.Duration
	for ch := range st.Chunks() {
		if len(chunks) == 0 {
			firstAt = time.Since(start)
		}
		chunks = append(chunks, ch)
	}
	res, err := st.Wait()
	if err != nil || res.ExitCode != 0 || len(chunks) != 2 || chunks[0].Stream != "stdout" || chunks[1].Stream != "stderr" {
		t.Fatalf("stream: %v %+v %v", chunks, res, err)
	}
	if firstAt > 800*time.Millisecond {
		t.Fatalf("first chunk after %v", firstAt)
	}

	// Files.
	f := sbx.Files()
	if err := f.Write(ctx, "/workspace/data.json", `{"x": 1}`); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteBytes(ctx, "/workspace/blob.bin", []byte{0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	if s, err := f.Read(ctx, "/workspace/data.json"); err != nil || s != `{"x": 1}` {
		t.Fatalf("read: %q %v", s, err)
	}
	if b, err := f.ReadBytes(ctx, "/workspace/blob.bin"); err != nil || !bytes.Equal(b, []byte{0, 1, 2}) {
		t.Fatalf("readBytes: %v %v", b, err)
	}
	ents, err := f.List(ctx, "/workspace")
	if err != nil || len(ents) != 2 || ents[0].Name != "blob.bin" || ents[0].Size != 3 || ents[0].IsDir {
		t.Fatalf("list: %+v %v", ents, err)
	}
	if err := f.Delete(ctx, "/workspace/blob.bin"); err != nil {
		t.Fatal(err)
	}
	var fnf *orkestr.Error
	if _, err := f.Read(ctx, "/workspace/blob.bin"); !errors.As(err, &fnf) || fnf.Code != "file_not_found" {
		t.Fatalf("read deleted file: %v", err)
	}

	// Metrics.
	_, _ = sbx.Exec(ctx, "timeout 2 sh -c 'while :; do :; done'", orkestr.ExecOptions{})
	m, err := sbx.Metrics(ctx, nil)
	if err != nil || m.CPU == nil || m.Memory == nil || len(m.Samples) == 0 || m.SampleIntervalSeconds != 1 {
		t.Fatalf("metrics: %+v %v", m, err)
	}
	peak := 0.0
	for _, s := range m.Samples {
		peak = max(peak, s.CPUPercent)
	}
	if peak < 50 {
		t.Fatalf("a busy loop in a 0.5-vCPU sandbox peaked at %.0f%% of its allocation", peak)
	}
	since := m.Samples[len(m.Samples)-1].T
	if m2, err := sbx.Metrics(ctx, &since); err != nil || len(m2.Samples) >= len(m.Samples) {
		t.Fatalf("metrics since: %d samples (before %d) %v", len(m2.Samples), len(m.Samples), err)
	}

	// Pause + resume by id, from "another worker".
	pr, err := sbx.Pause(ctx)
	if err != nil || pr.ID != sbx.ID || pr.SnapshotBytes <= 0 {
		t.Fatalf("pause: %+v %v", pr, err)
	}
	var notReady *orkestr.SandboxNotReadyError
	if _, err := sbx.Exec(ctx, "true", orkestr.ExecOptions{}); !errors.As(err, &notReady) || notReady.SandboxStatus != "paused" {
		t.Fatalf("exec on paused sandbox: %v", err)
	}
	if pm, err := sbx.Metrics(ctx, nil); err != nil || pm.CPU != nil || len(pm.Samples) != 0 || pm.Lifetime.RunningSeconds == 0 {
		t.Fatalf("metrics while paused: %+v %v", pm, err)
	}
	resumed, err := sdkClient(t, s, s.key).ResumeSandbox(ctx, pr.ID)
	if err != nil || resumed.Status != "running" {
		t.Fatalf("resume: %+v %v", resumed, err)
	}
	if res, err := resumed.Exec(ctx, `cat /workspace/data.json; echo " $OPENAI_API_KEY"`, orkestr.ExecOptions{}); err != nil || res.Stdout != "{\"x\": 1} sk-test\n" {
		t.Fatalf("after resume: %+v %v", res, err)
	}

	// Exec timeout carries partial output.
	var timeout *orkestr.ExecTimeoutError
	if _, err := resumed.Exec(ctx, "echo partial; sleep 10", orkestr.ExecOptions{TimeoutSeconds: 1}); !errors.As(err, &timeout) || !strings.Contains(timeout.Stdout, "partial") {
		t.Fatalf("exec timeout: %v", err)
	}

	// List iterates more than one page.
	seen := 0
	for sb, err := range c.ListSandboxes(ctx, orkestr.ListParams{Limit: 1}) {
		if err != nil {
			t.Fatal(err)
		}
		if sb.ID == "" {
			t.Fatal("empty sandbox in list")
		}
		seen++
	}
	if seen < 3 {
		t.Fatalf("list saw %d sandboxes across pages", seen)
	}
	running := 0
	for _, err := range c.ListSandboxes(ctx, orkestr.ListParams{Status: "running"}) {
		if err != nil {
			t.Fatal(err)
		}
		running++
	}
	if running != 1 {
		t.Fatalf("%d running sandboxes listed, want 1", running)
	}
	if err := resumed.Terminate(ctx); err != nil || resumed.Status != "terminated" {
		t.Fatalf("terminate: %v %v", err, resumed.Status)
	}
	if err := resumed.Terminate(ctx); err != nil {
		t.Fatalf("second terminate: %v", err)
	}
}

// TestGoSDKErrorClasses provokes every error class for real.
func TestGoSDKErrorClasses(t *testing.T) {
	s := startAPI(t, serverOpts{config: "plans:\n  tiny:\n    allowed_sizes: [small]\n    max_concurrent: 1\n    snapshot_cap: 1\n    rate_limit: {requests_per_second: 2, burst: 30}\n"})
	ctx := context.Background()
	tiny := sdkClient(t, s, s.newKey("tiny", "tiny", "sandboxes:write"))

	var auth *orkestr.AuthError
	if _, err := sdkClient(t, s, "ork_"+strings.Repeat("x", 43)).Limits(ctx); !errors.As(err, &auth) || auth.Status != 401 || auth.RequestID == "" {
		t.Fatalf("bad key: %v", err)
	}
	readOnly := sdkClient(t, s, s.newKey("tiny", "", "sandboxes:read"))
	if _, err := readOnly.CreateSandbox(ctx, orkestr.CreateParams{Template: "debian-12"}); !errors.As(err, &auth) || auth.Status != 403 || auth.RequiredScope != "sandboxes:write" {
		t.Fatalf("read-only create: %v", err)
	}
	var plan *orkestr.PlanLimitError
	if _, err := tiny.CreateSandbox(ctx, orkestr.CreateParams{Template: "debian-12", Size: "medium"}); !errors.As(err, &plan) || plan.Code != "size_not_allowed" {
		t.Fatalf("size: %v", err)
	}
	a, err := tiny.CreateSandbox(ctx, orkestr.CreateParams{Template: "debian-12"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Terminate(ctx)
	if _, err := tiny.CreateSandbox(ctx, orkestr.CreateParams{Template: "debian-12"}); !errors.As(err, &plan) || plan.Code != "concurrency_limit" {
		t.Fatalf("concurrency: %v", err)
	}
	if _, err := a.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := tiny.CreateSandbox(ctx, orkestr.CreateParams{Template: "debian-12"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Terminate(ctx)
	var capErr *orkestr.SnapshotCapReachedError
	_, err = b.Pause(ctx)
	if !errors.As(err, &capErr) || capErr.Cap != 1 || !errors.As(err, &plan) {
		t.Fatalf("snapshot cap: %v", err)
	}
	var nf *orkestr.SandboxNotFoundError
	if _, err := sdkClient(t, s, s.key).GetSandbox(ctx, a.ID); !errors.As(err, &nf) {
		t.Fatalf("other account's sandbox: %v", err)
	}
	var nr *orkestr.SandboxNotReadyError
	if _, err := a.Exec(ctx, "true", orkestr.ExecOptions{}); !errors.As(err, &nr) {
		t.Fatalf("exec on paused: %v", err)
	}
	var to *orkestr.ExecTimeoutError
	if _, err := b.Exec(ctx, "sleep 5", orkestr.ExecOptions{TimeoutSeconds: 1}); !errors.As(err, &to) {
		t.Fatalf("timeout: %v", err)
	}
	var base *orkestr.Error
	if _, err := tiny.CreateSandbox(ctx, orkestr.CreateParams{Template: "no-such-template"}); !errors.As(err, &base) || base.Code != "unknown_template" {
		t.Fatalf("unknown template: %v", err)
	}
	// Rate limit: a client without retries hits 429 once the burst is used.
	noRetry, _ := orkestr.NewClient(orkestr.WithAPIKey(s.newKey("tiny", "", "sandboxes:read")), orkestr.WithBaseURL(s.url), orkestr.WithMaxRetries(0))
	var rl *orkestr.RateLimitError
	for i := 0; i < 40; i++ {
		if _, err = noRetry.Limits(ctx); err != nil {
			break
		}
	}
	if !errors.As(err, &rl) || rl.RetryAfter <= 0 {
		t.Fatalf("rate limit: %v", err)
	}
	// With retries the SDK waits it out.
	retrying, _ := orkestr.NewClient(orkestr.WithAPIKey(s.newKey("tiny", "", "sandboxes:read")), orkestr.WithBaseURL(s.url))
	for i := 0; i < 35; i++ {
		if _, err := retrying.Limits(ctx); err != nil {
			t.Fatalf("request %d with retries: %v", i, err)
		}
	}
}

// TestCLIEndToEnd drives the orkestr binary against a real server.
func TestCLIEndToEnd(t *testing.T) {
	s := startAPI(t, serverOpts{})
	cli := func(stdin string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, "orkestr"), args...)
		cmd.Env = append(os.Environ(), "ORKESTR_API_KEY="+s.key, "ORKESTR_BASE_URL="+s.url)
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), code
	}
	out, errs, code := cli("", "sandbox", "create", "--template", "python-3.11", "--env", "GREETING=hej", "--metadata", "run=r1", "--json")
	if code != 0 {
		t.Fatalf("create: %d %s", code, errs)
	}
	var sb map[string]any
	if err := json.Unmarshal([]byte(out), &sb); err != nil {
		t.Fatalf("create --json: %q", out)
	}
	id, _ := sb["id"].(string)
	if !strings.HasPrefix(id, "sbx_") {
		t.Fatalf("create --json: %q", out)
	}
	defer cli("", "sandbox", "rm", id)
	if out, _, code := cli("", "sandbox", "exec", id, "--", "echo $GREETING; exit 7"); code != 7 || out != "hej\n" {
		t.Fatalf("exec: %d %q", code, out)
	}
	// Several words after "--" are an argv, each word as written.
	if out, errs, code := cli("", "sandbox", "exec", id, "--", "python3", "-c", "print(2**100)"); code != 0 || out != "1267650600228229401496703205376\n" {
		t.Fatalf("exec argv: %d %q %s", code, out, errs)
	}
	if out, errs, code := cli("", "sandbox", "exec", id, "--", "echo", "$HOME", "a b"); code != 0 || out != "$HOME a b\n" {
		t.Fatalf("exec argv: %d %q %s", code, out, errs)
	}
	if out, errs, code := cli("", "sandbox", "exec", "--user", "user", id, "--", "id", "-un"); code != 0 || out != "user\n" {
		t.Fatalf("exec --user user: %d %q %s", code, out, errs)
	}
	// Background processes from the CLI.
	out, errs, code = cli("", "sandbox", "exec", "--detach", id, "--", "sh", "-c", "echo from the background; exit 3")
	if code != 0 || strings.TrimSpace(out) == "" {
		t.Fatalf("exec --detach: %d %q %s", code, out, errs)
	}
	pid := strings.TrimSpace(out)
	if out, errs, code := cli("", "sandbox", "logs", id, pid); code != 3 || out != "from the background\n" {
		t.Fatalf("logs: %d %q %s", code, out, errs)
	}
	if out, _, code := cli("", "sandbox", "ps", id); code != 0 || !strings.Contains(out, pid) || !strings.Contains(out, "exited 3") {
		t.Fatalf("ps: %d %q", code, out)
	}
	out, _, _ = cli("", "sandbox", "exec", "--detach", id, "--", "sleep", "600")
	if _, errs, code := cli("", "sandbox", "kill", "--signal", "9", id, strings.TrimSpace(out)); code != 0 {
		t.Fatalf("kill: %d %s", code, errs)
	}
	if _, errs, code := cli("", "sandbox", "logs", id, "99999"); code != 1 || !strings.Contains(errs, "process_not_found") {
		t.Fatalf("logs of a missing pid: %d %s", code, errs)
	}
	if _, errs, code := cli("file contents", "files", "put", "-", id+":/workspace/f.txt"); code != 0 {
		t.Fatalf("files put: %d %s", code, errs)
	}
	if out, _, code := cli("", "files", "get", id+":/workspace/f.txt"); code != 0 || out != "file contents" {
		t.Fatalf("files get: %d %q", code, out)
	}
	if out, _, code := cli("", "files", "ls", id+":/workspace", "--json"); code != 0 || !strings.Contains(out, "f.txt") {
		t.Fatalf("files ls: %d %q", code, out)
	}
	if _, _, code := cli("", "files", "rm", id+":/workspace/f.txt"); code != 0 {
		t.Fatalf("files rm: %d", code)
	}
	if _, errs, code := cli("", "files", "get", id+":/workspace/f.txt"); code != 1 || !strings.Contains(errs, "file_not_found") {
		t.Fatalf("files get after rm: %d %q", code, errs)
	}
	if out, _, code := cli("", "sandbox", "ls", "--json"); code != 0 || !strings.Contains(out, id) {
		t.Fatalf("ls: %d %q", code, out)
	}
	if out, _, code := cli("", "limits", "--json"); code != 0 || !strings.Contains(out, "team") {
		t.Fatalf("limits: %d %q", code, out)
	}
	if _, errs, code := cli("", "sandbox", "pause", id); code != 0 {
		t.Fatalf("pause: %d %s", code, errs)
	}
	if out, _, code := cli("", "sandbox", "get", id, "--json"); code != 0 || !strings.Contains(out, `"paused"`) {
		t.Fatalf("get paused: %d %q", code, out)
	}
	if _, errs, code := cli("", "sandbox", "resume", id); code != 0 {
		t.Fatalf("resume: %d %s", code, errs)
	}
	if out, _, code := cli("", "sandbox", "exec", id, "--", "echo $GREETING"); code != 0 || out != "hej\n" {
		t.Fatalf("exec after resume: %d %q", code, out)
	}
	if _, _, code := cli("", "sandbox", "rm", id); code != 0 {
		t.Fatalf("rm: %d", code)
	}
	if _, errs, code := cli("", "sandbox", "get", "sbx_01HZZZZZZZZZZZZZZZZZZZZZZZ"); code != 1 || !strings.Contains(errs, "sandbox_not_found") {
		t.Fatalf("get missing: %d %q", code, errs)
	}
	if _, _, code := cli("", "sandbox", "frobnicate"); code != 2 {
		t.Fatalf("usage error exit code %d", code)
	}
}
