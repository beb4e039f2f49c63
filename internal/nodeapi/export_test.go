package nodeapi

// SpeakVersionForTest makes c speak API version v, as a control plane of
// a later build would.
func SpeakVersionForTest(c *Client, v int) { c.version.Store(int64(v)) }

// VersionForTest is the API version c speaks.
func VersionForTest(c *Client) int { return int(c.version.Load()) }
