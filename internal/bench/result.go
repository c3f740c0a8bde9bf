package bench

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Result is what one run measured. Latencies are in microseconds: from the
// publish to the delivery, or in reqrep from the request to its reply.
type Result struct {
	URL         string  `json:"url"`
	Version     byte    `json:"version"` // 4: MQTT 3.1.1, 5: MQTT 5
	Scenario    string  `json:"scenario"`
	Publishers  int     `json:"publishers"`  // requesters in reqrep
	Subscribers int     `json:"subscribers"` // the responder in reqrep
	QoS         byte    `json:"qos"`
	Size        int     `json:"size"`     // payload bytes
	Rate        float64 `json:"rate"`     // messages/s asked for in all; 0: flat out
	Messages    int     `json:"messages"` // per publisher; 0: for Duration
	Duration    float64 `json:"duration_s"`
	Inflight    int     `json:"inflight"` // the QoS 1 window per publisher in use
	Raw         bool    `json:"raw"`

	Sent       uint64 `json:"sent"`       // publishes (requests) written
	Expected   uint64 `json:"expected"`   // deliveries due: sent × matching subscribers (replies in reqrep)
	Delivered  uint64 `json:"delivered"`  // unique deliveries (replies in reqrep)
	Lost       uint64 `json:"lost"`       // Expected − Delivered
	Duplicates uint64 `json:"duplicates"` // deliveries of a message a subscriber already had
	Refused    uint64 `json:"refused"`    // PUBACKs with a reason code of 0x80 or more
	Foreign    uint64 `json:"foreign"`    // messages received that this run did not send
	// Stalled: deliveries (or PUBACKs) made no progress for Drain while some
	// were still due, and the run was ended. At QoS 0, messages still
	// missing after the publishers finished count as lost, not stalled.
	Stalled bool `json:"stalled"`

	Elapsed    time.Duration `json:"elapsed_ns"`   // first publish to last delivery
	MsgsPerSec float64       `json:"msgs_per_sec"` // Delivered / Elapsed

	P50  int64 `json:"p50_us"`
	P90  int64 `json:"p90_us"`
	P99  int64 `json:"p99_us"`
	P999 int64 `json:"p999_us"`
	Max  int64 `json:"max_us"`
}

// Failed says why a run counts as failed for a soak test: messages lost or
// duplicated at QoS 1, or a stall; "" when it did not.
func (r Result) Failed() string {
	switch {
	case r.Stalled:
		return fmt.Sprintf("stalled with %d of %d deliveries missing", r.Lost, r.Expected)
	case r.QoS > 0 && r.Lost > 0:
		return fmt.Sprintf("lost %d of %d messages at QoS %d", r.Lost, r.Expected, r.QoS)
	case r.QoS > 0 && r.Duplicates > 0:
		return fmt.Sprintf("%d duplicate deliveries at QoS %d", r.Duplicates, r.QoS)
	}
	return ""
}

// Histogram range: 1 µs to 60 s, 3 significant figures.
const (
	minLatency = 1
	maxLatency = 60_000_000
	sigFigs    = 3
)

// maxSeq bounds the sequence numbers a receiver accepts, so a garbled id
// cannot make it allocate a huge bitset.
const maxSeq = 1 << 34

// receiver counts and times what one subscriber (or requester, for its
// replies) receives. All but delivered belong to its read loop until the
// run has ended.
type receiver struct {
	r    *run
	c    *conn
	raw  bool
	seen []bitset // by publisher: the sequence numbers received
	hist *hdrhistogram.Histogram

	delivered atomic.Uint64
	dups      uint64
	foreign   uint64
	last      int64 // ns since the run began of the last new delivery
	lastNew   bool  // the last onPublish was a new delivery
}

func newReceiver(r *run, c *conn, publishers int) *receiver {
	return &receiver{r: r, c: c, raw: r.cfg.Raw, seen: make([]bitset, publishers),
		hist: hdrhistogram.New(minLatency, maxLatency, sigFigs)}
}

func (s *receiver) onPublish(qos byte, pid uint16, _, payload []byte) error {
	if qos > 0 {
		if err := s.c.ack(pid); err != nil {
			return err
		}
	}
	s.lastNew = false
	pub, seq, sent, ok := parseID(payload, s.raw)
	if !ok || pub >= len(s.seen) || seq >= maxSeq {
		s.foreign++
		return nil
	}
	if s.seen[pub].testAndSet(seq) {
		s.dups++
		return nil
	}
	now := s.r.now()
	us := (now - sent) / 1000
	us = min(max(us, minLatency), maxLatency)
	_ = s.hist.RecordValue(us)
	s.last = now
	s.lastNew = true
	s.delivered.Add(1)
	return nil
}

