package broker_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

// MQTT over TLS on the TCP listener; a reload picks up a renewed
// certificate for new connections.
func TestTLSListener(t *testing.T) {
	dir := t.TempDir()
	first := brokertest.WriteCert(t, dir, 1)
	cfg := brokertest.Config(t)
	cfg.Listeners.TCP.TLSCertFile, cfg.Listeners.TCP.TLSKeyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	b := brokertest.Start(t, cfg, brokertest.Logger())

	dial := func(trust *x509.Certificate) (*tls.Conn, error) {
		pool := x509.NewCertPool()
		pool.AddCert(trust)
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", b.Addr().String(), &tls.Config{RootCAs: pool})
	}
	conn, err := dial(first)
	if err != nil {
		t.Fatal(err)
	}
	c := mqtttest.New(t, conn, mqtttest.V5)
	if ack := c.Connect("secure", nil); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x over TLS", ack.ReasonCode)
	}
	if got := c.Publish("secure/x", []byte(envFrom("secure", "hi")), 1, false); got.ReasonCode != 0 {
		t.Fatalf("PUBACK %#x over TLS", got.ReasonCode)
	}

	plain := mqtttest.Dial(t, "tcp", b.Addr().String(), mqtttest.V5)
	_ = plain.TrySend(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "plain", Clean: true}})
	if err := plain.Closed(15 * time.Second); err == nil {
		t.Fatal("a plain MQTT client is still connected to the TLS listener")
	}

	second := brokertest.WriteCert(t, dir, 2)
	if err := b.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	renewed, err := dial(second)
	if err != nil {
		t.Fatalf("after reload: %v", err)
	}
	defer renewed.Close()
	if got := renewed.ConnectionState().PeerCertificates[0].SerialNumber.Int64(); got != 2 {
		t.Fatalf("serving certificate %d after reload", got)
	}
}
