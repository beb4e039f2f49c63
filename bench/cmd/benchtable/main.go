// Command benchtable turns `go test -bench` output from bench/ into markdown:
// per benchmark the median across runs of each metric, the ratios of
// orkestr's numbers to the raw runsc and runc baselines measured alongside
// (and of the API's to the runtime's), and where they stand against the
// performance targets.
//
//	go run ./bench/cmd/benchtable bench/results/<run>.txt
//
// Input is any number of files (or stdin); every line for the same benchmark
// is one run, whichever -count or invocation produced it.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// runs holds, per benchmark and unit, one value per run.
type runs map[string]map[string][]float64

// procSuffix is the -GOMAXPROCS suffix go test appends to names.
var procSuffix = regexp.MustCompile(`-\d+$`)

func parse(r io.Reader, into runs, order *[]string) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// BenchmarkName-2  N  v unit  v unit ...
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := strings.TrimPrefix(procSuffix.ReplaceAllString(f[0], ""), "Benchmark")
		if into[name] == nil {
			into[name] = map[string][]float64{}
			*order = append(*order, name)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			into[name][f[i+1]] = append(into[name][f[i+1]], v)
		}
	}
	return sc.Err()
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func num(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// ratio compares ours to a baseline, both medians of the same unit.
type ratio struct {
	label          string
	ours, oursUnit string
	base, baseUnit string
}

var ratios = []ratio{
	{"cold create + destroy (0.5 vCPU) vs raw `runsc run /bin/true`", "ColdCreate/cpu=0.5", "p50-ms", "RawRunscRun/true", "p50-ms"},
	{"cold create + destroy (2 vCPU) vs raw `runsc run /bin/true`", "ColdCreate/cpu=2", "p50-ms", "RawRunscRun/true", "p50-ms"},
	{"cold create to agent ready (2 vCPU) vs raw `runsc run --detach`", "ColdCreate/cpu=2", "create-ms", "RawRunscRun/detach", "p50-ms"},
	{"warm claim + first exec vs raw `runsc run /bin/true`", "WarmClaimFirstExec", "p50-ms", "RawRunscRun/true", "p50-ms"},
	{"warm claim + first exec vs `runc run /bin/true`", "WarmClaimFirstExec", "p50-ms", "RuncRun", "p50-ms"},
	{"exec `true` (0.5 vCPU) vs raw `runsc exec /bin/true`", "ExecRoundTrip/cpu=0.5", "p50-ms", "RawRunscExec", "p50-ms"},
	{"exec `true` (2 vCPU) vs raw `runsc exec /bin/true`", "ExecRoundTrip/cpu=2", "p50-ms", "RawRunscExec", "p50-ms"},
	{"exec `true` spaced 100 ms (0.5 vCPU) vs raw `runsc exec /bin/true`", "ExecSpaced/cpu=0.5", "p50-ms", "RawRunscExec", "p50-ms"},
	{"exec `true` spaced 100 ms (2 vCPU) vs raw `runsc exec /bin/true`", "ExecSpaced/cpu=2", "p50-ms", "RawRunscExec", "p50-ms"},
	{"checkpoint incl. destroy (0.5 vCPU) vs raw `runsc checkpoint`", "Checkpoint/cpu=0.5", "p50-ms", "RawRunscCheckpoint", "p50-ms"},
	{"checkpoint incl. destroy (2 vCPU) vs raw `runsc checkpoint`", "Checkpoint/cpu=2", "p50-ms", "RawRunscCheckpoint", "p50-ms"},
	{"restore to agent ready (0.5 vCPU) vs raw `runsc restore --detach`", "Restore/cpu=0.5", "p50-ms", "RawRunscRestore", "p50-ms"},
	{"restore to agent ready (2 vCPU) vs raw `runsc restore --detach`", "Restore/cpu=2", "p50-ms", "RawRunscRestore", "p50-ms"},
	{"restore in a 9-generation chain (median) vs restores of one image (2 vCPU)", "RestoreChain", "p50-ms", "Restore/cpu=2", "p50-ms"},
	{"restore chain: generation 9 vs generation 1", "RestoreChain", "gen9-ms", "RestoreChain", "gen1-ms"},
	{"API TTI, warm pool (HTTP create + first exec) vs runtime warm claim + first exec", "APITTIWarm", "p50-ms", "WarmClaimFirstExec", "p50-ms"},
	{"API TTI, no pool (HTTP create + first exec) vs runtime cold create (0.5 vCPU)", "APITTICold", "p50-ms", "ColdCreate/cpu=0.5", "create-ms"},
	{"API exec `true` (small) vs runtime exec `true` (0.5 vCPU)", "APIExec/size=small", "p50-ms", "ExecRoundTrip/cpu=0.5", "p50-ms"},
	{"API exec `true` (medium) vs runtime exec `true` (2 vCPU)", "APIExec/size=medium", "p50-ms", "ExecRoundTrip/cpu=2", "p50-ms"},
	{"API exec `true` spaced (small) vs runtime spaced (0.5 vCPU)", "APIExecSpaced/size=small", "p50-ms", "ExecSpaced/cpu=0.5", "p50-ms"},
	{"API exec `true` spaced (medium) vs runtime spaced (2 vCPU)", "APIExecSpaced/size=medium", "p50-ms", "ExecSpaced/cpu=2", "p50-ms"},
	{"fleet exec `true` (control plane → node in a netns) vs one-process server", "Fleet/exec", "p50-ms", "Fleet/exec", "local-p50-ms"},
	{"fleet create → `echo hi` vs one-process server", "Fleet/create-exec", "p50-ms", "Fleet/create-exec", "local-p50-ms"},
}

// target is a performance goal for one metric: at most (or, with atLeast,
// at least) limit.
type target struct {
	label       string
	bench, unit string
	limit       float64
	atLeast     bool
}

var targets = []target{
	{"TTI, sequential, warm pool (p50)", "APITTIWarm", "p50-ms", 25, false},
	{"TTI, sequential, no waiting for the refill (p50)", "APITTINoWait", "p50-ms", 25, false},
	{"TTI, 100 at once (p50 of the 100)", "APIBurstTTI", "p50-ms", 300, false},
	{"TTI, 100 at once (p95 of the 100)", "APIBurstTTI", "p95-ms", 300, false},
	{"TTI, 100 at once (wall, all 100)", "APIBurstTTI", "wall-ms", 300, false},
	{"exec round trip, runtime, 0.5 vCPU (p50)", "ExecRoundTrip/cpu=0.5", "p50-ms", 3, false},
	{"exec round trip, runtime, 2 vCPU (p50)", "ExecRoundTrip/cpu=2", "p50-ms", 3, false},
	{"exec round trip, runtime, spaced, 0.5 vCPU (p50)", "ExecSpaced/cpu=0.5", "p50-ms", 3, false},
	{"exec round trip, runtime, spaced, 2 vCPU (p50)", "ExecSpaced/cpu=2", "p50-ms", 3, false},
	{"exec round trip, HTTP, small (p50)", "APIExec/size=small", "p50-ms", 3, false},
	{"exec round trip, HTTP, medium (p50)", "APIExec/size=medium", "p50-ms", 3, false},
	{"exec round trip, HTTP, spaced, small (p50)", "APIExecSpaced/size=small", "p50-ms", 3, false},
	{"exec round trip, HTTP, spaced, medium (p50)", "APIExecSpaced/size=medium", "p50-ms", 3, false},
	{"GET /v1/sandboxes/{id} throughput", "APIGetThroughput", "req/s", 10000, true},
	{"fleet: exec added over one process (p50 fleet − p50 one-process)", "Fleet/exec", "added-p50-ms", 1, false},
	{"fleet: create → first exec added over one process (p50 − p50)", "Fleet/create-exec", "added-p50-ms", 1, false},
}

func main() {
	all := runs{}
	var order []string
	if len(os.Args) < 2 {
		if err := parse(os.Stdin, all, &order); err != nil {
			fail(err)
		}
	}
	for _, p := range os.Args[1:] {
		f, err := os.Open(p)
		if err != nil {
			fail(err)
		}
		err = parse(f, all, &order)
		f.Close()
		if err != nil {
			fail(err)
		}
	}
	if len(order) == 0 {
		fail(fmt.Errorf("no benchmark lines in the input"))
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()

	fmt.Fprintln(w, "| benchmark | runs | p50 ms (range over runs) | mean ms/op | other metrics (median over runs) |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---|")
	for _, name := range order {
		m := all[name]
		n := len(m["ns/op"])
		p50 := "—"
		if vs := m["p50-ms"]; len(vs) > 0 {
			p50 = fmt.Sprintf("%s (%s–%s)", num(median(vs)), num(slices.Min(vs)), num(slices.Max(vs)))
		}
		var units []string
		for u := range m {
			if u != "ns/op" && u != "p50-ms" {
				units = append(units, u)
			}
		}
		slices.Sort(units)
		var other []string
		for _, u := range units {
			other = append(other, num(median(m[u]))+" "+u)
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s |\n", name, n, p50, num(median(m["ns/op"])/1e6), strings.Join(other, ", "))
	}

	fmt.Fprintln(w)
	fmt.Fprintln(w, "| comparison (medians of p50) | orkestr ms | baseline ms | ratio |")
	fmt.Fprintln(w, "|---|---:|---:|---:|")
	for _, r := range ratios {
		o, b := all[r.ours][r.oursUnit], all[r.base][r.baseUnit]
		if len(o) == 0 || len(b) == 0 {
			fmt.Fprintf(w, "| %s | %s | %s | n/a |\n", r.label, orDash(o), orDash(b))
			continue
		}
		mo, mb := median(o), median(b)
		fmt.Fprintf(w, "| %s | %s | %s | %.2f× |\n", r.label, num(mo), num(mb), mo/mb)
	}

	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | benchmark, metric | median (range over runs) | target | met |")
	fmt.Fprintln(w, "|---|---|---:|---:|---|")
	for _, t := range targets {
		vs := all[t.bench][t.unit]
		rel := "≤"
		if t.atLeast {
			rel = "≥"
		}
		if len(vs) == 0 {
			fmt.Fprintf(w, "| %s | %s %s | — | %s %s | n/a |\n", t.label, t.bench, t.unit, rel, num(t.limit))
			continue
		}
		m := median(vs)
		met := m <= t.limit
		if t.atLeast {
			met = m >= t.limit
		}
		verdict := "no"
		if met {
			verdict = "yes"
		}
		fmt.Fprintf(w, "| %s | %s %s | %s (%s–%s) | %s %s | %s |\n", t.label, t.bench, t.unit,
			num(m), num(slices.Min(vs)), num(slices.Max(vs)), rel, num(t.limit), verdict)
	}
}

func orDash(vs []float64) string {
	if len(vs) == 0 {
		return "—"
	}
	return num(median(vs))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "benchtable:", err)
	os.Exit(1)
}
