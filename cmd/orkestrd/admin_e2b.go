package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/orkestr-eu/orkestr/internal/e2b"
)

// e2bKey prints the e2b_ alias of an orkestr key, for e2b SDKs that check
// a key's format. The key is read from ORKESTR_API_KEY or stdin, never from
// the command line (which other users of the host can see).
func e2bKey(args []string) error {
	if len(args) > 0 {
		return errors.New("usage: orkestrd admin e2b-key  (the ork_ key on stdin or in ORKESTR_API_KEY)")
	}
	key := os.Getenv("ORKESTR_API_KEY")
	if key == "" {
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && line == "" {
			return errors.New("give the ork_ key on stdin or in ORKESTR_API_KEY")
		}
		key = strings.TrimSpace(line)
	}
	alias, err := e2b.Alias(key)
	if err != nil {
		return fmt.Errorf("that is not an orkestr key (ork_ and 43 letters and digits): %w", err)
	}
	fmt.Println(alias)
	return nil
}
