package e2b

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"

	"github.com/orkestr-eu/orkestr/internal/auth"
)

// AliasPrefix starts the E2B-shaped form of an orkestr key. The published
// SDKs check that a key is "e2b_" followed by hex digits, so the alias is
// the hex of the key's 43 base62 characters: the same key, the same
// account and scopes, only spelled so that the check passes.
const AliasPrefix = "e2b_"

// Alias returns the E2B-shaped alias of an orkestr key.
func Alias(key string) (string, error) {
	if err := auth.CheckFormat(key); err != nil {
		return "", err
	}
	return AliasPrefix + hex.EncodeToString([]byte(key[len(auth.KeyPrefix):])), nil
}

// errBadKey is what a key that is neither an orkestr key nor its alias gets.
var errBadKey = errors.New("malformed API key")

// orkestrKey turns what an SDK sent in X-API-Key into the orkestr key:
// an alias is decoded, an orkestr key (SDKs whose key check is turned off
// with E2B_VALIDATE_API_KEY=false) is taken as it is.
func orkestrKey(sent string) (string, error) {
	sent = strings.TrimSpace(sent)
	if strings.HasPrefix(sent, auth.KeyPrefix) {
		if auth.CheckFormat(sent) != nil {
			return "", errBadKey
		}
		return sent, nil
	}
	if !strings.HasPrefix(sent, AliasPrefix) || len(sent) > 200 {
		return "", errBadKey
	}
	raw, err := hex.DecodeString(sent[len(AliasPrefix):])
	if err != nil {
		return "", errBadKey
	}
	key := auth.KeyPrefix + string(raw)
	if auth.CheckFormat(key) != nil {
		return "", errBadKey
	}
	return key, nil
}

// accessToken is the sandbox's envd access token: it names the account
// and is bound to the sandbox by an HMAC under the server's secret, so
// the daemon side needs no table of tokens and a token for one sandbox
// opens no other.
func accessToken(secret []byte, accountID, sandboxID string) string {
	return accountID + "." + tokenMAC(secret, accountID, sandboxID)
}

func tokenMAC(secret []byte, accountID, sandboxID string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("e2b-envd\x00" + accountID + "\x00" + sandboxID))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// checkAccessToken returns the account a token was issued for, if it was
// issued for this sandbox.
func checkAccessToken(secret []byte, token, sandboxID string) (string, bool) {
	acct, mac, ok := strings.Cut(token, ".")
	if !ok || acct == "" || len(acct) > 64 || sandboxID == "" {
		return "", false
	}
	want := tokenMAC(secret, acct, sandboxID)
	if !hmac.Equal([]byte(mac), []byte(want)) {
		return "", false
	}
	return acct, true
}
