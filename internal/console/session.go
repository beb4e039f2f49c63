package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// Cookie names. The session cookie holds a random 256-bit value; the
// store keeps only its SHA-256. The sign-in cookie carries the CSRF token
// of the forms shown before there is a session (sign-in, password setup).
const (
	sessionCookie = "orkestr_session"
	preCookie     = "orkestr_signin"
)

// session is a signed-in member's request state.
type session struct {
	store.Session
	member  store.Member
	account store.Account
}

func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func tokenHash(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

func (c *Console) cookie(r *http.Request, name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/console/", MaxAge: maxAge, HttpOnly: true,
		Secure: c.secure || r.TLS != nil, SameSite: http.SameSiteStrictMode}
}

// current returns the request's session, or errNoSession.
func (c *Console) current(r *http.Request) (*session, error) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil || len(ck.Value) != 43 {
		return nil, errNoSession
	}
	se, err := c.o.Store.SessionByHash(r.Context(), tokenHash(ck.Value))
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNoSession
	}
	if err != nil {
		return nil, err
	}
	if !c.o.Now().Before(se.ExpiresAt) {
		_ = c.o.Store.DeleteSession(r.Context(), se.Hash)
		return nil, errNoSession
	}
	m, err := c.o.Store.MemberByID(r.Context(), se.MemberID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNoSession
	}
	if err != nil {
		return nil, err
	}
	a, err := c.o.Store.AccountByID(r.Context(), m.AccountID)
	if err != nil {
		return nil, err
	}
	return &session{Session: se, member: m, account: a}, nil
}

// member wraps h: it needs a signed-in member and, for every state
// change, the session's CSRF token.
func (c *Console) member(h func(w http.ResponseWriter, r *http.Request, s *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, err := c.current(r)
		if errors.Is(err, errNoSession) {
			if strings.HasPrefix(r.URL.Path, "/console/api/") {
				writeJSONError(w, http.StatusUnauthorized, "unauthenticated", "Your console session ended; sign in again.")
				return
			}
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/console/login", http.StatusSeeOther)
				return
			}
			c.render(w, r, http.StatusUnauthorized, "error", nil, pageData{Title: "Signed out", Error: "Your session ended; sign in again."})
			return
		}
		if err != nil {
			c.internalError(w, r, nil, "loading the session", err)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			tok := r.PostFormValue("csrf")
			if tok == "" {
				tok = r.Header.Get("X-CSRF-Token")
			}
			if subtle.ConstantTimeCompare([]byte(tok), []byte(s.CSRFToken)) != 1 {
				c.render(w, r, http.StatusForbidden, "error", s, pageData{Title: "Refused", Error: "This form was missing its security token or it was stale; reload the page and try again."})
				return
			}
		}
		h(w, r.WithContext(withSession(r.Context(), s)), s)
	}
}

// preToken returns the pre-session CSRF token, setting its cookie when
// the browser has none.
func (c *Console) preToken(w http.ResponseWriter, r *http.Request) string {
	if ck, err := r.Cookie(preCookie); err == nil && len(ck.Value) == 43 {
		return ck.Value
	}
	tok := randomToken()
	http.SetCookie(w, c.cookie(r, preCookie, tok, 3600))
	return tok
}

// checkPreToken is the double-submit check of the sign-in and setup
// forms: the form's token must equal the cookie's.
func checkPreToken(r *http.Request) bool {
	ck, err := r.Cookie(preCookie)
	if err != nil || len(ck.Value) != 43 {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(ck.Value)) == 1
}

// startSession signs the member in with a new session id. Whatever
// session cookie the browser brought is ended, never adopted: an id an
// attacker planted before sign-in is worth nothing after it.
func (c *Console) startSession(w http.ResponseWriter, r *http.Request, m store.Member) error {
	if ck, err := r.Cookie(sessionCookie); err == nil {
		_ = c.o.Store.DeleteSession(r.Context(), tokenHash(ck.Value))
	}
	tok := randomToken()
	now := c.o.Now().UTC()
	se := store.Session{Hash: tokenHash(tok), MemberID: m.ID, AccountID: m.AccountID, CSRFToken: randomToken(),
		CreatedAt: now, ExpiresAt: now.Add(c.o.SessionTTL)}
	if err := c.o.Store.CreateSession(r.Context(), se); err != nil {
		return err
	}
	if err := c.o.Store.RecordLoginSuccess(r.Context(), m.ID, now); err != nil {
		return err
	}
	http.SetCookie(w, c.cookie(r, sessionCookie, tok, int(c.o.SessionTTL/time.Second)))
	http.SetCookie(w, c.cookie(r, preCookie, "", -1))
	return nil
}