func (s *receiver) onPuback(pid uint16, _ byte) error {
	return fmt.Errorf("client %s: PUBACK for packet id %d, but it publishes nothing", s.c.id, pid)
}

// bitset is a growable set of sequence numbers.
type bitset []uint64

// testAndSet adds n and reports whether it was there already.
func (b *bitset) testAndSet(n uint64) bool {
	w := int(n >> 6)
	if w >= len(*b) {
		grown := make(bitset, max(w+1, 2*len(*b), 16))
		copy(grown, *b)
		*b = grown
	}
	m := uint64(1) << (n & 63)
	if (*b)[w]&m != 0 {
		return true
	}
	(*b)[w] |= m
	return false
}

// result assembles the Result once every goroutine of the run has ended.
func (r *run) result() Result {
	cfg := r.cfg
	res := Result{
		URL: cfg.URL, Version: cfg.Version, Scenario: cfg.Scenario,
		Publishers: cfg.Publishers, Subscribers: cfg.Subscribers, QoS: cfg.QoS,
		Size: cfg.Size, Rate: cfg.Rate, Messages: cfg.Messages, Inflight: r.window, Raw: cfg.Raw,
		Refused: r.refused.Load(), Stalled: r.stalled,
	}
	if cfg.Messages <= 0 {
		res.Duration = cfg.Duration.Seconds()
	}
	first := int64(-1)
	for _, p := range r.pubs {
		res.Sent += p.sent.Load()
		if p.first >= 0 && (first < 0 || p.first < first) {
			first = p.first
		}
	}
	res.Expected = r.expected()
	hist := hdrhistogram.New(minLatency, maxLatency, sigFigs)
	var last int64
	for _, s := range r.receivers() {
		res.Delivered += s.delivered.Load()
		res.Duplicates += s.dups
		res.Foreign += s.foreign
		last = max(last, s.last)
		hist.Merge(s.hist)
	}
	if r.resp != nil {
		res.Foreign += r.resp.foreign
	}
	if res.Expected > res.Delivered {
		res.Lost = res.Expected - res.Delivered
	}
	if first >= 0 && res.Delivered > 0 && last > first {
		res.Elapsed = time.Duration(last - first)
		res.MsgsPerSec = float64(res.Delivered) / res.Elapsed.Seconds()
	}
	if hist.TotalCount() > 0 {
		res.P50 = hist.ValueAtQuantile(50)
		res.P90 = hist.ValueAtQuantile(90)
		res.P99 = hist.ValueAtQuantile(99)
		res.P999 = hist.ValueAtQuantile(99.9)
		res.Max = hist.Max()
	}
	return res
}

// receivers are the subscribers, or in reqrep the requesters' reply halves.
func (r *run) receivers() []*receiver {
	if r.cfg.Scenario != ReqRep {
		return r.subs
	}
	out := make([]*receiver, 0, len(r.pubs))
	for _, p := range r.pubs {
		if p.replies != nil {
			out = append(out, p.replies)
		}
	}
	return out
}

// counts sums the publishers' and receivers' counters.
func (r *run) counts() (sent, delivered, acked uint64) {
	for _, p := range r.pubs {
		sent += p.sent.Load()
		acked += p.acked.Load()
	}
	for _, s := range r.receivers() {
		delivered += s.delivered.Load()
	}
	return sent, delivered, acked
}

// due is how many deliveries sent publishes make: one reply per request in
// reqrep, else one per subscriber, as every subscriber matches every topic.
func (r *run) due(sent uint64) uint64 {
	if r.cfg.Scenario == ReqRep {
		return sent
	}
	return sent * uint64(r.cfg.Subscribers)
}

func (r *run) expected() uint64 {
	sent, _, _ := r.counts()
	return r.due(sent)
}

// Payload layout. Every payload carries a 32 hex digit id: the publisher
// index (4 digits), the sequence number (12) and the send time in
// nanoseconds since the run began (16). A raw payload starts with it; an
// envelope holds it in "id", at a fixed offset, followed by "ts" of a fixed
// width, so receivers read both without parsing JSON:
//
//	{"id":"<32 hex>","type":"bench.message","ts":1729123456.789012,"source":"<client id>","data":{"pad":"xxx"}}
const (
	envType     = "bench.message"
	envHead     = `{"id":"`
	envMid      = `","type":"` + envType + `","ts":`
	envSource   = `,"source":"`
	envData     = `","data":{"pad":"`
	envTail     = `"}}`
	idLen       = 32
	tsLen       = 17 // 10 digits of seconds, '.', 6 of microseconds
	envIDOff    = len(envHead)
	envTSOff    = envIDOff + idLen + len(envMid)
	envOverhead = envTSOff + tsLen + len(envSource) + len(envData) + len(envTail)
)

