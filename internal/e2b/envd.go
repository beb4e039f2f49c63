package e2b

import (
	"compress/gzip"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"

	"github.com/orkestr-eu/orkestr/internal/e2b/envdpb/filesystem/filesystemconnect"
	"github.com/orkestr-eu/orkestr/internal/e2b/envdpb/process/processconnect"
)

// envdCtx is what the daemon side knows about a request.
type envdCtx struct {
	c       *caller
	sandbox string
	user    string // "root" or "user"
}

type envdKey struct{}

func envdFrom(ctx context.Context) *envdCtx {
	e, _ := ctx.Value(envdKey{}).(*envdCtx)
	return e
}

// sbPath is the native path of the request's sandbox plus suffix.
func (e *envdCtx) sbPath(suffix string) string {
	return "/v1/sandboxes/" + url.PathEscape(e.sandbox) + suffix
}

func home(user string) string {
	if user == "root" {
		return "/root"
	}
	return "/home/user"
}

// resolve makes an SDK path absolute: relative paths (and ~) are relative
// to the user's home, as envd has it.
func (e *envdCtx) resolve(p string) string {
	h := home(e.user)
	switch {
	case p == "" || p == "~":
		return h
	case strings.HasPrefix(p, "~/"):
		return path.Join(h, p[2:])
	case !strings.HasPrefix(p, "/"):
		return path.Join(h, p)
	}
	return p
}

// userOf reads the user envd would run as: HTTP Basic with the user name
// and an empty password; none means the default user, "user".
func userOf(r *http.Request) (string, error) {
	u := "user"
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, v, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "basic") {
			return "", fmt.Errorf("Authorization must be Basic with a user name")
		}
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
		if err != nil {
			return "", fmt.Errorf("Authorization must be Basic with a user name")
		}
		name, _, _ := strings.Cut(string(b), ":")
		if name != "" {
			u = name
		}
	}
	if q := r.URL.Query().Get("username"); q != "" && r.URL.Path == "/files" {
		u = q
	}
	if u != "root" && u != "user" {
		return "", fmt.Errorf("an orkestr sandbox has the users root and user, not %q", u)
	}
	return u, nil
}

// envd serves the daemon side: the sandbox is named by E2b-Sandbox-Id and
// the caller proves it may use it with the sandbox's X-Access-Token.
func (s *Server) envd(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("E2b-Sandbox-Id")
	acct, ok := checkAccessToken(s.o.Secret, r.Header.Get("X-Access-Token"), id)
	if !ok {
		writeErr(w, http.StatusUnauthorized, "Missing or wrong X-Access-Token for this sandbox: use the envdAccessToken that create or connect returned.")
		return
	}
	user, err := userOf(r)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	e := &envdCtx{c: &caller{native: s.o.Native, account: acct, remoteAddr: r.RemoteAddr}, sandbox: id, user: user}
	s.envdMux().ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), envdKey{}, e)))
}

func (s *Server) envdMux() *http.ServeMux {
	s.envdOnce.Do(func() {
		m := http.NewServeMux()
		m.HandleFunc("GET /health", s.health)
		m.HandleFunc("GET /files", s.readFile)
		m.HandleFunc("POST /files", s.writeFiles)
		m.HandleFunc("GET /envs", func(w http.ResponseWriter, r *http.Request) {
			unsupported(w, "reading the daemon's default environment (GET /envs)")
		})
		m.HandleFunc("POST /init", func(w http.ResponseWriter, r *http.Request) {
			unsupported(w, "re-initialising the daemon (POST /init)")
		})
		p, h := processconnect.NewProcessHandler(&processService{s: s})
		m.Handle(p, h)
		p, h = filesystemconnect.NewFilesystemHandler(&filesystemService{s: s})
		m.Handle(p, h)
		m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			writeErr(w, http.StatusNotFound, fmt.Sprintf("No such endpoint on orkestr's E2B-compatible sandbox daemon: %s %s.", r.Method, r.URL.Path))
		})
		s.envdHandler = m
	})
	return s.envdHandler
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	e := envdFrom(r.Context())
	var sb sandbox
	if err := e.c.json(r.Context(), "GET", e.sbPath(""), nil, nil, &sb); err != nil || sb.Status != "running" {
		writeErr(w, http.StatusBadGateway, fmt.Sprintf("Sandbox %s is not running.", e.sandbox))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// envdFail answers a failed native call in envd's REST error shape.
func (s *Server) envdFail(w http.ResponseWriter, step string, err error) {
	if ne, ok := err.(*nativeError); ok {
		status := ne.Status
		if ne.Code == "sandbox_not_ready" || (ne.Code == "sandbox_not_found") {
			status = http.StatusBadGateway
		}
		if ne.Code == "payload_too_large" {
			status = http.StatusInsufficientStorage
		}
		writeErr(w, status, ne.Message)
		return
	}
	s.fail(w, step, err)
}

func (s *Server) readFile(w http.ResponseWriter, r *http.Request) {
	e := envdFrom(r.Context())
	p := e.resolve(r.URL.Query().Get("path"))
	resp, err := e.c.do(r.Context(), "GET", e.sbPath("/files"), url.Values{"path": {p}, "user": {e.user}}, nil, "")
	if err != nil {
		s.fail(w, "read the file", err)
		return
	}
	defer resp.Body.Close()
	if err := errorOf(resp); err != nil {
		s.envdFail(w, "read the file", err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(p)}))
	if acceptsGzip(r) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Add("Vary", "Accept-Encoding")
		zw := gzip.NewWriter(w)
		_, _ = io.Copy(zw, resp.Body)
		_ = zw.Close()
		return
	}
	if n := resp.Header.Get("Content-Length"); n != "" {
		w.Header().Set("Content-Length", n)
	}
	_, _ = io.Copy(w, resp.Body)
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(name), "gzip") && !strings.Contains(strings.ReplaceAll(params, " ", ""), "q=0") {
			return true
		}
	}
	return false
}

