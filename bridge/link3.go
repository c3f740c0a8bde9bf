package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"
)

// link3 is an MQTT 3.1.1 link on paho.mqtt.golang, whose publishes go out
// in order and whose tokens tell when each is acknowledged. MQTT 3.1.1 has
// no properties: messages carry no path, so loops between bridges are
// prevented only by a message brought down never going back up.
type link3 struct {
	cli mqtt3.Client
	*down
	msgs func(message)
}

func connect3(ctx context.Context, d *dialer, c Config, password []byte, onMessage func(message)) (*link3, error) {
	l := &link3{down: newDown(), msgs: onMessage}
	o := mqtt3.NewClientOptions()
	o.AddBroker("tcp://" + d.address) // the dialer below makes the real connection
	o.SetClientID(c.ClientID)
	o.SetUsername(c.Username)
	o.SetPassword(string(password))
	o.SetCleanSession(false)
	o.SetKeepAlive(c.Keepalive)
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetOrderMatters(true)
	o.SetConnectTimeout(10 * time.Second)
	o.SetCustomOpenConnectionFn(func(*url.URL, mqtt3.ClientOptions) (net.Conn, error) { return d.dial(ctx) })
	o.SetConnectionLostHandler(func(_ mqtt3.Client, err error) { l.markDown(err) })
	l.cli = mqtt3.NewClient(o)
	t := l.cli.Connect()
	select {
	case <-t.Done():
	case <-ctx.Done():
		l.cli.Disconnect(0)
		return nil, ctx.Err()
	}
	if err := t.Error(); err != nil {
		return nil, fmt.Errorf("upstream refused the bridge: %w", err)
	}
	return l, nil
}

func (l *link3) peerID() string    { return "" }
func (l *link3) maxPacket() uint32 { return 0 } // MQTT 3.1.1 does not say

func (l *link3) publish(r record, done func(error)) error {
	t := l.cli.Publish(r.topic, r.qos, r.retain, r.payload)
	go func() {
		select {
		case <-t.Done():
			done(t.Error())
		case <-l.lost():
			done(fmt.Errorf("link down before the upstream acknowledged"))
		}
	}()
	return nil
}

func (l *link3) subscribe(ctx context.Context, rules []Rule) error {
	if len(rules) == 0 {
		return nil
	}
	filters := map[string]byte{}
	for _, r := range rules {
		filters[r.remoteFilter()] = r.QoS
	}
	t := l.cli.SubscribeMultiple(filters, func(_ mqtt3.Client, m mqtt3.Message) {
		l.msgs(message{topic: m.Topic(), payload: m.Payload(), qos: m.Qos(), retain: m.Retained()})
	})
	select {
	case <-t.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := t.Error(); err != nil {
		return fmt.Errorf("subscribe upstream: %w", err)
	}
	return nil
}

func (l *link3) close() {
	l.cli.Disconnect(250)
	l.markDown(errors.New("closed"))
}
