// Command orkestrd is the orkestr server: `serve` runs everything on this
// host; `admin` holds the operator's commands.
package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
)

const usage = `orkestrd — self-hosted sandboxes for AI agents

Usage:
  orkestrd serve [flags]                   run the server on this host (with fleet.enabled:
                                           the control plane of a fleet of nodes)
  orkestrd node --id ID --listen ADDR      run one host of a fleet: its sandboxes, served
                                           to the control plane over the node API
  orkestrd admin account create NAME --plan free|pro|team
  orkestrd admin account ls
  orkestrd admin key create --account NAME --scopes sandboxes:write [--expires 30d]
  orkestrd admin key list --account NAME
  orkestrd admin key revoke --account NAME KEY_ID_OR_PREFIX
  orkestrd admin e2b-key                   print the e2b_ alias of the key on stdin (for the e2b SDKs)
  orkestrd admin user create --account NAME --email EMAIL [--url URL]
                                           add a console member; prints a one-time
                                           password-setup link
  orkestrd admin user link --email EMAIL [--url URL]
                                           a new setup link (forgotten password, lockout)
  orkestrd admin user ls --account NAME
  orkestrd admin template build NAME       build a catalog template (OCI image or offline recipe)
  orkestrd admin template ls               list the catalog and what is built here
  orkestrd admin template prune            remove unpacked images and cached layers no template uses
  orkestrd admin snapshots gc [--dry-run] [--min-age 1h]
                                           remove snapshot objects no sandbox references
  orkestrd admin backup --out DIR          consistent backup of the SQLite store and the
                                           snapshots of paused sandboxes (server may run)
  orkestrd admin restore --from DIR        put a backup in place (server stopped)
  orkestrd admin selftest [flags]          start a sandbox, run a command, pause and
                                           resume it, and report timings
  orkestrd config check [--config FILE] [--node]
                                           validate a config file; print the effective
                                           configuration, secrets redacted (--node: as
                                           orkestrd node reads it, with its environment)
  orkestrd version [--runsc PATH]          version, commit and runsc versions

Run "orkestrd COMMAND -h" for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch args := os.Args[2:]; os.Args[1] {
	case "serve":
		err = serve(args)
	case "node":
		err = nodeCmd(args)
	case "admin":
		err = admin(args)
	case "version", "--version":
		err = printVersion(args)
	case "config":
		if len(args) >= 1 && args[0] == "check" {
			err = configCheck(args[1:])
		} else {
			err = fmt.Errorf("unknown config command; use `orkestrd config check [--config FILE]`")
		}
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "orkestrd: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "orkestrd:", err)
		os.Exit(1)
	}
}

func admin(args []string) error {
	if len(args) >= 1 && args[0] == "selftest" {
		return selftest(args[1:])
	}
	if len(args) >= 1 && args[0] == "backup" {
		return adminBackup(args[1:])
	}
	if len(args) >= 1 && args[0] == "restore" {
		return adminRestore(args[1:])
	}
	if len(args) >= 2 && args[0] == "account" {
		switch args[1] {
		case "create":
			return accountCreate(args[2:])
		case "ls", "list":
			return accountList(args[2:])
		}
	}
	if len(args) >= 2 && args[0] == "key" {
		switch args[1] {
		case "create":
			return keyCreate(args[2:])
		case "ls", "list":
			return keyList(args[2:])
		case "revoke":
			return keyRevoke(args[2:])
		}
	}
	if len(args) >= 2 && args[0] == "snapshots" && args[1] == "gc" {
		return adminSnapshotsGC(args[2:])
	}
	if len(args) >= 1 && args[0] == "e2b-key" {
		return e2bKey(args[1:])
	}
	if len(args) >= 2 && args[0] == "user" {
		switch args[1] {
		case "create":
			return userCreate(args[2:])
		case "link":
			return userLink(args[2:])
		case "ls", "list":
			return userList(args[2:])
		}
	}
	if len(args) >= 2 && args[0] == "template" {
		switch args[1] {
		case "build":
			return templateBuild(args[2:])
		case "ls", "list":
			return templateList(args[2:])
		case "prune":
			return templatePrune(args[2:])
		}
	}
	return fmt.Errorf("unknown admin command %q\n\n%s", strings.Join(args, " "), usage)
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
