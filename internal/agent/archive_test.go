package agent

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

func TestFrameSourceEndsOnlyAtItsEndFrame(t *testing.T) {
	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	_ = w.Frame(wire.KindData, []byte("abc"))
	// No KindEOF: the host went away mid-upload.
	src := &frameSource{r: wire.NewReader(&buf)}
	b, err := io.ReadAll(src)
	if string(b) != "abc" || !errors.Is(err, errHostGone) {
		t.Fatalf("%q %v: a cut upload must not read as a complete one", b, err)
	}
}
