package e2e

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// startE2B starts orkestrd with its E2B-compatible listener and returns
// the server and the listener's URL.
func startE2B(t *testing.T) (*apiServer, string) {
	t.Helper()
	addr := testenv.FreePort(t)
	s := startAPI(t, serverOpts{poolSize: 0, logLevel: "info", args: []string{"--e2b-listen", addr}})
	if s.key == "" {
		t.Fatalf("orkestrd printed no bootstrap key; log:\n%s", s.logText())
	}
	url := "http://" + addr
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(url + "/nothing"); err == nil {
			resp.Body.Close()
			break
		}
	}
	return s, url
}

// e2bAlias is the e2b_ alias `orkestrd admin e2b-key` prints for key.
func e2bAlias(t *testing.T, key string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "orkestrd"), "admin", "e2b-key")
	cmd.Stdin = strings.NewReader(key + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("orkestrd admin e2b-key: %v", err)
	}
	alias := strings.TrimSpace(string(out))
	if !strings.HasPrefix(alias, "e2b_") || strings.Contains(alias, key[4:]) {
		t.Fatalf("admin e2b-key printed %q", alias)
	}
	return alias
}

// TestE2BSDKs runs the published e2b SDKs, unchanged and pinned
// (e2e/e2b/package-lock.json, requirements*.txt; `make e2b-sdk-deps`
// installs them), against a real orkestrd and real sandboxes: the JS SDK
// 2.45.0 and 2.51.0 (e2e/e2b/compat.mjs) and the Python SDK 2.45.1 and
// 2.63.0, sync and async (e2e/e2b/compat.py). Each script checks
// lifecycle, commands, files, watches, listing, pause/resume and
// unsupported calls, and fails on the first wrong answer of a check.
func TestE2BSDKs(t *testing.T) {
	testenv.RequireRoot(t)
	dir := filepath.Join(testenv.RepoRoot(), "e2e", "e2b")
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is needed for the e2b JS SDK (apt-get install nodejs npm)")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "e2b")); err != nil {
		t.Fatalf("the e2b JS SDK is not installed in %s: run `make e2b-sdk-deps`", dir)
	}
	s, url := startE2B(t)
	alias := e2bAlias(t, s.key)
	env := append(os.Environ(), "E2B_API_URL="+url, "E2B_SANDBOX_URL="+url, "E2B_API_KEY="+alias,
		"E2B_DOMAIN=orkestr.invalid")
	run := func(t *testing.T, name string, args ...string) {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir, cmd.Env = dir, append(env, "E2B_PKG="+name)
		out, err := cmd.CombinedOutput()
		t.Logf("%s:\n%s", name, out)
		if err != nil || !strings.Contains(string(out), "all checks passed") {
			t.Fatalf("%s: %v", name, err)
		}
	}
	t.Run("js-2.45.0", func(t *testing.T) { run(t, "e2b", node, "compat.mjs") })
	t.Run("js-2.51.0", func(t *testing.T) { run(t, "e2b-latest", node, "compat.mjs") })
	for _, v := range []struct{ name, venv string }{{"python-2.45.1", ".venv"}, {"python-2.63.0", ".venv-latest"}} {
		t.Run(v.name, func(t *testing.T) {
			py := filepath.Join(dir, v.venv, "bin", "python")
			if _, err := os.Stat(py); err != nil {
				t.Fatalf("no virtualenv %s: run `make e2b-sdk-deps`", filepath.Join(dir, v.venv))
			}
			run(t, v.name, py, "compat.py")
		})
	}
}

type e2bResp struct {
	status int
	body   []byte
}

func e2bDo(t *testing.T, method, url string, hdr map[string]string, body io.Reader) e2bResp {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return e2bResp{resp.StatusCode, b}
}

