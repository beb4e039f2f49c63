// Command orkestr is the orkestr command-line client.
//
// It speaks the REST API of orkestrd through the Go SDK; until the API
// lands (issue 3) it only reports its version.
package main

import (
	"fmt"
	"os"
)

var version = "dev"

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Println("orkestr", version)
		return
	}
	fmt.Fprintln(os.Stderr, "orkestr: the API client commands (sandbox, files, limits) are not built yet; see README.md, \"What does not work yet\"")
	os.Exit(2)
}
