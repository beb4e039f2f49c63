package e2b

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"testing"
	"time"
)

// fakeNative serves every request with h, as the native API would.
type fakeNative struct{ h http.HandlerFunc }

func (f fakeNative) Handler() http.Handler { return f.h }
func (f fakeNative) ServeAccount(w http.ResponseWriter, r *http.Request, accountID string) {
	r.Header.Set("X-Account", accountID)
	f.h(w, r)
}

// A stream the caller stops reading ends the handler: closing the body
// cancels its context and unblocks its writes, so no goroutine is left.
func TestNativeStreamEndsWhenTheCallerCloses(t *testing.T) {
	done := make(chan error, 1)
	c := &caller{native: fakeNative{func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		for {
			if _, err := w.Write([]byte("line\n")); err != nil {
				done <- err
				return
			}
			if r.Context().Err() != nil {
				done <- r.Context().Err()
				return
			}
		}
	}}, key: "k"}
	resp, err := c.do(context.Background(), "GET", "/v1/x", nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() || sc.Text() != "line" {
		t.Fatalf("first line: %q", sc.Text())
	}
	resp.Body.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the handler ended without an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler kept running after the caller closed the stream")
	}
}

// A handler that panics (as net/http's ErrAbortHandler does) is a 502 to
// the caller, not a crash of the server; one that writes nothing is a 200
// with an empty body; the account and key reach the native side.
func TestNativeCallerEdges(t *testing.T) {
	c := &caller{native: fakeNative{func(w http.ResponseWriter, r *http.Request) { panic(http.ErrAbortHandler) }}, key: "k"}
	resp, err := c.do(context.Background(), "GET", "/v1/x", nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("panic: status %d", resp.StatusCode)
	}

	var gotAuth, gotAccount string
	c = &caller{native: fakeNative{func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotAccount = r.Header.Get("Authorization"), r.Header.Get("X-Account")
	}}, key: "ork_k"}
	if err := c.json(context.Background(), "GET", "/v1/x", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if gotAuth != "Bearer ork_k" || gotAccount != "" {
		t.Fatalf("as key: auth %q account %q", gotAuth, gotAccount)
	}
	c.key, c.account = "", "acc_1"
	if err := c.json(context.Background(), "GET", "/v1/x", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if gotAuth != "" || gotAccount != "acc_1" {
		t.Fatalf("as account: auth %q account %q", gotAuth, gotAccount)
	}

	c = &caller{native: fakeNative{func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(409)
		_, _ = w.Write([]byte(`{"error":{"code":"file_exists","message":"It exists.","details":{}}}`))
	}}, key: "k"}
	err = c.json(context.Background(), "POST", "/v1/x", nil, map[string]any{}, nil)
	var ne *nativeError
	if !errors.As(err, &ne) || ne.Status != 409 || ne.Code != "file_exists" || ne.Message != "It exists." {
		t.Fatalf("native error: %#v", err)
	}
	if rpcErr("x", err).Error() != "already_exists: It exists." {
		t.Fatalf("as Connect error: %v", rpcErr("x", err))
	}
}
