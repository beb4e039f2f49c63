package gvisor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// runsc wraps the runsc command line with the flags every call shares.
type runsc struct {
	bin      string
	root     string
	platform string
	debugDir string // empty: no debug logs
}

// globalArgs are the flags a sandbox is created, checkpointed and restored
// with. Restore must use the same ones the sandbox was created with.
//
// A networked sandbox uses gVisor's own network stack on the veth of the
// namespace named in its bundle (--network=sandbox): the host kernel sees
// only the sandbox's packets, which is where the policy is enforced.
//
// diskBytes caps the copy-on-write layer (gVisor's overlay upper layer is a
// tmpfs backed by a sparse file in overlayDir; its size limit is the
// sandbox's disk quota: writes past it fail with ENOSPC inside, and df
// shows it). 0: no cap.
//
// cgroupV2 gives the sandbox kernel a cgroup v2 hierarchy instead of v1's
// one per controller: there its pids controller checks every task a
// command creates against the agent's cap (in v1 it checks about one fork
// in seven), which is what holds a fork bomb run as many users.
func (r *runsc) globalArgs(overlayDir string, diskBytes int64, networked, cgroupV2 bool) []string {
	network := "none"
	if networked {
		network = "sandbox"
	}
	args := []string{
		"--root", r.root,
		"--platform", r.platform,
		"--network", network,
		// The agent dials out to a socket in its host directory; "open"
		// lets it connect to an existing host socket and nothing more.
		"--host-uds", "open",
	}
	if overlayDir != "" {
		// Keep the copy-on-write layer's backing file out of the shared
		// template directory.
		ov := "root:dir=" + overlayDir
		if diskBytes > 0 {
			ov += ",size=" + strconv.FormatInt(diskBytes, 10)
		}
		args = append(args, "--overlay2", ov)
	}
	if cgroupV2 {
		args = append(args, "--in-sandbox-cgroup", "v2")
	}
	if r.debugDir != "" {
		args = append(args, "--debug", "--debug-log", r.debugDir+"/")
	}
	return args
}

func (r *runsc) command(ctx context.Context, overlayDir string, diskBytes int64, networked, cgroupV2 bool, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, r.bin, append(r.globalArgs(overlayDir, diskBytes, networked, cgroupV2), args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	return cmd
}

// run executes a runsc command and returns a readable error with its stderr.
func (r *runsc) run(ctx context.Context, overlayDir string, args ...string) ([]byte, error) {
	return r.runNet(ctx, overlayDir, 0, false, false, args...)
}

// runNet is run for a command whose flags must match a networked sandbox's.
func (r *runsc) runNet(ctx context.Context, overlayDir string, diskBytes int64, networked, cgroupV2 bool, args ...string) ([]byte, error) {
	cmd := r.command(ctx, overlayDir, diskBytes, networked, cgroupV2, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("runsc %s: %w: %s", args[0], err, lastLines(stderr.String(), 5))
	}
	return stdout.Bytes(), nil
}

// containerState is the part of `runsc state` we use.
type containerState struct {
	ID     string `json:"id"`
	PID    int    `json:"pid"`
	Status string `json:"status"`
}

func (r *runsc) state(ctx context.Context, id string) (containerState, error) {
	out, err := r.run(ctx, "", "state", id)
	if err != nil {
		return containerState{}, err
	}
	var st containerState
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("runsc state %s: %w", id, err)
	}
	return st, nil
}

func (r *runsc) list(ctx context.Context) ([]containerState, error) {
	if _, err := os.Stat(r.root); os.IsNotExist(err) {
		return nil, nil
	}
	out, err := r.run(ctx, "", "list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var all []containerState
	if s := strings.TrimSpace(string(out)); s == "" || s == "null" {
		return nil, nil
	}
	if err := json.Unmarshal(out, &all); err != nil {
		return nil, fmt.Errorf("runsc list: %w", err)
	}
	return all, nil
}

// delete force-deletes a container; one that does not exist is not an error.
func (r *runsc) delete(ctx context.Context, id string) error {
	_, err := r.run(ctx, "", "delete", "--force", id)
	if err != nil && (strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "not found")) {
		return nil
	}
	return err
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
