package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"github.com/oklog/ulid/v2"
	"os"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// selftest proves an installation works end to end on this host.
func selftest(args []string) error {
	fs := flag.NewFlagSet("selftest", flag.ExitOnError)
	var nf nodeFlags
	nf.register(fs, 0)
	tmpl := fs.String("template", "debian-12", "template to start")
	_ = fs.Parse(args)
	cfg := nf.config()
	scratch, err := os.MkdirTemp("", "orkestr-selftest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	cfg.DataDir = scratch
	if cfg.StateDir == "" {
		// Unix socket paths are short: keep the state under /run.
		if cfg.StateDir, err = os.MkdirTemp("/run", "orkestr-selftest-"); err != nil {
			return err
		}
		defer os.RemoveAll(cfg.StateDir)
	}
	n, err := openNode(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	defer n.Close(context.Background(), true)
	if _, err := n.Reconcile(ctx, nodeapi.Keep{}); err != nil {
		return err
	}
	step := func(name string, f func() error) error {
		t := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Printf("ok  %-28s %v\n", name, time.Since(t).Round(100*time.Microsecond))
		return nil
	}
	var sb runtime.Sandbox
	if err := step("create "+*tmpl, func() (err error) {
		sb, err = n.Create(ctx, nodeapi.CreateRequest{SandboxID: "sbx_selftest", Template: *tmpl, Size: "small",
			Claim: runtime.Claim{Env: map[string]string{"GREETING": "hello"}}})
		return err
	}); err != nil {
		return err
	}
	var out bytes.Buffer
	if err := step("exec", func() error {
		res, err := sb.Exec(ctx, runtime.ExecRequest{Command: `echo "$GREETING from $(uname -s)"`, Stdout: &out})
		if err == nil && (res.ExitCode != 0 || !strings.HasPrefix(out.String(), "hello from")) {
			err = fmt.Errorf("unexpected result: exit %d, %q", res.ExitCode, out.String())
		}
		return err
	}); err != nil {
		return err
	}
	if err := step("write file", func() error {
		_, err := sb.WriteFile(ctx, "/workspace/selftest.txt", 0, strings.NewReader("survives pause\n"))
		return err
	}); err != nil {
		return err
	}
	var snap nodeapi.Snapshot
	if err := step("pause (checkpoint)", func() (err error) {
		snap, err = n.Checkpoint(ctx, sb.ID(), "sbx_selftest-"+ulid.Make().String())
		return err
	}); err != nil {
		return err
	}
	if err := step("resume (restore)", func() (err error) {
		sb, err = n.Restore(ctx, nodeapi.RestoreRequest{SandboxID: "sbx_selftest", Snapshot: snap.ID, Template: *tmpl, Size: "small"})
		return err
	}); err != nil {
		return err
	}
	if err := step("read file after resume", func() error {
		var b bytes.Buffer
		if _, err := sb.ReadFile(ctx, "/workspace/selftest.txt", &b); err != nil {
			return err
		}
		if b.String() != "survives pause\n" {
			return fmt.Errorf("file changed across pause: %q", b.String())
		}
		return nil
	}); err != nil {
		return err
	}
	if err := step("terminate", func() error { return sb.Destroy(ctx) }); err != nil {
		return err
	}
	fmt.Printf("selftest passed (snapshot %d KiB, size small %s)\n", snap.Bytes>>10, node.Resources(config.Default().Sizes)["small"])
	return nil
}
