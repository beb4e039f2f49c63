package store

import (
	"context"
	"time"
)

// Member is a person who signs in to the console for an account.
type Member struct {
	ID           string // "mem_" + ULID
	AccountID    string
	Email        string // lower case; unique across accounts
	PasswordHash string // argon2id, PHC form; empty until the member sets one
	FailedLogins int    // consecutive failed sign-ins since the last success
	LockedUntil  *time.Time
	LastLoginAt  *time.Time
	CreatedAt    time.Time
}

// Session is a signed-in console session, stored by the hash of its
// cookie value.
type Session struct {
	Hash      string // hex SHA-256 of the cookie value
	MemberID  string
	AccountID string
	CSRFToken string // sent back with every state change
	CreatedAt time.Time
	ExpiresAt time.Time
}

// MemberLink is a one-time link that lets a member set a password
// (password setup after `orkestrd admin user create`, an invitation).
type MemberLink struct {
	Hash      string // hex SHA-256 of the token in the link
	MemberID  string
	Purpose   string // "setup" or "invite"
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    *time.Time
}

// MemberStore keeps the console's members, sessions and links.
type MemberStore interface {
	// CreateMember inserts m; a taken email is ErrConflict.
	CreateMember(ctx context.Context, m Member) error
	MemberByID(ctx context.Context, id string) (Member, error)
	MemberByEmail(ctx context.Context, email string) (Member, error)
	// ListMembers returns the account's members, oldest first.
	ListMembers(ctx context.Context, accountID string) ([]Member, error)
	// SetMemberPassword sets the hash, clears failures and lockout, and
	// ends every session of the member.
	SetMemberPassword(ctx context.Context, id, hash string) error
	// RecordLoginFailure counts a failed sign-in at at; the maxFailures-th
	// consecutive one locks the member until at+lockFor (and starts the
	// count again). It returns the member as updated, atomically.
	RecordLoginFailure(ctx context.Context, id string, at time.Time, maxFailures int, lockFor time.Duration) (Member, error)
	// RecordLoginSuccess clears the failures and records the sign-in.
	RecordLoginSuccess(ctx context.Context, id string, at time.Time) error

	// CreateSession inserts s (ErrConflict on a taken hash) and removes
	// the member's sessions that expired by s.CreatedAt.
	CreateSession(ctx context.Context, s Session) error
	// SessionByHash returns the session, expired ones included (the caller
	// decides); ErrNotFound if there is none.
	SessionByHash(ctx context.Context, hash string) (Session, error)
	// DeleteSession ends a session; a missing one is no error.
	DeleteSession(ctx context.Context, hash string) error

	CreateMemberLink(ctx context.Context, l MemberLink) error
	// UseMemberLink marks the unused, unexpired link with this hash used
	// at at and returns it; any other link is ErrNotFound. Two concurrent
	// uses cannot both succeed.
	UseMemberLink(ctx context.Context, hash string, at time.Time) (MemberLink, error)
	// MemberLinkByHash returns the link as stored (used or not).
	MemberLinkByHash(ctx context.Context, hash string) (MemberLink, error)
}
