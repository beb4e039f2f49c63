package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/auth"
	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

// storeFlags locate the store: SQLite in the data dir unless a PostgreSQL
// URL is given.
type storeFlags struct {
	dataDir, databaseURL, configFile string
}

func (f *storeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.dataDir, "data-dir", envOr("ORKESTR_DATA_DIR", "/var/lib/orkestr/data"), "server data directory (env ORKESTR_DATA_DIR)")
	fs.StringVar(&f.databaseURL, "database-url", os.Getenv("ORKESTR_DATABASE_URL"), "postgres://… to use PostgreSQL instead of SQLite in the data dir (env ORKESTR_DATABASE_URL)")
	fs.StringVar(&f.configFile, "config", os.Getenv("ORKESTR_CONFIG"), "YAML config file (env ORKESTR_CONFIG)")
}

func (f *storeFlags) open(ctx context.Context) (store.Store, error) {
	url := f.databaseURL
	if url == "" {
		// The config file's database (or ORKESTR_DATABASE_URL_FILE).
		cfg, err := loadConfig(f.configFile)
		if err != nil {
			return nil, err
		}
		url = cfg.Database.URL
	}
	if url == "" {
		if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
			return nil, err
		}
		url = "sqlite://" + filepath.Join(absPath(f.dataDir), "orkestr.db")
	}
	return sqlstore.Open(ctx, url)
}

// openAccount opens the store and finds an account by name; the caller
// closes the store.
func (f *storeFlags) openAccount(ctx context.Context, name string) (store.Store, store.Account, error) {
	st, err := f.open(ctx)
	if err != nil {
		return nil, store.Account{}, err
	}
	a, err := st.AccountByName(ctx, name)
	if err != nil {
		st.Close()
		if errors.Is(err, store.ErrNotFound) {
			return nil, a, fmt.Errorf("no account named %q (create it with `orkestrd admin account create`)", name)
		}
		return nil, a, err
	}
	return st, a, nil
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

func newID(prefix string) string { return prefix + ulid.MustNew(ulid.Now(), rand.Reader).String() }

// parseArgs parses flags that may come before or after positional
// arguments ("account create NAME --plan pro").
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func accountCreate(args []string) error {
	fs := flag.NewFlagSet("account create", flag.ContinueOnError)
	var sf storeFlags
	sf.register(fs)
	plan := fs.String("plan", "free", "plan: free, pro, team or one from the config")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: orkestrd admin account create NAME --plan free|pro|team [--data-dir DIR]")
	}
	cfg, err := config.Load(sf.configFile)
	if err != nil {
		return err
	}
	if _, ok := cfg.Plans[*plan]; !ok {
		return fmt.Errorf("unknown plan %q (one of %s)", *plan, strings.Join(cfg.PlanNames(), ", "))
	}
	ctx := context.Background()
	st, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	a := store.Account{ID: newID("acc_"), Name: pos[0], Plan: *plan, CreatedAt: time.Now().UTC()}
	if err := validAccountName(a.Name); err != nil {
		return err
	}
	if err := st.CreateAccount(ctx, a); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("an account named %q already exists", a.Name)
		}
		return err
	}
	fmt.Printf("created account %s (%s) on plan %s\n", a.Name, a.ID, a.Plan)
	return nil
}

func validAccountName(n string) error {
	if n == "" || len(n) > 64 {
		return errors.New("account names are 1 to 64 characters")
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '@') {
			return fmt.Errorf("account name %q may contain only letters, digits, '-', '_', '.', '@'", n)
		}
	}
	return nil
}

func accountList(args []string) error {
	fs := flag.NewFlagSet("account ls", flag.ContinueOnError)
	var sf storeFlags
	sf.register(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	ctx := context.Background()
	st, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	accts, err := st.ListAccounts(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tPLAN\tCREATED")
	for _, a := range accts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.Name, a.ID, a.Plan, a.CreatedAt.Format(time.RFC3339))
	}
	return tw.Flush()
}

