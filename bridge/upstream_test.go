package bridge_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/tarsmq/tarsmq/bridge"
	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/hooks/auth"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
	"github.com/tarsmq/tarsmq/internal/passwd"
)

// mosquittoPath finds Debian's mosquitto (in /usr/sbin, often not on a
// user's PATH). Without it the test is skipped, except in CI, where
// .ci/run installs it.
func mosquittoPath(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"mosquitto", "/usr/sbin/mosquitto"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("mosquitto is missing in CI: .ci/run must install it")
	}
	t.Skip("mosquitto not installed (apt-get install mosquitto)")
	return ""
}

// mosquitto is a Mosquitto broker on a loopback port, with persistence, so
// that a session outlives a restart.
type mosquitto struct {
	t       testing.TB
	bin     string
	conf    string
	address string
	cmd     *exec.Cmd
	exited  chan struct{}
}

func startMosquitto(t testing.TB) *mosquitto { return startMosquittoWith(t, "") }

// startMosquittoWith starts mosquitto with more lines of config.
func startMosquittoWith(t testing.TB, extra string) *mosquitto {
	t.Helper()
	m := &mosquitto{t: t, bin: mosquittoPath(t), address: freePort(t)}
	dir := t.TempDir()
	_, port, _ := net.SplitHostPort(m.address)
	conf := fmt.Sprintf("listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nmax_queued_messages 10000\n", port, dir)
	if os.Getuid() == 0 {
		conf += "user root\n" // otherwise it switches to user mosquitto, who cannot write dir
	}
	conf += extra
	m.conf = filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(m.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	m.start()
	t.Cleanup(m.stop)
	return m
}

func (m *mosquitto) start() {
	m.t.Helper()
	m.cmd = exec.Command(m.bin, "-c", m.conf)
	out := &brokertest.LogBuffer{}
	m.cmd.Stdout, m.cmd.Stderr = out, out
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	m.exited = make(chan struct{})
	go func() { _ = m.cmd.Wait(); close(m.exited) }()
	waitFor(m.t, "mosquitto to listen", func() bool {
		select {
		case <-m.exited:
			m.t.Fatalf("mosquitto exited:\n%s", out.String())
		default:
		}
		c, err := net.Dial("tcp", m.address)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// stop ends mosquitto with SIGTERM, after which it saves its sessions.
func (m *mosquitto) stop() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
	m.cmd = nil
}

// Against Debian's Mosquitto, over MQTT 5 and 3.1.1: telemetry goes up
// under the device's prefix and commands come down; with Mosquitto stopped
// for a while, every QoS 1 message queued meanwhile arrives once and in
// order after it is back.
func TestMosquittoUpstream(t *testing.T) {
	for _, protocol := range []string{"5", "3.1.1"} {
		t.Run("mqtt"+protocol, func(t *testing.T) {
			up := startMosquitto(t)
			dev := local(t, "robot9", bridge.Config{Name: "fleet", URL: "mqtt://" + up.address, Protocol: protocol,
				Out: []bridge.Rule{{Topic: "telemetry/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}},
				In:  []bridge.Rule{{Topic: "commands/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}},
			})
			waitFor(t, "the bridge to connect", connected(dev))
			forwardAndOutage(t, dev, up.address, func() { up.stop() }, func() { up.start() })
		})
	}
}

// forwardAndOutage checks both directions and then an outage of the
// upstream at address, ended by restart.
func forwardAndOutage(t *testing.T, dev *broker.Broker, address string, stop, restart func()) {
	t.Helper()
	sub := mqtttest.Dial(t, "tcp", address, mqtttest.V5)
	sub.Connect("fleet-db", persistent)
	sub.Subscribe("fleet/robot9/telemetry/#", 1)
	svc := mqtttest.Dial(t, "unix", dev.SocketPath(), mqtttest.V5)
	svc.Connect("arm", nil)
	svc.Subscribe("commands/#", 1)
	for i := range 10 {
		svc.Publish("telemetry/arm", env("arm", fmt.Sprintf("a%d", i)), 1, false)
	}
	receiveInOrder(t, sub, "a", 10)
	op := mqtttest.Dial(t, "tcp", address, mqtttest.V5)
	op.Connect("operator", nil)
	op.Publish("fleet/robot9/commands/arm", env("operator", "stop"), 1, false)
	got := svc.Expect(packets.Publish, 0)
	svc.Ack(got)
	if got.TopicName != "commands/arm" || textOf(t, got.Payload) != "stop" {
		t.Fatalf("device got %s %q", got.TopicName, got.Payload)
	}
	sub.Disconnect()
	op.Disconnect()

	stop()
	waitFor(t, "the bridge to notice", func() bool { return !dev.Bridges()[0].Connected })
	const n = 300
	for i := range n {
		if ack := svc.Publish("telemetry/arm", env("arm", fmt.Sprintf("b%d", i)), 1, false); ack.ReasonCode != 0 {
			t.Fatalf("local publish %d: %#x", i, ack.ReasonCode)
		}
	}
	restart()
	sub = mqtttest.Dial(t, "tcp", address, mqtttest.V5)
	if ack := sub.Connect("fleet-db", persistent); !ack.SessionPresent {
		t.Fatal("the upstream lost the subscriber's session")
	}
	receiveInOrder(t, sub, "b", n)
	waitFor(t, "the queue to empty", func() bool { return dev.Bridges()[0].Queued == 0 })
}

// The same against a tarsmq upstream over MQTT 3.1.1.
func TestV311Upstream(t *testing.T) {
	upCfg := brokertest.Config(t)
	relay(&upCfg)
	up := brokertest.Start(t, upCfg, brokertest.Logger())
	upCfg.Listeners.TCP.Address = up.Addr().String()
	dev := local(t, "robot9", bridge.Config{Name: "fleet", URL: "tcp://" + up.Addr().String(), Protocol: "3.1.1",
		Out: []bridge.Rule{{Topic: "telemetry/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}},
		In:  []bridge.Rule{{Topic: "commands/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}},
	})
	waitFor(t, "the bridge to connect", connected(dev))
	forwardAndOutage(t, dev, up.Addr().String(),
		func() {
			if err := up.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
		},
		func() { up = brokertest.Start(t, upCfg, brokertest.Logger()) })
}

// An upstream that wants TLS and a password: the bridge trusts its
// certificate through tls.ca_file and logs in from password_file; with a
// wrong password it stays down and says why, queueing meanwhile.
func TestTLSAndPasswordUpstream(t *testing.T) {
	dir := t.TempDir()
	brokertest.WriteCert(t, dir, 1)
	users := filepath.Join(dir, "passwd")
	if err := passwd.Set(users, "robot8", "s3cret", bcrypt.MinCost); err != nil {
		t.Fatal(err)
	}
	up := brokertest.Run(t, func(c *broker.Config) {
		relay(c)
		c.Listeners.TCP.TLSCertFile, c.Listeners.TCP.TLSKeyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		c.Auth.PasswordFile = users
		c.Auth.AllowAnonymous = auth.ToggleFalse
	})
	for _, pw := range []string{"wrong", "s3cret"} {
		t.Run(pw, func(t *testing.T) {
			pwFile := filepath.Join(t.TempDir(), "fleet.password")
			if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			dev := local(t, "robot8", bridge.Config{Name: "fleet", URL: "mqtts://" + up.Addr().String(),
				Username: "robot8", PasswordFile: pwFile, TLS: bridge.TLSConfig{CAFile: filepath.Join(dir, "cert.pem")},
				Out: []bridge.Rule{{Topic: "telemetry/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}}})
			if pw == "wrong" {
				waitFor(t, "the refusal", func() bool { return strings.Contains(dev.Bridges()[0].LastError, "0x86") })
				if s := dev.Bridges()[0]; s.Connected {
					t.Fatalf("connected with a wrong password: %+v", s)
				}
				return
			}
			waitFor(t, "the bridge to connect", connected(dev))
			pub := mqtttest.Dial(t, "unix", dev.SocketPath(), mqtttest.V5)
			pub.Connect("imu", nil)
			pub.Publish("telemetry/imu", env("imu", "over tls"), 1, false)
			waitFor(t, "the message to go up", func() bool { return dev.Bridges()[0].ForwardedOut == 1 })
		})
	}
}
