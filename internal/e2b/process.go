package e2b

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	pb "github.com/orkestr-eu/orkestr/internal/e2b/envdpb/process"
)

// processService is envd's process.Process over orkestr's background
// processes: Start starts one and attaches to its output, Connect attaches,
// stdin, signals and the list go to the native routes.
type processService struct{ s *Server }

// rpcErr turns a failed native call into a Connect error with envd's codes.
func rpcErr(step string, err error) error {
	var ne *nativeError
	if errors.As(err, &ne) {
		code := connect.CodeInternal
		switch {
		case ne.Status == http.StatusBadRequest:
			code = connect.CodeInvalidArgument
		case ne.Status == http.StatusUnauthorized:
			code = connect.CodeUnauthenticated
		case ne.Status == http.StatusForbidden:
			code = connect.CodePermissionDenied
		case ne.Code == "sandbox_not_found" || ne.Code == "sandbox_not_ready":
			code = connect.CodeUnavailable
		case ne.Status == http.StatusNotFound:
			code = connect.CodeNotFound
		case ne.Code == "file_exists":
			code = connect.CodeAlreadyExists
		case ne.Status == http.StatusConflict:
			code = connect.CodeFailedPrecondition
		case ne.Status == http.StatusTooManyRequests || ne.Status == http.StatusPaymentRequired:
			code = connect.CodeResourceExhausted
		case ne.Status == http.StatusRequestEntityTooLarge:
			code = connect.CodeResourceExhausted
		case ne.Status == http.StatusServiceUnavailable:
			code = connect.CodeUnavailable
		}
		return connect.NewError(code, errors.New(ne.Message))
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf("%s: the request's timeout passed", step))
	}
	if errors.Is(err, context.Canceled) {
		return connect.NewError(connect.CodeCanceled, fmt.Errorf("%s: canceled", step))
	}
	return connect.NewError(connect.CodeInternal, fmt.Errorf("orkestr could not %s", step))
}

func unimplemented(what string) error {
	return connect.NewError(connect.CodeUnimplemented, fmt.Errorf("orkestr does not support %s through its E2B-compatible API", what))
}

// nativeProcess is the native Process.
type nativeProcess struct {
	PID      int    `json:"pid"`
	Command  string `json:"command"`
	Cwd      string `json:"cwd"`
	User     string `json:"user"`
	Running  bool   `json:"running"`
	ExitCode *int   `json:"exit_code"`
	Signal   *int   `json:"signal"`
}

// commandLine joins cmd and args into one sh command line.
func commandLine(cmd string, args []string) string {
	parts := []string{shellQuote(cmd)}
	for _, a := range args {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

// keepalive is how often a stream sends envd's keep-alive event, from the
// Keepalive-Ping-Interval header (seconds), bounded.
func keepalive(h http.Header) time.Duration {
	n, err := strconv.Atoi(h.Get("Keepalive-Ping-Interval"))
	if err != nil || n < 1 {
		n = 30
	}
	if n > 300 {
		n = 300
	}
	return time.Duration(n) * time.Second
}

func (p *processService) selectPID(e *envdCtx, sel *pb.ProcessSelector) (uint32, error) {
	switch v := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		return v.Pid, nil
	case *pb.ProcessSelector_Tag:
		if pid, ok := p.s.procs.byTag(e.sandbox, v.Tag); ok {
			return pid, nil
		}
		return 0, connect.NewError(connect.CodeNotFound, fmt.Errorf("no process with tag %q", v.Tag))
	}
	return 0, connect.NewError(connect.CodeInvalidArgument, errors.New("give the process by pid or tag"))
}

func (p *processService) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	e := envdFrom(ctx)
	m := req.Msg
	if m.Pty != nil {
		return unimplemented("terminals (PTY)")
	}
	cfg := m.GetProcess()
	if cfg == nil || cfg.Cmd == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is required"))
	}
	cwd := home(e.user)
	if cfg.Cwd != nil && *cfg.Cwd != "" {
		cwd = e.resolve(*cfg.Cwd)
	}
	body := map[string]any{"command": commandLine(cfg.Cmd, cfg.Args), "cwd": cwd, "user": e.user}
	if len(cfg.Envs) > 0 {
		body["env"] = cfg.Envs
	}
	var np nativeProcess
	if err := e.c.json(ctx, "POST", e.sbPath("/processes"), nil, body, &np); err != nil {
		return rpcErr("start the process", err)
	}
	pid := uint32(np.PID)
	meta := &procMeta{cmd: cfg.Cmd, args: cfg.Args, envs: cfg.Envs, cwd: cwd}
	if m.Tag != nil {
		meta.tag = *m.Tag
	}
	p.s.procs.put(e.sandbox, pid, meta)
	if !m.GetStdin() {
		// envd gives such a process no stdin: it reads end of file.
		_ = e.c.json(context.WithoutCancel(ctx), "POST", e.sbPath("/processes/"+itoa(np.PID)+"/stdin"), nil, map[string]any{"eof": true}, nil)
	}
	send := func(ev *pb.ProcessEvent) error { return stream.Send(&pb.StartResponse{Event: ev}) }
	return p.follow(ctx, e, pid, true, req.Header(), send)
}

