package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

// backupManifest is DIR/backup.json, written last: a directory without it
// is an unfinished backup.
type backupManifest struct {
	Format        int       `json:"format"`
	CreatedAt     time.Time `json:"created_at"`
	Orkestrd      string    `json:"orkestrd"`
	SchemaVersion int       `json:"schema_version"`
	Database      string    `json:"database"`
	DataDir       string    `json:"data_dir"`
	Sandboxes     int       `json:"sandboxes"`
	Snapshots     []string  `json:"snapshots"`
	// MissingSnapshots are paused sandboxes whose snapshot went away
	// between the database copy and the file copy (resumed or terminated
	// meanwhile); a restore marks them as errors.
	MissingSnapshots []string `json:"missing_snapshots,omitempty"`
}

const backupDB = "orkestr.db"

// adminBackup writes a consistent backup of a SQLite store and the
// snapshots of its paused sandboxes into a new directory, while the server
// runs.
func adminBackup(args []string) error {
	fl := flag.NewFlagSet("admin backup", flag.ContinueOnError)
	var sf storeFlags
	sf.register(fl)
	out := fl.String("out", "", "directory to create for the backup (must not exist, or be empty)")
	if _, err := parseArgs(fl, args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("usage: orkestrd admin backup --out DIR [--data-dir DIR] [--config FILE]")
	}
	if err := makePrivateDir(*out); err != nil {
		return err
	}
	ctx := context.Background()
	st, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	sq, ok := st.(*sqlstore.Store)
	if !ok || sq.Driver() != "sqlite" {
		return sqlstore.ErrBackupUnsupported
	}
	start := time.Now()
	dbPath := filepath.Join(*out, backupDB)
	if err := sq.BackupTo(ctx, dbPath); err != nil {
		return err
	}
	// The snapshots the copy refers to, read from the copy itself.
	cp, err := sqlstore.OpenSQLite(ctx, dbPath)
	if err != nil {
		return fmt.Errorf("opening the backup: %w", err)
	}
	defer cp.Close()
	if err := cp.IntegrityCheck(ctx); err != nil {
		return fmt.Errorf("the backup is damaged: %w", err)
	}
	all, err := cp.SandboxesByStatus(ctx, store.StatusStarting, store.StatusRunning, store.StatusPaused, store.StatusTerminated, store.StatusError)
	if err != nil {
		return err
	}
	m := backupManifest{Format: 1, CreatedAt: start.UTC(), SchemaVersion: sqlstore.SchemaVersion(), Database: "sqlite",
		DataDir: absPath(sf.dataDir), Sandboxes: len(all)}
	m.Orkestrd, _ = buildVersion()
	var bytes int64
	for _, row := range all {
		if row.SnapshotDir == "" {
			continue
		}
		src := row.SnapshotDir // a snapshot id; an absolute path in rows older than ids
		if !filepath.IsAbs(src) {
			src = filepath.Join(node.SnapshotRoot(absPath(sf.dataDir)), src)
		}
		dst := filepath.Join(*out, "snapshots", filepath.Base(row.SnapshotDir))
		n, err := copyTree(src, dst)
		if errors.Is(err, fs.ErrNotExist) {
			_ = os.RemoveAll(dst)
			m.MissingSnapshots = append(m.MissingSnapshots, row.ID)
			continue
		}
		if err != nil {
			return fmt.Errorf("copying the snapshot of %s: %w", row.ID, err)
		}
		bytes += n
		m.Snapshots = append(m.Snapshots, filepath.Base(row.SnapshotDir))
	}
	sort.Strings(m.Snapshots)
	if err := writeFileJSON(filepath.Join(*out, "backup.json"), m); err != nil {
		return err
	}
	fmt.Printf("backup of %d sandboxes and %d snapshots (%d MiB) written to %s in %v\n",
		len(all), len(m.Snapshots), bytes>>20, *out, time.Since(start).Round(time.Millisecond))
	for _, id := range m.MissingSnapshots {
		fmt.Printf("note: %s was resumed or terminated during the backup; the backup has no snapshot for it\n", id)
	}
	return nil
}

