// Package kubediscovery finds a fleet's nodes as the pods of the node
// DaemonSet, through the Kubernetes API: the Helm chart's `discovery.mode:
// pods`. The control plane runs as a service account the chart binds to a
// Role that may get/list/watch pods in its namespace, and nothing else; the
// chart gives it the namespace and the node pods' label selector in
// ORKESTR_DISCOVERY_NAMESPACE and ORKESTR_DISCOVERY_SELECTOR.
//
// It speaks to the API server with net/http (one list call), not client-go:
// listing pods is all it needs, and client-go would pull dozens of modules
// into orkestrd. Answers are bounded and checked: a pod without a valid IP
// or without the named port is not a node.
//
// Not wired into orkestrd yet: the control plane that would call it is
// fleet mode (issue 17). It is tested against a real kube-apiserver with
// the chart's own RBAC (make test-k8s).
package kubediscovery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// serviceAccountDir is where Kubernetes mounts a pod's service-account
// token, CA bundle and namespace.
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// maxListBytes bounds the answer of one pod list (a namespace of a few
// thousand pods is a few MiB).
const maxListBytes = 32 << 20

// Config says where the API server is and which pods are nodes.
type Config struct {
	// APIServer is the API server's base URL, e.g. https://10.0.0.1:443.
	APIServer string
	// TokenFile holds the bearer token. It is read at every call: the
	// projected service-account token is rotated by the kubelet.
	TokenFile string
	// CAFile is the PEM bundle the API server's certificate must chain to.
	CAFile string
	// Namespace and Selector (a label selector, e.g.
	// app.kubernetes.io/name=orkestr,app.kubernetes.io/component=node)
	// pick the node pods.
	Namespace string
	Selector  string
	// PortName is the name of the node container's port that serves the
	// node API (the chart's "http").
	PortName string
}

// InCluster is the configuration of a pod: the API server from
// KUBERNETES_SERVICE_HOST/PORT, the pod's service-account token and CA,
// the namespace and selector from ORKESTR_DISCOVERY_NAMESPACE and
// ORKESTR_DISCOVERY_SELECTOR (set by the chart).
func InCluster(portName string) (Config, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return Config{}, errors.New("pod discovery: KUBERNETES_SERVICE_HOST/PORT are not set: not running in a Kubernetes pod")
	}
	c := Config{
		APIServer: "https://" + net.JoinHostPort(host, port),
		TokenFile: filepath.Join(serviceAccountDir, "token"),
		CAFile:    filepath.Join(serviceAccountDir, "ca.crt"),
		Namespace: os.Getenv("ORKESTR_DISCOVERY_NAMESPACE"),
		Selector:  os.Getenv("ORKESTR_DISCOVERY_SELECTOR"),
		PortName:  portName,
	}
	if c.Namespace == "" {
		b, err := os.ReadFile(filepath.Join(serviceAccountDir, "namespace"))
		if err != nil {
			return Config{}, fmt.Errorf("pod discovery: ORKESTR_DISCOVERY_NAMESPACE is not set and the service account's namespace is unreadable: %w", err)
		}
		c.Namespace = strings.TrimSpace(string(b))
	}
	return c, nil
}

// Node is one node pod that is ready to take work.
type Node struct {
	Pod      string // the pod's name
	HostNode string // the Kubernetes node it runs on
	Address  string // base URL of its node API: http://IP:PORT
}

// Discoverer lists the node pods.
type Discoverer struct {
	cfg    Config
	client *http.Client
	base   *url.URL
}

