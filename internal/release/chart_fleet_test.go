package release

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// TestHelmChartFleetRuns runs what the chart renders, without Kubernetes:
// the control plane and the node as the pods would start them (the
// workloads' args, the ConfigMap's config, the Secret's files at the mount
// path, the environment with the downward API for a pod on node k1 at
// 127.0.0.1), on a fresh PostgreSQL. The node registers under the node's
// name, the control plane finds it there and, with the node token from the
// Secret, runs a real gVisor sandbox on it. What only a kubelet does (the
// image, the volumes, the probes) is the k8s tier's limit, not covered here.
func TestHelmChartFleetRuns(t *testing.T) {
	testenv.RequireRoot(t)
	tools := toolsBin(t)
	db := testenv.FreshPostgres(t)
	orkestrd := orkestrdBinary(t)
	cpPort, metricsPort, nodePort := freePort(t), freePort(t), freePort(t)
	// Warm pools off: the test starts one sandbox, not two per template.
	out, err := helmTemplate(t, tools, filepath.Join(testenv.RepoRoot(), "deploy/helm/tests/default.yaml"),
		"secrets.databaseURL="+db, "config.pool_size=0", "controlPlane.port="+cpPort, "controlPlane.metricsPort="+metricsPort, "node.apiPort="+nodePort)
	if err != nil {
		t.Fatal(err)
	}
	objs := decode(t, out)
	dir := t.TempDir()
	// The node's state dir holds unix sockets: a short path (108 bytes at
	// most), removed after the processes (cleanups run last first).
	state, err := os.MkdirTemp("", "okc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m := testenv.MountsUnder(state); len(m) > 0 {
			t.Errorf("mounts left under the node's state dir: %v", m)
		}
		if p := testenv.ProcessesMentioning(state); len(p) > 0 {
			t.Errorf("processes left: %v", p)
		}
		_ = os.RemoveAll(state)
	})

	start := func(key string, extraEnv ...string) (*exec.Cmd, *syncBuffer) {
		w := objs[key]
		env := podEnv(t, objs, w, filepath.Join(dir, strings.ReplaceAll(key, "/", "-")))
		cmd := exec.Command(orkestrd, toStrings(w.get("spec.template.spec.containers.0.args"))...)
		cmd.Env = append(env, extraEnv...)
		logs := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
			if t.Failed() {
				t.Logf("%s log:\n%s", key, logs.String())
			}
		})
		return cmd, logs
	}
	// The test's stand-ins for the pods' volumes: data and state dirs.
	_, cpLogs := start("Deployment/rel-orkestr-control-plane", "ORKESTR_DATA_DIR="+filepath.Join(dir, "cp-data"))
	start("DaemonSet/rel-orkestr-node", "ORKESTR_DATA_DIR="+filepath.Join(dir, "node-data"), "ORKESTR_STATE_DIR="+state,
		"ORKESTR_RUNSC="+testenv.Runsc(t), "ORKESTR_AGENT="+testenv.AgentBinary(t), "ORKESTR_TEMPLATE_DIR="+testenv.TemplateDir())

	base := "http://127.0.0.1:" + cpPort
	keyRE := regexp.MustCompile(`\n(ork_[A-Za-z0-9]+)\n`)
	var key string
	var regions struct {
		Data []struct {
			Name       string `json:"name"`
			NodesAlive int    `json:"nodes_alive"`
		} `json:"data"`
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		if m := keyRE.FindStringSubmatch(cpLogs.String()); key == "" && m != nil {
			key = m[1]
		}
		if key != "" && call(t, "GET", base+"/v1/regions", key, nil, &regions) == 200 && len(regions.Data) == 1 && regions.Data[0].NodesAlive == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node did not register with the control plane in 90 s (key found: %v, regions %+v)", key != "", regions)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if regions.Data[0].Name != "fsn1" {
		t.Errorf("region %q, want the chart's fsn1", regions.Data[0].Name)
	}
	// A sandbox through the control plane on the node: the node token from
	// the Secret's file is the same on both sides.
	var sb struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	if code := call(t, "POST", base+"/v1/sandboxes", key, map[string]any{"template": "debian-12"}, &sb); code != 201 && code != 200 {
		t.Fatalf("create a sandbox through the chart's control plane: HTTP %d", code)
	}
	var ex struct {
		Stdout string `json:"stdout"`
	}
	if code := call(t, "POST", base+"/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{"command": "echo on-node"}, &ex); code != 200 || ex.Stdout != "on-node\n" {
		t.Errorf("exec: HTTP %d %q", code, ex.Stdout)
	}
	if code := call(t, "DELETE", base+"/v1/sandboxes/"+sb.ID, key, nil, nil); code != 200 && code != 204 {
		t.Errorf("delete: HTTP %d", code)
	}
	// The node API refuses a caller without the token.
	resp, err := http.Post("http://127.0.0.1:"+nodePort+"/v1/info", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("node API without the token: HTTP %d, want 401", resp.StatusCode)
	}
}

// podEnv is a workload's container environment as the kubelet would give
// it (values with $(VAR) references, the downward API for a pod on node k1
// at 127.0.0.1, Secret keys), with the ConfigMap's config and the Secret's
// files written under dir and their paths moved there. Listen addresses
// are kept on loopback.
func podEnv(t *testing.T, objs map[string]object, w object, dir string) []string {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	spec := w.get("spec.template.spec").(object)
	c := spec.get("containers.0").(object)
	secret := objs["Secret/"+secretVolume(spec).str("secret.secretName")]
	data, _ := secret.get("data").(object)
	for k, v := range data {
		b, err := base64.StdEncoding.DecodeString(v.(string))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "secrets", k), b, 0o400); err != nil {
			t.Fatal(err)
		}
	}
	config := strings.ReplaceAll(dataKey(objs["ConfigMap/rel-orkestr-config"], "config.yaml"), "/etc/orkestr/secrets/", filepath.Join(dir, "secrets")+"/")
	cfgFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	vars := map[string]string{}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, e := range c.get("env").([]any) {
		e := e.(object)
		name, val := e.str("name"), ""
		switch {
		case name == "ORKESTR_CONFIG":
			val = cfgFile
		case e.get("value") != nil:
			val = ref.ReplaceAllStringFunc(e.str("value"), func(r string) string { return vars[r[2:len(r)-1]] })
			val = strings.Replace(val, "0.0.0.0:", "127.0.0.1:", 1)
		case e.str("valueFrom.fieldRef.fieldPath") == "spec.nodeName":
			val = "k1"
		case e.str("valueFrom.fieldRef.fieldPath") == "status.podIP":
			val = "127.0.0.1"
		case e.get("valueFrom.secretKeyRef") != nil:
			b, _ := base64.StdEncoding.DecodeString(dataKey(secret, e.str("valueFrom.secretKeyRef.key")))
			val = string(b)
		default:
			t.Fatalf("env %s: %v", name, e)
		}
		vars[name] = val
		env = append(env, name+"="+val)
	}
	return env
}

func freePort(t *testing.T) string {
	_, port, _ := strings.Cut(testenv.FreePort(t), ":")
	return port
}

// call makes one API request with the key and decodes the JSON answer.
func call(t *testing.T, method, url, key string, body any, out any) int {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(bufio.NewReader(resp.Body)).Decode(out)
	}
	return resp.StatusCode
}

// syncBuffer is a process's output, read while it is written.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
