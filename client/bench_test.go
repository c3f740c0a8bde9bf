package client_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/eclipse/paho.golang/paho"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/client"
	"github.com/tarsmq/tarsmq/internal/brokertest"
)

type benchData struct {
	Seq int `json:"seq"`
}

func benchBroker(b *testing.B) *broker.Broker {
	return brokertest.Run(b, func(c *broker.Config) { c.Store.Sync, c.Limits.PublishRate = false, 0 })
}

func benchClient(b *testing.B, url, id string) *client.Client {
	c, err := client.New(client.Config{URL: url, ClientID: id, Keepalive: client.Seconds(30 * time.Second),
		ReconnectMinDelay: client.Seconds(100 * time.Millisecond), ReconnectMaxDelay: client.Seconds(time.Second),
		SessionExpiry: time.Hour, PublishQueue: 1000, HandlerQueue: 100000})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Connect(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// BenchmarkPublish is the rate one client publishes envelopes to one
// subscribing client: QoS 0, QoS 1 one at a time (each waits for its PUBACK),
// and QoS 1 from 8 goroutines, over the socket and TCP.
func BenchmarkPublish(b *testing.B) {
	br := benchBroker(b)
	for _, network := range []string{"unix", "tcp"} {
		url := map[string]string{"unix": "unix://" + br.SocketPath(), "tcp": "tcp://" + br.Addr().String()}[network]
		for _, mode := range []struct {
			name       string
			qos        byte
			goroutines int
		}{{"qos0", 0, 1}, {"qos1", 1, 1}, {"qos1x8", 1, 8}} {
			b.Run(network+"/"+mode.name, func(b *testing.B) {
				topic := fmt.Sprintf("bench/%s/%s", network, mode.name)
				done, got := countTo(b, benchClient(b, url, "bsub-"+network+mode.name), topic, b.N)
				pub := benchClient(b, url, "bpub-"+network+mode.name)
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for g := range mode.goroutines {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := g; i < b.N; i += mode.goroutines {
							if err := pub.PublishEvent(context.Background(), topic, "bench.msg", benchData{Seq: i}, client.QoS(mode.qos)); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				select {
				case <-done:
				case <-time.After(60 * time.Second):
					b.Fatalf("received %d of %d", got.Load(), b.N)
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			})
		}
	}
}

// BenchmarkRoundTrip is the latency of a request and its reply through the
// broker (client → broker → responder → broker → client), at QoS 1.
func BenchmarkRoundTrip(b *testing.B) {
	br := benchBroker(b)
	for _, network := range []string{"unix", "tcp"} {
		url := map[string]string{"unix": "unix://" + br.SocketPath(), "tcp": "tcp://" + br.Addr().String()}[network]
		b.Run(network, func(b *testing.B) {
			srv := benchClient(b, url, "echo-"+network)
			if _, err := srv.Subscribe(context.Background(), "bench/echo/"+network, func(ctx context.Context, m client.Message) error {
				return srv.Reply(ctx, m, "bench.pong", nil)
			}); err != nil {
				b.Fatal(err)
			}
			c := benchClient(b, url, "asker-"+network)
			h := hdrhistogram.New(1, int64(10*time.Second/time.Microsecond), 3)
			ctx := context.Background()
			if _, err := c.Request(ctx, "bench/echo/"+network, "bench.ping", nil); err != nil { // warm up the reply subscription
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if _, err := c.Request(ctx, "bench/echo/"+network, "bench.ping", nil); err != nil {
					b.Fatal(err)
				}
				_ = h.RecordValue(time.Since(t0).Microseconds())
			}
			b.ReportMetric(float64(h.ValueAtQuantile(50)), "p50-µs")
			b.ReportMetric(float64(h.ValueAtQuantile(99)), "p99-µs")
		})
	}
}

// BenchmarkPublishPahoPeer is the peer of BenchmarkPublish: paho.golang's
// client publishing the same-sized envelope bytes directly, with no
// envelope building, queue or handler goroutines of ours; the subscriber is
// the same.
func BenchmarkPublishPahoPeer(b *testing.B) {
	br := benchBroker(b)
	for _, qos := range []byte{0, 1} {
		b.Run(fmt.Sprintf("unix/qos%d", qos), func(b *testing.B) {
			url := "unix://" + br.SocketPath()
			topic := fmt.Sprintf("bench/peer/%d", qos)
			done, got := countTo(b, benchClient(b, url, fmt.Sprintf("peer-sub-%d", qos)), topic, b.N)
			conn, err := net.Dial("unix", br.SocketPath())
			if err != nil {
				b.Fatal(err)
			}
			id := fmt.Sprintf("peer-pub-%d", qos)
			pc := paho.NewClient(paho.ClientConfig{ClientID: id, Conn: conn})
			if _, err := pc.Connect(context.Background(), &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil {
				b.Fatal(err)
			}
			defer pc.Disconnect(&paho.Disconnect{})
			payload := []byte(`{"id":"9f1c2b3a4d5e4f60a1b2c3d4e5f60718","type":"bench.msg","ts":1729123456.789123,"source":"` + id + `","data":{"seq":1}}`)
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				if _, err := pc.Publish(context.Background(), &paho.Publish{Topic: topic, QoS: qos, Payload: payload}); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				b.Fatalf("received %d of %d", got.Load(), b.N)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// countTo subscribes sub to topic and returns a channel closed once n
// messages have arrived, and the count so far.
func countTo(b *testing.B, sub *client.Client, topic string, n int) (<-chan struct{}, *atomic.Int64) {
	got := new(atomic.Int64)
	done := make(chan struct{})
	if _, err := sub.Subscribe(context.Background(), topic, func(context.Context, client.Message) error {
		if got.Add(1) == int64(n) {
			close(done)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	return done, got
}
