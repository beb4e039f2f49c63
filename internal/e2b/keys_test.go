package e2b

import (
	"strings"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/auth"
)

func TestAliasRoundTrip(t *testing.T) {
	key, _, _, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	alias, err := Alias(key)
	if err != nil {
		t.Fatal(err)
	}
	// The SDKs' own check: ^e2b_[0-9a-f]+$.
	if !strings.HasPrefix(alias, "e2b_") || strings.Trim(alias[4:], "0123456789abcdef") != "" {
		t.Fatalf("alias %q does not look like an E2B key", alias)
	}
	for _, sent := range []string{alias, key, " " + alias + "\n"} {
		got, err := orkestrKey(sent)
		if err != nil || got != key {
			t.Fatalf("orkestrKey(%q) = %q, %v; want the key", sent, got, err)
		}
	}
}

func TestMalformedKeysRefused(t *testing.T) {
	key, _, _, _ := auth.NewKey()
	alias, _ := Alias(key)
	for _, sent := range []string{
		"", "e2b_", "e2b_zz", "e2b_" + strings.Repeat("0", 86), alias[:len(alias)-2], alias + "00",
		"ork_short", key + "x", "Bearer " + key, "e2b_" + strings.Repeat("ab", 5000),
		"e2b_" + strings.Repeat("2f", 43), // 43 '/' characters: not base62
	} {
		if got, err := orkestrKey(sent); err == nil {
			t.Errorf("orkestrKey(%q) = %q, want an error", sent, got)
		}
	}
	if _, err := Alias("not-a-key"); err == nil {
		t.Error("Alias accepted a string that is not a key")
	}
}

func TestAccessTokenIsBoundToSandboxAndSecret(t *testing.T) {
	secret := []byte(strings.Repeat("s", 32))
	tok := accessToken(secret, "acc_1", "sbx_A")
	if acct, ok := checkAccessToken(secret, tok, "sbx_A"); !ok || acct != "acc_1" {
		t.Fatalf("own token refused: %q %v", acct, ok)
	}
	other := []byte(strings.Repeat("o", 32))
	for name, c := range map[string]struct {
		secret    []byte
		tok, sbox string
	}{
		"another sandbox":      {secret, tok, "sbx_B"},
		"another secret":       {other, tok, "sbx_A"},
		"account swapped":      {secret, "acc_2" + tok[len("acc_1"):], "sbx_A"},
		"no mac":               {secret, "acc_1.", "sbx_A"},
		"no dot":               {secret, "acc_1", "sbx_A"},
		"empty":                {secret, "", "sbx_A"},
		"no sandbox":           {secret, tok, ""},
		"mac of other sandbox": {secret, accessToken(secret, "acc_1", "sbx_B"), "sbx_A"},
	} {
		if acct, ok := checkAccessToken(c.secret, c.tok, c.sbox); ok {
			t.Errorf("%s: token accepted (account %q)", name, acct)
		}
	}
}

func TestMetadataFilter(t *testing.T) {
	// What both SDKs send for {"suite=x&y": "a b%", "k": "v"}: each key and
	// value percent-encoded, then joined as a query string.
	md, err := parseMetadataFilter("suite%253Dx%2526y=a%2520b%2525&k=v")
	if err != nil {
		t.Fatal(err)
	}
	if md["suite=x&y"] != "a b%" || md["k"] != "v" {
		t.Fatalf("got %v", md)
	}
	if !matches(sandbox{Metadata: map[string]string{"k": "v", "suite=x&y": "a b%", "z": "1"}}, md) {
		t.Error("a sandbox with the metadata does not match")
	}
	if matches(sandbox{Metadata: map[string]string{"k": "v"}}, md) {
		t.Error("a sandbox without all the metadata matches")
	}
}