// adminRestore puts a backup in place of a stopped server's SQLite store
// and snapshots. What was there is moved aside, not deleted.
func adminRestore(args []string) error {
	fl := flag.NewFlagSet("admin restore", flag.ContinueOnError)
	var sf storeFlags
	sf.register(fl)
	from := fl.String("from", "", "backup directory written by orkestrd admin backup")
	if _, err := parseArgs(fl, args); err != nil {
		return err
	}
	if *from == "" {
		return errors.New("usage: orkestrd admin restore --from DIR [--data-dir DIR]")
	}
	if sf.databaseURL != "" {
		return errors.New("restore writes a SQLite store; restore PostgreSQL with pg_restore (see docs/operating.md, Backups)")
	}
	if cfg, err := loadConfig(sf.configFile); err != nil {
		return err
	} else if cfg.Database.URL != "" {
		return errors.New("the configuration names a database URL; restore PostgreSQL with pg_restore (see docs/operating.md, Backups)")
	}
	var m backupManifest
	if err := readFileJSON(filepath.Join(*from, "backup.json"), &m); err != nil {
		return fmt.Errorf("%s is not a finished backup (no readable backup.json): %w", *from, err)
	}
	if m.Format != 1 || m.Database != "sqlite" {
		return fmt.Errorf("backup format %d of a %s database: this orkestrd restores format 1 SQLite backups", m.Format, m.Database)
	}
	if m.SchemaVersion > sqlstore.SchemaVersion() {
		return fmt.Errorf("the backup's schema is version %d but this orkestrd knows versions up to %d: restore it with the orkestrd that made it (%s) or a newer one", m.SchemaVersion, sqlstore.SchemaVersion(), m.Orkestrd)
	}
	for _, name := range m.Snapshots {
		if name != filepath.Base(name) || name == "." || name == ".." || strings.HasPrefix(name, ".") {
			return fmt.Errorf("backup.json names a snapshot %q outside the backup", name)
		}
		if _, err := os.Stat(filepath.Join(*from, "snapshots", name, "snapshot.json")); err != nil {
			return fmt.Errorf("the backup's snapshot %s is incomplete: %w", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(*from, backupDB)); err != nil {
		return fmt.Errorf("the backup has no database: %w", err)
	}
	dataDir := absPath(sf.dataDir)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	unlock, err := lockDataDir(dataDir)
	if err != nil {
		return err
	}
	defer unlock()

	// Everything is prepared beside the current database, which is moved
	// aside only once the new one is complete.
	ctx := context.Background()
	stamp := time.Now().UTC().Format("20060102T150405Z")
	dbPath := filepath.Join(dataDir, backupDB)
	staged := dbPath + ".restoring-" + stamp
	defer func() {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			_ = os.Remove(staged + suffix)
		}
	}()
	if _, err := copyFile(filepath.Join(*from, backupDB), staged, 0o600); err != nil {
		return err
	}
	snapDir := node.SnapshotRoot(dataDir)
	st, err := sqlstore.OpenSQLite(ctx, staged)
	if err != nil {
		return fmt.Errorf("opening the backup's database: %w", err)
	}
	err = st.IntegrityCheck(ctx)
	moved := 0
	if err == nil {
		moved, err = st.NameSnapshots(ctx)
	}
	var rows []store.Sandbox
	if err == nil {
		rows, err = st.SandboxesByStatus(ctx, store.StatusRunning, store.StatusPaused)
	}
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("the backup's database: %w", err)
	}
	if err := os.MkdirAll(snapDir, 0o700); err != nil {
		return err
	}
	copied := 0
	for _, name := range m.Snapshots {
		dst := filepath.Join(snapDir, name)
		if _, err := os.Lstat(filepath.Join(dst, "snapshot.json")); err == nil {
			continue // still here (a restore into the same data directory)
		}
		_ = os.RemoveAll(dst)
		if _, err := copyTree(filepath.Join(*from, "snapshots", name), dst); err != nil {
			return fmt.Errorf("restoring snapshot %s: %w", name, err)
		}
		copied++
	}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if _, err := os.Lstat(dbPath + suffix); err == nil {
			aside := dbPath + suffix + ".before-restore-" + stamp
			if err := os.Rename(dbPath+suffix, aside); err != nil {
				return err
			}
			if suffix == "" {
				fmt.Printf("moved the current database aside to %s\n", aside)
			}
		}
	}
	if err := os.Rename(staged, dbPath); err != nil {
		return err
	}
	running, paused := 0, 0
	for _, r := range rows {
		if r.Status == store.StatusRunning {
			running++
		} else {
			paused++
		}
	}
	fmt.Printf("restored the backup of %s (%d sandboxes: %d running, %d paused; %d snapshots copied, %d paths updated) into %s\n",
		m.CreatedAt.Format(time.RFC3339), m.Sandboxes, running, paused, copied, moved, dataDir)
	fmt.Println("at the next start, running sandboxes still running on this host are adopted, the others are marked error; paused ones can be resumed")
	return nil
}

// lockDataDir takes the data directory's lock (held by orkestrd serve for
// its lifetime), so that a restore never runs under a live server and two
// servers never share a data directory.
func lockDataDir(dataDir string) (unlock func(), err error) {
	p := filepath.Join(dataDir, "orkestrd.lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("an orkestrd serve is running on %s (it holds %s): stop it first", dataDir, p)
		}
		return nil, fmt.Errorf("locking %s: %w", p, err)
	}
	return func() { f.Close() }, nil
}

func makePrivateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
		ents, rerr := os.ReadDir(dir)
		if rerr != nil {
			return rerr
		}
		if len(ents) > 0 {
			return fmt.Errorf("%s is not empty; give a new directory for the backup", dir)
		}
		return os.Chmod(dir, 0o700)
	}
	return nil
}

// copyTree copies a directory of regular files and directories (a
// snapshot); it returns the bytes copied.
func copyTree(src, dst string) (int64, error) {
	var total int64
	if _, err := os.Stat(src); err != nil {
		return 0, err
	}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o700)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			n, err := copyFile(p, target, info.Mode().Perm())
			total += n
			return err
		default:
			return fmt.Errorf("%s: not a regular file or directory", p)
		}
	})
	return total, err
}

func copyFile(src, dst string, mode os.FileMode) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

func writeFileJSON(p string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(p, append(b, '\n'), 0o600)
}

func readFileJSON(p string, v any) error {
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