// parseExpiry reads "30d", "12h", "90m" or a Go duration.
func parseExpiry(s string) (time.Duration, error) {
	if strings.HasSuffix(s, "d") {
		n, err := strconv.Atoi(strings.TrimSuffix(s, "d"))
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("invalid expiry %q: use e.g. 30d, 12h", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("invalid expiry %q: use e.g. 30d, 12h", s)
	}
	return d, nil
}

// mintKey creates a key for an account and returns its plaintext.
func mintKey(ctx context.Context, st store.Store, accountID string, scopes []string, ttl time.Duration) (string, store.APIKey, error) {
	key, hash, prefix, err := auth.NewKey()
	if err != nil {
		return "", store.APIKey{}, err
	}
	now := time.Now().UTC()
	k := store.APIKey{ID: newID("key_"), AccountID: accountID, Prefix: prefix, Hash: hash, Scopes: scopes, CreatedAt: now}
	if ttl > 0 {
		exp := now.Add(ttl)
		k.ExpiresAt = &exp
	}
	return key, k, st.CreateKey(ctx, k)
}

func keyCreate(args []string) error {
	fs := flag.NewFlagSet("key create", flag.ContinueOnError)
	var sf storeFlags
	sf.register(fs)
	account := fs.String("account", "", "account name")
	scopes := fs.String("scopes", "sandboxes:write", "comma-separated: sandboxes:read, sandboxes:write")
	expires := fs.String("expires", "", "lifetime, e.g. 30d or 12h (default: never)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *account == "" {
		return errors.New("usage: orkestrd admin key create --account NAME --scopes sandboxes:write [--expires 30d]")
	}
	var list []string
	for _, s := range strings.Split(*scopes, ",") {
		s = strings.TrimSpace(s)
		if !auth.ValidScope(s) {
			return fmt.Errorf("unknown scope %q (sandboxes:read, sandboxes:write)", s)
		}
		list = append(list, s)
	}
	var ttl time.Duration
	if *expires != "" {
		var err error
		if ttl, err = parseExpiry(*expires); err != nil {
			return err
		}
	}
	ctx := context.Background()
	st, a, err := sf.openAccount(ctx, *account)
	if err != nil {
		return err
	}
	defer st.Close()
	key, k, err := mintKey(ctx, st, a.ID, list, ttl)
	if err != nil {
		return err
	}
	exp := "never"
	if k.ExpiresAt != nil {
		exp = k.ExpiresAt.Format(time.RFC3339)
	}
	fmt.Printf("created key %s for account %s (scopes %s, expires %s); it is shown only now:\n", k.Prefix, a.Name, strings.Join(list, ","), exp)
	fmt.Println(key)
	return nil
}

func keyList(args []string) error {
	return accountTable("key list", args, "PREFIX\tID\tSCOPES\tCREATED\tEXPIRES\tLAST USED\tSTATE",
		func(ctx context.Context, st store.Store, a store.Account, row func(...string)) error {
			keys, err := st.ListKeys(ctx, a.ID)
			if err != nil {
				return err
			}
			for _, k := range keys {
				state := "active"
				switch {
				case k.RevokedAt != nil:
					state = "revoked"
				case k.ExpiresAt != nil && time.Now().After(*k.ExpiresAt):
					state = "expired"
				}
				row(k.Prefix, k.ID, strings.Join(k.Scopes, ","), k.CreatedAt.Format(time.RFC3339),
					fmtOpt(k.ExpiresAt), fmtOpt(k.LastUsedAt), state)
			}
			return nil
		})
}

// accountTable runs a listing command of one account (`--account NAME`
// plus the store flags): fill calls row once per line of the table printed
// under header.
func accountTable(name string, args []string, header string,
	fill func(ctx context.Context, st store.Store, a store.Account, row func(...string)) error) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var sf storeFlags
	sf.register(fs)
	account := fs.String("account", "", "account name")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	ctx := context.Background()
	st, a, err := sf.openAccount(ctx, *account)
	if err != nil {
		return err
	}
	defer st.Close()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	if err := fill(ctx, st, a, func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }); err != nil {
		return err
	}
	return tw.Flush()
}

func fmtOpt(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339)
}

func keyRevoke(args []string) error {
	fs := flag.NewFlagSet("key revoke", flag.ContinueOnError)
	var sf storeFlags
	sf.register(fs)
	account := fs.String("account", "", "account name")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *account == "" {
		return errors.New("usage: orkestrd admin key revoke --account NAME KEY_ID_OR_PREFIX")
	}
	ctx := context.Background()
	st, a, err := sf.openAccount(ctx, *account)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.RevokeKey(ctx, a.ID, pos[0], time.Now().UTC()); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("account %s has no key %q", a.Name, pos[0])
		}
		return err
	}
	fmt.Printf("revoked key %s of account %s\n", pos[0], a.Name)
	return nil
}
