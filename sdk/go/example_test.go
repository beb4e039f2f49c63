package orkestr_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

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
