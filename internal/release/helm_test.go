package release

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// The Kubernetes versions the chart's manifests are validated against: the
// newest kubernetes-validate knows and the oldest still commonly run.
var kubeVersions = []string{"1.37.0", "1.30.0"}

func chartDir() string { return filepath.Join(testenv.RepoRoot(), "deploy/helm/orkestr") }

// helmTemplate renders the chart with a values file (and --set pairs).
func helmTemplate(t *testing.T, tools string, values string, set ...string) ([]byte, error) {
	t.Helper()
	args := []string{"template", "rel", chartDir(), "--namespace", "sandboxes"}
	if values != "" {
		args = append(args, "-f", values)
	}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	cmd := exec.Command(filepath.Join(tools, "helm"), args...)
	// helm must not read or write the operator's ~/.config or ~/.cache.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home, "HELM_CACHE_HOME="+home, "HELM_DATA_HOME="+home)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, errors.New(err.Error() + ": " + stderr.String())
	}
	return out, nil
}

// validate runs kubernetes-validate --strict (unknown fields are errors) on
// the rendered manifests for each Kubernetes version.
func validate(t *testing.T, tools string, manifests []byte) error {
	t.Helper()
	f := filepath.Join(t.TempDir(), "manifests.yaml")
	if err := os.WriteFile(f, manifests, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, v := range kubeVersions {
		out, err := exec.Command(filepath.Join(tools, "kubernetes-validate/bin/kubernetes-validate"), "--strict", "--quiet", "-k", v, f).CombinedOutput()
		if err != nil {
			return errors.New("kubernetes " + v + ": " + err.Error() + ": " + string(out))
		}
	}
	return nil
}

type object map[string]any

func decode(t *testing.T, manifests []byte) map[string]object {
	t.Helper()
	objs := map[string]object{}
	dec := yaml.NewDecoder(bytes.NewReader(manifests))
	for {
		var o object
		err := dec.Decode(&o)
		if err == io.EOF {
			return objs
		}
		if err != nil {
			t.Fatal(err)
		}
		if o == nil {
			continue
		}
		key := o.str("kind") + "/" + o.str("metadata.name")
		if _, dup := objs[key]; dup {
			t.Fatalf("%s rendered twice", key)
		}
		objs[key] = o
	}
}

// get walks a dotted path; numeric parts index lists.
func (o object) get(path string) any {
	var cur any = o
	for _, p := range strings.Split(path, ".") {
		switch c := cur.(type) {
		case object:
			cur = c[p]
		case []any:
			i := 0
			for _, r := range p {
				i = i*10 + int(r-'0')
			}
			if i >= len(c) {
				return nil
			}
			cur = c[i]
		default:
			return nil
		}
	}
	return cur
}

func (o object) str(path string) string { s, _ := o.get(path).(string); return s }

func kinds(objs map[string]object) map[string]int {
	k := map[string]int{}
	for _, o := range objs {
		k[o.str("kind")]++
	}
	return k
}

func envOf(c any) map[string]any {
	env := map[string]any{}
	for _, e := range c.(object).get("env").([]any) {
		m := e.(object)
		if v, ok := m["value"]; ok {
			env[m["name"].(string)] = v
		} else {
			env[m["name"].(string)] = m["valueFrom"]
		}
	}
	return env
}

func TestHelmChart(t *testing.T) {
	tools := toolsBin(t)
	for _, f := range []string{"helm", "kubernetes-validate/bin/kubernetes-validate"} {
		if _, err := os.Stat(filepath.Join(tools, f)); err != nil {
			t.Fatalf("%s is missing in %s: make release-tools", f, tools)
		}
	}
	serve, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "cmd/orkestrd/serve.go"))
	if err != nil {
		t.Fatal(err)
	}
	sets, _ := filepath.Glob(filepath.Join(testenv.RepoRoot(), "deploy/helm/tests/*.yaml"))
	if len(sets) < 4 {
		t.Fatalf("want at least 4 value sets in deploy/helm/tests, found %d", len(sets))
	}
	rendered := map[string]map[string]object{}
	for _, values := range sets {
		name := strings.TrimSuffix(filepath.Base(values), ".yaml")
		t.Run(name, func(t *testing.T) {
			out, err := helmTemplate(t, tools, values)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate(t, tools, out); err != nil {
				t.Fatal(err)
			}
			objs := decode(t, out)
			rendered[name] = objs
			ds, ok := objs["DaemonSet/rel-orkestr-node"]
			if !ok {
				t.Fatalf("no node DaemonSet: %v", kinds(objs))
			}
			pod := ds.get("spec.template.spec").(object)
			// The host access, exactly: privileged, one hostPath, no host
			// namespaces.
			if pod.get("containers.0.securityContext.privileged") != true {
				t.Error("node container is not privileged (runsc needs it)")
			}
			for _, k := range []string{"hostNetwork", "hostPID", "hostIPC"} {
				if pod.get(k) == true {
					t.Errorf("node pod has %s", k)
				}
			}
			var hostPaths []string
			for _, v := range pod.get("volumes").([]any) {
				if hp, ok := v.(object)["hostPath"]; ok {
					hostPaths = append(hostPaths, hp.(object)["path"].(string))
				}
			}
			if strings.Join(hostPaths, ",") != "/var/lib/orkestr" {
				t.Errorf("node hostPath volumes %v, want only /var/lib/orkestr", hostPaths)
			}
			// The probes ask an endpoint orkestrd serves.
			for _, p := range []string{"readinessProbe", "livenessProbe"} {
				path := pod.str("containers.0." + p + ".httpGet.path")
				if path == "" || !bytes.Contains(serve, []byte(`"GET `+path+`"`)) {
					t.Errorf("%s on %q, which orkestrd serve does not serve", p, path)
				}
			}
			env := envOf(pod.get("containers.0"))
			if env["ORKESTR_LISTEN"] != "0.0.0.0:7777" || env["ORKESTR_CONFIG"] != "/etc/orkestr/config.yaml" {
				t.Errorf("node env: %v", env)
			}
			// Secrets stay out of the ConfigMap and out of plain env values.
			cm := objs["ConfigMap/rel-orkestr-config"]
			for _, o := range []any{cm, env} {
				b, _ := yaml.Marshal(o)
				if bytes.Contains(b, []byte("postgres://")) || bytes.Contains(b, []byte("example-secret")) {
					t.Errorf("a secret is rendered in plain text:\n%s", b)
				}
			}
			// A ServiceMonitor (a CRD: not in kubernetes-validate's schemas)
			// must select a Service with a metrics port.
			for key, sm := range objs {
				if sm.str("kind") != "ServiceMonitor" {
					continue
				}
				if sm.str("apiVersion") != "monitoring.coreos.com/v1" || sm.str("spec.endpoints.0.port") != "metrics" || sm.str("spec.endpoints.0.path") != "/metrics" {
					t.Errorf("%s: %v", key, sm["spec"])
				}
				sel := sm.get("spec.selector.matchLabels").(object)
				found := false
				for _, svc := range objs {
					if svc.str("kind") != "Service" {
						continue
					}
					labels, _ := svc.get("metadata.labels").(object)
					match := true
					for k, v := range sel {
						match = match && labels[k] == v
					}
					for _, p := range svc.get("spec.ports").([]any) {
						found = found || (match && p.(object)["name"] == "metrics")
					}
				}
				if !found {
					t.Errorf("%s selects no Service with a metrics port", key)
				}
			}
		})
	}

	t.Run("defaults: the one-box DaemonSet only", func(t *testing.T) {
		objs := rendered["default"]
		if k := kinds(objs); k["Deployment"] != 0 || k["PodDisruptionBudget"] != 0 || k["Role"] != 0 || k["ServiceMonitor"] != 0 || k["DaemonSet"] != 1 {
			t.Errorf("default kinds: %v", k)
		}
		if _, has := envOf(objs["DaemonSet/rel-orkestr-node"].get("spec.template.spec.containers.0"))["ORKESTR_DATABASE_URL"]; has {
			t.Error("the default node uses a shared database")
		}
	})
	t.Run("fleet with pod discovery", func(t *testing.T) {
		objs := rendered["fleet-pods"]
		d := objs["Deployment/rel-orkestr-control-plane"]
		if d == nil || d.get("spec.replicas") != 3 {
			t.Fatalf("control plane: %v", d)
		}
		if img := d.str("spec.template.spec.containers.0.image"); !strings.HasPrefix(img, "registry.example.com/orkestr@sha256:") {
			t.Errorf("image %q is not pinned by digest", img)
		}
		if objs["PodDisruptionBudget/rel-orkestr-control-plane"].get("spec.minAvailable") != 2 {
			t.Error("PodDisruptionBudget minAvailable is not 2")
		}
		role := objs["Role/rel-orkestr-discovery"]
		if role == nil || strings.Join(toStrings(role.get("rules.0.verbs")), ",") != "get,list,watch" || strings.Join(toStrings(role.get("rules.0.resources")), ",") != "pods" {
			t.Errorf("discovery role: %v", role)
		}
		env := envOf(d.get("spec.template.spec.containers.0"))
		if env["ORKESTR_DISCOVERY"] != "pods" || !strings.Contains(env["ORKESTR_DISCOVERY_SELECTOR"].(string), "app.kubernetes.io/component=node") {
			t.Errorf("discovery env: %v", env)
		}
		if ref, _ := env["ORKESTR_DATABASE_URL"].(object); ref.str("secretKeyRef.name") != "orkestr-credentials" || ref.str("secretKeyRef.key") != "database-url" {
			t.Errorf("database URL from %v", ref)
		}
		if _, ok := objs["Secret/rel-orkestr-secrets"]; ok {
			t.Error("the chart rendered a Secret although existingSecret is set")
		}
		if d.get("spec.template.spec.containers.0.securityContext.privileged") == true {
			t.Error("the control plane must not be privileged")
		}
	})
	t.Run("fleet with PostgreSQL discovery and chart-made secrets", func(t *testing.T) {
		objs := rendered["fleet-postgres"]
		sec := objs["Secret/rel-orkestr-secrets"]
		want := map[string]string{"database-url": "postgres://orkestr:secret@db:5432/orkestr", "s3-access-key-id": "AKIAEXAMPLE",
			"s3-secret-access-key": "example-secret", "snapshot-master-key": "0123456789abcdef0123456789abcdef"}
		for k, v := range want {
			b, _ := base64.StdEncoding.DecodeString(sec.str("data." + k))
			if string(b) != v {
				t.Errorf("secret %s = %q, want %q", k, b, v)
			}
		}
		if k := kinds(objs); k["PodDisruptionBudget"] != 0 || k["Role"] != 0 || k["ServiceAccount"] != 0 {
			t.Errorf("kinds: %v", k)
		}
	})

	t.Run("refused values", func(t *testing.T) {
		for _, c := range []struct {
			set  []string
			want string
		}{
			{[]string{"controlPlane.enabled=true"}, "controlPlane.enabled needs PostgreSQL"},
		} {
			if _, err := helmTemplate(t, tools, "", c.set...); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("--set %v: %v, want %q", c.set, err, c.want)
			}
		}
	})

	t.Run("the validator refuses what Kubernetes would", func(t *testing.T) {
		out, err := helmTemplate(t, tools, "")
		if err != nil {
			t.Fatal(err)
		}
		// A misspelt field (strict) and a wrong type must each fail.
		for _, bad := range [][2]string{{"terminationGracePeriodSeconds: 45", "terminationGracePeriodSecond: 45"},
			{"terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: soon"}} {
			broken := bytes.Replace(out, []byte(bad[0]), []byte(bad[1]), 1)
			if bytes.Equal(broken, out) {
				t.Fatalf("%q is not in the rendered chart", bad[0])
			}
			if err := validate(t, tools, broken); err == nil {
				t.Errorf("kubernetes-validate accepted %q", bad[1])
			}
		}
	})
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, len(l))
	for i, x := range l {
		out[i], _ = x.(string)
	}
	return out
}
