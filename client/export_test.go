package client

// CutConnection drops the network connection without DISCONNECT, as a
// crash or a pulled cable would (the broker then sends the will).
func (c *Client) CutConnection() { c.cm.TerminateConnectionForTest() }

// PendingRequests is how many requests wait for a reply.
func (c *Client) PendingRequests() int {
	c.replies.mu.Lock()
	defer c.replies.mu.Unlock()
	return len(c.replies.pending)
}
