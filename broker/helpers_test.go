package broker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/brokertest"
)

// endpoint is one way to reach a broker.
type endpoint struct{ network, address string }

func endpoints(b *broker.Broker) []endpoint {
	return []endpoint{{"tcp", b.Addr().String()}, {"unix", b.SocketPath()}}
}

// inbox collects the messages a paho client receives.
type inbox struct {
	mu   sync.Mutex
	msgs []*paho.Publish
	seen map[string]int // payload → times received
	cond *sync.Cond
}

func newInbox() *inbox {
	in := &inbox{seen: map[string]int{}}
	in.cond = sync.NewCond(&in.mu)
	return in
}

func (in *inbox) add(p *paho.Publish) {
	in.mu.Lock()
	in.msgs = append(in.msgs, p)
	in.seen[string(p.Payload)]++
	in.cond.Broadcast()
	in.mu.Unlock()
}

func (in *inbox) len() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.msgs)
}

// waitFor polls until the inbox holds n messages or the deadline passes.
func (in *inbox) waitFor(t testing.TB, n int, within time.Duration) {
	t.Helper()
	if !poll(within, func() bool { return in.len() >= n }) {
		t.Fatalf("received %d of %d messages within %v", in.len(), n, within)
	}
}

// duplicates returns the payloads received more than once.
func (in *inbox) duplicates() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	var d []string
	for p, n := range in.seen {
		if n > 1 {
			d = append(d, p)
		}
	}
	return d
}

// poll checks cond every few milliseconds until it holds or within passes.
var poll = brokertest.Poll

// pahoOpts tune a paho test client.
type pahoOpts struct {
	receiveMax uint16                // 0: the client default
	onPublish  func(p *paho.Publish) // runs on paho's read goroutine before the ack
}

// connectPaho connects an MQTT 5 paho.golang client over ep.
func connectPaho(t testing.TB, ep endpoint, clientID string, in *inbox, o pahoOpts) *paho.Client {
	t.Helper()
	conn, err := net.DialTimeout(ep.network, ep.address, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{
		ClientID: clientID,
		Conn:     conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				if o.onPublish != nil {
					o.onPublish(pr.Packet)
				}
				if in != nil {
					in.add(pr.Packet)
				}
				return true, nil
			},
		},
	})
	cp := &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true}
	if o.receiveMax > 0 {
		cp.Properties = &paho.ConnectProperties{ReceiveMaximum: &o.receiveMax}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("paho connect %s over %s: %v", clientID, ep.network, err)
	}
	if ca.ReasonCode != 0 {
		t.Fatalf("paho connect %s: reason %#x", clientID, ca.ReasonCode)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	return c
}

func subscribe(t testing.TB, c *paho.Client, filter string, qos byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] != qos {
		t.Fatalf("subscribe %s: reasons %v", filter, sa.Reasons)
	}
}

// publish publishes an envelope from source carrying text.
func publish(t testing.TB, c *paho.Client, source, topic, text string, qos byte, retain bool) *paho.PublishResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Publish(ctx, &paho.Publish{Topic: topic, Payload: []byte(envFrom(source, text)), QoS: qos, Retain: retain})
	if err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	return r
}

// envFrom returns a valid envelope from source whose data is {"text": text};
// the same arguments give the same bytes.
func envFrom(source, text string) string {
	return envSized(source, text, 0)
}

// envSized is envFrom padded to about size bytes.
func envSized(source, text string, size int) string {
	data := map[string]string{"text": text}
	if pad := size - 120 - len(text); pad > 0 {
		data["pad"] = strings.Repeat("x", pad)
	}
	b, err := json.Marshal(map[string]any{"id": "id-" + text, "type": "test.message", "ts": 1729123456.5, "source": source, "data": data})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// loadSource is the source of load test messages; load tests turn
// contract.bind_source off so every publisher may use it.
const loadSource = "load"

// payload is message i of sender, numbered so the receiver can find gaps and
// duplicates.
func payload(sender, i int) string { return envFrom(loadSource, fmt.Sprintf("p%d-%06d", sender, i)) }

// wsDialConn opens an MQTT WebSocket with the given Origin header ("" for none).
func wsDialConn(address, origin string) (*websocket.Conn, error) {
	h := http.Header{}
	if origin != "" {
		h.Set("Origin", origin)
	}
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial("ws://"+address+"/mqtt", h)
	return c, err
}

func wsDial(address, origin string) error {
	c, err := wsDialConn(address, origin)
	if err == nil {
		c.Close()
	}
	return err
}

// wsConnect sends CONNECT over a WebSocket and expects a successful CONNACK.
func wsConnect(t testing.TB, address, origin string) {
	t.Helper()
	c, err := wsDialConn(address, origin)
	if err != nil {
		t.Fatalf("websocket dial: %v", err)
	}
	defer c.Close()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "ws", Clean: true, Keepalive: 30},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.BinaryMessage, buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, msg, err := c.ReadMessage()
	if err != nil || typ != websocket.BinaryMessage || len(msg) < 4 || msg[0]>>4 != packets.Connack || msg[3] != 0 {
		t.Fatalf("websocket CONNACK: type %d msg %x err %v", typ, msg, err)
	}
}
