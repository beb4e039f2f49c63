package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
)

const memberCols = "id, account_id, email, password_hash, failed_logins, locked_until, last_login_at, created_at"

func scanMember(sc interface{ Scan(...any) error }) (store.Member, error) {
	var m store.Member
	var locked, last sql.NullInt64
	var created int64
	if err := sc.Scan(&m.ID, &m.AccountID, &m.Email, &m.PasswordHash, &m.FailedLogins, &locked, &last, &created); err != nil {
		return store.Member{}, err
	}
	m.LockedUntil, m.LastLoginAt, m.CreatedAt = fromNullMS(locked), fromNullMS(last), fromMS(created)
	return m, nil
}

// CreateMember inserts m; a taken email is store.ErrConflict, an unknown
// account store.ErrNotFound.
func (s *Store) CreateMember(ctx context.Context, m store.Member) error {
	if m.CreatedAt.IsZero() {
		m.CreatedAt = s.now()
	}
	_, err := s.write(ctx, "INSERT INTO members ("+memberCols+") VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
		m.ID, m.AccountID, m.Email, m.PasswordHash, m.FailedLogins, toNullMS(m.LockedUntil), toNullMS(m.LastLoginAt), toMS(m.CreatedAt))
	switch {
	case isUnique(err):
		return fmt.Errorf("member %q: %w", m.Email, store.ErrConflict)
	case isForeignKey(err):
		return fmt.Errorf("account %q: %w", m.AccountID, store.ErrNotFound)
	}
	return err
}

func (s *Store) memberWhere(ctx context.Context, q querier, cond string, arg any) (store.Member, error) {
	m, err := scanMember(s.queryRow(ctx, q, "SELECT "+memberCols+" FROM members WHERE "+cond, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Member{}, fmt.Errorf("member: %w", store.ErrNotFound)
	}
	return m, err
}

// MemberByID returns the member; store.ErrNotFound if there is none.
func (s *Store) MemberByID(ctx context.Context, id string) (store.Member, error) {
	return s.memberWhere(ctx, s.db, "id = ?", id)
}

// MemberByEmail returns the member with this (lower-case) email.
func (s *Store) MemberByEmail(ctx context.Context, email string) (store.Member, error) {
	return s.memberWhere(ctx, s.db, "email = ?", email)
}

// ListMembers returns the account's members, oldest first.
func (s *Store) ListMembers(ctx context.Context, accountID string) ([]store.Member, error) {
	rows, err := s.query(ctx, s.db, "SELECT "+memberCols+" FROM members WHERE account_id = ? ORDER BY created_at, id", accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Member
	for rows.Next() {
		m, err := scanMember(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// SetMemberPassword sets the password hash, clears failures and lockout
// and ends the member's sessions, in one transaction.
func (s *Store) SetMemberPassword(ctx context.Context, id, hash string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := s.exec(ctx, tx, "UPDATE members SET password_hash = ?, failed_logins = 0, locked_until = NULL WHERE id = ?", hash, id)
		if err != nil {
			return err
		}
		if err := affectedOrNotFound(res, "member %q", id); err != nil {
			return err
		}
		_, err = s.exec(ctx, tx, "DELETE FROM console_sessions WHERE member_id = ?", id)
		return err
	})
}

// RecordLoginFailure counts a failed sign-in; see store.MemberStore.
func (s *Store) RecordLoginFailure(ctx context.Context, id string, at time.Time, maxFailures int, lockFor time.Duration) (store.Member, error) {
	var m store.Member
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		// The account row lock serialises concurrent failures on
		// PostgreSQL (SQLite's BEGIN IMMEDIATE already does).
		if m, err = s.memberWhere(ctx, tx, "id = ?"+s.d.lockAccount, id); err != nil {
			return err
		}
		m.FailedLogins++
		if maxFailures > 0 && m.FailedLogins >= maxFailures {
			until := truncMS(at.Add(lockFor))
			m.LockedUntil, m.FailedLogins = &until, 0
		}
		_, err = s.exec(ctx, tx, "UPDATE members SET failed_logins = ?, locked_until = ? WHERE id = ?", m.FailedLogins, toNullMS(m.LockedUntil), id)
		return err
	})
	return m, err
}

// RecordLoginSuccess clears the failures and records the sign-in time.
func (s *Store) RecordLoginSuccess(ctx context.Context, id string, at time.Time) error {
	res, err := s.write(ctx, "UPDATE members SET failed_logins = 0, locked_until = NULL, last_login_at = ? WHERE id = ?", toMS(at), id)
	if err != nil {
		return err
	}
	return affectedOrNotFound(res, "member %q", id)
}

const sessionCols = "hash, member_id, account_id, csrf_token, created_at, expires_at"

// CreateSession inserts a session and, in the same transaction, removes
// the member's expired ones, so sessions do not pile up.
func (s *Store) CreateSession(ctx context.Context, se store.Session) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := s.exec(ctx, tx, "DELETE FROM console_sessions WHERE member_id = ? AND expires_at <= ?", se.MemberID, toMS(se.CreatedAt)); err != nil {
			return err
		}
		_, err := s.exec(ctx, tx, "INSERT INTO console_sessions ("+sessionCols+") VALUES (?, ?, ?, ?, ?, ?)",
			se.Hash, se.MemberID, se.AccountID, se.CSRFToken, toMS(se.CreatedAt), toMS(se.ExpiresAt))
		return err
	})
	switch {
	case isUnique(err):
		return fmt.Errorf("session: %w", store.ErrConflict)
	case isForeignKey(err):
		return fmt.Errorf("session member: %w", store.ErrNotFound)
	}
	return err
}

