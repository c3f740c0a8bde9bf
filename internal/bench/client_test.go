package bench

import (
	"bytes"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/envelope"
)

// splitPacket returns a whole packet's fixed header byte and body.
func splitPacket(t *testing.T, b []byte) (byte, []byte) {
	t.Helper()
	n, mult, i := 0, 1, 1
	for {
		n += int(b[i]&0x7f) * mult
		mult <<= 7
		i++
		if b[i-1]&0x80 == 0 {
			break
		}
	}
	if len(b) != i+n {
		t.Fatalf("remaining length %d, but %d bytes follow the fixed header", n, len(b)-i)
	}
	return b[0], b[i:]
}

func TestPublishCodecMatchesMochi(t *testing.T) {
	for _, version := range []byte{4, 5} {
		for _, qos := range []byte{0, 1} {
			for _, size := range []int{0, 1, 100, 200, 20000} {
				t.Run(fmt.Sprintf("v%d/qos%d/%d", version, qos, size), func(t *testing.T) {
					topic := []byte("bench/abc/m/12")
					payload := bytes.Repeat([]byte{'y'}, size)
					var pid uint16
					if qos > 0 {
						pid = 0xbeef
					}
					mine := encodePublish(nil, version, qos, pid, topic, payload)

					want := packets.Packet{
						FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: qos},
						ProtocolVersion: version, TopicName: string(topic), PacketID: pid, Payload: payload,
					}
					var buf bytes.Buffer
					if err := want.PublishEncode(&buf); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(mine, buf.Bytes()) {
						t.Fatalf("encoded\n%x\nmochi encodes\n%x", mine, buf.Bytes())
					}

					// mochi decodes ours
					hdr, body := splitPacket(t, mine)
					var got packets.Packet
					got.ProtocolVersion = version
					if err := got.FixedHeader.Decode(hdr); err != nil {
						t.Fatal(err)
					}
					if err := got.PublishDecode(body); err != nil {
						t.Fatal(err)
					}
					if got.TopicName != string(topic) || got.PacketID != pid || got.FixedHeader.Qos != qos || !bytes.Equal(got.Payload, payload) {
						t.Fatalf("mochi decoded topic %q id %d qos %d payload %d bytes", got.TopicName, got.PacketID, got.FixedHeader.Qos, len(got.Payload))
					}

					// we decode mochi's, also with properties in MQTT 5
					if version == 5 {
						want.Properties = packets.Properties{
							PayloadFormat: 1, PayloadFormatFlag: true, MessageExpiryInterval: 30,
							ContentType: "application/json", SubscriptionIdentifier: []int{7},
							User: []packets.UserProperty{{Key: "k", Val: "v"}},
						}
						buf.Reset()
						if err := want.PublishEncode(&buf); err != nil {
							t.Fatal(err)
						}
					}
					hdr, body = splitPacket(t, buf.Bytes())
					gq, gpid, gtopic, gpayload, err := parsePublish(version, hdr, body)
					if err != nil {
						t.Fatal(err)
					}
					if gq != qos || gpid != pid || string(gtopic) != string(topic) || !bytes.Equal(gpayload, payload) {
						t.Fatalf("decoded qos %d id %d topic %q payload %d bytes", gq, gpid, gtopic, len(gpayload))
					}
				})
			}
		}
	}
}

