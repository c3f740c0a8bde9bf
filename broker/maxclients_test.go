package broker_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

// rawConnect dials, sends an MQTT 5 CONNECT and returns the connection and
// the CONNACK reason code.
func rawConnect(addr, id string) (net.Conn, byte, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, 0, err
	}
	pk, err := mqtttest.Encode(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true, Keepalive: 60},
	})
	if err != nil {
		c.Close()
		return nil, 0, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(pk); err != nil {
		c.Close()
		return nil, 0, err
	}
	r := bufio.NewReader(c)
	head := make([]byte, 4) // type, remaining length (< 128 here), flags, reason
	if _, err := io.ReadFull(r, head); err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("%s: CONNACK: %w", id, err)
	}
	if head[0] != packets.Connack<<4 {
		c.Close()
		return nil, 0, fmt.Errorf("%s: got packet %#x, not CONNACK", id, head[0])
	}
	if _, err := r.Discard(int(head[1]) - 2); err != nil {
		c.Close()
		return nil, 0, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, head[3], nil
}

// 2,000 connections against limits.max_clients of 1,000: the first 1,000
// are admitted and keep working, the rest get CONNACK 0x97, and the memory
// they cost is bounded (logged for the notes).
func TestMaxClients(t *testing.T) {
	const limit, tries = 1000, 2000
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < 2*limit+tries/2+200 {
		t.Skipf("open file limit %d is too low for %d connections on both ends", rl.Cur, tries)
	}
	b := brokertest.Run(t, func(c *broker.Config) { c.Limits.MaxClients = limit })
	addr := b.Addr().String()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	var (
		mu       sync.Mutex
		admitted []net.Conn
		refused  int
		failures []error
	)
	work := make(chan int)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				c, code, err := rawConnect(addr, fmt.Sprintf("c%04d", i))
				mu.Lock()
				switch {
				case err != nil:
					failures = append(failures, err)
				case code == 0:
					admitted = append(admitted, c)
				case code == packets.ErrQuotaExceeded.Code:
					refused++
					c.Close()
				default:
					failures = append(failures, fmt.Errorf("CONNACK %#x", code))
					c.Close()
				}
				mu.Unlock()
			}
		}()
	}
	for i := range tries {
		work <- i
	}
	close(work)
	wg.Wait()
	defer func() {
		for _, c := range admitted {
			c.Close()
		}
	}()
	if len(failures) > 0 {
		t.Fatalf("%d connections failed, first: %v", len(failures), failures[0])
	}
	if len(admitted) != limit || refused != tries-limit {
		t.Fatalf("admitted %d, refused %d; want %d and %d", len(admitted), refused, limit, tries-limit)
	}

	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	perClient := (int64(after.HeapInuse) - int64(before.HeapInuse)) / limit
	t.Logf("heap in use: %.1f MiB before, %.1f MiB with %d clients connected (%d KiB each, test clients included)",
		float64(before.HeapInuse)/(1<<20), float64(after.HeapInuse)/(1<<20), limit, perClient>>10)
	if perClient > 256<<10 {
		t.Errorf("%d KiB of heap per connected client", perClient>>10)
	}

	// Every admitted client still works: PINGREQ, PINGRESP.
	for i, c := range admitted {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{packets.Pingreq << 4, 0}); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	for i, c := range admitted {
		resp := make([]byte, 2)
		if _, err := io.ReadFull(c, resp); err != nil || resp[0] != packets.Pingresp<<4 {
			t.Fatalf("client %d: PINGRESP %x, %v", i, resp, err)
		}
	}
	if got := atomic.LoadInt64(&b.Server().Info.ClientsConnected); got != limit {
		t.Fatalf("broker counts %d clients", got)
	}
}
