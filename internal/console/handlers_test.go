package console_test

import (
	"context"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/console"
	"github.com/orkestr-eu/orkestr/internal/store"
)

func TestSignInSessionAndSignOut(t *testing.T) {
	eachDB(t, func(t *testing.T, db string) {
		e := newEnv(t, db, envOpts{})
		a := e.account("acme", "pro")
		b := e.member(a, "Ada@Example.com")
		ck := b.cookie("orkestr_session")
		if ck == nil || len(ck.Value) != 43 {
			t.Fatalf("no session cookie after setup: %v", ck)
		}
		if p := b.get("/console/login"); !strings.Contains(p.body, "You are signed in as ada@example.com") {
			t.Fatalf("login page while signed in: %d", p.status)
		}
		fresh := e.browser()
		lp := fresh.get("/console/login")
		res := fresh.post("/console/login", url.Values{"csrf": {lp.csrf()}, "email": {"ada@example.com"}, "password": {password}})
		if res.url != "/console/sandboxes" || !strings.Contains(res.body, "ada@example.com") {
			t.Fatalf("sign-in: %d %s %s", res.status, res.url, res.body)
		}
		for _, h := range []string{"Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy"} {
			if res.header.Get(h) == "" {
				t.Errorf("page lacks %s", h)
			}
		}
		if csp := res.header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
			t.Errorf("CSP %q", csp)
		}
		raw := rawSignIn(t, e, "ada@example.com", password)
		if !strings.Contains(raw, "HttpOnly") || !strings.Contains(raw, "SameSite=Strict") || !strings.Contains(raw, "Path=/console/") {
			t.Errorf("session cookie %q lacks HttpOnly, SameSite=Strict or its path", raw)
		}
		// The other member's session, the first browser, still works.
		if p := b.get("/console/tokens"); p.status != 200 {
			t.Fatalf("tokens page: %d", p.status)
		}
		// Sign out ends the session on the server, not just the cookie.
		old := b.cookie("orkestr_session").Value
		if p := b.post("/console/logout", url.Values{"csrf": {b.csrf()}}); p.url != "/console/login" {
			t.Fatalf("logout went to %s", p.url)
		}
		replay := e.browser()
		u, _ := url.Parse(e.url + "/console/")
		replay.jar.SetCookies(u, []*http.Cookie{{Name: "orkestr_session", Value: old, Path: "/console/"}})
		if p := replay.get("/console/sandboxes"); p.url != "/console/login" {
			t.Fatalf("a signed-out session id still works: %s", p.url)
		}
		// Wrong password, unknown email: the same answer.
		w1 := e.browser().login("ada@example.com", "wrong password!!")
		w2 := e.browser().login("nobody@example.com", "wrong password!!")
		if w1.status != 401 || w2.status != 401 || !strings.Contains(w1.body, "email or password is wrong") || !strings.Contains(w2.body, "email or password is wrong") {
			t.Fatalf("wrong credentials: %d / %d", w1.status, w2.status)
		}
		// A used setup link does not work again.
		if _, err := e.store.MemberByEmail(context.Background(), "ada@example.com"); err != nil {
			t.Fatal(err)
		}
	})
}

// rawSignIn signs in without a cookie jar and returns the session's
// Set-Cookie header.
func rawSignIn(t *testing.T, e *env, email, pw string) string {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := c.Get(e.url + "/console/login")
	if err != nil {
		t.Fatal(err)
	}
	var pre *http.Cookie
	for _, ck := range res.Cookies() {
		if ck.Name == "orkestr_signin" {
			pre = ck
		}
	}
	res.Body.Close()
	if pre == nil {
		t.Fatal("login page set no pre-session cookie")
	}
	status, session := postWithPreSession(t, c, e.url+"/console/login", pre, url.Values{"email": {email}, "password": {pw}})
	if session == "" {
		t.Fatalf("sign-in %d set no session cookie", status)
	}
	return session
}

