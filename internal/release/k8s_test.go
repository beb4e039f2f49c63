package release

import (
	"bytes"
	"encoding/base64"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/orkestr-eu/orkestr/internal/testenv"
	"github.com/orkestr-eu/orkestr/internal/testenv/kubeapi"
)

// The k8s tier (make test-k8s): every value set of deploy/helm/tests is
// installed with the real helm into a real kube-apiserver started with
// --allow-privileged, and what the API server stored is checked for what
// its validation does not cover: that the objects fit together (selectors,
// named ports, probes on orkestrd's real listen port, referenced
// ConfigMaps, Secrets and keys, service accounts, RBAC), that pods made
// from the workloads' templates pass admission (Pod Security), that the
// rendered config is one orkestrd accepts, and that upgrade and uninstall
// behave. No kubelet: no pod runs.
func TestHelmChartOnKubeAPIServer(t *testing.T) {
	api := kubeapi.Start(t, kubeapi.Options{AllowPrivileged: true})
	orkestrd := orkestrdBinary(t)
	installServiceMonitorCRD(t, api)
	// Namespaces at each Pod Security level, for the admission checks.
	for _, level := range []string{"baseline", "restricted"} {
		api.Namespace(t, "pss-"+level, map[string]string{"pod-security.kubernetes.io/enforce": level})
	}

	sets, _ := filepath.Glob(filepath.Join(filepath.Dir(kubeapi.Chart()), "tests", "*.yaml"))
	if len(sets) < 4 {
		t.Fatalf("want at least 4 value sets in deploy/helm/tests, found %d", len(sets))
	}
	for _, values := range sets {
		name := strings.TrimSuffix(filepath.Base(values), ".yaml")
		t.Run(name, func(t *testing.T) {
			ns := "chart-" + name
			// The node pods are privileged: the namespace must allow it
			// (the chart's README says so).
			api.Namespace(t, ns, map[string]string{"pod-security.kubernetes.io/enforce": "privileged"})
			var vals struct {
				Secrets struct {
					ExistingSecret string `yaml:"existingSecret"`
				} `yaml:"secrets"`
				ServiceAccount struct {
					Create *bool  `yaml:"create"`
					Name   string `yaml:"name"`
				} `yaml:"serviceAccount"`
			}
			readYAML(t, values, &vals)
			if sa := vals.ServiceAccount; sa.Create != nil && !*sa.Create && sa.Name != "" {
				// The operator's service account, made before the install.
				api.Do(t, "POST", "/api/v1/namespaces/"+ns+"/serviceaccounts", map[string]any{"metadata": map[string]any{"name": sa.Name}}, nil)
			}
			if s := vals.Secrets.ExistingSecret; s != "" {
				// The operator's Secret, made before the install.
				api.Do(t, "POST", "/api/v1/namespaces/"+ns+"/secrets", map[string]any{"metadata": map[string]any{"name": s},
					"stringData": map[string]any{"database-url": "postgres://orkestr:operator-secret@db:5432/orkestr",
						"node-token": "operator-node-token-0123456789abcdef0123456789"}}, nil)
			}

			// Every rendered object passes the API server's validation with
			// unknown fields refused (a server-side dry run).
			rendered, err := api.Helm(t, "template", "rel", kubeapi.Chart(), "--namespace", ns, "-f", values)
			if err != nil {
				t.Fatal(err)
			}
			for key, o := range decode(t, []byte(rendered)) {
				code, body, err := api.Try("POST", collection(o, ns)+"?dryRun=All&fieldValidation=Strict", o, nil)
				if err != nil || code != 201 {
					t.Errorf("%s refused by the API server: HTTP %d %s %v", key, code, body, err)
				}
			}

			if out, err := api.Helm(t, "install", "rel", kubeapi.Chart(), "--namespace", ns, "-f", values); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			manifest, err := api.Helm(t, "get", "manifest", "rel", "--namespace", ns)
			if err != nil {
				t.Fatal(err)
			}
			stored := map[string]object{}
			for key, o := range decode(t, []byte(manifest)) {
				s := get(t, api, collection(o, ns)+"/"+o.str("metadata.name"))
				if labels, _ := s.get("metadata.labels").(object); labels["app.kubernetes.io/managed-by"] != "Helm" {
					t.Errorf("%s stored without the chart's labels: %v", key, labels)
				}
				stored[key] = s
			}
			checkConsistent(t, api, ns, stored)
			checkPods(t, api, ns, stored)
			for key, o := range stored {
				if k := o.str("kind"); k == "DaemonSet" || k == "Deployment" {
					checkConfig(t, api, orkestrd, ns, key, o)
				}
			}

			// An upgrade that changes the config changes the pods'
			// config checksum: the DaemonSet rolls its pods. The node
			// token stays: nodes and control plane read it at start, and a
			// new one would lock the running ones out of each other.
			before := stored["DaemonSet/rel-orkestr-node"]
			secretPath := "/api/v1/namespaces/" + ns + "/secrets/rel-orkestr-secrets"
			tokenBefore := ""
			if _, chartMade := stored["Secret/rel-orkestr-secrets"]; chartMade {
				tokenBefore = dataKey(get(t, api, secretPath), "node-token")
			}
			if _, err := api.Helm(t, "upgrade", "rel", kubeapi.Chart(), "--namespace", ns, "-f", values, "--set", "config.pool_size=7"); err != nil {
				t.Fatal(err)
			}
			if tokenBefore != "" {
				if after := dataKey(get(t, api, secretPath), "node-token"); after != tokenBefore {
					t.Errorf("helm upgrade changed the node token")
				}
			}
			after := get(t, api, collection(before, ns)+"/rel-orkestr-node")
			sum := func(o object) string {
				a, _ := o.get("spec.template.metadata.annotations").(object)
				s, _ := a["checksum/config"].(string)
				return s
			}
			if sum(before) == "" || sum(before) == sum(after) {
				t.Errorf("config checksum %q → %q: a config change would not roll the node pods", sum(before), sum(after))
			}
			secretSum := func(o object) string {
				a, _ := o.get("spec.template.metadata.annotations").(object)
				s, _ := a["checksum/secret"].(string)
				return s
			}
			if secretSum(before) == "" || secretSum(before) != secretSum(after) {
				t.Errorf("secret checksum %q → %q: an upgrade that keeps the credentials would roll the pods", secretSum(before), secretSum(after))
			}
			cm := get(t, api, "/api/v1/namespaces/"+ns+"/configmaps/rel-orkestr-config")
			if !strings.Contains(dataKey(cm, "config.yaml"), "pool_size: 7") {
				t.Errorf("upgraded ConfigMap: %s", dataKey(cm, "config.yaml"))
			}

			// Uninstall removes everything the chart made, and nothing
			// the operator made.
			if _, err := api.Helm(t, "uninstall", "rel", "--namespace", ns); err != nil {
				t.Fatal(err)
			}
			for key, o := range stored {
				if code, _, _ := api.Try("GET", collection(o, ns)+"/"+o.str("metadata.name"), nil, nil); code != 404 {
					t.Errorf("%s still there after helm uninstall (HTTP %d)", key, code)
				}
			}
			var secrets struct {
				Items []struct {
					Metadata struct {
						Name string `json:"name"`
					} `json:"metadata"`
				} `json:"items"`
			}
			api.Do(t, "GET", "/api/v1/namespaces/"+ns+"/secrets", nil, &secrets)
			var left []string
			for _, s := range secrets.Items {
				left = append(left, s.Metadata.Name)
			}
			if want := vals.Secrets.ExistingSecret; strings.Join(left, ",") != want {
				t.Errorf("secrets after uninstall: %v, want only the operator's %q", left, want)
			}
		})
	}
}