func TestPubackCodecMatchesMochi(t *testing.T) {
	for _, version := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			mine := appendPuback(nil, 0x1234)
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: version, PacketID: 0x1234}
			var buf bytes.Buffer
			if err := pk.PubackEncode(&buf); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(mine, buf.Bytes()) {
				t.Fatalf("encoded %x, mochi encodes %x", mine, buf.Bytes())
			}
			_, body := splitPacket(t, mine)
			got := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback, Remaining: len(body)}, ProtocolVersion: version}
			if err := got.PubackDecode(body); err != nil || got.PacketID != 0x1234 || got.ReasonCode != 0 {
				t.Fatalf("mochi decoded id %x reason %x: %v", got.PacketID, got.ReasonCode, err)
			}

			for _, code := range []packets.Code{packets.CodeSuccess, packets.CodeNoMatchingSubscribers, packets.ErrPayloadFormatInvalid, packets.ErrNotAuthorized} {
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: version,
					PacketID: 0xfffe, ReasonCode: code.Code}
				if code.Code != 0 { // else mochi leaves out a reason code below 0x80
					pk.Properties.ReasonString = "envelope: field \"id\": is missing"
				}
				buf.Reset()
				if err := pk.PubackEncode(&buf); err != nil {
					t.Fatal(err)
				}
				_, body := splitPacket(t, buf.Bytes())
				pid, reason, err := parsePuback(version, body)
				wantReason := code.Code
				if version == 4 {
					wantReason = 0 // 3.1.1 has no reason codes
				}
				if err != nil || pid != 0xfffe || reason != wantReason {
					t.Fatalf("code %x: decoded id %x reason %x (%v)", code.Code, pid, reason, err)
				}
			}
		})
	}
}

func TestPayloadIsAValidEnvelope(t *testing.T) {
	const source = "bench-a1b2c3-p12"
	for _, size := range []int{minSize(false, source), 200, 4096} {
		p, err := newPayload(size, false, source)
		if err != nil {
			t.Fatal(err)
		}
		wall := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC).UnixNano()
		stamp(p, false, 12, 0xabcdef012345, 987654321012, wall)
		if len(p) != size {
			t.Fatalf("payload is %d bytes, want %d", len(p), size)
		}
		e, err := envelope.Parse(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if e.Source != source || e.Type != envType || len(e.ID) != 32 {
			t.Fatalf("parsed %+v", e)
		}
		if got, want := strconv.FormatFloat(e.TS, 'f', 6, 64), fmt.Sprintf("%d.123456", wall/1e9); got != want {
			t.Fatalf("ts %s, want %s", got, want)
		}
		pub, seq, sent, ok := parseID(p, false)
		if !ok || pub != 12 || seq != 0xabcdef012345 || sent != 987654321012 {
			t.Fatalf("parseID: %d %x %d %v", pub, seq, sent, ok)
		}
	}
	if _, err := newPayload(minSize(false, source)-1, false, source); err == nil {
		t.Fatal("a payload too small for an envelope was made")
	}
	raw, err := newPayload(32, true, source)
	if err != nil {
		t.Fatal(err)
	}
	stamp(raw, true, 65535, 1, 2, 0)
	if pub, seq, sent, ok := parseID(raw, true); !ok || pub != 65535 || seq != 1 || sent != 2 {
		t.Fatalf("raw parseID: %d %d %d %v", pub, seq, sent, ok)
	}
	if _, _, _, ok := parseID([]byte("not hex at all, no not hex at all"), true); ok {
		t.Fatal("parseID accepted garbage")
	}
}

func TestBitset(t *testing.T) {
	var b bitset
	for _, n := range []uint64{0, 63, 64, 5000, 1 << 20} {
		if b.testAndSet(n) {
			t.Fatalf("%d was set already", n)
		}
		if !b.testAndSet(n) {
			t.Fatalf("%d was not set", n)
		}
	}
	if b.testAndSet(1) {
		t.Fatal("1 was set")
	}
}

func TestParseURL(t *testing.T) {
	for raw, want := range map[string]endpoint{
		"unix:///run/tarsmq/tarsmq.sock": {network: "unix", address: "/run/tarsmq/tarsmq.sock"},
		"tcp://127.0.0.1:1884":           {network: "tcp", address: "127.0.0.1:1884"},
		"mqtt://u:p@localhost":           {network: "tcp", address: "localhost:1883", username: "u", password: "p"},
	} {
		got, err := parseURL(raw)
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v", raw, got, err)
		}
	}
	for _, raw := range []string{"unix://", "http://x", "tcp://:1883"} {
		if _, err := parseURL(raw); err == nil {
			t.Errorf("%s: no error", raw)
		}
	}
}