// postWithPreSession posts form with the pre-session cookie and its CSRF
// token, and returns the status and the Set-Cookie line of the session
// it started ("" if none).
func postWithPreSession(t *testing.T, c *http.Client, target string, pre *http.Cookie, form url.Values) (int, string) {
	t.Helper()
	form.Set("csrf", pre.Value)
	req, _ := http.NewRequest("POST", target, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(pre)
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	for _, v := range res.Header.Values("Set-Cookie") {
		if strings.HasPrefix(v, "orkestr_session=") {
			return res.StatusCode, v
		}
	}
	return res.StatusCode, ""
}

func TestSetupLinkIsOneTime(t *testing.T) {
	e := newEnv(t, "sqlite://"+t.TempDir()+"/o.db", envOpts{})
	a := e.account("acme", "pro")
	_, path, err := consoleCreate(e, a, "bob@example.com")
	if err != nil {
		t.Fatal(err)
	}
	b := e.browser()
	p := b.get(path)
	short := b.post(path, url.Values{"csrf": {p.csrf()}, "password": {"short"}, "confirm": {"short"}})
	if short.status != 400 || !strings.Contains(short.body, "at least 12") {
		t.Fatalf("short password: %d", short.status)
	}
	ok := b.post(path, url.Values{"csrf": {p.csrf()}, "password": {password}, "confirm": {password}})
	if ok.url != "/console/sandboxes" {
		t.Fatalf("setup: %d %s", ok.status, ok.url)
	}
	other := e.browser()
	if p := other.get(path); p.status != 404 {
		t.Fatalf("used link page: %d", p.status)
	}
	if p := other.post(path, url.Values{"csrf": {"x"}, "password": {"another password 1"}, "confirm": {"another password 1"}}); p.status != 404 {
		t.Fatalf("used link post: %d", p.status)
	}
	if p := other.get("/console/setup/" + strings.Repeat("A", 43)); p.status != 404 {
		t.Fatalf("unknown link: %d", p.status)
	}
}

func TestCSRFRefused(t *testing.T) {
	eachDB(t, func(t *testing.T, db string) {
		e := newEnv(t, db, envOpts{})
		a := e.account("acme", "pro")
		b := e.member(a, "ada@example.com")
		sb := e.sandbox(a, store.StatusPaused, nil)
		tok := b.csrf()
		keys := func() int {
			k, _ := e.store.ListKeys(context.Background(), a.ID)
			return len(k)
		}
		mint := url.Values{"scope": {"sandboxes:write"}}
		for _, c := range []struct {
			name   string
			form   url.Values
			header []string
		}{
			{"no token", mint, nil},
			{"wrong token", url.Values{"scope": {"sandboxes:write"}, "csrf": {strings.Repeat("x", 43)}}, nil},
			{"cross-site origin with the token", url.Values{"scope": {"sandboxes:write"}, "csrf": {tok}}, []string{"Origin", "https://evil.example"}},
			{"cross-site fetch with the token", url.Values{"scope": {"sandboxes:write"}, "csrf": {tok}}, []string{"Sec-Fetch-Site", "cross-site"}},
		} {
			if p := b.post("/console/tokens", c.form, c.header...); p.status != http.StatusForbidden {
				t.Errorf("mint, %s: %d, want 403", c.name, p.status)
			}
		}
		if n := keys(); n != 0 {
			t.Fatalf("%d keys minted without a valid CSRF token", n)
		}
		for _, action := range []string{"terminate", "resume"} {
			if p := b.post("/console/sandboxes/"+sb.ID+"/"+action, url.Values{}); p.status != http.StatusForbidden {
				t.Errorf("%s without token: %d", action, p.status)
			}
		}
		if got, _ := e.store.GetSandbox(context.Background(), a.ID, sb.ID); got.Status != store.StatusPaused {
			t.Fatalf("sandbox changed by a CSRF-less request: %s", got.Status)
		}
		if p := b.post("/console/members", url.Values{"email": {"eve@example.com"}}); p.status != http.StatusForbidden {
			t.Errorf("invite without token: %d", p.status)
		}
		if p := b.post("/console/logout", url.Values{}); p.status != http.StatusForbidden {
			t.Errorf("logout without token: %d", p.status)
		}
		// Sign-in needs its own form token (no login CSRF).
		fresh := e.browser()
		if p := fresh.post("/console/login", url.Values{"email": {"ada@example.com"}, "password": {password}}); p.status != http.StatusForbidden || fresh.cookie("orkestr_session") != nil {
			t.Errorf("sign-in without the form token: %d", p.status)
		}
		// With the token it all works.
		if p := b.post("/console/tokens", url.Values{"scope": {"sandboxes:write"}, "csrf": {tok}}); p.status != http.StatusCreated {
			t.Fatalf("mint with token: %d %s", p.status, p.body)
		}
	})
}

func TestHostileMetadataInert(t *testing.T) {
	eachDB(t, func(t *testing.T, db string) {
		e := newEnv(t, db, envOpts{})
		a := e.account("acme", "pro")
		b := e.member(a, "ada@example.com")
		evil := `<img src=x onerror=alert(1)>`
		sb := e.sandbox(a, store.StatusPaused, map[string]string{
			"note": evil, `<script>alert("k")</script>`: `"><svg onload=alert(2)>`, "js": `javascript:alert(3)`,
		})
		for _, path := range []string{"/console/sandboxes", "/console/sandboxes/" + sb.ID} {
			p := b.get(path)
			if p.status != 200 {
				t.Fatalf("%s: %d", path, p.status)
			}
			for _, raw := range []string{"<img", "<script>alert", "<svg onload", `href="javascript`} {
				if strings.Contains(p.body, raw) {
					t.Errorf("%s renders %q unescaped", path, raw)
				}
			}
			if !strings.Contains(p.body, "&lt;img src=x onerror=alert(1)&gt;") {
				t.Errorf("%s does not show the metadata as text", path)
			}
		}
		// The list's JSON (for the refresh) carries it as data, with a
		// JSON content type the browser will not render.
		p := b.get("/console/api/sandboxes")
		if ct := p.header.Get("Content-Type"); ct != "application/json" || !strings.Contains(p.body, `\u003cimg`) {
			t.Errorf("list JSON: %s %s", ct, p.body)
		}
	})
}

func TestSessionFixation(t *testing.T) {
	e := newEnv(t, "sqlite://"+t.TempDir()+"/o.db", envOpts{})
	a := e.account("acme", "pro")
	_ = e.member(a, "ada@example.com")
	_ = e.member(e.account("evil", "pro"), "eve@example.com")
	u, _ := url.Parse(e.url + "/console/")

	// An id the attacker chose and planted is never adopted.
	planted := strings.Repeat("A", 43)
	victim := e.browser()
	victim.jar.SetCookies(u, []*http.Cookie{{Name: "orkestr_session", Value: planted, Path: "/console/"}})
	if p := victim.login("ada@example.com", password); p.url != "/console/sandboxes" {
		t.Fatalf("sign-in: %s", p.url)
	}
	if got := victim.cookie("orkestr_session").Value; got == planted {
		t.Fatal("the planted session id was kept at sign-in")
	}
	attacker := e.browser()
	attacker.jar.SetCookies(u, []*http.Cookie{{Name: "orkestr_session", Value: planted, Path: "/console/"}})
	if p := attacker.get("/console/tokens"); p.url != "/console/login" {
		t.Fatal("the planted id authenticates")
	}

	// A real session of the attacker's planted in the victim's browser is
	// ended, not reused, when the victim signs in.
	eve := e.browser()
	eve.login("eve@example.com", password)
	eveID := eve.cookie("orkestr_session").Value
	victim2 := e.browser()
	victim2.jar.SetCookies(u, []*http.Cookie{{Name: "orkestr_session", Value: eveID, Path: "/console/"}})
	victim2.login("ada@example.com", password)
	if got := victim2.cookie("orkestr_session").Value; got == eveID {
		t.Fatal("sign-in kept the session id the browser came with")
	}
	if p := victim2.get("/console/tokens"); !strings.Contains(p.body, "ada@example.com") {
		t.Fatal("victim is not signed in as themselves")
	}
	if p := eve.get("/console/tokens"); p.url != "/console/login" {
		t.Fatal("the attacker's session, planted and replaced, still works")
	}
}

func TestBruteForceLockout(t *testing.T) {
	eachDB(t, func(t *testing.T, db string) {
		e := newEnv(t, db, envOpts{})
		a := e.account("acme", "pro")
		_ = e.member(a, "ada@example.com")
		for i := 1; i <= 4; i++ {
			if p := e.browser().login("ada@example.com", "guess number "+string(rune('0'+i))); p.status != 401 {
				t.Fatalf("guess %d: %d", i, p.status)
			}
		}
		if p := e.browser().login("ada@example.com", "guess number 5"); p.status != 429 || !strings.Contains(p.body, "locked until") {
			t.Fatalf("5th wrong password: %d %s", p.status, p.body)
		}
		// Locked: even the right password is refused.
		b := e.browser()
		if p := b.login("ada@example.com", password); p.status != 429 || b.cookie("orkestr_session") != nil {
			t.Fatalf("right password while locked: %d", p.status)
		}
		e.clock.Advance(16 * time.Minute)
		if p := b.login("ada@example.com", password); p.url != "/console/sandboxes" {
			t.Fatalf("after the lockout: %d %s", p.status, p.url)
		}
		if m, _ := e.store.MemberByEmail(context.Background(), "ada@example.com"); m.FailedLogins != 0 || m.LastLoginAt == nil {
			t.Fatalf("after a good sign-in: %+v", m)
		}
	})
}

func TestSignInRateLimitPerAddress(t *testing.T) {
	e := newEnv(t, "sqlite://"+t.TempDir()+"/o.db", envOpts{signInsPerMinute: 3})
	for i := 0; i < 3; i++ {
		if p := e.browser().login("x"+string(rune('a'+i))+"@example.com", "wrong password!!"); p.status != 401 {
			t.Fatalf("attempt %d: %d", i, p.status)
		}
	}
	p := e.browser().login("y@example.com", "wrong password!!")
	if p.status != 429 || p.header.Get("Retry-After") == "" {
		t.Fatalf("4th attempt in a minute: %d", p.status)
	}
	e.clock.Advance(61 * time.Second)
	if p := e.browser().login("y@example.com", "wrong password!!"); p.status != 401 {
		t.Fatalf("after a minute: %d", p.status)
	}
}

func TestOtherAccountsSandboxesRefused(t *testing.T) {
	eachDB(t, func(t *testing.T, db string) {
		e := newEnv(t, db, envOpts{})
		a, other := e.account("acme", "pro"), e.account("other", "pro")
		b := e.member(a, "ada@example.com")
		theirs := e.sandbox(other, store.StatusPaused, map[string]string{"secret": "theirs"})
		mine := e.sandbox(a, store.StatusPaused, nil)
		tok := b.csrf()
		if p := b.get("/console/sandboxes/" + theirs.ID); p.status != 404 || strings.Contains(p.body, "theirs") {
			t.Fatalf("their sandbox page: %d", p.status)
		}
		if p := b.get("/console/api/sandboxes/" + theirs.ID + "/metrics"); p.status != 404 {
			t.Fatalf("their metrics: %d", p.status)
		}
		for _, action := range []string{"terminate", "resume", "pause"} {
			if p := b.post("/console/sandboxes/"+theirs.ID+"/"+action, url.Values{"csrf": {tok}}); p.status != 404 {
				t.Errorf("%s their sandbox: %d", action, p.status)
			}
		}
		if got, _ := e.store.GetSandbox(context.Background(), other.ID, theirs.ID); got.Status != store.StatusPaused {
			t.Fatalf("their sandbox was changed: %s", got.Status)
		}
		if p := b.get("/console/sandboxes"); strings.Contains(p.body, theirs.ID) || !strings.Contains(p.body, mine.ID) {
			t.Fatal("the list shows another account's sandbox or not our own")
		}
		for _, bad := range []string{"../v1/limits", "sbx_x", "%2e%2e%2fv1"} {
			if p := b.get("/console/sandboxes/" + bad); p.status != 404 {
				t.Errorf("id %q: %d", bad, p.status)
			}
		}
		// Their tokens cannot be revoked either.
		theirKey := store.APIKey{ID: "key_01JTHEIRS00000000000000000", AccountID: other.ID, Prefix: "ork_theirs00", Hash: strings.Repeat("a", 64), Scopes: []string{"sandboxes:read"}, CreatedAt: time.Now()}
		if err := e.store.CreateKey(context.Background(), theirKey); err != nil {
			t.Fatal(err)
		}
		if p := b.post("/console/tokens/"+theirKey.ID+"/revoke", url.Values{"csrf": {tok}}); p.status != 400 {
			t.Errorf("revoke their key: %d", p.status)
		}
		if k, _ := e.store.KeyByHash(context.Background(), theirKey.Hash); k.RevokedAt != nil {
			t.Fatal("another account's key was revoked")
		}
		// Our own paused sandbox terminates through the API's logic.
		if p := b.post("/console/sandboxes/"+mine.ID+"/terminate", url.Values{"csrf": {tok}}); p.status != 200 || !strings.Contains(p.body, "terminated") {
			t.Fatalf("terminate ours: %d", p.status)
		}
		if got, _ := e.store.GetSandbox(context.Background(), a.ID, mine.ID); got.Status != store.StatusTerminated {
			t.Fatalf("our sandbox: %s", got.Status)
		}
	})
}

var keyRE = regexp.MustCompile(`ork_[0-9A-Za-z]{43}`)

func TestTokensMintOnceAndRevoke(t *testing.T) {
	eachDB(t, func(t *testing.T, db string) {
		e := newEnv(t, db, envOpts{})
		a := e.account("acme", "pro")
		b := e.member(a, "ada@example.com")
		p := b.post("/console/tokens", url.Values{"csrf": {b.csrf()}, "scope": {"sandboxes:read"}, "expires_days": {"7"}})
		if p.status != http.StatusCreated || p.header.Get("Cache-Control") != "no-store" {
			t.Fatalf("mint: %d cache %q", p.status, p.header.Get("Cache-Control"))
		}
		key := keyRE.FindString(p.body)
		if key == "" {
			t.Fatal("the new token is not on the page")
		}
		if e.apiDo("GET", "/v1/sandboxes", key) != 200 {
			t.Fatal("the minted token does not work")
		}
		if code := e.apiDo("POST", "/v1/sandboxes", key); code != 403 {
			t.Fatalf("a read token creating: %d, want 403", code)
		}
		list := b.get("/console/tokens")
		if strings.Contains(list.body, key) || keyRE.MatchString(list.body) {
			t.Fatal("the token plaintext is shown again")
		}
		if !strings.Contains(list.body, key[:12]) || !strings.Contains(list.body, "sandboxes:read") {
			t.Fatal("the list lacks the token's prefix or scopes")
		}
		keys, _ := e.store.ListKeys(context.Background(), a.ID)
		if len(keys) != 1 || keys[0].ExpiresAt == nil || keys[0].ExpiresAt.Sub(time.Now()) < 6*24*time.Hour {
			t.Fatalf("stored key: %+v", keys)
		}
		for _, bad := range []url.Values{{"scope": {"admin"}}, {}, {"scope": {"sandboxes:read"}, "expires_days": {"-1"}}} {
			bad.Set("csrf", b.csrf())
			if p := b.post("/console/tokens", bad); p.status != 400 {
				t.Errorf("mint %v: %d", bad, p.status)
			}
		}
		p = b.post("/console/tokens/"+keys[0].ID+"/revoke", url.Values{"csrf": {b.csrf()}})
		if !strings.Contains(p.body, "revoked") {
			t.Fatalf("revoke: %d", p.status)
		}
		deadline := time.Now().Add(5 * time.Second)
		for e.apiDo("GET", "/v1/sandboxes", key) != 401 {
			if time.Now().After(deadline) {
				t.Fatal("the API still accepts a revoked token")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

func TestUsageAndMembersPages(t *testing.T) {
	eachDB(t, func(t *testing.T, db string) {
		e := newEnv(t, db, envOpts{})
		a := e.account("acme", "free")
		b := e.member(a, "ada@example.com")
		sb := e.sandbox(a, store.StatusTerminated, nil)
		hour := time.Now().UTC().Truncate(time.Hour)
		if err := e.store.AddUsage(context.Background(), []store.UsageDelta{{SandboxID: sb.ID, AccountID: a.ID, HourStart: hour,
			Usage: store.Usage{MemMBSeconds: 512 * 3600, CPUMS: 1800 * 1000, RunningSeconds: 3600}}}); err != nil {
			t.Fatal(err)
		}
		p := b.get("/console/usage")
		if p.status != 200 {
			t.Fatalf("usage: %d %s", p.status, p.body)
		}
		for _, want := range []string{"0.5000</span> of 10 GB-hours", "of 2 CPU-hours", hour.Format("2006-01-02") + "</td><td>0.5000</td><td>0.5000", "Plan <strong>free</strong>", "<rect"} {
			if !strings.Contains(p.body, want) {
				t.Errorf("usage page lacks %q", want)
			}
		}
		// Invitations: a one-time link for a new member, who then signs in
		// into the same account.
		m := b.post("/console/members", url.Values{"csrf": {b.csrf()}, "email": {"grace@example.com"}})
		link := regexp.MustCompile(`http://[^"]+/console/setup/[A-Za-z0-9_-]{43}`).FindString(m.body)
		if m.status != 201 || link == "" {
			t.Fatalf("invite: %d", m.status)
		}
		if p := b.post("/console/members", url.Values{"csrf": {b.csrf()}, "email": {"grace@example.com"}}); p.status != 409 {
			t.Errorf("second invite: %d", p.status)
		}
		if p := b.post("/console/members", url.Values{"csrf": {b.csrf()}, "email": {"<b>x</b>"}}); p.status != 400 || strings.Contains(p.body, "<b>x") {
			t.Errorf("bad invite: %d", p.status)
		}
		g := e.browser()
		path := link[strings.Index(link, "/console/"):]
		sp := g.get(path)
		if p := g.post(path, url.Values{"csrf": {sp.csrf()}, "password": {password}, "confirm": {password}}); !strings.Contains(p.body, "grace@example.com · acme") {
			t.Fatalf("invited member signed in: %d", p.status)
		}
	})
}

func consoleCreate(e *env, a store.Account, email string) (store.Member, string, error) {
	return consoleCreateMember(e, a, email)
}

func TestSecureCookieBehindTLS(t *testing.T) {
	e := newEnv(t, "sqlite://"+t.TempDir()+"/o.db", envOpts{publicURL: "https://orkestr.example.com"})
	a := e.account("acme", "pro")
	if _, _, err := consoleCreateMember(e, a, "ada@example.com"); err != nil {
		t.Fatal(err)
	}
	m, _ := e.store.MemberByEmail(context.Background(), "ada@example.com")
	path, err := console.NewLink(context.Background(), e.store, m.ID, "setup", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := c.Get(e.url + path)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	var pre *http.Cookie
	for _, ck := range res.Cookies() {
		pre = ck
	}
	if pre == nil || !pre.Secure {
		t.Fatalf("pre-session cookie not Secure: %v", pre)
	}
	if res.Header.Get("Strict-Transport-Security") == "" {
		t.Error("no HSTS with an https public URL")
	}
	status, session := postWithPreSession(t, c, e.url+path, pre, url.Values{"password": {password}, "confirm": {password}})
	if session == "" {
		t.Fatalf("setup %d set no session cookie", status)
	}
	if !strings.Contains(session, "; Secure") || !strings.Contains(session, "HttpOnly") || !strings.Contains(session, "SameSite=Strict") {
		t.Errorf("session cookie %q", session)
	}
}

func TestHostileNamesInert(t *testing.T) {
	e := newEnv(t, "sqlite://"+t.TempDir()+"/o.db", envOpts{})
	a := e.account("acme", "pro")
	b := e.member(a, "ada@example.com")
	// An email field echoed back after a failed sign-in.
	p := e.browser().login(`"><script>alert(1)</script>`, "wrong password!!")
	if strings.Contains(p.body, "<script>alert") || !strings.Contains(p.body, "&lt;script&gt;") {
		t.Fatalf("sign-in echo: %s", p.body)
	}
	// Invitations: addresses that carry markup are refused or shown as text.
	for _, email := range []string{`"<img src=x onerror=alert(1)>"@example.com`, `<img src=x>@example.com`, "a@b.c\"><svg onload=alert(1)>"} {
		p := b.post("/console/members", url.Values{"csrf": {b.csrf()}, "email": {email}})
		if strings.Contains(p.body, "<img src") || strings.Contains(p.body, "<svg onload") {
			t.Errorf("invite %q rendered markup (status %d)", email, p.status)
		}
	}
	if p := b.get("/console/members"); strings.Contains(p.body, "<img src") {
		t.Error("members page renders markup")
	}
}

func TestSessionExpires(t *testing.T) {
	e := newEnv(t, "sqlite://"+t.TempDir()+"/o.db", envOpts{})
	b := e.member(e.account("acme", "pro"), "ada@example.com")
	if p := b.get("/console/usage"); p.status != 200 {
		t.Fatalf("usage: %d", p.status)
	}
	e.clock.Advance(12*time.Hour + time.Minute)
	if p := b.get("/console/usage"); p.url != "/console/login" {
		t.Fatalf("a 12 h old session still works: %s", p.url)
	}
	if p := b.get("/console/api/sandboxes"); p.status != 401 {
		t.Fatalf("JSON after expiry: %d", p.status)
	}
}

// TestNodesForOperatorsOnly: the usage page lists the nodes (id, region,
// address, state, slots, memory, last heartbeat) to the members of the
// operator's accounts, and to no one else; what a node reports is shown
// as text.
func TestNodesForOperatorsOnly(t *testing.T) {
	const evil = `<img src=x onerror=alert(1)>`
	e := newEnv(t, "sqlite://"+filepath.Join(t.TempDir(), "orkestr.db"), envOpts{operators: []string{"ops"}, nodeID: evil})
	ops := e.member(e.account("ops", "team"), "ops@example.com")
	customer := e.member(e.account("customer", "team"), "ada@example.com")

	p := ops.get("/console/usage")
	if p.status != 200 {
		t.Fatalf("usage: %d %s", p.status, p.body)
	}
	for _, want := range []string{`<table id="nodes">`, "&lt;img src=x onerror=alert(1)&gt;", "<td>fsn1</td><td>in process</td>",
		`<td class="state">alive</td>`, "<td>0 / 7</td>", " MB</td>", " s ago)"} {
		if !strings.Contains(p.body, want) {
			t.Errorf("the operator's usage page lacks %q", want)
		}
	}
	if strings.Contains(p.body, evil) {
		t.Error("a node's id reached the page as markup")
	}
	p = customer.get("/console/usage")
	if p.status != 200 {
		t.Fatalf("usage: %d %s", p.status, p.body)
	}
	if strings.Contains(p.body, `id="nodes"`) || strings.Contains(p.body, "onerror") || strings.Contains(p.body, "in process") {
		t.Error("a customer's usage page shows the nodes")
	}
	if !strings.Contains(p.body, `<table id="regions">`) {
		t.Error("a customer's usage page lacks the regions")
	}
}
