package flow

import (
	"errors"
	"net"
	"os"
	"time"
)

// writeLoop sends what is ready, in batches (one writev each), until the
// connection closes and its linger has passed.
func (c *Conn) writeLoop() {
	defer close(c.done)
	defer c.ctl.conns.Done()
	var batch [][]byte
	var joined []byte
	for {
		c.mu.Lock()
		for len(c.out) == 0 && !c.closed {
			c.mu.Unlock()
			<-c.wake
			c.mu.Lock()
		}
		if len(c.out) == 0 || (c.closed && !time.Now().Before(c.lingerEnd)) {
			c.mu.Unlock()
			break
		}
		batch, c.out = c.out, batch[:0]
		msgs, size := c.outMsgs, c.outBytes
		c.outMsgs, c.outBytes = 0, 0
		deadline := time.Now().Add(c.ctl.cfg.WriteTimeout)
		if c.closed {
			deadline = c.lingerEnd
		}
		_ = c.Conn.SetWriteDeadline(deadline)
		c.mu.Unlock()

		var err error
		c.writeStart.Store(time.Now().UnixNano())
		switch c.Conn.(type) {
		case *net.TCPConn, *net.UnixConn:
			bufs := net.Buffers(batch)
			_, err = bufs.WriteTo(c.Conn) // one writev
		default: // e.g. WebSocket: one message per batch
			joined = joined[:0]
			for _, b := range batch {
				joined = append(joined, b...)
			}
			_, err = c.Conn.Write(joined)
		}
		c.writeStart.Store(0)
		clear(batch)

		c.mu.Lock()
		c.addPendingLocked(-int64(msgs), -size)
		c.updateLocked()
		closed := c.closed
		c.mu.Unlock()
		if err != nil {
			if !closed {
				c.writeFailed(err)
			}
			break
		}
	}
	c.mu.Lock()
	c.addPendingLocked(-c.pendMsgs.Load(), -c.pendBytes.Load()) // what was never sent leaves the broker's total
	c.mu.Unlock()
	_ = c.Conn.Close()
}

// addPendingLocked counts publishes accepted (or, negative, written or
// discarded) on this connection and in the broker's total.
func (c *Conn) addPendingLocked(msgs, bytes int64) {
	c.pendMsgs.Add(msgs)
	c.pendBytes.Add(bytes)
	c.ctl.queuedBytes.Add(bytes)
}

func (c *Conn) writeFailed(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.ctl.Log.Warn("client accepted no data within the write timeout; disconnecting it",
			"client", c.clientID, "write_timeout", c.ctl.cfg.WriteTimeout)
	} else {
		c.ctl.Log.Debug("write to client failed", "client", c.clientID, "error", err)
	}
	c.mu.Lock()
	c.closeLocked()
	c.mu.Unlock()
	_ = c.Conn.SetReadDeadline(time.Now()) // the broker's read loop ends and cleans up
}
