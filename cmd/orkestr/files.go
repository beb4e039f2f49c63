package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

func filesCommands() []*command {
	return []*command{
		{
			name: "put", synopsis: "LOCAL|- REMOTE", min: 2, max: 2,
			summary: "Upload LOCAL (- for standard input) to REMOTE (SANDBOX_ID:/path), streamed.",
			flags: func(*flag.FlagSet) action {
				return func(c *cli, args []string) error {
					f, id, path, err := c.remote(args[1])
					if err != nil {
						return err
					}
					var src io.Reader = c.stdin
					if args[0] != "-" {
						file, err := os.Open(args[0])
						if err != nil {
							return err
						}
						defer file.Close()
						src = file
					}
					n, err := f.WriteFrom(c.ctx, path, src)
					if err != nil {
						return err
					}
					return c.print(map[string]any{"sandbox_id": id, "path": path, "size": n},
						func(w io.Writer) { fmt.Fprintf(w, "wrote %d bytes to %s\n", n, args[1]) })
				}
			},
		},
		{
			name: "get", synopsis: "REMOTE [LOCAL|-]", min: 1, max: 2,
			summary: "Download REMOTE (SANDBOX_ID:/path) to LOCAL, or to standard output without LOCAL or\n" +
				"with -, streamed. With --json and LOCAL, a summary is printed.",
			flags: func(*flag.FlagSet) action {
				return func(c *cli, args []string) error {
					f, id, path, err := c.remote(args[0])
					if err != nil {
						return err
					}
					if len(args) == 1 || args[1] == "-" {
						_, err := f.ReadTo(c.ctx, path, c.stdout)
						return err
					}
					// Only a complete download is left behind.
					file, err := os.Create(args[1])
					if err != nil {
						return err
					}
					n, err := f.ReadTo(c.ctx, path, file)
					if cerr := file.Close(); err == nil {
						err = cerr
					}
					if err != nil {
						_ = os.Remove(args[1])
						return err
					}
					return c.print(map[string]any{"sandbox_id": id, "path": path, "local": args[1], "size": n},
						func(w io.Writer) { fmt.Fprintf(w, "wrote %d bytes to %s\n", n, args[1]) })
				}
			},
		},
		{
			name: "ls", synopsis: "REMOTE", min: 1, max: 1, summary: "List the directory REMOTE (SANDBOX_ID:/path).",
			flags: func(*flag.FlagSet) action {
				return func(c *cli, args []string) error {
					f, _, path, err := c.remote(args[0])
					if err != nil {
						return err
					}
					ents, err := f.List(c.ctx, path)
					if err != nil {
						return err
					}
					return c.print(ents, func(w io.Writer) {
						fmt.Fprintln(w, "MODE\tSIZE\tMODIFIED\tNAME")
						for _, e := range ents {
							name, mode := e.Name, e.Mode.String()
							if e.IsDir {
								name, mode = name+"/", "d"+mode[1:]
							}
							fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", mode, e.Size, fmtTime(&e.ModifiedAt), name)
						}
					})
				}
			},
		},
		{
			name: "rm", synopsis: "REMOTE", min: 1, max: 1, summary: "Delete the file or directory REMOTE (SANDBOX_ID:/path).",
			flags: func(*flag.FlagSet) action {
				return func(c *cli, args []string) error {
					f, id, path, err := c.remote(args[0])
					if err != nil {
						return err
					}
					if err := f.Delete(c.ctx, path); err != nil {
						return err
					}
					return c.print(map[string]any{"sandbox_id": id, "path": path, "deleted": true},
						func(w io.Writer) { fmt.Fprintf(w, "deleted %s\n", args[0]) })
				}
			},
		},
	}
}

// remote splits SANDBOX_ID:/path.
func (c *cli) remote(arg string) (f *orkestr.Files, id, path string, err error) {
	id, path, ok := strings.Cut(arg, ":")
	if !ok || id == "" || !strings.HasPrefix(path, "/") {
		return nil, "", "", usagef("%q is not SANDBOX_ID:/absolute/path", arg)
	}
	return c.client.Sandbox(id).Files(), id, path, nil
}
