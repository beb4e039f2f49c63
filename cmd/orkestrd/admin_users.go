package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/console"
	"github.com/orkestr-eu/orkestr/internal/store"
)

func consoleURLFlag(fs *flag.FlagSet) *string {
	return fs.String("url", envOr("ORKESTR_CONSOLE_URL", "http://"+envOr("ORKESTR_LISTEN", "127.0.0.1:7777")),
		"public URL of orkestrd, the start of the printed link (env ORKESTR_CONSOLE_URL)")
}

func userCreate(args []string) error {
	fs := flag.NewFlagSet("user create", flag.ContinueOnError)
	var sf storeFlags
	sf.register(fs)
	account := fs.String("account", "", "account name")
	email := fs.String("email", "", "the member's email (their sign-in name)")
	base := consoleURLFlag(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *account == "" || *email == "" {
		return errors.New("usage: orkestrd admin user create --account NAME --email EMAIL [--url https://orkestr.example.com]")
	}
	ctx := context.Background()
	st, a, err := sf.openAccount(ctx, *account)
	if err != nil {
		return err
	}
	defer st.Close()
	m, path, err := console.CreateMember(ctx, st, a.ID, *email, "setup", time.Now())
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("a member with email %q already exists; `orkestrd admin user link --email %s` makes a new setup link", strings.ToLower(*email), strings.ToLower(*email))
	}
	if err != nil {
		return err
	}
	fmt.Printf("created member %s of account %s; the password-setup link works once, for %s, and is shown only now:\n", m.Email, a.Name, console.SetupLinkTTL)
	fmt.Println(strings.TrimRight(*base, "/") + path)
	return nil
}

func userLink(args []string) error {
	fs := flag.NewFlagSet("user link", flag.ContinueOnError)
	var sf storeFlags
	sf.register(fs)
	email := fs.String("email", "", "the member's email")
	base := consoleURLFlag(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *email == "" {
		return errors.New("usage: orkestrd admin user link --email EMAIL [--url URL]")
	}
	ctx := context.Background()
	st, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	m, err := st.MemberByEmail(ctx, strings.ToLower(strings.TrimSpace(*email)))
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no member with email %q (create one with `orkestrd admin user create`)", *email)
	}
	if err != nil {
		return err
	}
	path, err := console.NewLink(ctx, st, m.ID, "setup", time.Now(), console.SetupLinkTTL)
	if err != nil {
		return err
	}
	fmt.Printf("password-setup link for %s (works once, for %s; the old password keeps working until it is used):\n", m.Email, console.SetupLinkTTL)
	fmt.Println(strings.TrimRight(*base, "/") + path)
	return nil
}

func userList(args []string) error {
	return accountTable("user ls", args, "EMAIL\tID\tCREATED\tLAST SIGN-IN\tSTATE",
		func(ctx context.Context, st store.Store, a store.Account, row func(...string)) error {
			ms, err := st.ListMembers(ctx, a.ID)
			if err != nil {
				return err
			}
			for _, m := range ms {
				state := "active"
				switch {
				case m.PasswordHash == "":
					state = "invited"
				case m.LockedUntil != nil && time.Now().Before(*m.LockedUntil):
					state = "locked"
				}
				row(m.Email, m.ID, m.CreatedAt.Format(time.RFC3339), fmtOpt(m.LastLoginAt), state)
			}
			return nil
		})
}
