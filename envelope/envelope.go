// Package envelope is the message contract of the robot's bus, shared by the
// broker's contract hook and the Go client, and wire-compatible with the
// Python services:
//
//	{"id":"9f1c2b3a4d5e4f60a1b2c3d4e5f60718","type":"stt.final","ts":1729123456.789,
//	 "source":"stt-worker","data":{"text":"hello"},"correlate":"conv-001"}
//
// id is a non-empty string (a UUID in hex from New), type a dotted lower-case
// event name, ts a JSON number of Unix seconds, source the publishing
// service, data a JSON object, correlate an optional string (null counts as
// absent). Other top-level fields are kept. The time field is "ts", never
// "timestamp".
package envelope

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Envelope is one message on a contract topic.
type Envelope struct {
	ID        string                     // unique message id
	Type      string                     // event name, e.g. "stt.final"
	TS        float64                    // Unix seconds
	Source    string                     // the publishing service
	Data      json.RawMessage            // a JSON object
	Correlate string                     // optional; "" when absent
	Extra     map[string]json.RawMessage // other top-level fields, kept as they came
}

// Option changes an envelope New builds.
type Option func(*Envelope)

// WithCorrelate sets the correlate field.
func WithCorrelate(id string) Option { return func(e *Envelope) { e.Correlate = id } }

// WithID replaces the random id.
func WithID(id string) Option { return func(e *Envelope) { e.ID = id } }

// WithTime replaces the current time.
func WithTime(t time.Time) Option { return func(e *Envelope) { e.TS = Seconds(t) } }

// Seconds is t as float Unix seconds with microsecond precision, as Python's
// time.time() gives.
func Seconds(t time.Time) float64 { return float64(t.UnixMicro()) / 1e6 }

// Time is the envelope's ts as a time.Time.
func (e *Envelope) Time() time.Time {
	sec, frac := math.Modf(e.TS)
	return time.Unix(int64(sec), int64(math.Round(frac*1e6))*1e3)
}

