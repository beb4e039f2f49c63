module github.com/orkestr-eu/orkestr

go 1.26.0

require (
	github.com/hashicorp/yamux v0.1.2
	github.com/oklog/ulid/v2 v2.1.2
	github.com/opencontainers/runtime-spec v1.2.1
	golang.org/x/sys v0.50.0
)