type loginData struct {
	Email string
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	// A browser that is signed in still gets the form: signing in again
	// replaces the session, whoever's it was.
	notice := ""
	if s, err := c.current(r); err == nil && s != nil {
		notice = "You are signed in as " + s.member.Email + "; signing in again replaces that session."
	}
	c.render(w, r, http.StatusOK, "login", nil, pageData{Title: "Sign in", CSRF: c.preToken(w, r), Notice: notice, Data: loginData{}})
}

const wrongCredentials = "The email or password is wrong."

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	email := normalizeEmail(r.PostFormValue("email"))
	fail := func(status int, msg string) {
		c.render(w, r, status, "login", nil, pageData{Title: "Sign in", CSRF: c.preToken(w, r), Error: msg, Data: loginData{Email: email}})
	}
	if !checkPreToken(r) {
		fail(http.StatusForbidden, "The sign-in form was stale; try again.")
		return
	}
	if ok, wait := c.limiter.allow(clientAddr(r)); !ok {
		w.Header().Set("Retry-After", fmt.Sprint(int(wait.Seconds())+1))
		fail(http.StatusTooManyRequests, fmt.Sprintf("Too many sign-in attempts from your address; wait %d seconds.", int(wait.Seconds())+1))
		return
	}
	password := r.PostFormValue("password")
	if len(password) > maxPasswordLen {
		fail(http.StatusUnauthorized, wrongCredentials)
		return
	}
	m, err := c.o.Store.MemberByEmail(r.Context(), email)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		c.internalError(w, r, nil, "looking up a member", err)
		return
	}
	now := c.o.Now()
	hash := m.PasswordHash
	if err != nil || hash == "" {
		hash = dummyHash
	}
	// The hash is always computed, so the answer takes as long for an
	// unknown email or a locked member as for a wrong password.
	ok, herr := checkPassword(hash, password)
	if herr != nil {
		c.log.Error("console: a member's stored password hash is malformed", "member", m.ID)
	}
	switch {
	case err != nil || m.PasswordHash == "":
		fail(http.StatusUnauthorized, wrongCredentials)
		return
	case m.LockedUntil != nil && now.Before(*m.LockedUntil):
		fail(http.StatusTooManyRequests, lockedMessage(*m.LockedUntil))
		return
	case !ok:
		m, err = c.o.Store.RecordLoginFailure(r.Context(), m.ID, now, c.o.MaxFailures, c.o.LockFor)
		if err != nil {
			c.internalError(w, r, nil, "recording a failed sign-in", err)
			return
		}
		if m.LockedUntil != nil && now.Before(*m.LockedUntil) {
			c.log.Warn("console: member locked after repeated failed sign-ins", "member", m.ID, "until", *m.LockedUntil)
			fail(http.StatusTooManyRequests, lockedMessage(*m.LockedUntil))
			return
		}
		fail(http.StatusUnauthorized, wrongCredentials)
		return
	}
	if err := c.startSession(w, r, m); err != nil {
		c.internalError(w, r, nil, "starting a session", err)
		return
	}
	c.log.Info("console sign-in", "member", m.ID, "account", m.AccountID)
	http.Redirect(w, r, "/console/sandboxes", http.StatusSeeOther)
}

func lockedMessage(until time.Time) string {
	return "Too many wrong passwords: sign-in for this member is locked until " + until.UTC().Format("15:04 UTC") + ". Wait, or ask the operator to send a new setup link."
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	_ = c.o.Store.DeleteSession(r.Context(), s.Hash)
	http.SetCookie(w, c.cookie(r, sessionCookie, "", -1))
	http.Redirect(w, r, "/console/login", http.StatusSeeOther)
}

func normalizeEmail(e string) string { return strings.ToLower(strings.TrimSpace(e)) }

// ValidEmail reports whether e is a plain address (no display name), at
// most 254 characters.
func ValidEmail(e string) error {
	a, err := mail.ParseAddress(e)
	if err != nil || a.Address != e || len(e) > 254 || a.Name != "" {
		return fmt.Errorf("%q is not an email address like ada@example.com", e)
	}
	return nil
}

// Link lifetimes.
const (
	SetupLinkTTL  = 24 * time.Hour
	InviteLinkTTL = 7 * 24 * time.Hour
)

