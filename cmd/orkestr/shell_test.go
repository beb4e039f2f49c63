package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestCommandLineForATerminal(t *testing.T) {
	for _, c := range []struct {
		words []string
		want  string
	}{
		{[]string{"bash"}, "bash"},
		{[]string{"echo $HOME; ls | wc -l"}, "echo $HOME; ls | wc -l"},
		{[]string{"printf", "%s|", "a b", "$HOME", "it's", ""}, `printf '%s|' 'a b' '$HOME' 'it'\''s' ''`},
		{[]string{"python3", "-c", "print(2**100)"}, `python3 -c 'print(2**100)'`},
	} {
		if got := commandLine(c.words); got != c.want {
			t.Errorf("%q: %s, want %s", c.words, got, c.want)
		}
	}
}

func TestTerminalFlagsRefuseJSON(t *testing.T) {
	t.Setenv("ORKESTR_API_KEY", testKey)
	t.Setenv("ORKESTR_BASE_URL", "http://127.0.0.1:1")
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"sandbox", "exec", "-it", "--json", "sbx_x", "--", "bash"}, strings.NewReader(""), &out, &errb)
	if code != exitUsage || !strings.Contains(errb.String(), "--json cannot be combined") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
	// shell needs exactly one ID.
	errb.Reset()
	if code := run(context.Background(), []string{"sandbox", "shell"}, strings.NewReader(""), &out, &errb); code != exitUsage {
		t.Errorf("shell without ID: exit %d", code)
	}
}
