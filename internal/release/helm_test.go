package release

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
			checkFleet(t, objs, serve)
			env := envOf(pod.get("containers.0"))
			// Secrets stay out of the ConfigMap and out of plain env values.
			cm := objs["ConfigMap/rel-orkestr-config"]
			for _, o := range []any{cm, env, envOf(objs["Deployment/rel-orkestr-control-plane"].get("spec.template.spec.containers.0"))} {
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

	t.Run("defaults: the fleet with a generated node token", func(t *testing.T) {
		objs := rendered["default"]
		if k := kinds(objs); k["Deployment"] != 1 || k["DaemonSet"] != 1 || k["PodDisruptionBudget"] != 1 || k["NetworkPolicy"] != 1 ||
			k["Role"] != 0 || k["RoleBinding"] != 0 || k["ServiceMonitor"] != 0 || k["Service"] != 1 {
			t.Errorf("default kinds: %v", k)
		}
		if r := objs["Deployment/rel-orkestr-control-plane"].get("spec.replicas"); r != 2 {
			t.Errorf("control plane replicas %v, want 2", r)
		}
		tok, _ := base64.StdEncoding.DecodeString(objs["Secret/rel-orkestr-secrets"].str("data.node-token"))
		if len(tok) < 32 {
			t.Errorf("generated node token of %d bytes, want at least 32", len(tok))
		}
		// Generated anew by each render without a stored Secret (helm
		// install keeps the stored one on upgrade: the k8s tier checks).
		again, err := helmTemplate(t, tools, filepath.Join(testenv.RepoRoot(), "deploy/helm/tests/default.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		tok2, _ := base64.StdEncoding.DecodeString(decode(t, again)["Secret/rel-orkestr-secrets"].str("data.node-token"))
		if bytes.Equal(tok, tok2) {
			t.Error("two renders generated the same node token")
		}
	})
	t.Run("credentials from the operator's Secret", func(t *testing.T) {
		objs := rendered["fleet-existing-secret"]
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
		for _, w := range []string{"Deployment/rel-orkestr-control-plane", "DaemonSet/rel-orkestr-node"} {
			spec := objs[w].get("spec.template.spec").(object)
			env := envOf(spec.get("containers.0"))
			if ref, _ := env["ORKESTR_DATABASE_URL"].(object); ref.str("secretKeyRef.name") != "orkestr-credentials" || ref.str("secretKeyRef.key") != "database-url" {
				t.Errorf("%s: database URL from %v", w, ref)
			}
			if s := secretVolume(spec); s.str("secret.secretName") != "orkestr-credentials" || s.get("secret.optional") == true {
				t.Errorf("%s: the node token's Secret volume: %v", w, s)
			}
		}
		if _, ok := objs["Secret/rel-orkestr-secrets"]; ok {
			t.Error("the chart rendered a Secret although existingSecret is set")
		}
		if svc := objs["Service/rel-orkestr"]; svc.str("spec.type") != "LoadBalancer" || svc.get("spec.selector").(object)["app.kubernetes.io/component"] != "control-plane" {
			t.Errorf("Service: %v", svc["spec"])
		}
	})
	t.Run("every credential from values into the chart's Secret", func(t *testing.T) {
		objs := rendered["fleet-chart-secrets"]
		sec := objs["Secret/rel-orkestr-secrets"]
		want := map[string]string{"database-url": "postgres://orkestr:secret@db:5432/orkestr", "node-token": "example-secret-node-token-0123456789abcdef",
			"s3-access-key-id": "AKIAEXAMPLE", "s3-secret-access-key": "example-secret", "snapshot-master-key": "0123456789abcdef0123456789abcdef"}
		for k, v := range want {
			b, _ := base64.StdEncoding.DecodeString(sec.str("data." + k))
			if string(b) != v {
				t.Errorf("secret %s = %q, want %q", k, b, v)
			}
		}
		if k := kinds(objs); k["PodDisruptionBudget"] != 0 || k["Role"] != 0 || k["ServiceAccount"] != 0 {
			t.Errorf("kinds: %v", k)
		}
		// The operator's fleet keys are kept next to the chart's.
		var cfg object
		if err := yaml.Unmarshal([]byte(dataKey(objs["ConfigMap/rel-orkestr-config"], "config.yaml")), &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.get("fleet.heartbeat_timeout_seconds") != 30 || cfg.get("fleet.cpu_overcommit") != 2 || cfg.get("node.slots") != 16 || cfg.get("fleet.enabled") != true {
			t.Errorf("config: %v", cfg)
		}
	})
	t.Run("snapshots in S3: key and credentials from the Secret", func(t *testing.T) {
		objs := rendered["fleet-s3-snapshots"]
		var cfg object
		if err := yaml.Unmarshal([]byte(dataKey(objs["ConfigMap/rel-orkestr-config"], "config.yaml")), &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.get("snapshots.store") != "s3" || cfg.get("snapshots.master_key_file") != "/etc/orkestr/secrets/snapshot-master-key" ||
			cfg.get("snapshots.s3.bucket") != "orkestr-snapshots" {
			t.Errorf("snapshots config: %v", cfg["snapshots"])
		}
		for _, w := range []string{"Deployment/rel-orkestr-control-plane", "DaemonSet/rel-orkestr-node"} {
			env := envOf(objs[w].get("spec.template.spec.containers.0"))
			for v, key := range map[string]string{"AWS_ACCESS_KEY_ID": "s3-access-key-id", "AWS_SECRET_ACCESS_KEY": "s3-secret-access-key"} {
				if ref, _ := env[v].(object); ref.str("secretKeyRef.name") != "rel-orkestr-secrets" || ref.str("secretKeyRef.key") != key {
					t.Errorf("%s: %s from %v", w, v, env[v])
				}
			}
		}
		// Without a store in S3 the pods get no S3 variables.
		if env := envOf(rendered["default"]["DaemonSet/rel-orkestr-node"].get("spec.template.spec.containers.0")); env["AWS_ACCESS_KEY_ID"] != nil {
			t.Errorf("default values: AWS_ACCESS_KEY_ID in the node's env")
		}
	})
	t.Run("nodes on selected hosts, another node API port", func(t *testing.T) {
		objs := rendered["nodes-selected"]
		ds := objs["DaemonSet/rel-orkestr-node"]
		if p := ports(ds.get("spec.template.spec.containers.0").(object)); p["node-api"] != 7443 {
			t.Errorf("node ports %v", p)
		}
		np := objs["NetworkPolicy/rel-orkestr-node"]
		if ml, _ := np.get("spec.ingress.0.from.1.namespaceSelector.matchLabels").(object); ml["kubernetes.io/metadata.name"] != "monitoring" {
			t.Errorf("NetworkPolicy: %v", np["spec"])
		}
	})

	t.Run("refused values", func(t *testing.T) {
		db := "secrets.databaseURL=postgres://o:pw@db/o"
		for _, c := range []struct {
			set  []string
			want string
		}{
			{nil, "the fleet needs PostgreSQL"},
			{[]string{"node.enabled=false"}, "the fleet needs PostgreSQL"},
			{[]string{"secrets.databaseURL=sqlite:///var/lib/x.db"}, "must be a PostgreSQL URL"},
			{[]string{db, "secrets.existingSecret=mine"}, "put database-url and node-token into that Secret"},
			{[]string{db, "secrets.nodeToken=short"}, "at least 32 bytes"},
			{[]string{db, "config.database.url=postgres://o:pw@db/o"}, "config.database.url is a secret"},
			{[]string{db, "config.fleet.node_token=0123456789abcdef0123456789abcdef"}, "config.fleet.node_token is set by the chart"},
			{[]string{db, "config.fleet.node_token_env=X"}, "config.fleet.node_token_env is set by the chart"},
			{[]string{db, "config.snapshots.store=s3"}, "needs secrets.snapshotMasterKey"},
			{[]string{db, "config.snapshots.master_key=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}, "config.snapshots.master_key is set by the chart"},
			{[]string{db, "config.snapshots.s3.secret_access_key=x"}, "config.snapshots.s3.secret_access_key is set by the chart"},
			{[]string{db, "config.node.id=n1"}, "config.node.id is set per pod"},
			{[]string{db, "config.node.listen=0.0.0.0:7070"}, "config.node.listen is set per pod"},
			{[]string{db, "config.node.advertise=http://x:7070"}, "config.node.advertise is set per pod"},
		} {
			_, err := helmTemplate(t, tools, "", c.set...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("--set %v: %v, want %q", c.set, err, c.want)
			}
			if err != nil && strings.Contains(err.Error(), "pw@") {
				t.Errorf("--set %v: the refusal prints the database password: %v", c.set, err)
			}
		}
	})

	t.Run("the validator refuses what Kubernetes would", func(t *testing.T) {
		out, err := helmTemplate(t, tools, filepath.Join(testenv.RepoRoot(), "deploy/helm/tests/default.yaml"))
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

// checkFleet checks what makes the rendered chart the fleet of `orkestrd
// serve` (fleet.enabled) and `orkestrd node`: the commands, the node's id,
// listen address and probes, the node token reaching both from the Secret
// and nowhere else, no Service in front of the node API, the NetworkPolicy.
func checkFleet(t *testing.T, objs map[string]object, serve []byte) {
	t.Helper()
	ds, d := objs["DaemonSet/rel-orkestr-node"], objs["Deployment/rel-orkestr-control-plane"]
	if d == nil {
		t.Fatalf("no control plane Deployment: %v", kinds(objs))
	}
	node := ds.get("spec.template.spec.containers.0").(object)
	cp := d.get("spec.template.spec.containers.0").(object)
	if a := strings.Join(toStrings(node.get("args")), " "); a != "node" {
		t.Errorf("node args %q, want node", a)
	}
	if a := strings.Join(toStrings(cp.get("args")), " "); a != "serve" {
		t.Errorf("control plane args %q, want serve", a)
	}
	env := envOf(node)
	if ref, _ := env["ORKESTR_NODE_ID"].(object); ref.str("fieldRef.fieldPath") != "spec.nodeName" {
		t.Errorf("node id from %v, want the Kubernetes node name", env["ORKESTR_NODE_ID"])
	}
	if ref, _ := env["POD_IP"].(object); ref.str("fieldRef.fieldPath") != "status.podIP" {
		t.Errorf("POD_IP from %v", env["POD_IP"])
	}
	apiPort := ports(node)["node-api"]
	if apiPort == 0 || env["ORKESTR_NODE_LISTEN"] != "$(POD_IP):"+strconv.Itoa(apiPort) {
		t.Errorf("node listens on %v, container port node-api %d", env["ORKESTR_NODE_LISTEN"], apiPort)
	}
	for k := range env {
		if strings.HasPrefix(k, "ORKESTR_DISCOVERY") || k == "ORKESTR_LISTEN" {
			t.Errorf("node env has %s (a server's or pod discovery's)", k)
		}
	}
	for _, p := range []string{"readinessProbe", "livenessProbe"} {
		// The node serves no unauthenticated HTTP: a TCP probe on its API.
		if node.get(p+".tcpSocket.port") != "node-api" || node.get(p+".httpGet") != nil {
			t.Errorf("node %s: %v", p, node.get(p))
		}
		// The control plane's probes ask an endpoint orkestrd serve serves.
		path := cp.str(p + ".httpGet.path")
		if path == "" || !bytes.Contains(serve, []byte(`"GET `+path+`"`)) || cp.str(p+".httpGet.port") != "http" {
			t.Errorf("control plane %s on %q, which orkestrd serve does not serve", p, path)
		}
	}
	cpEnv := envOf(cp)
	if cpEnv["ORKESTR_LISTEN"] != "0.0.0.0:7777" || cpEnv["ORKESTR_CONFIG"] != "/etc/orkestr/config.yaml" || env["ORKESTR_CONFIG"] != "/etc/orkestr/config.yaml" {
		t.Errorf("control plane env %v, node env %v", cpEnv, env)
	}
	// The config: the fleet's control plane, the node token from the
	// Secret's file, mounted in both.
	var cfg object
	if err := yaml.Unmarshal([]byte(dataKey(objs["ConfigMap/rel-orkestr-config"], "config.yaml")), &cfg); err != nil {
		t.Fatal(err)
	}
	tokenFile := cfg.str("fleet.node_token_file")
	if cfg.get("fleet.enabled") != true || tokenFile != "/etc/orkestr/secrets/node-token" || cfg.get("fleet.node_token") != nil || cfg.get("database") != nil {
		t.Errorf("config: %v", cfg)
	}
	for name, w := range map[string]object{"node": ds, "control plane": d} {
		spec := w.get("spec.template.spec").(object)
		vol := secretVolume(spec)
		mounted := false
		for _, m := range spec.get("containers.0.volumeMounts").([]any) {
			m := m.(object)
			mounted = mounted || (m["name"] == vol["name"] && m["mountPath"] == filepath.Dir(tokenFile) && m["readOnly"] == true)
		}
		if vol == nil || !mounted {
			t.Errorf("%s: the Secret is not mounted read-only at %s", name, filepath.Dir(tokenFile))
		}
		if sec, ok := objs["Secret/"+vol.str("secret.secretName")]; ok && sec.str("data.node-token") == "" {
			t.Errorf("%s: Secret %s has no node-token", name, vol.str("secret.secretName"))
		}
	}
	// The control plane reads the token as its own non-root user.
	if d.get("spec.template.spec.securityContext.fsGroup") != 65532 || secretVolume(d.get("spec.template.spec").(object)).get("secret.defaultMode") != 0o440 {
		t.Errorf("control plane cannot read the node token as uid 65532: %v", d.get("spec.template.spec.securityContext"))
	}
	// No Service selects the node pods: the node API is reached at the
	// pod address the node registers, never through a Service (least of
	// all a LoadBalancer or NodePort).
	nodeLabels := ds.get("spec.template.metadata.labels").(object)
	for key, svc := range objs {
		if svc.str("kind") != "Service" {
			continue
		}
		sel, _ := svc.get("spec.selector").(object)
		match := len(sel) > 0
		for k, v := range sel {
			match = match && nodeLabels[k] == v
		}
		if match {
			t.Errorf("%s selects the node pods", key)
		}
	}
	// The NetworkPolicy (when enabled): ingress to the node pods from the
	// control plane's pods on the node API port only.
	if np, ok := objs["NetworkPolicy/rel-orkestr-node"]; ok {
		sel := np.get("spec.podSelector.matchLabels").(object)
		for k, v := range sel {
			if nodeLabels[k] != v {
				t.Errorf("NetworkPolicy does not select the node pods: %v", sel)
			}
		}
		cpLabels := d.get("spec.template.metadata.labels").(object)
		from := np.get("spec.ingress.0.from.0.podSelector.matchLabels").(object)
		for k, v := range from {
			if cpLabels[k] != v {
				t.Errorf("NetworkPolicy admits %v, not the control plane's pods", from)
			}
		}
		if strings.Join(toStrings(np.get("spec.policyTypes")), ",") != "Ingress" || np.get("spec.ingress.0.ports.0.port") != "node-api" || np.get("spec.ingress.1") != nil {
			t.Errorf("NetworkPolicy: %v", np["spec"])
		}
	}
}

// secretVolume is the pod's volume of the chart's (or operator's) Secret.
func secretVolume(spec object) object {
	for _, v := range spec.get("volumes").([]any) {
		if v.(object)["secret"] != nil {
			return v.(object)
		}
	}
	return nil
}

func ports(c object) map[string]int {
	m := map[string]int{}
	l, _ := c.get("ports").([]any)
	for _, p := range l {
		n, _ := p.(object)["name"].(string)
		m[n], _ = p.(object)["containerPort"].(int)
	}
	return m
}