// CreateMember adds a member without a password to the account and
// returns the path of a one-time link (/console/setup/TOKEN) on which
// they choose one. purpose is "setup" or "invite".
func CreateMember(ctx context.Context, st store.Store, accountID, email, purpose string, now time.Time) (store.Member, string, error) {
	email = normalizeEmail(email)
	if err := ValidEmail(email); err != nil {
		return store.Member{}, "", err
	}
	ttl := SetupLinkTTL
	if purpose == "invite" {
		ttl = InviteLinkTTL
	}
	m := store.Member{ID: "mem_" + ulid.Make().String(), AccountID: accountID, Email: email, CreatedAt: now.UTC()}
	if err := st.CreateMember(ctx, m); err != nil {
		return m, "", err
	}
	path, err := NewLink(ctx, st, m.ID, purpose, now, ttl)
	return m, path, err
}

// NewLink makes a one-time password link for an existing member (a
// forgotten password, a lockout) and returns its path.
func NewLink(ctx context.Context, st store.Store, memberID, purpose string, now time.Time, ttl time.Duration) (string, error) {
	tok := randomToken()
	l := store.MemberLink{Hash: tokenHash(tok), MemberID: memberID, Purpose: purpose, CreatedAt: now.UTC(), ExpiresAt: now.UTC().Add(ttl)}
	if err := st.CreateMemberLink(ctx, l); err != nil {
		return "", err
	}
	return "/console/setup/" + tok, nil
}

type setupData struct {
	Email   string
	Purpose string
}

// link finds the member a still-valid link is for.
func (c *Console) link(r *http.Request) (store.MemberLink, store.Member, bool) {
	tok := r.PathValue("token")
	if len(tok) != 43 {
		return store.MemberLink{}, store.Member{}, false
	}
	l, err := c.o.Store.MemberLinkByHash(r.Context(), tokenHash(tok))
	if err != nil || l.UsedAt != nil || !c.o.Now().Before(l.ExpiresAt) {
		return l, store.Member{}, false
	}
	m, err := c.o.Store.MemberByID(r.Context(), l.MemberID)
	return l, m, err == nil
}

const badLink = "This link is unknown, used or expired. Ask a member of your account (or the operator) for a new one."

func (c *Console) setupPage(w http.ResponseWriter, r *http.Request) {
	l, m, ok := c.link(r)
	if !ok {
		c.render(w, r, http.StatusNotFound, "error", nil, pageData{Title: "Link not valid", Error: badLink})
		return
	}
	c.render(w, r, http.StatusOK, "setup", nil, pageData{Title: "Choose a password", CSRF: c.preToken(w, r), Data: setupData{Email: m.Email, Purpose: l.Purpose}})
}

func (c *Console) setup(w http.ResponseWriter, r *http.Request) {
	l, m, ok := c.link(r)
	if !ok {
		c.render(w, r, http.StatusNotFound, "error", nil, pageData{Title: "Link not valid", Error: badLink})
		return
	}
	again := func(status int, msg string) {
		c.render(w, r, status, "setup", nil, pageData{Title: "Choose a password", CSRF: c.preToken(w, r), Error: msg, Data: setupData{Email: m.Email, Purpose: l.Purpose}})
	}
	if !checkPreToken(r) {
		again(http.StatusForbidden, "The form was stale; try again.")
		return
	}
	pw := r.PostFormValue("password")
	if err := checkPasswordPolicy(pw); err != nil {
		again(http.StatusBadRequest, err.Error())
		return
	}
	if pw != r.PostFormValue("confirm") {
		again(http.StatusBadRequest, "The two passwords differ.")
		return
	}
	hash, err := hashPassword(pw)
	if err != nil {
		c.internalError(w, r, nil, "hashing a password", err)
		return
	}
	// Consuming the link is the atomic step: of two submissions only one
	// sets the password.
	if _, err := c.o.Store.UseMemberLink(r.Context(), l.Hash, c.o.Now()); err != nil {
		c.render(w, r, http.StatusNotFound, "error", nil, pageData{Title: "Link not valid", Error: badLink})
		return
	}
	if err := c.o.Store.SetMemberPassword(r.Context(), m.ID, hash); err != nil {
		c.internalError(w, r, nil, "setting a password", err)
		return
	}
	if err := c.startSession(w, r, m); err != nil {
		c.internalError(w, r, nil, "starting a session", err)
		return
	}
	c.log.Info("console: member set a password", "member", m.ID, "account", m.AccountID, "purpose", l.Purpose)
	http.Redirect(w, r, "/console/sandboxes", http.StatusSeeOther)
}
