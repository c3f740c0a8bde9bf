package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"
)

// The scenarios.
const (
	FanIn  = "fanin"  // N publishers → one topic → 1 subscriber
	FanOut = "fanout" // 1 publisher → one topic → N subscribers
	Many   = "many"   // N publishers, each on its own topic → M subscribers on all of them
	ReqRep = "reqrep" // N requesters → 1 responder, which answers each on the requester's topic
)

// plan is where a scenario's clients publish and subscribe.
type plan struct {
	pubTopic  func(i int) string // publisher (requester) i publishes here
	subFilter string             // every subscriber (the responder) subscribes here
	repTopic  func(i int) string // reqrep: requester i's replies
}

func newPlan(scenario, prefix string) plan {
	switch scenario {
	case FanIn:
		return plan{pubTopic: func(int) string { return prefix + "/in" }, subFilter: prefix + "/in"}
	case FanOut:
		return plan{pubTopic: func(int) string { return prefix + "/out" }, subFilter: prefix + "/out"}
	case Many:
		return plan{pubTopic: func(i int) string { return prefix + "/m/" + strconv.Itoa(i) }, subFilter: prefix + "/m/+"}
	default: // ReqRep
		return plan{
			pubTopic:  func(i int) string { return prefix + "/req/" + strconv.Itoa(i) },
			subFilter: prefix + "/req/+",
			repTopic:  func(i int) string { return prefix + "/rep/" + strconv.Itoa(i) },
		}
	}
}

// publisher is one publishing connection (a requester in reqrep).
type publisher struct {
	r       *run
	idx     int
	c       *conn
	topic   []byte
	payload []byte

	pids     chan uint16   // free packet ids (QoS 1)
	inflight []atomic.Bool // by packet id: sent, not yet acknowledged
	slots    chan struct{} // free request slots (reqrep)
	replies  *receiver     // reqrep: the replies to this requester

	first int64 // when the first publish was written (ns since the run began; -1: none)
	sent  atomic.Uint64
	acked atomic.Uint64
}

func newPublisher(r *run, idx int, c *conn, topic string, window int) (*publisher, error) {
	payload, err := newPayload(r.cfg.Size, r.cfg.Raw, c.id)
	if err != nil {
		return nil, err
	}
	p := &publisher{r: r, idx: idx, c: c, topic: []byte(topic), payload: payload, first: -1}
	if r.cfg.QoS > 0 {
		p.pids = make(chan uint16, window)
		p.inflight = make([]atomic.Bool, window+1)
		for id := 1; id <= window; id++ {
			p.pids <- uint16(id)
		}
	}
	if r.cfg.Scenario == ReqRep {
		p.slots = make(chan struct{}, window)
		for range window {
			p.slots <- struct{}{}
		}
	}
	return p, nil
}

// lateStop is how far past the end of Duration a publisher that fell
// behind its schedule goes on sending.
const lateStop = 100 * time.Millisecond