func (p *processService) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	e := envdFrom(ctx)
	pid, err := p.selectPID(e, req.Msg.GetProcess())
	if err != nil {
		return err
	}
	var np nativeProcess
	if err := e.c.json(ctx, "GET", e.sbPath("/processes/"+strconv.FormatUint(uint64(pid), 10)), nil, nil, &np); err != nil {
		return rpcErr("find the process", err)
	}
	if !np.Running {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("process %d is not running", pid))
	}
	send := func(ev *pb.ProcessEvent) error { return stream.Send(&pb.ConnectResponse{Event: ev}) }
	return p.follow(ctx, e, pid, false, req.Header(), send)
}

// follow streams a process's events: start, its output, its end. When the
// request's deadline (the SDK's command timeout) passes first, the process
// is killed, as envd does. The start event goes out once the output is
// attached (the answer's headers say so): an SDK returns from connect on
// it, and what the process writes after that (an echo of the stdin sent
// next) must reach it.
func (p *processService) follow(ctx context.Context, e *envdCtx, pid uint32, replay bool, h http.Header, send func(*pb.ProcessEvent) error) error {
	q := url.Values{}
	if replay {
		q.Set("replay", "true")
	}
	pidPath := e.sbPath("/processes/" + strconv.FormatUint(uint64(pid), 10))
	resp, err := e.c.do(ctx, "GET", pidPath+"/output", q, nil, "")
	if err != nil {
		return p.ended(ctx, e, pidPath, err)
	}
	defer resp.Body.Close()
	if err := errorOf(resp); err != nil {
		return rpcErr("attach to the process", err)
	}
	if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: pid}}}); err != nil {
		return err
	}
	// The reader closes lines at the end of the stream, after every line,
	// and leaves its error in readErr.
	lines := make(chan []byte, 16)
	var readErr error
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 8<<20)
		for sc.Scan() {
			select {
			case lines <- append([]byte(nil), sc.Bytes()...):
			case <-ctx.Done():
				return
			}
		}
		readErr = sc.Err()
	}()
	tick := time.NewTicker(keepalive(h))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return p.ended(ctx, e, pidPath, ctx.Err())
		case <-tick.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
		case line, ok := <-lines:
			if !ok {
				if ctx.Err() != nil {
					return p.ended(ctx, e, pidPath, ctx.Err())
				}
				err := readErr
				if err == nil {
					err = errors.New("the output stream ended without the process's end")
				}
				return connect.NewError(connect.CodeUnavailable, err)
			}
			var ev struct {
				Type       string          `json:"type"`
				Data       string          `json:"data"`
				DataBase64 *string         `json:"data_base64"`
				ExitCode   *int            `json:"exit_code"`
				Signal     *int            `json:"signal"`
				Reason     string          `json:"reason"`
				Error      json.RawMessage `json:"error"`
			}
			if err := json.Unmarshal(line, &ev); err != nil {
				continue
			}
			data := []byte(ev.Data)
			if ev.DataBase64 != nil {
				if b, err := base64.StdEncoding.DecodeString(*ev.DataBase64); err == nil {
					data = b
				}
			}
			var out *pb.ProcessEvent
			switch ev.Type {
			case "stdout":
				out = &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: data}}}}
			case "stderr":
				out = &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stderr{Stderr: data}}}}
			case "exit":
				end := &pb.ProcessEvent_EndEvent{Exited: true}
				switch {
				case ev.Signal != nil:
					end.ExitCode, end.Exited = -1, false
					end.Status = "signal: " + signalName(*ev.Signal)
				case ev.ExitCode != nil:
					end.ExitCode = int32(*ev.ExitCode)
					end.Status = "exit status " + itoa(*ev.ExitCode)
				}
				return send(&pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: end}})
			case "detached":
				return connect.NewError(connect.CodeUnavailable, errors.New("the sandbox was paused or stopped: "+ev.Reason))
			case "error":
				var ne nativeError
				_ = json.Unmarshal(ev.Error, &ne)
				ne.Status = http.StatusInternalServerError
				return rpcErr("follow the process", &ne)
			default:
				continue
			}
			if err := send(out); err != nil {
				return err
			}
		}
	}
}

