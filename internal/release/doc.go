// Package release is home to the release tooling (ociimage, imagetool) and
// the tests of make dist's artifacts: the tarball, SHA256SUMS, the SBOMs,
// the Debian package (installed into a throwaway root and run) and the OCI
// image (pushed to an in-process registry).
package release