// send publishes until the run's message count or duration is reached. It
// returns nil when the run is stopped.
func (p *publisher) send() error {
	cfg := &p.r.cfg
	var interval float64 // ns between two messages of this publisher
	if cfg.Rate > 0 {
		interval = 1e9 * float64(cfg.Publishers) / cfg.Rate
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	start := p.r.now()
	end := start + int64(cfg.Duration)
	done := p.r.ctx.Done()
	for seq := uint64(0); cfg.Messages <= 0 || seq < uint64(cfg.Messages); seq++ {
		now := p.r.now()
		if interval > 0 {
			due := start + int64(float64(seq)*interval)
			if cfg.Messages <= 0 && (due >= end || now >= end+int64(lateStop)) {
				break // Rate × Duration messages in all, unless far behind schedule
			}
			if now < due {
				if err := p.c.flush(); err != nil {
					return p.err(err)
				}
				timer.Reset(time.Duration(due - now))
				select {
				case <-timer.C:
				case <-done:
					return nil
				}
			}
		} else if cfg.Messages <= 0 && now >= end {
			break
		}
		if p.slots != nil {
			if _, err := take(p, p.slots); err != nil {
				return p.err(err)
			}
		}
		var pid uint16
		if p.pids != nil {
			var err error
			if pid, err = take(p, p.pids); err != nil {
				return p.err(err)
			}
			p.inflight[pid].Store(true)
		}
		now = p.r.now()
		if p.first < 0 {
			p.first = now
		}
		stamp(p.payload, cfg.Raw, p.idx, seq, now, p.r.wallBase+now)
		if err := p.c.publish(p.topic, cfg.QoS, pid, p.payload); err != nil {
			return p.err(err)
		}
		p.sent.Add(1)
	}
	return p.err(p.c.flush())
}

// take receives from a window's channel; when it is empty it flushes what
// is buffered, as nothing more can be sent until the broker answers, and
// waits.
func take[T any](p *publisher, ch chan T) (T, error) {
	select {
	case v := <-ch:
		return v, nil
	default:
	}
	if err := p.c.flush(); err != nil {
		var zero T
		return zero, err
	}
	select {
	case v := <-ch:
		return v, nil
	case <-p.r.ctx.Done():
		var zero T
		return zero, errClosing
	}
}

// err drops the error of a write the run's end interrupted.
func (p *publisher) err(err error) error {
	if err == nil || errors.Is(err, errClosing) || p.r.ctx.Err() != nil || p.c.closing.Load() {
		return nil
	}
	return err
}

// onPublish takes a reply (reqrep) and frees its request slot.
func (p *publisher) onPublish(qos byte, pid uint16, _, payload []byte) error {
	if p.replies == nil {
		return fmt.Errorf("client %s: a PUBLISH arrived on a connection that subscribed to nothing", p.c.id)
	}
	if err := p.replies.onPublish(qos, pid, nil, payload); err != nil {
		return err
	}
	if p.replies.lastNew {
		select {
		case p.slots <- struct{}{}:
		default:
		}
	}
	return nil
}

// onPuback frees the acknowledged packet id.
func (p *publisher) onPuback(pid uint16, reason byte) error {
	if p.inflight == nil || int(pid) >= len(p.inflight) || !p.inflight[pid].CompareAndSwap(true, false) {
		return fmt.Errorf("client %s: PUBACK for packet id %d, which is not in flight", p.c.id, pid)
	}
	if reason >= 0x80 {
		p.r.refused.Add(1)
	}
	p.acked.Add(1)
	p.pids <- pid // never blocks: the channel holds the whole window
	return nil
}

// responder answers every request on the requester's reply topic with the
// request's id and ts, from its read loop: at QoS 1 a reply waits in
// pending when all of its packet ids are in flight.
type responder struct {
	r         *run
	c         *conn
	payload   []byte
	repTopics [][]byte

	free     []uint16 // free packet ids (QoS 1)
	inflight []bool
	pending  []pendingReply
	head     int // first unsent in pending

	foreign uint64 // requests not from this run
}

// pendingReply is a reply waiting for a packet id: the requester, and the
// request's head: the id, and for an envelope everything up to ts included.
type pendingReply struct {
	pub int
	hdr [envTSOff + tsLen]byte
}

func newResponder(r *run, c *conn, repTopics []string, window int) (*responder, error) {
	payload, err := newPayload(r.cfg.Size, r.cfg.Raw, c.id)
	if err != nil {
		return nil, err
	}
	s := &responder{r: r, c: c, payload: payload}
	for _, t := range repTopics {
		s.repTopics = append(s.repTopics, []byte(t))
	}
	if r.cfg.QoS > 0 {
		s.inflight = make([]bool, window+1)
		for id := window; id >= 1; id-- {
			s.free = append(s.free, uint16(id))
		}
	}
	return s, nil
}

func (s *responder) onPublish(qos byte, pid uint16, _, payload []byte) error {
	if qos > 0 {
		if err := s.c.ack(pid); err != nil {
			return err
		}
	}
	pub, _, _, ok := parseID(payload, s.r.cfg.Raw)
	if !ok || pub >= len(s.repTopics) || len(payload) < s.headLen() {
		s.foreign++
		return nil
	}
	rep := pendingReply{pub: pub}
	copy(rep.hdr[:], payload[:s.headLen()])
	if s.r.cfg.QoS == 0 {
		return s.reply(&rep, 0)
	}
	if len(s.free) == 0 || s.head < len(s.pending) {
		s.pending = append(s.pending, rep)
		return nil
	}
	id := s.free[len(s.free)-1]
	s.free = s.free[:len(s.free)-1]
	return s.reply(&rep, id)
}

// headLen is how much of a request its reply repeats: the id, and for an
// envelope the fields up to ts, whose layout is the same in every payload.
func (s *responder) headLen() int {
	if s.r.cfg.Raw {
		return idLen
	}
	return envTSOff + tsLen
}

// reply publishes rep with packet id pid (0 at QoS 0).
func (s *responder) reply(rep *pendingReply, pid uint16) error {
	copy(s.payload, rep.hdr[:s.headLen()])
	if pid != 0 {
		s.inflight[pid] = true
	}
	return s.c.publish(s.repTopics[rep.pub], s.r.cfg.QoS, pid, s.payload)
}

func (s *responder) onPuback(pid uint16, reason byte) error {
	if int(pid) >= len(s.inflight) || !s.inflight[pid] {
		return fmt.Errorf("client %s: PUBACK for packet id %d, which is not in flight", s.c.id, pid)
	}
	s.inflight[pid] = false
	if reason >= 0x80 {
		s.r.refused.Add(1)
	}
	if s.head < len(s.pending) {
		rep := &s.pending[s.head]
		s.head++
		if s.head == len(s.pending) {
			s.pending, s.head = s.pending[:0], 0
		}
		return s.reply(rep, pid)
	}
	s.free = append(s.free, pid)
	return nil
}

// appendPublishHeader appends a PUBLISH's fixed header and the length of
// its topic name.
func appendPublishHeader(b []byte, version, qos byte, topic []byte, payloadLen int) []byte {
	rem := 2 + len(topic) + payloadLen
	if qos > 0 {
		rem += 2
	}
	if version == 5 {
		rem++
	}
	b = append(b, typePublish<<4|qos<<1)
	b = appendVarint(b, rem)
	return binary.BigEndian.AppendUint16(b, uint16(len(topic)))
}

// appendPublishTail appends what follows the topic name: the packet id at
// QoS 1, and in MQTT 5 an empty property list.
func appendPublishTail(b []byte, version, qos byte, pid uint16) []byte {
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, pid)
	}
	if version == 5 {
		b = append(b, 0)
	}
	return b
}