// New checks cfg and loads its CA bundle.
func New(cfg Config) (*Discoverer, error) {
	base, err := url.Parse(cfg.APIServer)
	if err != nil || base.Scheme != "https" || base.Host == "" || (base.Path != "" && base.Path != "/") {
		return nil, fmt.Errorf("pod discovery: API server %q is not an https://HOST:PORT URL", cfg.APIServer)
	}
	if !validName(cfg.Namespace) {
		return nil, fmt.Errorf("pod discovery: namespace %q is not a Kubernetes namespace name", cfg.Namespace)
	}
	if strings.TrimSpace(cfg.Selector) == "" {
		// Every pod of the namespace would count as a node.
		return nil, errors.New("pod discovery: the label selector is empty (set ORKESTR_DISCOVERY_SELECTOR to the node pods' labels)")
	}
	if cfg.PortName == "" {
		return nil, errors.New("pod discovery: no port name for the node API")
	}
	pem, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("pod discovery: CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("pod discovery: %s holds no PEM certificate", cfg.CAFile)
	}
	// No proxy: the API server's service address is inside the cluster.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, Proxy: nil}
	return &Discoverer{cfg: cfg, base: base, client: &http.Client{Transport: tr, Timeout: 30 * time.Second,
		// The API server does not redirect a list; following one would
		// send the token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}, nil
}

// validName: a DNS-1123 label, as Kubernetes requires of a namespace.
func validName(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// The parts of a pod this package reads.
type podList struct {
	Kind  string `json:"kind"`
	Items []pod  `json:"items"`
}

type pod struct {
	Metadata struct {
		Name              string  `json:"name"`
		DeletionTimestamp *string `json:"deletionTimestamp"`
	} `json:"metadata"`
	Spec struct {
		NodeName   string `json:"nodeName"`
		Containers []struct {
			Ports []struct {
				Name          string `json:"name"`
				ContainerPort int    `json:"containerPort"`
			} `json:"ports"`
		} `json:"containers"`
	} `json:"spec"`
	Status struct {
		Phase      string `json:"phase"`
		PodIP      string `json:"podIP"`
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
	} `json:"status"`
}

// apiStatus is the API server's error body.
type apiStatus struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
}

// Nodes lists the node pods and returns those that can take work: running,
// Ready, not being deleted, with a pod IP and the node API port. Sorted by
// pod name.
func (d *Discoverer) Nodes(ctx context.Context) ([]Node, error) {
	token, err := os.ReadFile(d.cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("pod discovery: service-account token: %w", err)
	}
	u := *d.base
	u.Path = "/api/v1/namespaces/" + d.cfg.Namespace + "/pods"
	u.RawQuery = url.Values{"labelSelector": {d.cfg.Selector}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Accept", "application/json")
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("pod discovery: list pods: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxListBytes+1))
	if err != nil {
		return nil, fmt.Errorf("pod discovery: list pods: %w", err)
	}
	if len(body) > maxListBytes {
		return nil, fmt.Errorf("pod discovery: the pod list is larger than %d MiB: narrow the selector", maxListBytes>>20)
	}
	if resp.StatusCode != http.StatusOK {
		var st apiStatus
		msg := ""
		if json.Unmarshal(body, &st) == nil && st.Kind == "Status" {
			msg = ": " + st.Message
		}
		hint := ""
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			hint = " (the service-account token was refused)"
		case http.StatusForbidden:
			hint = " (the service account may not list pods here: the chart's discovery Role grants get/list/watch on pods in its namespace)"
		}
		return nil, fmt.Errorf("pod discovery: list pods in %s: HTTP %d%s%s", d.cfg.Namespace, resp.StatusCode, msg, hint)
	}
	var list podList
	if err := json.Unmarshal(body, &list); err != nil || list.Kind != "PodList" {
		return nil, fmt.Errorf("pod discovery: list pods in %s: the answer is not a PodList", d.cfg.Namespace)
	}
	var nodes []Node
	for _, p := range list.Items {
		if n, ok := d.node(p); ok {
			nodes = append(nodes, n)
		}
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Pod < nodes[j].Pod })
	return nodes, nil
}

// node is the Node of a pod ready to take work.
func (d *Discoverer) node(p pod) (Node, bool) {
	if p.Metadata.DeletionTimestamp != nil || p.Status.Phase != "Running" {
		return Node{}, false
	}
	ready := false
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			ready = c.Status == "True"
		}
	}
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if !ready || err != nil || ip.Zone() != "" || ip.IsUnspecified() || ip.IsMulticast() {
		return Node{}, false
	}
	port := 0
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == d.cfg.PortName {
				port = cp.ContainerPort
			}
		}
	}
	if port < 1 || port > 65535 {
		return Node{}, false
	}
	return Node{Pod: p.Metadata.Name, HostNode: p.Spec.NodeName,
		Address: "http://" + netip.AddrPortFrom(ip.Unmap(), uint16(port)).String()}, true
}