// New builds a valid envelope with a random id and the current time. data is
// anything that marshals to a JSON object (a struct, a map, json.RawMessage);
// nil becomes {}.
func New(typ, source string, data any, opts ...Option) (*Envelope, error) {
	raw, err := marshalData(data)
	if err != nil {
		return nil, err
	}
	e := &Envelope{ID: NewID(), Type: typ, TS: Seconds(time.Now()), Source: source, Data: raw}
	for _, o := range opts {
		o(e)
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return e, nil
}

func marshalData(data any) (json.RawMessage, error) {
	var raw []byte
	switch d := data.(type) {
	case nil:
		return json.RawMessage("{}"), nil
	case json.RawMessage:
		raw = d
	case []byte:
		raw = d
	default:
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(data); err != nil {
			return nil, errField("data", RuleInvalid, "cannot be encoded as JSON: %v", err)
		}
		raw = bytes.TrimRight(buf.Bytes(), "\n")
	}
	if len(raw) == 0 {
		return json.RawMessage("{}"), nil
	}
	end, err := value(raw, ws(raw, 0), 1)
	if err != nil || ws(raw, end) != len(raw) {
		return nil, errField("data", RuleNotJSON, "is not valid JSON")
	}
	if raw[ws(raw, 0)] != '{' {
		return nil, errField("data", RuleWrongType, "must be a JSON object, got a %s", kind(raw[ws(raw, 0)]))
	}
	return json.RawMessage(raw), nil
}

// NewID returns a random UUID (version 4) in hex without dashes, the id
// format of the Python services.
func NewID() string {
	var u [16]byte
	_, _ = rand.Read(u[:]) // never fails on Linux
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return hex.EncodeToString(u[:])
}

// Validate checks every field against the contract.
func (e *Envelope) Validate() error {
	if err := checkText("id", e.ID, false, MaxIDLen); err != nil {
		return err
	}
	if err := checkType(e.Type); err != nil {
		return err
	}
	if err := checkTS(e.TS); err != nil {
		return err
	}
	if err := checkText("source", e.Source, false, MaxSourceLen); err != nil {
		return err
	}
	if e.Correlate != "" {
		if err := checkText("correlate", e.Correlate, false, MaxCorrelateLen); err != nil {
			return err
		}
	}
	if _, err := marshalData(e.Data); err != nil {
		return err
	}
	for k, v := range e.Extra {
		if isAnchor(k) {
			return errField(k, RuleDuplicate, "is an envelope field and cannot also be an extra field")
		}
		if end, err := value(v, ws(v, 0), 1); err != nil || ws(v, end) != len(v) {
			return errField(k, RuleNotJSON, "is not valid JSON")
		}
	}
	return nil
}

func isAnchor(k string) bool {
	switch k {
	case "id", "type", "ts", "source", "data", "correlate":
		return true
	}
	return false
}

// Parse checks b (at most MaxSize bytes) and decodes it.
func Parse(b []byte) (*Envelope, error) {
	e := &Envelope{}
	f, err := check(b, MaxSize, func(key, val []byte) {
		if e.Extra == nil {
			e.Extra = map[string]json.RawMessage{}
		}
		e.Extra[string(key)] = bytes.Clone(val)
	})
	if err != nil {
		return nil, err
	}
	e.ID, e.Type, e.TS, e.Source = f.IDString(), f.TypeString(), f.TS, f.SourceString()
	e.Data = bytes.Clone(f.Data)
	if f.HasCorrelate {
		e.Correlate = f.CorrelateString()
	}
	return e, nil
}

// Marshal encodes the envelope compactly, fields in the order the Python
// services write them (id, type, ts, source, data, correlate, then extra
// fields by name). It fails if the envelope is not valid.
func (e *Envelope) Marshal() ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	data := e.Data
	if len(data) == 0 {
		data = json.RawMessage("{}")
	}
	b := make([]byte, 0, 96+len(e.ID)+len(e.Type)+len(e.Source)+len(e.Correlate)+len(data))
	b = append(b, `{"id":`...)
	b = appendString(b, e.ID)
	b = append(b, `,"type":`...)
	b = appendString(b, e.Type)
	b = append(b, `,"ts":`...)
	b = appendTS(b, e.TS)
	b = append(b, `,"source":`...)
	b = appendString(b, e.Source)
	b = append(b, `,"data":`...)
	b = append(b, data...)
	if e.Correlate != "" {
		b = append(b, `,"correlate":`...)
		b = appendString(b, e.Correlate)
	}
	for _, k := range slices.Sorted(maps.Keys(e.Extra)) {
		b = append(b, ',')
		b = appendString(b, k)
		b = append(b, ':')
		b = append(b, e.Extra[k]...)
	}
	return append(b, '}'), nil
}

// MarshalJSON makes json.Marshal use Marshal.
func (e *Envelope) MarshalJSON() ([]byte, error) { return e.Marshal() }

// UnmarshalJSON makes json.Unmarshal use Parse.
func (e *Envelope) UnmarshalJSON(b []byte) error {
	p, err := Parse(b)
	if err != nil {
		return err
	}
	*e = *p
	return nil
}

// DecodeData unmarshals data into v.
func (e *Envelope) DecodeData(v any) error {
	if err := json.Unmarshal(e.Data, v); err != nil {
		return errField("data", RuleInvalid, "does not fit %T: %v", v, err)
	}
	return nil
}

// Decode returns the envelope's data as a T, so a service gets its own
// struct: text, err := envelope.Decode[STTFinal](e).
func Decode[T any](e *Envelope) (T, error) {
	var v T
	err := e.DecodeData(&v)
	return v, err
}

// appendTS writes seconds as Python's repr does: shortest round-trip digits,
// and a ".0" on whole numbers so it stays a float.
func appendTS(b []byte, ts float64) []byte {
	n := len(b)
	b = strconv.AppendFloat(b, ts, 'f', -1, 64)
	if !bytes.ContainsAny(b[n:], ".eE") {
		b = append(b, ".0"...)
	}
	return b
}

// appendString writes s as a JSON string, escaping only what JSON requires
// (non-ASCII stays UTF-8, as pydantic and orjson write it).
func appendString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		case c < utf8.RuneSelf:
			b = append(b, c)
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
			continue
		}
		i++
	}
	return append(b, '"')
}

// AsError returns err's *Error, if it is a contract violation.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// String is a short description for logs.
func (e *Envelope) String() string {
	return fmt.Sprintf("%s from %s (id %s)", e.Type, e.Source, e.ID)
}