// SessionByHash returns the session with this hash.
func (s *Store) SessionByHash(ctx context.Context, hash string) (store.Session, error) {
	var se store.Session
	var created, expires int64
	err := s.queryRow(ctx, s.db, "SELECT "+sessionCols+" FROM console_sessions WHERE hash = ?", hash).
		Scan(&se.Hash, &se.MemberID, &se.AccountID, &se.CSRFToken, &created, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Session{}, fmt.Errorf("session: %w", store.ErrNotFound)
	}
	se.CreatedAt, se.ExpiresAt = fromMS(created), fromMS(expires)
	return se, err
}

// DeleteSession ends a session.
func (s *Store) DeleteSession(ctx context.Context, hash string) error {
	_, err := s.write(ctx, "DELETE FROM console_sessions WHERE hash = ?", hash)
	return err
}

const linkCols = "hash, member_id, purpose, created_at, expires_at, used_at"

// CreateMemberLink inserts a one-time link.
func (s *Store) CreateMemberLink(ctx context.Context, l store.MemberLink) error {
	_, err := s.write(ctx, "INSERT INTO member_links ("+linkCols+") VALUES (?, ?, ?, ?, ?, ?)",
		l.Hash, l.MemberID, l.Purpose, toMS(l.CreatedAt), toMS(l.ExpiresAt), toNullMS(l.UsedAt))
	switch {
	case isUnique(err):
		return fmt.Errorf("link: %w", store.ErrConflict)
	case isForeignKey(err):
		return fmt.Errorf("link member: %w", store.ErrNotFound)
	}
	return err
}

func (s *Store) linkByHash(ctx context.Context, q querier, hash string) (store.MemberLink, error) {
	var l store.MemberLink
	var created, expires int64
	var used sql.NullInt64
	err := s.queryRow(ctx, q, "SELECT "+linkCols+" FROM member_links WHERE hash = ?", hash).
		Scan(&l.Hash, &l.MemberID, &l.Purpose, &created, &expires, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return store.MemberLink{}, fmt.Errorf("link: %w", store.ErrNotFound)
	}
	l.CreatedAt, l.ExpiresAt, l.UsedAt = fromMS(created), fromMS(expires), fromNullMS(used)
	return l, err
}

// MemberLinkByHash returns the link as stored.
func (s *Store) MemberLinkByHash(ctx context.Context, hash string) (store.MemberLink, error) {
	return s.linkByHash(ctx, s.db, hash)
}

// UseMemberLink consumes an unused, unexpired link; see store.MemberStore.
func (s *Store) UseMemberLink(ctx context.Context, hash string, at time.Time) (store.MemberLink, error) {
	var l store.MemberLink
	err := s.tx(ctx, func(tx *sql.Tx) error {
		// The conditional UPDATE is the claim: of two concurrent uses only
		// one changes the row.
		res, err := s.exec(ctx, tx, "UPDATE member_links SET used_at = ? WHERE hash = ? AND used_at IS NULL AND expires_at > ?", toMS(at), hash, toMS(at))
		if err != nil {
			return err
		}
		if err := affectedOrNotFound(res, "link"); err != nil {
			return err
		}
		l, err = s.linkByHash(ctx, tx, hash)
		return err
	})
	return l, err
}
