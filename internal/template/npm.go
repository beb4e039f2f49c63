package template

import (
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/template/oci"
)

// NPMPackage is a package a recipe unpacks from the npm registry: the
// newest release of one major version, its package/ directory moved to
// Dest (relative to the rootfs).
type NPMPackage struct {
	Name  string
	Major int
	Dest  string
}

// npmRegistry is where packages come from; ORKESTR_NPM_REGISTRY points at
// a mirror.
func npmRegistry() string {
	if r := os.Getenv("ORKESTR_NPM_REGISTRY"); r != "" {
		return strings.TrimSuffix(r, "/")
	}
	return "https://registry.npmjs.org"
}

var npmClient = &http.Client{Timeout: 10 * time.Minute}

type npmVersion struct {
	Dist struct {
		Tarball   string `json:"tarball"`
		Integrity string `json:"integrity"`
	} `json:"dist"`
}

// installNPM resolves p's newest release, downloads it, checks it against
// the registry's sha512 integrity before unpacking a byte of it, and
// unpacks it (safely: see oci.ApplyLayer) into rootfs/p.Dest. It returns
// the version installed.
func installNPM(ctx context.Context, rootfs string, p NPMPackage, logw func(string)) (string, error) {
	reg := npmRegistry()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, reg+"/"+p.Name, nil)
	// The abbreviated document lists versions and dists only.
	req.Header.Set("Accept", "application/vnd.npm.install-v1+json")
	resp, err := npmClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("npm registry %s is not reachable (set ORKESTR_NPM_REGISTRY to a mirror): %w", reg, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("npm registry %s answered %s for %s", reg, resp.Status, p.Name)
	}
	var doc struct {
		Versions map[string]npmVersion `json:"versions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return "", fmt.Errorf("npm metadata of %s: %w", p.Name, err)
	}
	version := newestOfMajor(doc.Versions, p.Major)
	if version == "" {
		return "", fmt.Errorf("npm registry %s has no release %d.x of %s", reg, p.Major, p.Name)
	}
	dist := doc.Versions[version].Dist
	algo, want, ok := strings.Cut(dist.Integrity, "-")
	if !ok || algo != "sha512" {
		return "", fmt.Errorf("%s@%s has no sha512 integrity (%q); refusing an unverifiable download", p.Name, version, dist.Integrity)
	}
	logw(fmt.Sprintf("downloading %s@%s", p.Name, version))
	tmp, err := os.CreateTemp("", "orkestr-npm-*.tgz")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, dist.Tarball, nil)
	resp, err = npmClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("downloading %s: %w", dist.Tarball, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("downloading %s: %s", dist.Tarball, resp.Status)
	}
	h := sha512.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), resp.Body)
	if err != nil {
		return "", fmt.Errorf("downloading %s: %w", dist.Tarball, err)
	}
	if got := base64.StdEncoding.EncodeToString(h.Sum(nil)); got != want {
		return "", fmt.Errorf("%s@%s: the download does not match the registry's integrity sha512-%s; nothing was installed", p.Name, version, want)
	}
	logw(fmt.Sprintf("%s@%s: %.1f MiB, sha512 verified", p.Name, version, float64(n)/(1<<20)))
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	gz, err := gzip.NewReader(tmp)
	if err != nil {
		return "", err
	}
	unpack, err := os.MkdirTemp(rootfs, ".npm-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(unpack)
	if err := oci.ApplyLayer(ctx, unpack, gz); err != nil {
		return "", fmt.Errorf("unpacking %s@%s: %w", p.Name, version, err)
	}
	dest := filepath.Join(rootfs, p.Dest)
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return "", err
	}
	_ = os.RemoveAll(dest)
	if err := os.Rename(filepath.Join(unpack, "package"), dest); err != nil {
		return "", fmt.Errorf("%s@%s has no package/ directory: %w", p.Name, version, err)
	}
	// npm tarballs carry the packer's uid; root owns what a template ships.
	if err := chownTree(dest); err != nil {
		return "", err
	}
	return version, nil
}

// newestOfMajor picks the highest release (no pre-releases) of major.
func newestOfMajor(versions map[string]npmVersion, major int) string {
	best, bestParts := "", [3]int{}
	for v := range versions {
		parts, ok := parseRelease(v)
		if !ok || parts[0] != major {
			continue
		}
		if best == "" || parts[1] > bestParts[1] || parts[1] == bestParts[1] && parts[2] > bestParts[2] {
			best, bestParts = v, parts
		}
	}
	return best
}

func parseRelease(v string) ([3]int, bool) {
	var out [3]int
	f := strings.Split(v, ".")
	if len(f) != 3 {
		return out, false
	}
	for i, s := range f {
		n, err := strconv.Atoi(s)
		if err != nil {
			return out, false
		}
		out[i] = n
	}
	return out, true
}

func chownTree(root string) error {
	return filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, 0, 0)
	})
}
