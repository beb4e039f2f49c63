package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/template"
	"github.com/orkestr-eu/orkestr/internal/template/oci"
)

// catalogEntry returns the catalog's entry for name, or, for a name that is
// only an offline recipe, an entry built from that recipe.
func catalogEntry(cfg config.Config, name string) (template.Entry, error) {
	if t, ok := cfg.Template(name); ok {
		e := template.Entry{Name: t.Name}
		for _, s := range t.Sources {
			e.Sources = append(e.Sources, template.Source{Image: s.Image, Recipe: s.Recipe})
		}
		return e, nil
	}
	if _, ok := template.Recipes[name]; ok {
		return template.Entry{Name: name, Sources: []template.Source{{Recipe: name}}}, nil
	}
	var names []string
	for _, t := range cfg.Templates {
		names = append(names, t.Name)
	}
	return template.Entry{}, fmt.Errorf("template %q is not in the catalog (known: %s); add it to the config's templates", name, strings.Join(names, ", "))
}

// ociOptions turns the config's registry settings into pull options.
func ociOptions(cfg config.Config) oci.Options {
	opt := oci.Options{Insecure: cfg.InsecureRegistries, Auth: map[string]oci.Auth{}}
	for host, a := range cfg.Registries {
		opt.Auth[host] = oci.Auth{Username: a.Username, Password: a.Password, Token: a.Token}
	}
	return opt
}

func templateBuild(args []string) error {
	fs := flag.NewFlagSet("template build", flag.ExitOnError)
	dir := fs.String("template-dir", template.DirFromEnv(), "host-wide template directory (env ORKESTR_TEMPLATE_DIR)")
	configFile := fs.String("config", os.Getenv("ORKESTR_CONFIG"), "YAML config file with the template catalog (env ORKESTR_CONFIG)")
	force := fs.Bool("force", false, "rebuild even if already built")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: orkestrd admin template build [--force] NAME")
	}
	cfg, err := config.Load(*configFile)
	if err != nil {
		return err
	}
	entry, err := catalogEntry(cfg, fs.Arg(0))
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()
	p := newProgress(os.Stdout)
	opt := ociOptions(cfg)
	opt.Progress = p.layer
	b := template.Builder{Store: template.Store{Dir: *dir}, OCI: opt, Log: p.line}
	return b.Build(ctx, entry, *force)
}

// progress shows a pull's progress: one line rewritten in place on a
// terminal, a plain line per finished layer otherwise (logs, CI).
type progress struct {
	out      *os.File
	terminal bool
	last     time.Time
	open     bool // a progress line is on the terminal
}

func newProgress(out *os.File) *progress {
	_, err := unix.IoctlGetTermios(int(out.Fd()), unix.TCGETS)
	return &progress{out: out, terminal: err == nil}
}

func (p *progress) line(s string) {
	if p.open {
		fmt.Fprintln(p.out)
		p.open = false
	}
	fmt.Fprintln(p.out, s)
}

func (p *progress) layer(ev oci.Progress) {
	short := strings.TrimPrefix(ev.Digest, "sha256:")
	if len(short) > 12 {
		short = short[:12]
	}
	switch {
	case ev.Unpacked:
		p.line(fmt.Sprintf("layer %d/%d %s: unpacked (%s)", ev.Layer, ev.Layers, short, mib(ev.Total)))
	case ev.Done:
		state := fmt.Sprintf("%s downloaded", mib(ev.Total))
		if ev.Cached {
			state = fmt.Sprintf("%s already cached", mib(ev.Total))
		}
		if p.terminal {
			fmt.Fprintf(p.out, "\r\033[K")
			p.open = false
		}
		fmt.Fprintf(p.out, "layer %d/%d %s: %s\n", ev.Layer, ev.Layers, short, state)
	case p.terminal && time.Since(p.last) > 100*time.Millisecond:
		p.last = time.Now()
		fmt.Fprintf(p.out, "\r\033[Klayer %d/%d %s: %s / %s", ev.Layer, ev.Layers, short, mib(ev.Bytes), mib(ev.Total))
		p.open = true
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func templateList(args []string) error {
	fs := flag.NewFlagSet("template ls", flag.ExitOnError)
	dir := fs.String("template-dir", template.DirFromEnv(), "host-wide template directory (env ORKESTR_TEMPLATE_DIR)")
	configFile := fs.String("config", os.Getenv("ORKESTR_CONFIG"), "YAML config file with the template catalog (env ORKESTR_CONFIG)")
	_ = fs.Parse(args)
	cfg, err := config.Load(*configFile)
	if err != nil {
		return err
	}
	recs, err := template.Store{Dir: *dir}.List()
	if err != nil {
		return err
	}
	built := map[string]template.Record{}
	for _, r := range recs {
		built[r.Name] = r
	}
	type row struct{ name, state, when, source string }
	var rows []row
	for _, t := range cfg.Templates {
		var srcs []string
		for _, s := range t.Sources {
			srcs = append(srcs, template.Source{Image: s.Image, Recipe: s.Recipe}.String())
		}
		r, ok := built[t.Name]
		delete(built, t.Name)
		if ok {
			rows = append(rows, row{t.Name, "built", r.BuiltAt.Format("2006-01-02 15:04"), r.Source})
		} else {
			rows = append(rows, row{t.Name, "not built", "-", strings.Join(srcs, ", then ")})
		}
	}
	var extra []string
	for name := range built {
		extra = append(extra, name)
	}
	sort.Strings(extra)
	for _, name := range extra {
		r := built[name]
		rows = append(rows, row{name, "built (not in catalog)", r.BuiltAt.Format("2006-01-02 15:04"), r.Source})
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tBUILT\tSOURCE")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.name, r.state, r.when, r.source)
	}
	return tw.Flush()
}

func templatePrune(args []string) error {
	fs := flag.NewFlagSet("template prune", flag.ExitOnError)
	dir := fs.String("template-dir", template.DirFromEnv(), "host-wide template directory (env ORKESTR_TEMPLATE_DIR)")
	_ = fs.Parse(args)
	if fs.NArg() != 0 {
		return fmt.Errorf("usage: orkestrd admin template prune [--template-dir DIR]")
	}
	p, err := template.Store{Dir: *dir}.Prune()
	for _, r := range p.Removed {
		fmt.Printf("removed %s\n", r)
	}
	for _, r := range p.InUse {
		fmt.Printf("kept %s: no template uses it, but a running sandbox does\n", r)
	}
	if p.BlobsKept != "" {
		fmt.Printf("kept every cached layer: %s\n", p.BlobsKept)
	}
	if err != nil {
		return err
	}
	fmt.Printf("pruned %d entries, %s\n", len(p.Removed), mib(p.Bytes))
	return nil
}