// minSize is the smallest payload that carries the id (and, for an
// envelope, the fields around it) for a client named source.
func minSize(raw bool, source string) int {
	if raw {
		return idLen
	}
	return envOverhead + len(source)
}

// newPayload returns a payload template of size bytes for client source;
// stamp fills in its id and time before each send.
func newPayload(size int, raw bool, source string) ([]byte, error) {
	if n := minSize(raw, source); size < n {
		kind := "an envelope"
		if raw {
			kind = "a raw payload"
		}
		return nil, fmt.Errorf("size %d is too small: %s from %s needs at least %d bytes", size, kind, source, n)
	}
	b := make([]byte, 0, size)
	if raw {
		b = append(b, "00000000000000000000000000000000"...)
	} else {
		b = append(b, envHead...)
		b = append(b, "00000000000000000000000000000000"...)
		b = append(b, envMid...)
		b = append(b, "1000000000.000000"...)
		b = append(b, envSource...)
		b = append(b, source...)
		b = append(b, envData...)
	}
	end := size
	if !raw {
		end -= len(envTail)
	}
	for len(b) < end {
		b = append(b, 'x')
	}
	if !raw {
		b = append(b, envTail...)
	}
	return b, nil
}

const hexDigits = "0123456789abcdef"

// putHex writes v as len(dst) hex digits.
func putHex(dst []byte, v uint64) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = hexDigits[v&0xf]
		v >>= 4
	}
}

// stamp writes the id (publisher, sequence, send time) into a payload
// template, and for an envelope the ts of wall, Unix nanoseconds.
func stamp(p []byte, raw bool, pub int, seq uint64, sent, wall int64) {
	off := envIDOff
	if raw {
		off = 0
	}
	putHex(p[off:off+4], uint64(pub))
	putHex(p[off+4:off+16], seq)
	putHex(p[off+16:off+32], uint64(sent))
	if !raw {
		putTS(p[envTSOff:envTSOff+tsLen], wall)
	}
}

// putTS writes wall (Unix nanoseconds) as seconds with six decimals.
func putTS(dst []byte, wall int64) {
	sec, us := uint64(wall/1e9), uint64(wall%1e9/1e3)
	for i := 16; i > 10; i-- {
		dst[i] = byte('0' + us%10)
		us /= 10
	}
	dst[10] = '.'
	for i := 9; i >= 0; i-- {
		dst[i] = byte('0' + sec%10)
		sec /= 10
	}
}

var unhex = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i, c := range hexDigits {
		t[c] = int8(i)
	}
	return t
}()

// parseID reads the id a payload carries: publisher index, sequence number,
// send time (ns since the run began).
func parseID(payload []byte, raw bool) (pub int, seq uint64, sent int64, ok bool) {
	off := envIDOff
	if raw {
		off = 0
	}
	if len(payload) < off+idLen {
		return 0, 0, 0, false
	}
	var v [3]uint64
	widths := [3]int{4, 12, 16}
	p := payload[off:]
	for k, w := range widths {
		for _, c := range p[:w] {
			d := unhex[c]
			if d < 0 {
				return 0, 0, 0, false
			}
			v[k] = v[k]<<4 | uint64(d)
		}
		p = p[w:]
	}
	return int(v[0]), v[1], int64(v[2]), true
}

// reasonText describes a reason code (MQTT 5) or CONNACK return code (3.1.1).
func reasonText(version, typ, code byte, reason string) string {
	var name string
	if version != 5 && typ == typeConnack {
		name = map[byte]string{1: "unacceptable protocol version", 2: "identifier rejected",
			3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}[code]
	} else {
		name = map[byte]string{0x00: "normal", 0x80: "unspecified error", 0x81: "malformed packet",
			0x82: "protocol error", 0x83: "implementation specific error", 0x84: "unsupported protocol version",
			0x85: "client identifier not valid", 0x86: "bad user name or password", 0x87: "not authorized",
			0x88: "server unavailable", 0x89: "server busy", 0x8a: "banned", 0x8b: "server shutting down",
			0x8d: "keep alive timeout", 0x8e: "session taken over", 0x8f: "topic filter invalid",
			0x90: "topic name invalid", 0x93: "receive maximum exceeded", 0x95: "packet too large",
			0x96: "message rate too high", 0x97: "quota exceeded", 0x99: "payload format invalid",
			0x9e: "shared subscriptions not supported", 0x9f: "connection rate exceeded"}[code]
	}
	s := fmt.Sprintf("code 0x%02x", code)
	if name != "" {
		s += " (" + name + ")"
	}
	if reason != "" {
		s += ": " + reason
	}
	return s
}
