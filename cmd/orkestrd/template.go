package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"text/tabwriter"

	"github.com/orkestr-eu/orkestr/internal/template"
)

func templateBuild(args []string) error {
	fs := flag.NewFlagSet("template build", flag.ExitOnError)
	dir := fs.String("template-dir", template.DirFromEnv(), "host-wide template directory (env ORKESTR_TEMPLATE_DIR)")
	force := fs.Bool("force", false, "rebuild even if already built")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: orkestrd admin template build [--force] NAME")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return template.Store{Dir: *dir}.BuildRecipe(ctx, fs.Arg(0), *force, func(s string) { fmt.Println(s) })
}

func templateList(args []string) error {
	fs := flag.NewFlagSet("template ls", flag.ExitOnError)
	dir := fs.String("template-dir", template.DirFromEnv(), "host-wide template directory (env ORKESTR_TEMPLATE_DIR)")
	_ = fs.Parse(args)
	recs, err := template.Store{Dir: *dir}.List()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tBUILT\tSOURCE")
	for _, r := range recs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, r.BuiltAt.Format("2006-01-02 15:04"), r.Source)
	}
	return tw.Flush()
}
