package bridge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// message is one message received from the upstream.
type message struct {
	topic   string
	payload []byte
	qos     byte
	retain  bool
	path    string
}

// link is one connection to the upstream.
type link interface {
	// publish sends r after everything published before it; done is
	// called once the upstream acknowledged it (QoS 1) or it was written
	// (QoS 0), or with an error if the link went down first.
	publish(r record, done func(error)) error
	// subscribe subscribes to the in rules' remote filters.
	subscribe(ctx context.Context, subs []Rule) error
	// lost is closed when the link is down; cause then says why.
	lost() <-chan struct{}
	cause() error
	// peerID is the upstream tarsmq's broker id, "" for another broker.
	peerID() string
	// maxPacket is the largest packet the upstream takes (0: unknown).
	maxPacket() uint32
	close()
}

// Properties of the messages a bridge forwards: the brokers a message has
// passed (for loops), and on a message a bridge brought down, the bridge.
const (
	propPath     = "tarsmq-path"
	propBridge   = "tarsmq-bridge"
	propBrokerID = "tarsmq-broker-id" // in a tarsmq CONNACK
)

// refusedError is the upstream's refusal of one message (a PUBACK reason
// code of 0x80 or more): sending it again would not help.
type refusedError struct {
	code   byte
	reason string
}

// Error says what the upstream answered.
func (e *refusedError) Error() string {
	return fmt.Sprintf("upstream refused the message: reason %#x %s", e.code, e.reason)
}

// dialer opens the connection to the upstream.
type dialer struct {
	network, address string
	tls              *tls.Config
}

func newDialer(c Config) (*dialer, error) {
	network, address, err := parseURL(c.URL)
	if err != nil {
		return nil, err
	}
	d := &dialer{network: network, address: address}
	if network == "tls" {
		tc, err := tlsConfig(c.TLS, address)
		if err != nil {
			return nil, err
		}
		d.network, d.tls = "tcp", tc
	}
	return d, nil
}

func tlsConfig(c TLSConfig, address string) (*tls.Config, error) {
	host, _, _ := net.SplitHostPort(address)
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	if c.ServerName != "" {
		tc.ServerName = c.ServerName
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca_file: no PEM certificate in %s", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func (d *dialer) dial(ctx context.Context) (net.Conn, error) {
	var nd net.Dialer
	if d.tls != nil {
		td := tls.Dialer{NetDialer: &nd, Config: d.tls}
		return td.DialContext(ctx, "tcp", d.address)
	}
	return nd.DialContext(ctx, d.network, d.address)
}

// down tells when a link went down, and why.
type down struct {
	ch   chan struct{}
	once sync.Once
	err  error // set before ch is closed
}

func newDown() *down { return &down{ch: make(chan struct{})} }

// markDown records that the link is down because of err; only the first
// call counts.
func (d *down) markDown(err error) {
	d.once.Do(func() {
		d.err = err
		close(d.ch)
	})
}

func (d *down) lost() <-chan struct{} { return d.ch }

// cause is why the link went down; call it once lost is closed.
func (d *down) cause() error { return d.err }

// link5 is an MQTT 5 link on paho.golang. It publishes with AsyncSend, in
// order, and learns of each PUBACK through its session (ackSession).
type link5 struct {
	cli  *paho.Client
	sess *ackSession
	*down
	peer  string
	max   uint32     // the upstream's Maximum Packet Size, 0 if it set none
	write sync.Mutex // publish: AddToSession and the write in order
}

// ackSession is paho's in-memory session that also tells when a message
// it holds is acknowledged. A new one serves each link; what was in flight
// when a link went down is sent again from the bridge's queue.
type ackSession struct {
	*state.State
	next func(packets.ControlPacket) // the done of the publish being added
}

// AddToSession hands a publish to paho's session with a channel of its
// own, and passes its acknowledgement to the publish's done.
func (s *ackSession) AddToSession(ctx context.Context, p session.Packet, resp chan<- packets.ControlPacket) error {
	if _, ok := p.(*packets.Publish); !ok || s.next == nil {
		return s.State.AddToSession(ctx, p, resp)
	}
	done := s.next
	s.next = nil
	ch := make(chan packets.ControlPacket, 1)
	if err := s.State.AddToSession(ctx, p, ch); err != nil {
		return err
	}
	go func() {
		cp := <-ch
		done(cp)
		if resp != nil {
			resp <- cp
		}
	}()
	return nil
}

// connect5 connects over conn and returns the link once CONNACK accepts.
func connect5(ctx context.Context, conn net.Conn, c Config, password []byte, onMessage func(message)) (*link5, error) {
	l := &link5{sess: &ackSession{State: state.NewInMemory()}, down: newDown()}
	l.cli = paho.NewClient(paho.ClientConfig{
		ClientID:      c.ClientID,
		Conn:          packets.NewThreadSafeConn(conn),
		Session:       l.sess,
		PacketTimeout: 30 * time.Second,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			p := pr.Packet
			m := message{topic: p.Topic, payload: p.Payload, qos: p.QoS, retain: p.Retain}
			if p.Properties != nil {
				m.path = p.Properties.User.Get(propPath)
			}
			onMessage(m)
			return true, nil
		}},
		OnClientError: func(err error) { l.markDown(err) },
		OnServerDisconnect: func(d *paho.Disconnect) {
			reason := ""
			if d.Properties != nil {
				reason = d.Properties.ReasonString
			}
			l.markDown(fmt.Errorf("the upstream disconnected the bridge: reason %#x %s", d.ReasonCode, reason))
		},
	})
	expiry := uint32(c.SessionExpiry / time.Second)
	cp := &paho.Connect{
		ClientID:   c.ClientID,
		KeepAlive:  uint16(c.Keepalive / time.Second),
		CleanStart: false, // keep the in subscriptions, and what they caught while the link was down
		// RequestProblemInfo: without it paho asks for none, and a reason
		// string or the upstream's broker id never arrives.
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry, RequestProblemInfo: true},
	}
	if c.Username != "" {
		cp.Username, cp.UsernameFlag = c.Username, true
	}
	if len(password) > 0 {
		cp.Password, cp.PasswordFlag = password, true
	}
	ca, err := l.cli.Connect(ctx, cp)
	if err != nil {
		if ca != nil && ca.ReasonCode >= 0x80 {
			reason := ""
			if ca.Properties != nil {
				reason = ca.Properties.ReasonString
			}
			return nil, fmt.Errorf("upstream refused the bridge: reason %#x %s", ca.ReasonCode, reason)
		}
		return nil, err
	}
	if ca.Properties != nil {
		l.peer = ca.Properties.User.Get(propBrokerID)
		if ca.Properties.MaximumPacketSize != nil {
			l.max = *ca.Properties.MaximumPacketSize
		}
	}
	return l, nil
}

