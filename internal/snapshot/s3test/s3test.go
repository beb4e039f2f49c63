// Package s3test runs a real S3 server for tests: versitygw (Apache-2.0),
// which `make test-deps` installs into bin/ from the Go module proxy,
// serving a temporary directory on a free loopback port.
package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// Binary returns the versitygw binary: $ORKESTR_VERSITYGW, bin/versitygw
// of this checkout, or versitygw on the PATH.
func Binary() (string, error) {
	if p := os.Getenv("ORKESTR_VERSITYGW"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("ORKESTR_VERSITYGW names %s: %w", p, err)
		}
		return p, nil
	}
	p := filepath.Join(testenv.RepoRoot(), "bin", "versitygw")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	return "", errors.New("versitygw is not installed: run `make versitygw` (or make test-deps), or set ORKESTR_VERSITYGW")
}

// Server is one running versitygw with one bucket.
type Server struct {
	// Endpoint is http://127.0.0.1:PORT.
	Endpoint  string
	Region    string
	Bucket    string
	AccessKey string
	SecretKey string
	// Dir is the directory the server keeps its buckets in (the bucket's
	// objects are files under Dir/Bucket).
	Dir string

	bin  string
	addr string
	log  *os.File

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs a server with an empty bucket for the test and stops it when
// the test ends. Without the binary the test is skipped under -short and
// fails otherwise (`make test` installs it).
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if testing.Short() {
			t.Skip(err.Error())
		}
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &Server{
		Region: "us-east-1", Bucket: "orkestr-test",
		AccessKey: "orkestr-test-" + randHex(4), SecretKey: randHex(20),
		Dir: filepath.Join(dir, "data"), bin: bin,
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if s.log, err = os.Create(filepath.Join(dir, "versitygw.log")); err != nil {
		t.Fatal(err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s.addr = "127.0.0.1:" + strconv.Itoa(port)
	s.Endpoint = "http://" + s.addr
	t.Cleanup(func() {
		s.Stop()
		s.log.Close()
		if t.Failed() {
			if b, err := os.ReadFile(s.log.Name()); err == nil && len(b) > 0 {
				t.Logf("versitygw log:\n%s", tail(b, 4000))
			}
		}
	})
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	c, err := minio.New(s.addr, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: s.Region, BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.MakeBucket(ctx, s.Bucket, minio.MakeBucketOptions{Region: s.Region}); err != nil {
		t.Fatalf("s3test: creating the bucket: %v", err)
	}
	return s
}

// Config is a snapshot.S3Config for the server's bucket.
func (s *Server) Config() snapshot.S3Config {
	return snapshot.S3Config{Endpoint: s.Endpoint, Region: s.Region, Bucket: s.Bucket, AccessKeyID: s.AccessKey, SecretAccessKey: s.SecretKey}
}

// Stop kills the server (it stays stopped until Restart): the store is
// unreachable, connections are refused. Stopping a stopped server does
// nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Restart starts the server again on the same port and data (after Stop;
// Start calls it the first time) and returns once it answers.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	cmd := exec.Command(s.bin, "--access", s.AccessKey, "--secret", s.SecretKey, "--region", s.Region,
		"--port", s.addr, "posix", s.Dir)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	cmd.Stdout, cmd.Stderr = s.log, s.log
	// The server dies with the test binary, even if that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("s3test: starting versitygw: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			return fmt.Errorf("s3test: versitygw exited at start (port %s taken?); see %s", s.addr, s.log.Name())
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			return fmt.Errorf("s3test: versitygw did not listen on %s within 30s", s.addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.cmd, s.done = cmd, done
	return nil
}

// PID is the running server's process id (0 when stopped): benchmarks
// read its CPU time.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Unreachable stops the server for d, then restarts it on the same port
// in the background: "the object store is briefly unreachable". The
// returned channel yields the restart's result.
func (s *Server) Unreachable(d time.Duration) <-chan error {
	s.Stop()
	ch := make(chan error, 1)
	time.AfterFunc(d, func() { ch <- s.Restart() })
	return ch
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
