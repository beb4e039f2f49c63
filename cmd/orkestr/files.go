package main

import (
	"archive/tar"
	"bufio"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/orkestr-eu/orkestr/internal/tarx"
	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

func filesCommands() []*command {
	return []*command{
		{
			name: "put", synopsis: "[-r] LOCAL|- REMOTE", min: 2, max: 2,
			summary: "Upload LOCAL (- for standard input) to REMOTE (SANDBOX_ID:/path), streamed. With -r,\n" +
				"LOCAL is a directory, sent as a tar and extracted into the directory REMOTE.",
			flags: func(fs *flag.FlagSet) action {
				recursive := fs.Bool("r", false, "upload the directory LOCAL into the directory REMOTE")
				return func(c *cli, args []string) error {
					f, id, path, err := c.remote(args[1])
					if err != nil {
						return err
					}
					if *recursive {
						x, err := putDir(c, f, args[0], path)
						if err != nil {
							return err
						}
						return c.print(map[string]any{"sandbox_id": id, "path": path, "entries": x.Entries, "bytes": x.Bytes},
							func(w io.Writer) {
								fmt.Fprintf(w, "extracted %d entries (%d bytes) into %s\n", x.Entries, x.Bytes, args[1])
							})
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
			name: "get", synopsis: "[-r] [-z gzip|zstd] REMOTE [LOCAL|-]", min: 1, max: 2,
			summary: "Download REMOTE (SANDBOX_ID:/path) to LOCAL, or to standard output without LOCAL or\n" +
				"with -, streamed. With -r, REMOTE is a directory: extracted into the directory LOCAL\n" +
				"(created; entries that would land outside it are refused), or written to standard\n" +
				"output as a tar (compressed with -z). With --json and LOCAL, a summary is printed.",
			flags: func(fs *flag.FlagSet) action {
				recursive := fs.Bool("r", false, "download the directory REMOTE as a tar archive")
				compression := fs.String("z", "", "with -r: compress the archive with gzip or zstd")
				return func(c *cli, args []string) error {
					f, id, path, err := c.remote(args[0])
					if err != nil {
						return err
					}
					read := func(w io.Writer) (int64, error) { return f.ReadTo(c.ctx, path, w) }
					if *recursive {
						read = func(w io.Writer) (int64, error) { return f.ReadArchiveTo(c.ctx, path, *compression, w) }
					}
					if len(args) == 1 || args[1] == "-" {
						_, err := read(c.stdout)
						return err
					}
					if *recursive {
						x, err := getDir(c, f, path, args[1])
						if err != nil {
							return err
						}
						return c.print(map[string]any{"sandbox_id": id, "path": path, "local": args[1], "entries": x.Entries, "bytes": x.Bytes},
							func(w io.Writer) {
								fmt.Fprintf(w, "extracted %d entries (%d bytes) into %s\n", x.Entries, x.Bytes, args[1])
							})
					}
					// Only a complete download is left behind, and never
					// a partial one at LOCAL: it goes to a temporary file
					// beside LOCAL, renamed over it when complete.
					file, err := os.CreateTemp(filepath.Dir(args[1]), "."+filepath.Base(args[1])+".orkestr-*")
					if err != nil {
						return err
					}
					n, err := read(file)
					if cerr := file.Close(); err == nil {
						err = cerr
					}
					if err == nil {
						err = os.Chmod(file.Name(), 0o644)
					}
					if err == nil {
						err = os.Rename(file.Name(), args[1])
					}
					if err != nil {
						_ = os.Remove(file.Name())
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

// putDir streams the local directory dir as a tar into the sandbox's
// directory remote. Symlinks are sent as links; device nodes, fifos and
// sockets are left out.
func putDir(c *cli, f *orkestr.Files, dir, remote string) (*orkestr.Extracted, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, usagef("%s is not a directory (put -r uploads a directory)", dir)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, dir)) }()
	defer pr.Close()
	return f.WriteArchive(c.ctx, remote, pr)
}

func writeTar(w io.Writer, dir string) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		switch {
		case fi.Mode()&iofs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.Mode().IsRegular(), fi.IsDir():
		default:
			return nil
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		h.Uname, h.Gname = "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		file, err := os.Open(p)
		if err != nil {
			return err
		}
		defer file.Close()
		_, err = io.CopyBuffer(tw, io.LimitReader(file, h.Size), buf)
		return err
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// getDir extracts the sandbox's directory remote into the local directory
// dir (created). The archive comes from a sandbox and is treated as
// hostile: tarx refuses entries that would land outside dir.
func getDir(c *cli, f *orkestr.Files, remote, dir string) (tarx.Result, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return tarx.Result{}, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return tarx.Result{}, err
	}
	defer root.Close()
	rc, err := f.OpenArchive(c.ctx, remote, "zstd")
	if err != nil {
		return tarx.Result{}, err
	}
	defer rc.Close()
	return tarx.Extract(root, rc, 0)
}