// encodePublish appends a whole PUBLISH packet.
func encodePublish(b []byte, version, qos byte, pid uint16, topic, payload []byte) []byte {
	b = appendPublishHeader(b, version, qos, topic, len(payload))
	b = append(b, topic...)
	b = appendPublishTail(b, version, qos, pid)
	return append(b, payload...)
}

func appendVarint(b []byte, n int) []byte {
	for {
		c := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			c |= 0x80
		}
		b = append(b, c)
		if n == 0 {
			return b
		}
	}
}

// parsePublish decodes a PUBLISH body; topic and payload alias body.
func parsePublish(version, hdr byte, body []byte) (qos byte, pid uint16, topic, payload []byte, err error) {
	qos = hdr >> 1 & 3
	if len(body) < 2 {
		return 0, 0, nil, nil, errors.New("malformed PUBLISH: no topic")
	}
	off := 2 + int(binary.BigEndian.Uint16(body))
	if off > len(body) {
		return 0, 0, nil, nil, errors.New("malformed PUBLISH: topic longer than the packet")
	}
	topic = body[2:off]
	if qos > 0 {
		if off+2 > len(body) {
			return 0, 0, nil, nil, errors.New("malformed PUBLISH: no packet id")
		}
		pid = binary.BigEndian.Uint16(body[off:])
		off += 2
	}
	if version == 5 {
		n, size := 0, 0
		for shift := 0; ; shift += 7 {
			if off+size >= len(body) || shift > 21 {
				return 0, 0, nil, nil, errors.New("malformed PUBLISH: property length")
			}
			c := body[off+size]
			size++
			n |= int(c&0x7f) << shift
			if c&0x80 == 0 {
				break
			}
		}
		off += size + n
		if off > len(body) {
			return 0, 0, nil, nil, errors.New("malformed PUBLISH: properties longer than the packet")
		}
	}
	return qos, pid, topic, body[off:], nil
}
