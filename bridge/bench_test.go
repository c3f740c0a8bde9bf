package bridge_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/bridge"
	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

// payload200 is a valid envelope of about 200 bytes.
func payload200(i int) []byte {
	return env("imu", fmt.Sprintf("%-120d", i))
}

// benchPair is a device broker bridged to an upstream tarsmq, and a
// subscriber upstream that counts what arrives.
func benchPair(b *testing.B, sync bool) (dev *broker.Broker, upCfg broker.Config, up *broker.Broker) {
	upCfg = brokertest.Config(b)
	relay(&upCfg)
	up = brokertest.Start(b, upCfg, brokertest.Logger())
	upCfg.Listeners.TCP.Address = up.Addr().String()
	dev = brokertest.Run(b, func(c *broker.Config) {
		relay(c)
		c.DeviceID = "bench"
		c.Store.Sync = sync
		c.Bridges = []bridge.Config{fast(bridge.Config{Name: "fleet", URL: "tcp://" + up.Addr().String(),
			Out: []bridge.Rule{{Topic: "telemetry/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}}})}
	})
	return dev, upCfg, up
}

// count receives n QoS 1 messages on c and closes done.
func count(b *testing.B, c *mqtttest.Client, n int) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			pk, err := c.Next(packets.Publish, 0, 30*time.Second)
			if err != nil {
				b.Errorf("upstream got %d of %d: %v", i, n, err)
				return
			}
			c.Ack(pk)
		}
	}()
	return done
}

// publishAll publishes n QoS 1 messages from 4 local publishers.
func publishAll(b *testing.B, dev *broker.Broker, n int) { publishAllTo(b, dev.SocketPath(), n) }

// publishAllTo publishes n QoS 1 messages from 4 publishers on socket.
func publishAllTo(b *testing.B, socket string, n int) {
	var wg sync.WaitGroup
	for p := range 4 {
		pub := mqtttest.Dial(b, "unix", socket, mqtttest.V5)
		pub.Connect(fmt.Sprint("imu", p), nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := p; i < n; i += 4 {
				pub.Publish("telemetry/imu", payload200(i), 1, false)
			}
		}()
	}
	wg.Wait()
}

// Messages forwarded per second with the link up: 4 local publishers at
// QoS 1, through the queue, to a subscriber on the upstream. sync: the
// queue's writes are fsynced (store.sync, the default).
func BenchmarkBridgeForward(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) {
			dev, _, up := benchPair(b, sync)
			waitFor(b, "the bridge to connect", connected(dev))
			sub := mqtttest.Dial(b, "tcp", up.Addr().String(), mqtttest.V5)
			sub.Connect("fleet-db", nil)
			sub.Subscribe("fleet/#", 1)
			done := count(b, sub, b.N)
			b.ResetTimer()
			publishAll(b, dev, b.N)
			<-done
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
	// The peer: Mosquitto's own bridge, QoS 1, the same publishers over
	// its Unix socket, the same tarsmq upstream and subscriber. Its
	// persistence is a periodic snapshot, so it compares with sync=false.
	b.Run("mosquitto", func(b *testing.B) {
		upCfg := brokertest.Config(b)
		relay(&upCfg)
		up := brokertest.Start(b, upCfg, brokertest.Logger())
		sock := filepath.Join(b.TempDir(), "mq.sock")
		m := startMosquittoWith(b, fmt.Sprintf("listener 0 %s\nmax_queued_messages 1000000\n"+
			"connection fleet\naddress %s\ncleansession false\ntry_private false\ntopic telemetry/# out 1 \"\" fleet/bench/\n", sock, up.Addr()))
		_ = m
		sub := mqtttest.Dial(b, "tcp", up.Addr().String(), mqtttest.V5)
		sub.Connect("fleet-db", nil)
		sub.Subscribe("fleet/#", 1)
		waitFor(b, "mosquitto's bridge to connect", func() bool { return up.Connections() >= 2 })
		done := count(b, sub, b.N)
		b.ResetTimer()
		publishAllTo(b, sock, b.N)
		<-done
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}

// Messages forwarded per second when the link comes back to a full queue:
// b.N messages are queued with the upstream down, then it starts again and
// the clock runs until the last one arrived.
func BenchmarkBridgeDrain(b *testing.B) {
	dev, upCfg, up := benchPair(b, false)
	waitFor(b, "the bridge to connect", connected(dev))
	if err := up.Close(b.Context()); err != nil {
		b.Fatal(err)
	}
	waitFor(b, "the bridge to notice", func() bool { return !dev.Bridges()[0].Connected })
	publishAll(b, dev, b.N)
	// A persistent session upstream, so that nothing the bridge sends
	// before the subscriber is back is lost.
	up = brokertest.Start(b, upCfg, brokertest.Logger())
	sub := mqtttest.Dial(b, "tcp", up.Addr().String(), mqtttest.V5)
	sub.Connect("fleet-db", persistent)
	sub.Subscribe("fleet/#", 1)
	b.ResetTimer()
	<-count(b, sub, b.N)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// What the queue takes on disk per 10,000 messages of about 200 bytes: the
// growth of the store's directory (du) while they are queued, and what the
// queue counts.
func BenchmarkQueueDiskPer10k(b *testing.B) {
	const n = 10_000
	for range b.N {
		dev := local(b, "robot", bridge.Config{Name: "fleet", URL: "tcp://" + freePort(b),
			Queue: bridge.QueueConfig{MaxMessages: 2 * n},
			Out:   []bridge.Rule{{Topic: "telemetry/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}}})
		dir := filepath.Join(filepath.Dir(dev.SocketPath()), "state")
		before := du(b, dir)
		publishAll(b, dev, n)
		if q := dev.Bridges()[0].Queued; q != n {
			b.Fatalf("queued %d", q)
		}
		b.ReportMetric(float64(du(b, dir)-before), "disk-bytes/10k")
		b.ReportMetric(float64(dev.Bridges()[0].QueuedBytes), "queue-bytes/10k")
	}
}

// du is the disk space the files under dir take (allocated blocks).
func du(b *testing.B, dir string) int64 {
	var total int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && !fi.IsDir() {
			total += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return total
}
