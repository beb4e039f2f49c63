package orkestr_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

// A terminal is an io.Reader of what it shows and an io.Writer of what is
// typed; the program's exit status is there once Read returns io.EOF.
func ExampleSandbox_Terminal() {
	ctx := context.Background()
	c, err := orkestr.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	term, err := c.Sandbox("sbx_01HXYZ").Terminal(ctx, orkestr.TerminalOptions{Command: "bash", Rows: 24, Cols: 80})
	if err != nil {
		log.Fatal(err)
	}
	defer term.Close() // hangs up: kills the program if it still runs
	if _, err := io.WriteString(term, "echo $((6*7)); exit 3\r"); err != nil {
		log.Fatal(err)
	}
	if _, err := io.Copy(os.Stdout, term); err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit status", term.Exit().ExitCode) // exit status 3
}
