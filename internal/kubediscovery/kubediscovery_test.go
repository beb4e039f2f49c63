package kubediscovery

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/testenv/kubeapi"
)

type obj = map[string]any

// TestPodDiscoveryOnKubeAPIServer installs the chart in fleet mode with pod
// discovery into a real kube-apiserver, makes node pods from the
// DaemonSet's own pod template (no kubelet: the test sets their status as
// the kubelet would) and discovers them as the control plane's service
// account, through the chart's Role and the selector the chart puts in the
// control plane's environment.
func TestPodDiscoveryOnKubeAPIServer(t *testing.T) {
	api := kubeapi.Start(t, kubeapi.Options{AllowPrivileged: true})
	const ns = "fleet"
	api.Namespace(t, ns, nil)
	api.Namespace(t, "elsewhere", nil)
	api.Do(t, "POST", "/api/v1/namespaces/"+ns+"/secrets", obj{"metadata": obj{"name": "orkestr-credentials"},
		"stringData": obj{"database-url": "postgres://orkestr:pw@db:5432/orkestr"}}, nil)
	values := filepath.Join(filepath.Dir(kubeapi.Chart()), "tests", "fleet-pods.yaml")
	// The ServiceMonitor's CRD (Prometheus operator) is not this test's
	// subject: the chart test installs it.
	if out, err := api.Helm(t, "install", "rel", kubeapi.Chart(), "--namespace", ns, "-f", values, "--set", "serviceMonitor.enabled=false"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	var ds, cp struct {
		Spec struct {
			Template obj `json:"template"`
		} `json:"spec"`
	}
	api.Do(t, "GET", "/apis/apps/v1/namespaces/"+ns+"/daemonsets/rel-orkestr-node", nil, &ds)
	api.Do(t, "GET", "/apis/apps/v1/namespaces/"+ns+"/deployments/rel-orkestr-control-plane", nil, &cp)
	cpSpec := cp.Spec.Template["spec"].(obj)
	env := map[string]string{}
	for _, e := range cpSpec["containers"].([]any)[0].(obj)["env"].([]any) {
		if v, ok := e.(obj)["value"].(string); ok {
			env[e.(obj)["name"].(string)] = v
		}
	}
	if env["ORKESTR_DISCOVERY"] != "pods" || env["ORKESTR_DISCOVERY_SELECTOR"] == "" {
		t.Fatalf("control plane env: %v", env)
	}
	sa, _ := cpSpec["serviceAccountName"].(string)

	// Pods as the controllers would make them from the templates, on
	// Kubernetes nodes k1…k4; then their status as a kubelet would report.
	mkPod := func(namespace, name string, template obj, hostNode string) {
		t.Helper()
		meta := template["metadata"].(obj)
		spec := map[string]any{}
		for k, v := range template["spec"].(obj) {
			spec[k] = v
		}
		spec["nodeName"] = hostNode
		if namespace != ns {
			// The chart's account (and its deprecated alias) is in ns only.
			delete(spec, "serviceAccountName")
			delete(spec, "serviceAccount")
		}
		api.Do(t, "POST", "/api/v1/namespaces/"+namespace+"/pods", obj{
			"metadata": obj{"name": name, "labels": meta["labels"], "annotations": meta["annotations"]},
			"spec":     spec}, nil)
	}
	setStatus := func(namespace, name, phase, ip string, ready bool) {
		t.Helper()
		var p obj
		api.Do(t, "GET", "/api/v1/namespaces/"+namespace+"/pods/"+name, nil, &p)
		cond := "False"
		if ready {
			cond = "True"
		}
		now := time.Now().UTC().Format(time.RFC3339)
		st := obj{"phase": phase, "conditions": []any{
			obj{"type": "Ready", "status": cond, "lastTransitionTime": now},
			obj{"type": "PodScheduled", "status": "True", "lastTransitionTime": now}}}
		if ip != "" {
			st["podIP"] = ip
			st["podIPs"] = []any{obj{"ip": ip}}
			st["hostIP"] = "192.0.2.10"
			st["hostIPs"] = []any{obj{"ip": "192.0.2.10"}}
		}
		p["status"] = st
		api.Do(t, "PUT", "/api/v1/namespaces/"+namespace+"/pods/"+name+"/status", p, nil)
	}
	mkPod(ns, "node-a", ds.Spec.Template, "k1")
	setStatus(ns, "node-a", "Running", "10.244.1.5", true)
	mkPod(ns, "node-b", ds.Spec.Template, "k2") // starting: not ready yet
	setStatus(ns, "node-b", "Running", "10.244.2.7", false)
	mkPod(ns, "node-c", ds.Spec.Template, "k3") // pending: no IP
	setStatus(ns, "node-c", "Pending", "", false)
	mkPod(ns, "node-v6", ds.Spec.Template, "k4")
	setStatus(ns, "node-v6", "Running", "fd00:10:244::9", true)
	// Not nodes: a control-plane pod (same namespace, other component) and
	// a node pod of another namespace.
	mkPod(ns, "cp-1", cp.Spec.Template, "k1")
	setStatus(ns, "cp-1", "Running", "10.244.1.9", true)
	mkPod("elsewhere", "node-x", ds.Spec.Template, "k1")
	setStatus("elsewhere", "node-x", "Running", "10.244.1.10", true)

	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	writeToken := func(tok string) {
		if err := os.WriteFile(tokenFile, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeToken(api.ServiceAccountToken(t, ns, sa))
	cfg := Config{APIServer: api.URL, TokenFile: tokenFile, CAFile: api.CAFile, Namespace: ns,
		Selector: env["ORKESTR_DISCOVERY_SELECTOR"], PortName: "http"}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	expect := func(want ...Node) {
		t.Helper()
		got, err := d.Nodes(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(want) == 0 && len(got) == 0 {
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("nodes:\n got %+v\nwant %+v", got, want)
		}
	}
	a := Node{Pod: "node-a", HostNode: "k1", Address: "http://10.244.1.5:7777"}
	b := Node{Pod: "node-b", HostNode: "k2", Address: "http://10.244.2.7:7777"}
	v6 := Node{Pod: "node-v6", HostNode: "k4", Address: "http://[fd00:10:244::9]:7777"}
	expect(a, v6)

	// node-b becomes ready; node-a is being deleted (a finalizer keeps it
	// visible, as a pod in its grace period is); node-v6 is gone.
	setStatus(ns, "node-b", "Running", "10.244.2.7", true)
	api.Do(t, "PATCH", "/api/v1/namespaces/"+ns+"/pods/node-a", obj{"metadata": obj{"finalizers": []any{"orkestr.eu/test"}}}, nil)
	api.Do(t, "DELETE", "/api/v1/namespaces/"+ns+"/pods/node-a", nil, nil)
	api.Do(t, "DELETE", "/api/v1/namespaces/"+ns+"/pods/node-v6", nil, nil)
	expect(b)
	api.Do(t, "PATCH", "/api/v1/namespaces/"+ns+"/pods/node-a", obj{"metadata": obj{"finalizers": nil}}, nil)

	// The Role is exactly enough: the same token may not list pods of
	// another namespace, nor read the Secret next to it.
	other := cfg
	other.Namespace = "elsewhere"
	od, err := New(other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := od.Nodes(context.Background()); err == nil || !strings.Contains(err.Error(), "HTTP 403") || !strings.Contains(err.Error(), "discovery Role") {
		t.Errorf("other namespace: %v", err)
	}
	tok, _ := os.ReadFile(tokenFile)
	if code, _, err := api.Raw(context.Background(), strings.TrimSpace(string(tok)), "GET", "/api/v1/namespaces/"+ns+"/secrets/orkestr-credentials", nil); err != nil || code != 403 {
		t.Errorf("discovery token reads the Secret: %d %v", code, err)
	}
	// Another service account of the namespace has no such Role.
	api.Do(t, "POST", "/api/v1/namespaces/"+ns+"/serviceaccounts", obj{"metadata": obj{"name": "intruder"}}, nil)
	writeToken(api.ServiceAccountToken(t, ns, "intruder"))
	if _, err := d.Nodes(context.Background()); err == nil || !strings.Contains(err.Error(), "HTTP 403") {
		t.Errorf("another service account: %v", err)
	}
	// A forged token, and the token file re-read at each call.
	writeToken("eyJhbGciOiJSUzI1NiJ9.e30.forged")
	if _, err := d.Nodes(context.Background()); err == nil || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("forged token: %v", err)
	}
	// The error never carries the token.
	if _, err := d.Nodes(context.Background()); err != nil && strings.Contains(err.Error(), "forged") {
		t.Errorf("the token leaks into the error: %v", err)
	}

	if out, err := api.Helm(t, "uninstall", "rel", "--namespace", ns); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// helm uninstall takes the discovery Role with it.
	code, _, _ := api.Try("GET", "/apis/rbac.authorization.k8s.io/v1/namespaces/"+ns+"/roles/rel-orkestr-discovery", nil, nil)
	if code != 404 {
		t.Errorf("discovery Role after helm uninstall: HTTP %d", code)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	ca := writeCA(t, httptest.NewTLSServer(http.NotFoundHandler()))
	good := Config{APIServer: "https://10.0.0.1:443", TokenFile: "/dev/null", CAFile: ca, Namespace: "fleet", Selector: "a=b", PortName: "http"}
	if _, err := New(good); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*Config){
		"plain http":        func(c *Config) { c.APIServer = "http://10.0.0.1" },
		"a path":            func(c *Config) { c.APIServer = "https://10.0.0.1/evil" },
		"no host":           func(c *Config) { c.APIServer = "https://" },
		"namespace path":    func(c *Config) { c.Namespace = "../../secrets" },
		"namespace upper":   func(c *Config) { c.Namespace = "Fleet" },
		"namespace empty":   func(c *Config) { c.Namespace = "" },
		"selector empty":    func(c *Config) { c.Selector = " " },
		"no port name":      func(c *Config) { c.PortName = "" },
		"CA missing":        func(c *Config) { c.CAFile = "/nonexistent/ca.crt" },
		"CA not a PEM cert": func(c *Config) { c.CAFile = "/dev/null" },
	} {
		c := good
		change(&c)
		if _, err := New(c); err == nil || !strings.HasPrefix(err.Error(), "pod discovery: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := InCluster("http"); err == nil || !strings.Contains(err.Error(), "not running in a Kubernetes pod") {
		t.Errorf("InCluster outside a pod: %v", err)
	}
}

// Answers a real API server does not give (a hostile or broken endpoint
// behind the configured address): each is refused with a clear error, and
// pods with unusable addresses are not nodes.
func TestHostileAnswers(t *testing.T) {
	var handler http.HandlerFunc
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler(w, r) }))
	defer srv.Close()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("secret-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{APIServer: srv.URL, TokenFile: tokenFile, CAFile: writeCA(t, srv), Namespace: "fleet", Selector: "app=node", PortName: "http"})
	if err != nil {
		t.Fatal(err)
	}
	var sawQuery string
	pod := func(name, ip string, port int) string {
		return `{"metadata":{"name":"` + name + `"},"spec":{"nodeName":"k","containers":[{"ports":[{"name":"http","containerPort":` +
			strconv.Itoa(port) + `}]}]},"status":{"phase":"Running","podIP":"` + ip + `","conditions":[{"type":"Ready","status":"True"}]}}`
	}
	for _, c := range []struct {
		name, body string
		status     int
		want       string // error substring; "" = no error
		nodes      int
	}{
		{"not a PodList", `{"kind":"SecretList","items":[]}`, 200, "not a PodList", 0},
		{"not JSON", `<html>`, 200, "not a PodList", 0},
		{"too large", `{"kind":"PodList","items":[` + strings.Repeat(" ", maxListBytes) + `]}`, 200, "larger than 32 MiB", 0},
		{"redirect", ``, 302, "HTTP 302", 0},
		{"status error", `{"kind":"Status","message":"pods is forbidden: nope"}`, 403, "pods is forbidden: nope", 0},
		{"bad addresses", `{"kind":"PodList","items":[` + strings.Join([]string{
			pod("ok", "10.1.2.3", 7777), pod("hostname", "evil.example.com", 7777), pod("inject", "10.1.2.3/../x", 7777),
			pod("zone", "fe80::1%eth0", 7777), pod("unspecified", "0.0.0.0", 7777), pod("port0", "10.1.2.4", 0),
			pod("port-high", "10.1.2.5", 70000), pod("mapped", "::ffff:10.1.2.6", 7777)}, ",") + `]}`, 200, "", 2},
	} {
		handler = func(w http.ResponseWriter, r *http.Request) {
			sawQuery = r.URL.RawQuery
			if r.Header.Get("Authorization") != "Bearer secret-token" {
				w.WriteHeader(401)
				return
			}
			if c.status == 302 {
				http.Redirect(w, r, "https://elsewhere.example/", 302)
				return
			}
			w.WriteHeader(c.status)
			_, _ = w.Write([]byte(c.body))
		}
		nodes, err := d.Nodes(context.Background())
		if c.want == "" {
			if err != nil || len(nodes) != c.nodes {
				t.Errorf("%s: %v %+v", c.name, err, nodes)
			}
			if len(nodes) == 2 && (nodes[0].Address != "http://10.1.2.6:7777" || nodes[1].Address != "http://10.1.2.3:7777") {
				t.Errorf("%s: %+v", c.name, nodes)
			}
		} else if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret-token") {
			t.Errorf("%s: the token leaks: %v", c.name, err)
		}
	}
	if sawQuery != "labelSelector=app%3Dnode" {
		t.Errorf("query %q", sawQuery)
	}
}

func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	t.Cleanup(srv.Close)
	f := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