// writeInfo is envd's answer per written file.
type writeInfo struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Path string `json:"path"`
}

// writeFiles takes a multipart form (one part "file" per file, its
// filename the path when the query has none) or a raw body, gzipped or not.
func (s *Server) writeFiles(w http.ResponseWriter, r *http.Request) {
	e := envdFrom(r.Context())
	q := r.URL.Query().Get("path")
	var out []writeInfo
	body := io.Reader(r.Body)
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			writeErr(w, http.StatusBadRequest, "The body is not gzip: "+err.Error())
			return
		}
		defer zr.Close()
		body = zr
	default:
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("Content-Encoding %q is not supported: send gzip or none.", enc))
		return
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "multipart/form-data" {
		if r.Header.Get("Content-Encoding") != "" {
			writeErr(w, http.StatusBadRequest, "A multipart upload cannot be gzipped: send application/octet-stream with Content-Encoding: gzip.")
			return
		}
		mr, err := r.MultipartReader()
		if err != nil {
			writeErr(w, http.StatusBadRequest, "The multipart body cannot be read: "+err.Error())
			return
		}
		for n := 0; ; n++ {
			part, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				writeErr(w, http.StatusBadRequest, "The multipart body cannot be read: "+err.Error())
				return
			}
			if n >= 1000 {
				writeErr(w, http.StatusBadRequest, "At most 1000 files per upload.")
				return
			}
			if part.FormName() != "file" {
				_ = part.Close()
				continue
			}
			p := q
			if p == "" {
				// The raw filename: Part.FileName keeps only its last element.
				_, params, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
				p = params["filename"]
			}
			if p == "" {
				writeErr(w, http.StatusBadRequest, "A file part has no path: give ?path= or the part's filename.")
				return
			}
			wi, err := s.writeOne(r.Context(), e, e.resolve(p), part)
			_ = part.Close()
			if err != nil {
				s.envdFail(w, "write the file", err)
				return
			}
			out = append(out, wi)
		}
	} else {
		if q == "" {
			writeErr(w, http.StatusBadRequest, "A raw upload needs ?path=.")
			return
		}
		wi, err := s.writeOne(r.Context(), e, e.resolve(q), body)
		if err != nil {
			s.envdFail(w, "write the file", err)
			return
		}
		out = append(out, wi)
	}
	if len(out) == 0 {
		writeErr(w, http.StatusBadRequest, "The upload has no file part named \"file\".")
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// writeOne writes a file through the native API as the SDK's user: the
// kernel checks its permissions, and the file and the parents it makes are
// its own.
func (s *Server) writeOne(ctx context.Context, e *envdCtx, p string, body io.Reader) (writeInfo, error) {
	resp, err := e.c.do(ctx, "PUT", e.sbPath("/files"), url.Values{"path": {p}, "user": {e.user}}, body, "application/octet-stream")
	if err != nil {
		return writeInfo{}, err
	}
	err = errorOf(resp)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return writeInfo{}, err
	}
	return writeInfo{Name: path.Base(p), Type: "file", Path: p}, nil
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func itoa(n int) string { return strconv.Itoa(n) }
