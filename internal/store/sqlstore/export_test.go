package sqlstore

// AsOlderBinary makes Open know only the first n migrations until the
// returned func is called, as an orkestrd built before the others would.
func AsOlderBinary(n int) (restore func()) {
	knownMigrations = n
	return func() { knownMigrations = 0 }
}
