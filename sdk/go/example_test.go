package orkestr_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"syscall"
	"time"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

func Example() {
	ctx := context.Background()
	c, err := orkestr.NewClient() // ORKESTR_API_KEY, ORKESTR_BASE_URL
	if err != nil {
		log.Fatal(err)
	}
	err = c.WithTempSandbox(ctx, orkestr.CreateParams{Template: "python-3.12"}, func(sbx *orkestr.Sandbox) error {
		if err := sbx.Files().Write(ctx, "/workspace/main.py", "print(sum(range(1_000_000)))"); err != nil {
			return err
		}
		res, err := sbx.Exec(ctx, "python /workspace/main.py", orkestr.ExecOptions{})
		if err != nil {
			return err
		}
		fmt.Print(res.Stdout) // 499999500000
		return nil
	})
	var plan *orkestr.PlanLimitError
	if errors.As(err, &plan) {
		log.Fatalf("plan limit %s: %s", plan.Code, plan.Message)
	}
	if err != nil {
		log.Fatal(err)
	}
}

func ExampleSandbox_ExecStream() {
	ctx := context.Background()
	c, _ := orkestr.NewClient()
	sbx := c.Sandbox("sbx_01HXYZ")
	st, err := sbx.ExecStream(ctx, "python long_task.py", orkestr.ExecOptions{TimeoutSeconds: 600})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	for chunk := range st.Chunks() {
		if chunk.Stream == orkestr.StreamStdout {
			os.Stdout.WriteString(chunk.Data)
		} else {
			os.Stderr.WriteString(chunk.Data)
		}
	}
	res, err := st.Wait()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit code", res.ExitCode)
}

func ExampleClient_ListSandboxes() {
	ctx := context.Background()
	c, _ := orkestr.NewClient()
	for sbx, err := range c.ListSandboxes(ctx, orkestr.ListParams{Status: orkestr.StatusRunning}) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(sbx.ID, sbx.Template, sbx.CreatedAt)
	}
}

func ExampleSandbox_Pause() {
	ctx := context.Background()
	c, _ := orkestr.NewClient()
	sbx, err := c.CreateSandbox(ctx, orkestr.CreateParams{Template: "node-22", Network: orkestr.NetworkRestricted})
	if err != nil {
		log.Fatal(err)
	}
	paused, err := sbx.Pause(ctx)
	var capErr *orkestr.SnapshotCapReachedError
	if errors.As(err, &capErr) {
		log.Fatalf("the plan keeps %d paused sandboxes", capErr.Cap)
	}
	if err != nil {
		log.Fatal(err)
	}
	// ... minutes or hours later, from any process:
	resumed, err := c.ResumeSandbox(ctx, paused.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resumed.Status) // running
}

func ExampleSandbox_StartProcess() {
	ctx := context.Background()
	c, err := orkestr.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	sbx := c.Sandbox(os.Getenv("SANDBOX_ID"))
	// A dev server in the background, as the unprivileged user.
	srv, err := sbx.StartProcess(ctx, "python3 -u -m http.server 8000", orkestr.ProcessOptions{User: orkestr.UserUser})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("pid", srv.PID)
	// Its log so far and as it comes, until ctx ends (the server goes on).
	logCtx, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	_ = srv.Attach(logCtx, orkestr.AttachOptions{Replay: true, Stdout: os.Stdout, Stderr: os.Stderr})
	if err := srv.SendSignal(ctx, syscall.SIGTERM); err != nil {
		log.Fatal(err)
	}
	if err := srv.Wait(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit", *srv.ExitCode)
}

func ExampleFiles_OpenWatch() {
	ctx := context.Background()
	c, err := orkestr.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	files := c.Sandbox(os.Getenv("SANDBOX_ID")).Files()
	w, err := files.OpenWatch(ctx, "/workspace", true)
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	for ev, err := range w.Events() {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(ev.Type, ev.Path) // create src/main.py, write src/main.py, ...
	}
}