// ended handles a stream whose request ended: at its deadline the process
// is killed (the command's timeout), otherwise the client just left.
func (p *processService) ended(ctx context.Context, e *envdCtx, pidPath string, err error) error {
	// The SDK aborts at its command timeout just as the request's own
	// deadline (Connect-Timeout-Ms) passes: either ends the command.
	dl, hasDeadline := ctx.Deadline()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || (hasDeadline && ctx.Err() != nil && time.Until(dl) < time.Second) {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = e.c.json(kctx, "POST", pidPath+"/signal", nil, map[string]any{"signal": "KILL"}, nil)
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("the command's timeout passed; it was killed"))
	}
	return rpcErr("follow the process", err)
}

func signalName(n int) string {
	names := map[int]string{1: "hangup", 2: "interrupt", 3: "quit", 6: "aborted", 9: "killed", 13: "broken pipe", 14: "alarm clock", 15: "terminated"}
	if s, ok := names[n]; ok {
		return s
	}
	return "signal " + itoa(n)
}

func (p *processService) List(ctx context.Context, req *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	e := envdFrom(ctx)
	var res struct {
		Processes []nativeProcess `json:"processes"`
	}
	if err := e.c.json(ctx, "GET", e.sbPath("/processes"), nil, nil, &res); err != nil {
		return nil, rpcErr("list the processes", err)
	}
	out := &pb.ListResponse{}
	for _, np := range res.Processes {
		if !np.Running {
			continue
		}
		pid := uint32(np.PID)
		info := &pb.ProcessInfo{Pid: pid}
		if m := p.s.procs.get(e.sandbox, pid); m != nil {
			cwd := m.cwd
			info.Config = &pb.ProcessConfig{Cmd: m.cmd, Args: m.args, Envs: m.envs, Cwd: &cwd}
			if m.tag != "" {
				tag := m.tag
				info.Tag = &tag
			}
		} else {
			cwd := np.Cwd
			info.Config = &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", np.Command}, Cwd: &cwd}
		}
		out.Processes = append(out.Processes, info)
	}
	return connect.NewResponse(out), nil
}

func (p *processService) Update(ctx context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	return nil, unimplemented("terminals (PTY resize)")
}

func (p *processService) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	e := envdFrom(ctx)
	var pid uint32
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *pb.StreamInputRequest_Start:
			var err error
			if pid, err = p.selectPID(e, ev.Start.GetProcess()); err != nil {
				return nil, err
			}
		case *pb.StreamInputRequest_Data:
			if pid == 0 {
				return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("send the start event (which process) first"))
			}
			if err := p.input(ctx, e, pid, ev.Data.GetInput()); err != nil {
				return nil, err
			}
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

func (p *processService) input(ctx context.Context, e *envdCtx, pid uint32, in *pb.ProcessInput) error {
	switch v := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		for data := v.Stdin; len(data) > 0; {
			n := min(len(data), 512<<10)
			body := map[string]any{"data_base64": base64.StdEncoding.EncodeToString(data[:n])}
			if err := e.c.json(ctx, "POST", e.sbPath("/processes/"+strconv.FormatUint(uint64(pid), 10)+"/stdin"), nil, body, nil); err != nil {
				return rpcErr("send to the process's stdin", err)
			}
			data = data[n:]
		}
		return nil
	case *pb.ProcessInput_Pty:
		return unimplemented("terminals (PTY input)")
	}
	return connect.NewError(connect.CodeInvalidArgument, errors.New("input must be stdin"))
}

func (p *processService) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	e := envdFrom(ctx)
	pid, err := p.selectPID(e, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := p.input(ctx, e, pid, req.Msg.GetInput()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

func (p *processService) SendSignal(ctx context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	e := envdFrom(ctx)
	pid, err := p.selectPID(e, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	var sig string
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGKILL:
		sig = "KILL"
	case pb.Signal_SIGNAL_SIGTERM:
		sig = "TERM"
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("signal must be SIGKILL or SIGTERM"))
	}
	pidPath := e.sbPath("/processes/" + strconv.FormatUint(uint64(pid), 10))
	var np nativeProcess
	if err := e.c.json(ctx, "GET", pidPath, nil, nil, &np); err != nil {
		return nil, rpcErr("find the process", err)
	}
	if !np.Running {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process %d is not running", pid))
	}
	if err := e.c.json(ctx, "POST", pidPath+"/signal", nil, map[string]any{"signal": sig}, nil); err != nil {
		return nil, rpcErr("signal the process", err)
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

func (p *processService) CloseStdin(ctx context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	e := envdFrom(ctx)
	pid, err := p.selectPID(e, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := e.c.json(ctx, "POST", e.sbPath("/processes/"+strconv.FormatUint(uint64(pid), 10)+"/stdin"), nil, map[string]any{"eof": true}, nil); err != nil {
		return nil, rpcErr("close the process's stdin", err)
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}
