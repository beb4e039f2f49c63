package main

import (
	"encoding/csv"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

func limitsCommand() *command {
	return &command{
		name: "limits", summary: "Print the plan, sizes, caps and monthly usage of the API key.",
		flags: func(*flag.FlagSet) action {
			return func(c *cli, _ []string) error {
				l, err := c.client.Limits(c.ctx)
				if err != nil {
					return err
				}
				return c.print(l, func(w io.Writer) {
					fmt.Fprintf(w, "plan\t%s\n", l.Plan)
					fmt.Fprintf(w, "allowed sizes\t%s\n", orDash(strings.Join(l.AllowedSizes, ", ")))
					fmt.Fprintf(w, "max concurrent\t%d\n", l.MaxConcurrent)
					fmt.Fprintf(w, "snapshot cap\t%d\n", l.SnapshotCap)
					fmt.Fprintf(w, "GB-hours\t%g of %g\n", l.UsageGBHoursUsed, l.UsageGBHoursIncluded)
					fmt.Fprintf(w, "CPU-hours\t%g of %g\n", l.UsageCPUHoursUsed, l.UsageCPUHoursIncluded)
					fmt.Fprintf(w, "usage resets\t%s\n", fmtTime(&l.UsageResetsAt))
					fmt.Fprintln(w)
					fmt.Fprintln(w, "SIZE\tVCPU\tMEMORY\tALLOWED")
					for _, s := range l.Sizes {
						fmt.Fprintf(w, "%s\t%g\t%d MB\t%s\n", s.Size, s.CPU, s.MemoryMB, yesNo(s.Allowed))
					}
				})
			}
		},
	}
}

func templatesCommand() *command {
	return &command{
		name: "templates", summary: "List the templates sandboxes can be created from.",
		flags: func(*flag.FlagSet) action {
			return func(c *cli, _ []string) error {
				ts, err := c.client.Templates(c.ctx)
				if err != nil {
					return err
				}
				return c.print(ts, func(w io.Writer) {
					fmt.Fprintln(w, "NAME\tDEFAULT\tDESCRIPTION")
					for _, t := range ts {
						fmt.Fprintf(w, "%s\t%s\t%s\n", t.Name, yesNo(t.Default), t.Description)
					}
				})
			}
		},
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func usageCommand() *command {
	return &command{
		name: "usage", summary: "Print the account's metered usage per sandbox and day (or hour); --csv for a spreadsheet.",
		flags: func(fs *flag.FlagSet) action {
			from := fs.String("from", "", "start, a date (2026-11-01) or RFC 3339 time on a whole period (default: the 1st of this month)")
			to := fs.String("to", "", "end, exclusive (default: the 1st of next month)")
			hourly := fs.Bool("hourly", false, "per UTC hour instead of per UTC day")
			asCSV := fs.Bool("csv", false, "CSV: period_start,period_end,sandbox_id,mem_mb_seconds,cpu_ms,running_seconds")
			return func(c *cli, _ []string) error {
				p := orkestr.UsageParams{Granularity: "day"}
				if *hourly {
					p.Granularity = "hour"
				}
				for _, f := range []struct {
					name, v string
					t       *time.Time
				}{{"from", *from, &p.From}, {"to", *to, &p.To}} {
					if f.v == "" {
						continue
					}
					t, err := time.Parse(time.DateOnly, f.v)
					if err != nil {
						if t, err = time.Parse(time.RFC3339, f.v); err != nil {
							return usagef("--%s %q: give a date (2026-11-01) or an RFC 3339 time", f.name, f.v)
						}
					}
					*f.t = t
				}
				u, err := c.client.Usage(c.ctx, p)
				if err != nil {
					return err
				}
				if *asCSV {
					w := csv.NewWriter(c.stdout)
					_ = w.Write([]string{"period_start", "period_end", "sandbox_id", "mem_mb_seconds", "cpu_ms", "running_seconds"})
					for _, per := range u.Periods {
						for _, s := range per.Sandboxes {
							_ = w.Write([]string{per.Start.UTC().Format(time.RFC3339), per.End.UTC().Format(time.RFC3339), s.SandboxID,
								strconv.FormatInt(s.MemMBSeconds, 10), strconv.FormatInt(s.CPUMS, 10), strconv.FormatInt(s.RunningSeconds, 10)})
						}
					}
					w.Flush()
					return w.Error()
				}
				return c.print(u, func(w io.Writer) {
					fmt.Fprintf(w, "from\t%s\n", fmtTime(&u.From))
					fmt.Fprintf(w, "to\t%s\n", fmtTime(&u.To))
					fmt.Fprintf(w, "GB-hours\t%g\t(%d MB·s)\n", u.Total.GBHours, u.Total.MemMBSeconds)
					fmt.Fprintf(w, "CPU-hours\t%g\t(%d CPU·ms)\n", u.Total.CPUHours, u.Total.CPUMS)
					fmt.Fprintf(w, "running\t%d s\n", u.Total.RunningSeconds)
					fmt.Fprintln(w)
					fmt.Fprintln(w, "SANDBOX\tGB-HOURS\tCPU-HOURS\tRUNNING")
					for _, s := range u.Sandboxes {
						fmt.Fprintf(w, "%s\t%g\t%g\t%d s\n", s.SandboxID, s.GBHours, s.CPUHours, s.RunningSeconds)
					}
				})
			}
		},
	}
}
