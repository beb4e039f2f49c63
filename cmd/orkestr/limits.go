package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
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
