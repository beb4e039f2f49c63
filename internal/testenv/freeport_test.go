package testenv

import "testing"

// TestFreePortNeverRepeats: the kernel hands a port just closed to the
// next listener often enough that 2,000 calls would repeat some (and two
// calls in a row once gave etcd the same client and peer port).
func TestFreePortNeverRepeats(t *testing.T) {
	seen := map[string]bool{}
	for range 2000 {
		addr := FreePort(t)
		if seen[addr] {
			t.Fatalf("FreePort returned %s twice", addr)
		}
		seen[addr] = true
	}
}