func (l *link5) peerID() string    { return l.peer }
func (l *link5) maxPacket() uint32 { return l.max }

func (l *link5) publish(r record, done func(error)) error {
	p := &paho.Publish{Topic: r.topic, Payload: r.payload, QoS: r.qos, Retain: r.retain}
	if r.path != "" {
		p.Properties = &paho.PublishProperties{User: paho.UserProperties{{Key: propPath, Value: r.path}}}
	}
	l.write.Lock()
	defer l.write.Unlock()
	if r.qos == 0 {
		_, err := l.cli.Publish(context.Background(), p)
		done(err)
		return err
	}
	l.sess.next = func(cp packets.ControlPacket) {
		switch {
		case cp.Type == 0:
			done(errors.New("link down before the upstream acknowledged"))
		case cp.Type == packets.PUBACK && cp.Content.(*packets.Puback).ReasonCode >= 0x80:
			pa := cp.Content.(*packets.Puback)
			reason := ""
			if pa.Properties != nil {
				reason = pa.Properties.ReasonString
			}
			done(&refusedError{code: pa.ReasonCode, reason: reason})
		default:
			done(nil)
		}
	}
	_, err := l.cli.PublishWithOptions(context.Background(), p, paho.PublishOptions{Method: paho.PublishMethod_AsyncSend})
	if err != nil && !errors.Is(err, paho.ErrNetworkErrorAfterStored) {
		l.sess.next = nil
		return err
	}
	return nil
}

func (l *link5) subscribe(ctx context.Context, rules []Rule) error {
	if len(rules) == 0 {
		return nil
	}
	s := &paho.Subscribe{}
	for _, r := range rules {
		// RetainHandling 1: retained messages come with the first
		// subscription only, not again on every reconnect of the
		// persistent session (a retained command would run again).
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{Topic: r.remoteFilter(), QoS: r.QoS,
			NoLocal: true, RetainAsPublished: true, RetainHandling: 1})
	}
	for attempt := 1; ; attempt++ {
		sa, err := l.cli.Subscribe(ctx, s)
		if sa == nil {
			return fmt.Errorf("subscribe upstream: %w", err)
		}
		if attempt < subscribeAttempts && slices.Contains(sa.Reasons, packetIDInUse) {
			// mochi (tarsmq's own upstream among them) checks a
			// SUBSCRIBE's packet id against the ids of the messages it is
			// sending the client: a resumed session's resend of an in
			// message collides with paho's first id. The resend is
			// acknowledged at once, so asking again succeeds; failing the
			// link instead would have the resend come back, and collide,
			// on every reconnect.
			if !sleep(ctx, time.Duration(attempt)*20*time.Millisecond) {
				return ctx.Err()
			}
			continue
		}
		for i, code := range sa.Reasons {
			if code >= 0x80 && i < len(rules) {
				return fmt.Errorf("upstream refused the subscription to %s: reason %#x", rules[i].remoteFilter(), code)
			}
		}
		if err != nil {
			return fmt.Errorf("subscribe upstream: %w", err)
		}
		return nil
	}
}

// subscribeAttempts bounds the SUBSCRIBEs of one link refused with
// packetIDInUse.
const (
	subscribeAttempts = 5
	packetIDInUse     = 0x91
)

func (l *link5) close() {
	_ = l.cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
	_ = l.sess.Close()
	l.markDown(errors.New("closed"))
}
