package gvisor_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/gvisor"
	"github.com/orkestr-eu/orkestr/internal/testenv"
	"github.com/orkestr-eu/orkestr/internal/tlsutil/tlstest"
)

// A new sandbox's trust store is the template's plus the extra CAs, in the
// sandbox's own layer; a checkpoint keeps it; the template is untouched.
func TestExtraCAsInTrustStore(t *testing.T) {
	ca := tlstest.NewCA(t, "extra CA")
	env := testenv.NewDriverWith(t, func(c *gvisor.Config) { c.ExtraCAs = ca.CertPEM })
	for _, tmpl := range []string{"python-3.11", "debian-12"} {
		t.Run(tmpl, func(t *testing.T) {
			rootfs := testenv.Rootfs(t, tmpl)
			own, _ := os.ReadFile(filepath.Join(rootfs, gvisor.CABundlePath)) // none in debian-12
			ctx := testCtx(t, 2*time.Minute)
			sb, err := env.Driver.Create(ctx, runtime.Spec{Template: tmpl, Rootfs: rootfs, Resources: testenv.Small})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
			want := string(own) + string(ca.CertPEM)
			if got := readString(t, sb, gvisor.CABundlePath); got != want {
				t.Fatalf("trust store: %d bytes, want %d (template %d + CA %d)", len(got), len(want), len(own), len(ca.CertPEM))
			}
			snap, err := sb.Checkpoint(ctx, filepath.Join(t.TempDir(), "snap"))
			if err != nil {
				t.Fatal(err)
			}
			rs, err := env.Driver.Restore(ctx, snap.Dir, rootfs, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = rs.Destroy(context.Background()) })
			if got := readString(t, rs, gvisor.CABundlePath); got != want {
				t.Fatalf("trust store after restore: %d bytes, want %d", len(got), len(want))
			}
			after, _ := os.ReadFile(filepath.Join(rootfs, gvisor.CABundlePath))
			if string(after) != string(own) {
				t.Fatal("the template's own bundle changed")
			}
		})
	}
	if _, err := os.Lstat(filepath.Join(testenv.Rootfs(t, "debian-12"), "etc/ssl")); err == nil {
		t.Fatal("debian-12's template got an /etc/ssl")
	}
}
