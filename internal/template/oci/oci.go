// Package oci pulls OCI/Docker images from registries and unpacks them into
// template root filesystems.
//
// Layers are kept in a content-addressed cache exactly as the registry
// served them (CacheDir/blobs/sha256/<hex>), each verified against its
// digest before it is kept, so a layer shared by several images is stored
// and downloaded once. Unpack applies the cached layers in order with
// ApplyLayer, which never writes outside the destination.
package oci

// Auth is how to log in to one registry host.
type Auth struct {
	Username, Password string
	// Token, if set, is sent as is as a bearer token instead of logging in
	// with Username and Password.
	Token string
}

// Options configure Pull and Unpack.
type Options struct {
	// CacheDir holds blobs/sha256/<hex>: compressed layers as served.
	CacheDir string
	// Auth is keyed by registry host ("ghcr.io", "index.docker.io",
	// "127.0.0.1:5000"); other registries are used anonymously.
	Auth map[string]Auth
	// Insecure lists hosts spoken to over plain HTTP.
	Insecure []string
	// Platform picks an image from a multi-platform index; default
	// linux/amd64.
	Platform string
	// Progress, if set, is told about every layer as it is fetched, from
	// the goroutine that called Pull.
	Progress func(Progress)
}

// Progress reports one layer of a pull.
type Progress struct {
	Layer, Layers int // 1-based index, count
	Digest        string
	Bytes, Total  int64
	Done          bool
	Cached        bool // the layer was in the cache; nothing was downloaded
}

// Image is a pulled image: its layers are in the cache.
type Image struct {
	Ref        string
	Digest     string   // manifest digest, sha256:…
	Layers     []string // compressed layer digests, bottom first
	Env        []string
	WorkingDir string
	User       string
	Entrypoint []string
	Cmd        []string
}