// collection is the API path of the objects of o's kind in ns.
func collection(o object, ns string) string {
	gv := o.str("apiVersion")
	prefix := "/apis/" + gv
	if gv == "v1" {
		prefix = "/api/v1"
	}
	// Every kind the chart renders pluralises with an s, but one.
	plural := strings.ToLower(o.str("kind")) + "s"
	if o.str("kind") == "NetworkPolicy" {
		plural = "networkpolicies"
	}
	return prefix + "/namespaces/" + ns + "/" + plural
}

// get reads an object from the API server as an object (JSON is YAML).
func get(t *testing.T, api *kubeapi.Server, path string) object {
	t.Helper()
	code, body, err := api.Try("GET", path, nil, nil)
	if err != nil || code != 200 {
		t.Fatalf("GET %s: HTTP %d %s %v", path, code, body, err)
	}
	var o object
	if err := yaml.Unmarshal(body, &o); err != nil {
		t.Fatal(err)
	}
	return o
}

func dataKey(o object, key string) string {
	d, _ := o.get("data").(object)
	s, _ := d[key].(string)
	return s
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func labelsOf(o object, path string) map[string]string {
	m := map[string]string{}
	l, _ := o.get(path).(object)
	for k, v := range l {
		m[k], _ = v.(string)
	}
	return m
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func selectorString(sel map[string]string) string {
	var parts []string
	for k, v := range sel {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// list returns the names of the objects at path matching a label selector,
// as the API server selects them.
func list(t *testing.T, api *kubeapi.Server, path, selector string) []string {
	t.Helper()
	var l struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		} `json:"items"`
	}
	api.Do(t, "GET", path+"?labelSelector="+url.QueryEscape(selector), nil, &l)
	var names []string
	for _, i := range l.Items {
		names = append(names, i.Metadata.Name)
	}
	sort.Strings(names)
	return names
}

func containerPorts(c object) map[string]int {
	ports := map[string]int{}
	l, _ := c.get("ports").([]any)
	for _, p := range l {
		po := p.(object)
		n, _ := po["name"].(string)
		ports[n], _ = po["containerPort"].(int)
	}
	return ports
}

func envValue(c object, name string) string {
	l, _ := c.get("env").([]any)
	for _, e := range l {
		if e.(object)["name"] == name {
			s, _ := e.(object)["value"].(string)
			return s
		}
	}
	return ""
}

// checkConsistent checks that the stored objects refer to each other
// correctly: what the API server accepts one by one but a cluster would
// not run (a Service selecting nothing, a probe on a port nobody listens
// on, a missing Secret key).
func checkConsistent(t *testing.T, api *kubeapi.Server, ns string, stored map[string]object) {
	t.Helper()
	workloads := map[string]object{}
	for key, o := range stored {
		if k := o.str("kind"); k == "DaemonSet" || k == "Deployment" {
			workloads[key] = o
		}
	}
	for key, w := range workloads {
		spec := w.get("spec.template.spec").(object)
		if sa := spec.str("serviceAccountName"); sa != "default" {
			get(t, api, "/api/v1/namespaces/"+ns+"/serviceaccounts/"+sa)
		}
		for _, c := range spec.get("containers").([]any) {
			c := c.(object)
			ports := containerPorts(c)
			if w.str("kind") == "DaemonSet" {
				// orkestrd node listens on the pod IP at the node-api port;
				// the probes connect there.
				if want := "$(POD_IP):" + strconv.Itoa(ports["node-api"]); ports["node-api"] == 0 || envValue(c, "ORKESTR_NODE_LISTEN") != want {
					t.Errorf("%s: container ports %v, ORKESTR_NODE_LISTEN %q", key, ports, envValue(c, "ORKESTR_NODE_LISTEN"))
				}
				for _, p := range []string{"readinessProbe", "livenessProbe"} {
					if port, _ := c.get(p + ".tcpSocket.port").(string); port != "node-api" {
						t.Errorf("%s: %s on %v, not the node API port", key, p, c.get(p))
					}
				}
			} else {
				// Probes ask orkestrd's API port: the one ORKESTR_LISTEN binds.
				_, listenPort, _ := strings.Cut(envValue(c, "ORKESTR_LISTEN"), ":")
				_, metricsPort, _ := strings.Cut(envValue(c, "ORKESTR_METRICS_LISTEN"), ":")
				if strconv.Itoa(ports["http"]) != listenPort || strconv.Itoa(ports["metrics"]) != metricsPort {
					t.Errorf("%s: container ports %v, orkestrd listens on %s and %s", key, ports, listenPort, metricsPort)
				}
				for _, p := range []string{"readinessProbe", "livenessProbe"} {
					port := c.get(p + ".httpGet.port")
					if s, ok := port.(string); !ok || ports[s] == 0 || strconv.Itoa(ports[s]) != listenPort {
						t.Errorf("%s: %s on port %v, not orkestrd's API port %s", key, p, port, listenPort)
					}
				}
			}
			// Every Secret and key the environment takes exists (the
			// operator's Secret included).
			envs, _ := c.get("env").([]any)
			for _, e := range envs {
				ref, ok := e.(object).get("valueFrom.secretKeyRef").(object)
				if !ok {
					continue
				}
				s := get(t, api, "/api/v1/namespaces/"+ns+"/secrets/"+ref.str("name"))
				if dataKey(s, ref.str("key")) == "" {
					t.Errorf("%s: env %v takes key %q, which Secret %s lacks", key, e.(object)["name"], ref.str("key"), ref.str("name"))
				}
			}
		}
		for _, v := range spec.get("volumes").([]any) {
			v := v.(object)
			if cm := v.str("configMap.name"); cm != "" {
				if dataKey(get(t, api, "/api/v1/namespaces/"+ns+"/configmaps/"+cm), "config.yaml") == "" {
					t.Errorf("%s: ConfigMap %s has no config.yaml (the mount's subPath)", key, cm)
				}
			}
			if s := v.str("secret.secretName"); s != "" {
				// The config's fleet.node_token_file is this volume's
				// node-token key.
				if dataKey(get(t, api, "/api/v1/namespaces/"+ns+"/secrets/"+s), "node-token") == "" {
					t.Errorf("%s: Secret %s has no node-token", key, s)
				}
			}
		}
	}
	// Services, the PodDisruptionBudget and the ServiceMonitor select what
	// they are meant to; RBAC refers to what exists.
	for key, o := range stored {
		switch o.str("kind") {
		case "Service":
			sel := labelsOf(o, "spec.selector")
			var targets []string
			for wkey, w := range workloads {
				if selects(sel, labelsOf(w, "spec.template.metadata.labels")) {
					targets = append(targets, wkey)
					ports := containerPorts(w.get("spec.template.spec.containers.0").(object))
					for _, p := range o.get("spec.ports").([]any) {
						if tp, _ := p.(object)["targetPort"].(string); ports[tp] == 0 {
							t.Errorf("%s: targetPort %q is not a port of %s", key, tp, wkey)
						}
					}
				}
			}
			if len(targets) != 1 || targets[0] != "Deployment/rel-orkestr-control-plane" {
				t.Errorf("%s selects %v, want the control plane only (never the node API)", key, targets)
			}
		case "PodDisruptionBudget":
			if !selects(labelsOf(o, "spec.selector.matchLabels"), labelsOf(stored["Deployment/rel-orkestr-control-plane"], "spec.template.metadata.labels")) {
				t.Errorf("%s does not select the control plane's pods", key)
			}
		case "ServiceMonitor":
			sel := selectorString(labelsOf(o, "spec.selector.matchLabels"))
			svcs := list(t, api, "/api/v1/namespaces/"+ns+"/services", sel)
			if len(svcs) == 0 {
				t.Errorf("%s selects no Service (%s)", key, sel)
			}
			for _, name := range svcs {
				found := false
				for _, p := range get(t, api, "/api/v1/namespaces/"+ns+"/services/"+name).get("spec.ports").([]any) {
					found = found || p.(object)["name"] == o.str("spec.endpoints.0.port")
				}
				if !found {
					t.Errorf("%s: Service %s has no port %q", key, name, o.str("spec.endpoints.0.port"))
				}
			}
		case "RoleBinding":
			get(t, api, "/apis/rbac.authorization.k8s.io/v1/namespaces/"+ns+"/roles/"+o.str("roleRef.name"))
			for _, s := range o.get("subjects").([]any) {
				get(t, api, "/api/v1/namespaces/"+s.(object).str("namespace")+"/serviceaccounts/"+s.(object).str("name"))
			}
		}
	}
}

// checkPods makes a pod from each workload's template, as the DaemonSet or
// Deployment controller would, and checks admission: accepted here (a
// privileged namespace), the node refused where Pod Security is baseline,
// the control plane accepted even where it is restricted. The API server
// then selects the pods by each Service's selector.
func checkPods(t *testing.T, api *kubeapi.Server, ns string, stored map[string]object) {
	t.Helper()
	podFor := func(w object, name string) map[string]any {
		spec := map[string]any{}
		for k, v := range w.get("spec.template.spec").(object) {
			spec[k] = v
		}
		spec["nodeName"] = "k1"
		return map[string]any{"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": name, "labels": w.get("spec.template.metadata.labels")}, "spec": spec}
	}
	for key, w := range stored {
		kind := w.str("kind")
		if kind != "DaemonSet" && kind != "Deployment" {
			continue
		}
		name := w.str("metadata.name") + "-pod"
		api.Do(t, "POST", "/api/v1/namespaces/"+ns+"/pods", podFor(w, name), nil)
		for _, svc := range stored {
			if svc.str("kind") == "Service" && selects(labelsOf(svc, "spec.selector"), labelsOf(w, "spec.template.metadata.labels")) {
				if got := list(t, api, "/api/v1/namespaces/"+ns+"/pods", selectorString(labelsOf(svc, "spec.selector"))); strings.Join(got, ",") != name {
					t.Errorf("Service %s selects pods %v, want %s", svc.str("metadata.name"), got, name)
				}
			}
		}
		// The NetworkPolicy, as the API server selects: it applies to the
		// node pods, and admits the control plane's pods only.
		for npKey, np := range stored {
			if np.str("kind") != "NetworkPolicy" {
				continue
			}
			applies := list(t, api, "/api/v1/namespaces/"+ns+"/pods", selectorString(labelsOf(np, "spec.podSelector.matchLabels")))
			admitted := list(t, api, "/api/v1/namespaces/"+ns+"/pods", selectorString(labelsOf(np, "spec.ingress.0.from.0.podSelector.matchLabels")))
			// (A deleted pod stays, terminating, without a kubelet: only
			// this pod's membership is asserted.)
			if kind == "DaemonSet" && (!slices.Contains(applies, name) || slices.Contains(admitted, name)) {
				t.Errorf("%s: applies to %v, admits %v; want it to apply to the node pod %s and not admit it", npKey, applies, admitted, name)
			}
			if kind == "Deployment" && (!slices.Contains(admitted, name) || slices.Contains(applies, name)) {
				t.Errorf("%s: applies to %v, admits %v; want it to admit the control plane pod %s, not apply to it", npKey, applies, admitted, name)
			}
			ports := containerPorts(stored["DaemonSet/rel-orkestr-node"].get("spec.template.spec.containers.0").(object))
			if p, _ := np.get("spec.ingress.0.ports.0.port").(string); ports[p] == 0 || p != "node-api" {
				t.Errorf("%s: admits port %v, not the node API port", npKey, np.get("spec.ingress.0.ports.0.port"))
			}
		}
		// The same pod elsewhere, dry run: its Pod Security level.
		p := podFor(w, name)
		for _, other := range []string{"pss-baseline", "pss-restricted"} {
			sa := w.str("spec.template.spec.serviceAccountName")
			if code, body, _ := api.Try("POST", "/api/v1/namespaces/"+other+"/serviceaccounts", map[string]any{"metadata": map[string]any{"name": sa}}, nil); code != 201 && code != 409 {
				t.Fatalf("service account %s in %s: HTTP %d %s", sa, other, code, body)
			}
		}
		baseCode, baseBody, _ := api.Try("POST", "/api/v1/namespaces/pss-baseline/pods?dryRun=All", p, nil)
		restrictedCode, restrictedBody, _ := api.Try("POST", "/api/v1/namespaces/pss-restricted/pods?dryRun=All", p, nil)
		switch kind {
		case "DaemonSet":
			if baseCode != 403 || !bytes.Contains(baseBody, []byte("privileged")) {
				t.Errorf("%s: a node pod in a baseline namespace: HTTP %d %s (want refused as privileged)", key, baseCode, baseBody)
			}
		case "Deployment":
			if restrictedCode != 201 {
				t.Errorf("%s: the control plane does not meet Pod Security restricted: HTTP %d %s", key, restrictedCode, restrictedBody)
			}
		}
		api.Do(t, "DELETE", "/api/v1/namespaces/"+ns+"/pods/"+name, nil, nil)
	}
}

// checkConfig runs `orkestrd config check` (with --node for the node) on
// the config the chart stored, with the container's environment as the
// kubelet would resolve it (values with $(VAR) references, the downward
// API for a pod on node k1 with IP 10.0.0.7, Secret keys from the stored
// Secret) and the Secret volume projected as files: the config is one
// orkestrd accepts, the addresses and the node's id are the chart's, the
// node token is read from the Secret, and no secret is printed.
func checkConfig(t *testing.T, api *kubeapi.Server, orkestrd, ns, key string, w object) {
	t.Helper()
	const nodeName, podIP = "k1", "10.0.0.7"
	spec := w.get("spec.template.spec").(object)
	c := spec.get("containers.0").(object)
	isNode := w.str("kind") == "DaemonSet"
	cm := get(t, api, "/api/v1/namespaces/"+ns+"/configmaps/rel-orkestr-config")
	dir := t.TempDir()
	config := dataKey(cm, "config.yaml")
	var secretValues []string
	// The Secret volume, projected where the container mounts it (here:
	// a directory of the test, which the config's paths are moved to).
	for _, v := range spec.get("volumes").([]any) {
		v := v.(object)
		name := v.str("secret.secretName")
		if name == "" {
			continue
		}
		mountPath := ""
		for _, m := range c.get("volumeMounts").([]any) {
			if m.(object)["name"] == v["name"] {
				mountPath = m.(object).str("mountPath")
			}
		}
		if mountPath == "" {
			t.Fatalf("%s: Secret volume %v is not mounted", key, v["name"])
		}
		projected := filepath.Join(dir, "secrets")
		if err := os.Mkdir(projected, 0o700); err != nil {
			t.Fatal(err)
		}
		data, _ := get(t, api, "/api/v1/namespaces/"+ns+"/secrets/"+name).get("data").(object)
		for k, b64 := range data {
			b, err := base64.StdEncoding.DecodeString(b64.(string))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(projected, k), b, 0o400); err != nil {
				t.Fatal(err)
			}
			secretValues = append(secretValues, string(b))
		}
		if !strings.Contains(config, mountPath+"/node-token") {
			t.Errorf("%s: the config does not take the node token from %s/node-token", key, mountPath)
		}
		config = strings.ReplaceAll(config, mountPath+"/", projected+"/")
	}
	cfgFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	vars := map[string]string{}
	expand := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	envs, _ := c.get("env").([]any)
	for _, e := range envs {
		e := e.(object)
		name := e.str("name")
		var val string
		switch {
		case name == "ORKESTR_CONFIG":
			// Mounted at /etc/orkestr/config.yaml in the pod.
			val = cfgFile
		case e.get("value") != nil:
			// $(VAR) refers to a variable defined before, as the kubelet
			// expands it.
			val = expand.ReplaceAllStringFunc(e.str("value"), func(ref string) string {
				if v, ok := vars[ref[2:len(ref)-1]]; ok {
					return v
				}
				return ref
			})
		case e.get("valueFrom.fieldRef") != nil:
			switch f := e.str("valueFrom.fieldRef.fieldPath"); f {
			case "spec.nodeName":
				val = nodeName
			case "status.podIP":
				val = podIP
			default:
				t.Fatalf("%s: env %s from field %s", key, name, f)
			}
		case e.get("valueFrom.secretKeyRef") != nil:
			s := get(t, api, "/api/v1/namespaces/"+ns+"/secrets/"+e.str("valueFrom.secretKeyRef.name"))
			v, err := base64.StdEncoding.DecodeString(dataKey(s, e.str("valueFrom.secretKeyRef.key")))
			if err != nil {
				t.Fatal(err)
			}
			val = string(v)
			if len(v) > 0 {
				secretValues = append(secretValues, val)
			}
		}
		vars[name] = val
		env = append(env, name+"="+val)
	}
	args := []string{"config", "check"}
	if isNode {
		args = append(args, "--node")
	}
	cmd := exec.Command(orkestrd, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Errorf("%s: orkestrd %s refuses the chart's config: %v\n%s", key, strings.Join(args, " "), err, stderr.String())
		return
	}
	var eff struct {
		Listen        string `yaml:"listen"`
		MetricsListen string `yaml:"metrics_listen"`
		Region        string `yaml:"region"`
		Database      struct {
			URL string `yaml:"url"`
		} `yaml:"database"`
		Fleet struct {
			Enabled   bool   `yaml:"enabled"`
			NodeToken string `yaml:"node_token"`
		} `yaml:"fleet"`
		Node struct {
			ID     string `yaml:"id"`
			Listen string `yaml:"listen"`
		} `yaml:"node"`
	}
	if err := yaml.Unmarshal(stdout.Bytes(), &eff); err != nil {
		t.Fatal(err)
	}
	if isNode {
		// The node registers as its Kubernetes node, at its pod IP.
		ports := containerPorts(c)
		if eff.Node.ID != nodeName || eff.Node.Listen != podIP+":"+strconv.Itoa(ports["node-api"]) {
			t.Errorf("%s: effective node id %q listen %q", key, eff.Node.ID, eff.Node.Listen)
		}
	} else if eff.Listen != envValue(c, "ORKESTR_LISTEN") || eff.MetricsListen != envValue(c, "ORKESTR_METRICS_LISTEN") || !eff.Fleet.Enabled {
		t.Errorf("%s: effective listen %q metrics %q fleet.enabled %v", key, eff.Listen, eff.MetricsListen, eff.Fleet.Enabled)
	}
	if eff.Fleet.NodeToken != "<redacted>" {
		t.Errorf("%s: the node token did not reach the config from the Secret (effective %q)", key, eff.Fleet.NodeToken)
	}
	if !strings.HasPrefix(eff.Database.URL, "postgres://") {
		t.Errorf("%s: the database URL from the Secret did not reach the config", key)
	}
	for _, s := range secretValues {
		if strings.Contains(stdout.String()+stderr.String(), s) {
			t.Errorf("%s: config check printed a secret", key)
		}
		if pw, ok := passwordOf(s); ok && strings.Contains(stdout.String()+stderr.String(), ":"+pw+"@") {
			t.Errorf("%s: config check printed the database password", key)
		}
	}
}

