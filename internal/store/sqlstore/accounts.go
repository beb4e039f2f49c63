package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// CreateAccount inserts a; a taken name (or id) is store.ErrConflict.
func (s *Store) CreateAccount(ctx context.Context, a store.Account) error {
	if a.CreatedAt.IsZero() {
		a.CreatedAt = s.now()
	}
	_, err := s.write(ctx, "INSERT INTO accounts (id, name, plan, created_at) VALUES (?, ?, ?, ?)",
		a.ID, a.Name, a.Plan, toMS(a.CreatedAt))
	if isUnique(err) {
		return fmt.Errorf("account %q: %w", a.Name, store.ErrConflict)
	}
	return err
}

const accountCols = "id, name, plan, created_at"

func scanAccount(sc interface{ Scan(...any) error }) (store.Account, error) {
	var a store.Account
	var created int64
	if err := sc.Scan(&a.ID, &a.Name, &a.Plan, &created); err != nil {
		return store.Account{}, err
	}
	a.CreatedAt = fromMS(created)
	return a, nil
}

func (s *Store) accountWhere(ctx context.Context, what, cond string, arg any) (store.Account, error) {
	a, err := scanAccount(s.queryRow(ctx, s.db, "SELECT "+accountCols+" FROM accounts WHERE "+cond, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Account{}, fmt.Errorf("account %s: %w", what, store.ErrNotFound)
	}
	return a, err
}

// AccountByID returns the account; store.ErrNotFound if there is none.
func (s *Store) AccountByID(ctx context.Context, id string) (store.Account, error) {
	return s.accountWhere(ctx, fmt.Sprintf("%q", id), "id = ?", id)
}

// AccountByName returns the account; store.ErrNotFound if there is none.
func (s *Store) AccountByName(ctx context.Context, name string) (store.Account, error) {
	return s.accountWhere(ctx, fmt.Sprintf("named %q", name), "name = ?", name)
}

// ListAccounts returns every account, oldest first.
func (s *Store) ListAccounts(ctx context.Context) ([]store.Account, error) {
	rows, err := s.query(ctx, s.db, "SELECT "+accountCols+" FROM accounts ORDER BY created_at, id")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Account
	for rows.Next() {
		a, err := scanAccount(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// SetAccountPlan changes an account's plan; store.ErrNotFound if there is
// no such account.
func (s *Store) SetAccountPlan(ctx context.Context, id, plan string) error {
	res, err := s.write(ctx, "UPDATE accounts SET plan = ? WHERE id = ?", plan, id)
	if err != nil {
		return err
	}
	return affectedOrNotFound(res, "account %q", id)
}

func affectedOrNotFound(res sql.Result, format string, args ...any) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf(format+": %w", append(args, store.ErrNotFound)...)
	}
	return nil
}

// JSON columns.

func toJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// CreateKey inserts k (its hash, never a plaintext). A duplicate id or hash
// is store.ErrConflict; an unknown account is store.ErrNotFound.
func (s *Store) CreateKey(ctx context.Context, k store.APIKey) error {
	scopes, err := toJSON(k.Scopes)
	if err != nil {
		return err
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = s.now()
	}
	_, err = s.write(ctx, `INSERT INTO api_keys (id, account_id, prefix, hash, scopes, created_at, expires_at, revoked_at, last_used_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.AccountID, k.Prefix, k.Hash, scopes, toMS(k.CreatedAt),
		toNullMS(k.ExpiresAt), toNullMS(k.RevokedAt), toNullMS(k.LastUsedAt))
	switch {
	case isUnique(err):
		return fmt.Errorf("key %q: %w", k.ID, store.ErrConflict)
	case isForeignKey(err):
		return fmt.Errorf("account %q: %w", k.AccountID, store.ErrNotFound)
	}
	return err
}

const keyCols = "id, account_id, prefix, hash, scopes, created_at, expires_at, revoked_at, last_used_at"

func scanKey(sc interface{ Scan(...any) error }) (store.APIKey, error) {
	var k store.APIKey
	var scopes string
	var created int64
	var expires, revoked, lastUsed sql.NullInt64
	if err := sc.Scan(&k.ID, &k.AccountID, &k.Prefix, &k.Hash, &scopes, &created, &expires, &revoked, &lastUsed); err != nil {
		return store.APIKey{}, err
	}
	if err := json.Unmarshal([]byte(scopes), &k.Scopes); err != nil {
		return store.APIKey{}, fmt.Errorf("key %q: decoding scopes: %w", k.ID, err)
	}
	k.CreatedAt = fromMS(created)
	k.ExpiresAt, k.RevokedAt, k.LastUsedAt = fromNullMS(expires), fromNullMS(revoked), fromNullMS(lastUsed)
	return k, nil
}

// KeyByHash returns the key with this hash, revoked and expired ones
// included (the caller decides); store.ErrNotFound if there is none.
func (s *Store) KeyByHash(ctx context.Context, hash string) (store.APIKey, error) {
	k, err := scanKey(s.queryRow(ctx, s.db, "SELECT "+keyCols+" FROM api_keys WHERE hash = ?", hash))
	if errors.Is(err, sql.ErrNoRows) {
		// The hash stays out of the message.
		return store.APIKey{}, fmt.Errorf("key: %w", store.ErrNotFound)
	}
	return k, err
}

// ListKeys returns the account's keys, revoked ones included, oldest first.
func (s *Store) ListKeys(ctx context.Context, accountID string) ([]store.APIKey, error) {
	rows, err := s.query(ctx, s.db, "SELECT "+keyCols+" FROM api_keys WHERE account_id = ? ORDER BY created_at, id", accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.APIKey
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// RevokeKey revokes the account's key whose ID is idOrPrefix or, failing
// that, whose Prefix is. A key that is already revoked keeps its first
// revocation time (and nil is returned). None of the account's keys
// matching is store.ErrNotFound; a prefix shared by several keys is
// store.ErrConflict (revoke by id then).
func (s *Store) RevokeKey(ctx context.Context, accountID, idOrPrefix string, at time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		rows, err := s.query(ctx, tx, `SELECT id FROM api_keys WHERE account_id = ? AND (id = ? OR prefix = ?)
			ORDER BY CASE WHEN id = ? THEN 0 ELSE 1 END`, accountID, idOrPrefix, idOrPrefix, idOrPrefix)
		if err != nil {
			return err
		}
		var ids []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		switch {
		case len(ids) == 0:
			return fmt.Errorf("key %q: %w", idOrPrefix, store.ErrNotFound)
		case ids[0] == idOrPrefix:
			ids = ids[:1] // an exact id wins over prefixes
		case len(ids) > 1:
			return fmt.Errorf("key prefix %q matches %d keys, revoke by key id: %w", idOrPrefix, len(ids), store.ErrConflict)
		}
		_, err = s.exec(ctx, tx, "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", toMS(at), ids[0])
		return err
	})
}

// TouchKey records a use of the key at at (kept only if later than the
// recorded one); store.ErrNotFound if there is no such key.
func (s *Store) TouchKey(ctx context.Context, id string, at time.Time) error {
	ms := toMS(at)
	res, err := s.write(ctx, `UPDATE api_keys SET last_used_at = CASE
			WHEN last_used_at IS NULL OR last_used_at < ? THEN ? ELSE last_used_at END
		WHERE id = ?`, ms, ms, id)
	if err != nil {
		return err
	}
	return affectedOrNotFound(res, "key %q", id)
}
