package gvisor

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
)

// AgentPath is where the agent binary appears inside every sandbox.
const AgentPath = "/agent/orkestr-agent"

// MountPoints must exist in every template's rootfs: runsc would otherwise
// create them inside the shared template directory.
var MountPoints = []string{"/agent", "/run/agent", "/workspace", "/tmp", "/proc", "/sys", "/dev"}

// defaultCaps is the capability set of a Docker container: inside gVisor they
// act on the sandbox's own kernel, never the host's.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// pooledCPUShares is the CPU weight of a warm pool's sandbox until it is
// claimed, against the default defaultCPUShares of a claimed one: a burst's
// refills boot on the CPU the claimed sandboxes leave, instead of taking an
// equal share from the commands a user waits for. It is a weight, not a
// cap: on an idle host a refill boots as fast as before.
//
// Besides the weight, a pooled sandbox's group is SCHED_IDLE (cpu.idle)
// once runsc has started it (Driver.idleWhilePooled).
const (
	pooledCPUShares  = 64
	defaultCPUShares = 1024
)

// pooledIdleBoot is how long a pooled sandbox may start at idle priority
// before it continues at pooledCPUShares (a variable for tests).
var pooledIdleBoot = 3 * time.Second

// bundleSpec builds the OCI runtime spec of one sandbox: the template as a
// copy-on-write root, the agent read-only at /agent, the per-sandbox channel
// directory at /run/agent, and cgroup limits from the size.
//
// netnsPath, when set, is the network namespace of a networked sandbox,
// and resolvConf the file mounted read-only at /etc/resolv.conf.
//
// The CPU quota in the spec is platformCPU's: the caller applies the
// size's quota once the agent answers (Driver.start).
func bundleSpec(rootfs, agentDir, channelDir, cgroupPath string, res runtime.Resources, netnsPath, resolvConf string) *specs.Spec {
	quota := cgroupv1.QuotaMicros(platformCPU(res))
	period := uint64(cgroupv1.CPUPeriodMicros)
	host := cgroupLimits(res)
	mem := host.MemoryBytes
	r := &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &mem},
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
	}
	args := []string{AgentPath}
	if res.PIDs > 0 {
		r.Pids = &specs.LinuxPids{Limit: host.PIDs}
		args = append(args, "--tasks-max", strconv.FormatInt(res.PIDs, 10))
	}
	netns := specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: netnsPath}
	spec := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: args,
			Env:  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cwd:  "/",
			User: specs.User{UID: 0, GID: 0},
			Capabilities: &specs.LinuxCapabilities{
				Bounding: defaultCaps, Effective: defaultCaps, Permitted: defaultCaps,
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 65536, Soft: 65536}},
		},
		Root:     &specs.Root{Path: rootfs, Readonly: false},
		Hostname: "sandbox",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: tmpOptions(res)},
			{Destination: "/agent", Type: "bind", Source: agentDir, Options: []string{"rbind", "ro"}},
			{Destination: wire.AgentDir, Type: "bind", Source: channelDir, Options: []string{"rbind", "rw"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: cgroupPath,
			Resources:   r,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, netns,
			},
		},
	}
	if resolvConf != "" {
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: resolvConf, Options: []string{"bind", "ro"}})
	}
	return spec
}

// runscMinCPUs is the fewest CPUs runsc gives a sandbox whatever its quota
// (--cpu-num-from-quota rounds the quota up, but never below 2).
const runscMinCPUs = 2

// platformCPU is the CPU quota a sandbox of res runs under while the
// platform works on it: while runsc starts or restores it and until its
// agent answers, and while runsc checkpoints it. The work runs inside the
// sandbox's own cgroup, so at the size's quota it is throttled: a small
// sandbox (0.5 vCPU) took 300 ms to start and to restore where 2 vCPUs
// took 180 (docs/benchmarks.md, "Quiet host, and the platform's work out
// of the size's CPU quota"). Below
// runscMinCPUs the quota does not change the CPU count the sandbox
// sees, so a boot at this quota gives the sandbox what its size gives it.
func platformCPU(res runtime.Resources) float64 {
	if res.CPU <= 0 {
		return 0 // no quota at all
	}
	return max(res.CPU, runscMinCPUs)
}

// tmpOptions mounts /tmp as a tmpfs (sandbox memory, fast) of at most half
// the sandbox's memory: filling it fails with ENOSPC instead of using up the
// memory its processes need, and df shows that size. The root filesystem
// and /workspace are disk, capped by the disk quota.
func tmpOptions(res runtime.Resources) []string {
	opts := []string{"nosuid", "nodev", "mode=1777"}
	if res.MemoryBytes > 0 {
		opts = append(opts, "size="+strconv.FormatInt(res.MemoryBytes/2, 10))
	}
	return opts
}

func writeBundle(dir string, spec *specs.Spec) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600)
}

// cgroupLimits are the host cgroup limits of a sandbox of r: above the
// size, so that the sandbox itself reaches its limits first and one process
// dies there, not the whole sandbox (see HostMemory and HostTasks).
func cgroupLimits(r runtime.Resources) cgroupv1.Limits {
	return cgroupv1.Limits{CPU: r.CPU, MemoryBytes: HostMemory(r.MemoryBytes), PIDs: HostTasks(r.PIDs)}
}

// HostMemory is the host memory limit of a sandbox of mem bytes. At mem the
// host tells the agent to kill the command process holding the most memory
// (gVisor has no OOM killer of its own); the headroom above it (half of mem,
// at least 256 MiB, at most 2 GiB) is the time that takes while a program
// keeps allocating. Only a sandbox that outruns it is killed whole by the
// host kernel.
func HostMemory(mem int64) int64 {
	if mem <= 0 {
		return mem
	}
	return mem + min(max(mem/2, 256<<20), 2<<30)
}

// HostTasks is the host task limit of a sandbox whose commands may have
// tasks tasks. Inside gVisor (systrap) every sandbox process costs about two
// host tasks (a stub process and its thread), kept for reuse after it exits,
// and the sentry and gofer have their own threads: four per task plus 256
// keeps the host limit out of reach of a sandbox at its own limit.
func HostTasks(tasks int64) int64 {
	if tasks <= 0 {
		return tasks
	}
	return 8*tasks + 256
}