// TestE2BHostile sends the E2B-compatible API what no SDK would: missing,
// malformed and foreign keys and access tokens, another account's
// sandbox, bad bodies and encodings, unknown and unsupported calls. Every
// answer is a 4xx or 501 in E2B's {code, message} shape, never a 500, and
// nothing of another account is reachable.
func TestE2BHostile(t *testing.T) {
	s, url := startE2B(t)
	alias := e2bAlias(t, s.key)
	key := func(k string) map[string]string {
		return map[string]string{"X-API-Key": k, "Content-Type": "application/json"}
	}
	expect := func(name string, r e2bResp, status int, msg string) {
		t.Helper()
		var e struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if r.status != status || json.Unmarshal(r.body, &e) != nil || e.Code != status || !strings.Contains(e.Message, msg) {
			t.Errorf("%s: %d %s; want %d with a message containing %q", name, r.status, r.body, status, msg)
		}
		if strings.Contains(string(r.body), s.key) || strings.Contains(string(r.body), alias) {
			t.Errorf("%s: the answer carries the key", name)
		}
	}

	// Keys.
	expect("no key", e2bDo(t, "GET", url+"/v2/sandboxes", nil, nil), 401, "API key")
	expect("malformed alias", e2bDo(t, "GET", url+"/v2/sandboxes", key("e2b_00zz"), nil), 401, "API key")
	expect("unknown key's alias", e2bDo(t, "GET", url+"/v2/sandboxes", key("e2b_"+strings.Repeat("41", 43)), nil), 401, "")
	readKey := s.newKey("readonly", "pro", "sandboxes:read")
	expect("read-only key creates", e2bDo(t, "POST", url+"/sandboxes", key(e2bAlias(t, readKey)), strings.NewReader(`{"templateID":"base"}`)), 403, "scope")

	// Bodies and unknown things.
	expect("not JSON", e2bDo(t, "POST", url+"/sandboxes", key(alias), strings.NewReader(`{"templateID":`)), 400, "NewSandbox")
	expect("unknown template", e2bDo(t, "POST", url+"/sandboxes", key(alias), strings.NewReader(`{"templateID":"no-such"}`)), 400, "")
	expect("huge body", e2bDo(t, "POST", url+"/sandboxes", key(alias), strings.NewReader(`{"templateID":"`+strings.Repeat("a", 2<<20)+`"}`)), 400, "")
	expect("unknown sandbox", e2bDo(t, "GET", url+"/sandboxes/sbx_01HX0000000000000000000000", key(alias), nil), 404, "")
	expect("bad state", e2bDo(t, "GET", url+"/v2/sandboxes?state=dead", key(alias), nil), 400, "state")
	expect("bad token", e2bDo(t, "GET", url+"/v2/sandboxes?nextToken=zzzz", key(alias), nil), 400, "nextToken")
	expect("unsupported: templates", e2bDo(t, "POST", url+"/v3/templates", key(alias), strings.NewReader(`{}`)), 501, "orkestr does not support")
	expect("unsupported: autoPause", e2bDo(t, "POST", url+"/sandboxes", key(alias), strings.NewReader(`{"templateID":"base","autoPause":true}`)), 501, "orkestr does not support")
	expect("unknown endpoint", e2bDo(t, "GET", url+"/nope", key(alias), nil), 404, "No such endpoint")

	// Two accounts' sandboxes.
	var mine, theirs struct {
		SandboxID       string `json:"sandboxID"`
		EnvdAccessToken string `json:"envdAccessToken"`
	}
	r := e2bDo(t, "POST", url+"/sandboxes", key(alias), strings.NewReader(`{"templateID":"base","allow_internet_access":false}`))
	if r.status != 201 || json.Unmarshal(r.body, &mine) != nil || mine.EnvdAccessToken == "" {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	otherAlias := e2bAlias(t, s.newKey("other", "pro", "sandboxes:write"))
	r = e2bDo(t, "POST", url+"/sandboxes", key(otherAlias), strings.NewReader(`{"templateID":"base","allow_internet_access":false}`))
	if r.status != 201 || json.Unmarshal(r.body, &theirs) != nil {
		t.Fatalf("create (other account): %d %s", r.status, r.body)
	}
	expect("another account's sandbox", e2bDo(t, "GET", url+"/sandboxes/"+theirs.SandboxID, key(alias), nil), 404, "")
	expect("kill another account's sandbox", e2bDo(t, "DELETE", url+"/sandboxes/"+theirs.SandboxID, key(alias), nil), 404, "")

	envd := func(sbx, token string, extra ...string) map[string]string {
		h := map[string]string{"E2b-Sandbox-Id": sbx, "X-Access-Token": token}
		for i := 0; i+1 < len(extra); i += 2 {
			h[extra[i]] = extra[i+1]
		}
		return h
	}
	expect("envd without token", e2bDo(t, "GET", url+"/health", envd(mine.SandboxID, ""), nil), 401, "X-Access-Token")
	expect("envd with another sandbox's token", e2bDo(t, "GET", url+"/files?path=/etc/hostname", envd(mine.SandboxID, theirs.EnvdAccessToken), nil), 401, "X-Access-Token")
	expect("envd with my token on their sandbox", e2bDo(t, "GET", url+"/files?path=/etc/hostname", envd(theirs.SandboxID, mine.EnvdAccessToken), nil), 401, "X-Access-Token")
	acct, _, _ := strings.Cut(theirs.EnvdAccessToken, ".")
	_, mac, _ := strings.Cut(mine.EnvdAccessToken, ".")
	expect("envd with a spliced token", e2bDo(t, "GET", url+"/files?path=/etc/hostname", envd(theirs.SandboxID, acct+"."+mac), nil), 401, "X-Access-Token")
	expect("envd as an unknown user", e2bDo(t, "GET", url+"/files?path=/etc/hostname",
		envd(mine.SandboxID, mine.EnvdAccessToken, "Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("nobody:"))), nil), 400, "users root and user")
	expect("missing file", e2bDo(t, "GET", url+"/files?path=/nope", envd(mine.SandboxID, mine.EnvdAccessToken), nil), 404, "")
	expect("NUL in a path", e2bDo(t, "GET", url+"/files?path=/etc/a%00b", envd(mine.SandboxID, mine.EnvdAccessToken), nil), 400, "")
	expect("unknown encoding", e2bDo(t, "POST", url+"/files?path=/tmp/x", envd(mine.SandboxID, mine.EnvdAccessToken, "Content-Encoding", "br", "Content-Type", "application/octet-stream"), strings.NewReader("x")), 400, "Content-Encoding")
	expect("not gzip", e2bDo(t, "POST", url+"/files?path=/tmp/x", envd(mine.SandboxID, mine.EnvdAccessToken, "Content-Encoding", "gzip", "Content-Type", "application/octet-stream"), strings.NewReader("plain")), 400, "gzip")
	expect("raw upload without a path", e2bDo(t, "POST", url+"/files", envd(mine.SandboxID, mine.EnvdAccessToken, "Content-Type", "application/octet-stream"), strings.NewReader("x")), 400, "path")
	expect("broken multipart", e2bDo(t, "POST", url+"/files?path=/tmp/x", envd(mine.SandboxID, mine.EnvdAccessToken, "Content-Type", "multipart/form-data; boundary=zz"), strings.NewReader("--zz\r\ngarbage")), 400, "multipart")

	// A gzip bomb is bounded by the native file size limit, not memory:
	// 64 MiB of zeros that compress to ~64 KiB land as a 64 MiB file.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(make([]byte, 64<<20))
	_ = zw.Close()
	r = e2bDo(t, "POST", url+"/files?path=/tmp/bomb", envd(mine.SandboxID, mine.EnvdAccessToken, "Content-Encoding", "gzip", "Content-Type", "application/octet-stream"), &gz)
	if r.status != 200 {
		t.Errorf("gzip upload: %d %s", r.status, r.body)
	}

	// Connect-RPC: garbage, an unknown method, a PTY.
	for name, c := range map[string]struct {
		path, body string
		want       int
	}{
		"garbage JSON":   {"/process.Process/List", "{", 400},
		"unknown method": {"/process.Process/Nope", "{}", 404},
		"pty":            {"/process.Process/Update", `{"process":{"pid":1},"pty":{"size":{"cols":80,"rows":24}}}`, 501},
		"no such pid":    {"/process.Process/SendSignal", `{"process":{"pid":1},"signal":"SIGNAL_SIGKILL"}`, 404},
		"bad watcher":    {"/filesystem.Filesystem/GetWatcherEvents", `{"watcherId":"x"}`, 404},
	} {
		r := e2bDo(t, "POST", url+c.path, envd(mine.SandboxID, mine.EnvdAccessToken, "Content-Type", "application/json"), strings.NewReader(c.body))
		if r.status != c.want {
			t.Errorf("connect %s: %d %s; want %d", name, r.status, r.body, c.want)
		}
	}
	for _, id := range []string{mine.SandboxID} {
		if r := e2bDo(t, "DELETE", url+"/sandboxes/"+id, key(alias), nil); r.status != 204 {
			t.Errorf("kill: %d %s", r.status, r.body)
		}
		expect("killed sandbox", e2bDo(t, "GET", url+"/sandboxes/"+id, key(alias), nil), 404, "")
		expect("kill a killed sandbox", e2bDo(t, "DELETE", url+"/sandboxes/"+id, key(alias), nil), 404, "")
		expect("envd of a killed sandbox", e2bDo(t, "GET", url+"/health", envd(id, mine.EnvdAccessToken), nil), 502, "not running")
	}
	if r := e2bDo(t, "DELETE", url+"/sandboxes/"+theirs.SandboxID, key(otherAlias), nil); r.status != 204 {
		t.Errorf("kill (other account): %d %s", r.status, r.body)
	}
}