// passwordOf is the password of a postgres:// URL.
func passwordOf(s string) (string, bool) {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return "", false
	}
	return u.User.Password()
}

// orkestrdBinary is bin/orkestrd of make build ($ORKESTR_BIN_DIR), or one
// built for the test.
func orkestrdBinary(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("ORKESTR_BIN_DIR"); d != "" {
		return filepath.Join(d, "orkestrd")
	}
	bin := filepath.Join(t.TempDir(), "orkestrd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/orkestrd")
	cmd.Dir = testenv.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build orkestrd: %v\n%s", err, out)
	}
	return bin
}

// installServiceMonitorCRD installs the Prometheus operator's ServiceMonitor
// CRD (generated by make test-k8s from the operator's API types into
// $ORKESTR_K8S_CRDS) and waits until it is served.
func installServiceMonitorCRD(t *testing.T, api *kubeapi.Server) {
	t.Helper()
	dir := os.Getenv("ORKESTR_K8S_CRDS")
	if dir == "" {
		t.Fatal("ORKESTR_K8S_CRDS is not set: make test-k8s generates the ServiceMonitor CRD")
	}
	var crd object
	readYAML(t, filepath.Join(dir, "monitoring.coreos.com_servicemonitors.yaml"), &crd)
	api.Do(t, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd, nil)
	deadline := time.Now().Add(time.Minute)
	for {
		o := get(t, api, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servicemonitors.monitoring.coreos.com")
		conds, _ := o.get("status.conditions").([]any)
		for _, c := range conds {
			if c.(object)["type"] == "Established" && c.(object)["status"] == "True" {
				// Established; discovery (which helm reads) follows shortly.
				if code, _, _ := api.Try("GET", "/apis/monitoring.coreos.com/v1", nil, nil); code == 200 {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ServiceMonitor CRD is not established: %v", conds)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// An API server without --allow-privileged refuses the node DaemonSet
// itself (its pod template), so helm install fails and says why: the
// chart's README names the flag.
func TestHelmChartNeedsAllowPrivileged(t *testing.T) {
	api := kubeapi.Start(t, kubeapi.Options{AllowPrivileged: false})
	api.Namespace(t, "sandboxes", map[string]string{"pod-security.kubernetes.io/enforce": "privileged"})
	out, err := api.Helm(t, "install", "rel", kubeapi.Chart(), "--namespace", "sandboxes", "--set", "secrets.databaseURL=postgres://o:pw@db/o")
	if err == nil || !strings.Contains(err.Error(), "privileged") || !strings.Contains(err.Error(), "disallowed by cluster policy") {
		t.Fatalf("helm install without --allow-privileged: %v\n%s", err, out)
	}
	// The control plane alone (no node DaemonSet) is not privileged.
	api.Namespace(t, "control", nil)
	if out, err := api.Helm(t, "install", "cp", kubeapi.Chart(), "--namespace", "control", "--set", "node.enabled=false",
		"--set", "secrets.databaseURL=postgres://o:pw@db/o"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}
