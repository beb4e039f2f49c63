package template

// e2b-base is what E2B's template "base" offers the e2b SDKs' users
// (docs/api.md, E2B-compatible API): bash, Python 3.11 with pip and venv as
// python-3.11 has them, git, and Node 22 with npm as node-22 has them, plus
// the sandbox user every template gets.
func init() {
	py, node := Recipes["python-3.11"], Recipes["node-22"]
	Recipes["e2b-base"] = Recipe{Name: "e2b-base", Suite: py.Suite, Variant: py.Variant, Mirror: py.Mirror,
		Packages: append(append([]string(nil), py.Packages...), "git"),
		NPM:      node.NPM,
		Finish: func(rootfs string) error {
			if err := py.Finish(rootfs); err != nil {
				return err
			}
			return node.Finish(rootfs)
		}}
}
