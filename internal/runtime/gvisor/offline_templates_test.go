package gvisor_test

import (
	"context"
	"regexp"
	"sort"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/template"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// pipInstallWheel makes a wheel in the sandbox and installs it with the
// system pip, outside a venv and without an index: what PEP 668 would
// refuse on a stock Debian 12.
const pipInstallWheel = `cd /tmp && python3 - <<'EOF'
import zipfile
info = "hello_orkestr-1.0.dist-info/"
files = {
    "hello_orkestr.py": "print('hello from a wheel')\n",
    info + "METADATA": "Metadata-Version: 2.1\nName: hello-orkestr\nVersion: 1.0\n",
    info + "WHEEL": "Wheel-Version: 1.0\nGenerator: orkestr-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
files[info + "RECORD"] = "".join(n + ",,\n" for n in files) + info + "RECORD,,\n"
with zipfile.ZipFile("hello_orkestr-1.0-py3-none-any.whl", "w") as z:
    for name, body in files.items():
        z.writestr(name, body)
EOF
pip install --no-index -q /tmp/hello_orkestr-1.0-py3-none-any.whl && cd / && python -c 'import hello_orkestr'`

// offlineChecks are, per offline template, commands and the regexp their
// whole stdout must match.
var offlineChecks = map[string][]struct{ cmd, stdout string }{
	"debian-12": {
		{`cat /etc/debian_version`, `^12\.\d+\n$`},
	},
	"python-3.11": {
		{`python3 --version`, `^Python 3\.11\.\d+\n$`},
		{`python --version`, `^Python 3\.11\.\d+\n$`},
		{`pip --version`, `^pip \S+ from \S+ \(python 3\.11\)\n$`},
		{`python3 -m venv /tmp/v && /tmp/v/bin/pip --version`, `^pip \S+ from /tmp/v/lib/python3\.11/site-packages/pip \(python 3\.11\)\n$`},
		{`/tmp/v/bin/python -c 'import sys; print(sys.prefix)'`, `^/tmp/v\n$`},
		{pipInstallWheel, `^hello from a wheel\n$`},
	},
	"node-22": {
		{`node -v`, `^v22\.\d+\.\d+\n$`},
		{`npm -v`, `^10\.\d+\.\d+\n$`},
		{`npx --version`, `^10\.\d+\.\d+\n$`},
		{`node -e 'console.log(1+1)'`, `^2\n$`},
		{`cd /tmp && npm init -y >/dev/null && node -p 'require("./package.json").name'`, `^tmp\n$`},
	},
	// What E2B's "base" promises the e2b SDKs (internal/e2b): bash,
	// Python with pip, Node with npm, git, and the user `user`.
	"e2b-base": {
		{`bash -c 'echo $BASH_VERSION'`, `^5\.\d+\S*\n$`},
		{`python3 --version`, `^Python 3\.11\.\d+\n$`},
		{`pip --version`, `^pip \S+ from \S+ \(python 3\.11\)\n$`},
		{`node -v && npm -v`, `^v22\.\d+\.\d+\n10\.\d+\.\d+\n$`},
		{`git --version`, `^git version 2\.\d+\.\d+\n$`},
		{`id -u user && getent passwd user | cut -d: -f6`, `^1000\n/home/user\n$`},
	},
}

// TestOfflineTemplates starts a sandbox of every offline template `make
// templates` builds and runs its language in it. A template that is not
// built fails the test: CI builds them all.
func TestOfflineTemplates(t *testing.T) {
	env := testenv.NewDriver(t)
	store := template.Store{Dir: testenv.TemplateDir()}
	var names []string
	for name := range template.Recipes {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			checks, ok := offlineChecks[name]
			if !ok {
				t.Fatalf("offline template %s has no checks: add some to offlineChecks", name)
			}
			rootfs, err := store.Rootfs(name)
			if err != nil {
				t.Fatalf("%v: run `make templates` (CI builds every offline template)", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			sb, err := env.Driver.Create(ctx, runtime.Spec{Template: name, Rootfs: rootfs, Resources: testenv.Small})
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Destroy(context.Background())
			for _, c := range checks {
				out := run(t, sb, runtime.ExecRequest{Command: c.cmd, Timeout: 50 * time.Second})
				if out.ExitCode != 0 || out.TimedOut {
					t.Errorf("%s: exit %d (timed out %v)\nstdout: %s\nstderr: %s", c.cmd, out.ExitCode, out.TimedOut, out.Stdout, out.Stderr)
					continue
				}
				if !regexp.MustCompile(c.stdout).MatchString(out.Stdout) {
					t.Errorf("%s: stdout %q does not match %s (stderr %q)", c.cmd, out.Stdout, c.stdout, out.Stderr)
				}
			}
		})
	}
}
