// Package buildinfo holds what a release build stamps into the binaries with
// -ldflags "-X github.com/orkestr-eu/orkestr/internal/buildinfo.Version=…"
// (make dist does). A plain `go build` leaves the development defaults.
package buildinfo

// Version is the release version (make dist VERSION=…), "dev" otherwise.
var Version = "dev"

// Commit is the git commit the release was built from, "unknown" otherwise.
var Commit = "unknown"
