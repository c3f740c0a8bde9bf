package envelope

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// Limits of the contract.
const (
	MaxSize         = 1 << 20 // payload size Validate accepts; the broker's limit is configurable
	MaxDepth        = 64      // nesting of objects and arrays, the envelope itself included
	MaxIDLen        = 128     // bytes
	MaxTypeLen      = 128
	MaxSourceLen    = 128
	MaxCorrelateLen = 256
	maxTS           = 1e11 // later than year 5000: surely milliseconds, not seconds
)

// Fields is a checked envelope's anchor fields as slices of the payload: no
// copies are made. ID, Type, Source and Correlate hold a JSON string's
// contents, escapes not yet decoded (use the *String methods); Data holds the
// raw JSON object.
type Fields struct {
	ID, Type, Source, Correlate []byte
	Data                        []byte
	TS                          float64
	HasCorrelate                bool // false when absent or null
	escaped                     uint8
}

const (
	escID uint8 = 1 << iota
	escType
	escSource
	escCorrelate
)

// IDString is the decoded id.
func (f *Fields) IDString() string { return decodeField(f.ID, f.escaped&escID != 0) }

// TypeString is the decoded type.
func (f *Fields) TypeString() string { return decodeField(f.Type, f.escaped&escType != 0) }

// SourceString is the decoded source.
func (f *Fields) SourceString() string { return decodeField(f.Source, f.escaped&escSource != 0) }

// CorrelateString is the decoded correlate, "" if absent.
func (f *Fields) CorrelateString() string {
	return decodeField(f.Correlate, f.escaped&escCorrelate != 0)
}

// SourceIs reports whether the source equals s, without allocating unless
// the source was written with escapes.
func (f *Fields) SourceIs(s string) bool {
	if f.escaped&escSource == 0 {
		return string(f.Source) == s
	}
	return f.SourceString() == s
}

// TypeIs reports whether the type equals s, like SourceIs.
func (f *Fields) TypeIs(s string) bool {
	if f.escaped&escType == 0 {
		return string(f.Type) == s
	}
	return f.TypeString() == s
}

func decodeField(raw []byte, escaped bool) string {
	if !escaped {
		return string(raw)
	}
	return string(unescape(nil, raw))
}

// Validate checks that b is an envelope of at most MaxSize bytes. The error,
// an *Error, names the field and the rule broken.
func Validate(b []byte) error {
	_, err := Check(b, MaxSize)
	return err
}

// Check validates b (at most maxSize bytes; 0: no limit) and returns views of
// its fields. It never parses data into values and does not allocate for a
// valid envelope.
func Check(b []byte, maxSize int) (Fields, error) {
	f, err := check(b, maxSize, nil)
	if err != nil {
		return Fields{}, err
	}
	return f, nil
}

// field bits for duplicate and missing detection
const (
	seenID uint8 = 1 << iota
	seenType
	seenTS
	seenSource
	seenData
	seenCorrelate
)

// check scans b once. extra, if not nil, receives every other top-level
// field (key decoded, value raw).
func check(b []byte, maxSize int, extra func(key, val []byte)) (f Fields, err error) {
	if maxSize > 0 && len(b) > maxSize {
		return f, &Error{Rule: RuleTooLarge, Detail: fmt.Sprintf("payload is %d bytes, more than the limit of %d", len(b), maxSize)}
	}
	i := ws(b, 0)
	if i >= len(b) {
		return f, &Error{Rule: RuleNotJSON, Detail: "payload is empty, not a JSON envelope"}
	}
	if b[i] != '{' {
		end, serr := value(b, i, 0)
		if serr == nil && ws(b, end) == len(b) {
			return f, &Error{Rule: RuleNotObject, Detail: fmt.Sprintf("payload is a JSON %s, not an envelope object", kind(b[i]))}
		}
		if serr != nil {
			return f, serr
		}
		return f, errSyntax(b, ws(b, end), "unexpected data after the value")
	}

	var seen uint8
	var fieldErr *Error // the first wrong field; syntax errors come first
	timestamp := false
	i = ws(b, i+1)
	if i < len(b) && b[i] == '}' {
		i++
	} else {
		for {
			if i >= len(b) || b[i] != '"' {
				return f, errSyntax(b, i, "expected a field name")
			}
			kEnd, kEsc, serr := str(b, i)
			if serr != nil {
				return f, serr
			}
			key := b[i+1 : kEnd-1]
			if kEsc {
				key = unescape(nil, key) // rare: a key written with escapes
			}
			i = ws(b, kEnd)
			if i >= len(b) || b[i] != ':' {
				return f, errSyntax(b, i, "expected ':' after a field name")
			}
			i = ws(b, i+1)
			if i >= len(b) {
				return f, errSyntax(b, i, "expected a value")
			}
			var end int
			var bit uint8
			switch string(key) {
			case "id":
				bit = seenID
				end, serr = stringField(b, i, "id", escID, &f.ID, &f.escaped, &fieldErr)
			case "type":
				bit = seenType
				end, serr = stringField(b, i, "type", escType, &f.Type, &f.escaped, &fieldErr)
			case "source":
				bit = seenSource
				end, serr = stringField(b, i, "source", escSource, &f.Source, &f.escaped, &fieldErr)
			case "correlate":
				bit = seenCorrelate
				if b[i] == 'n' { // null: what Python's None becomes
					end, serr = value(b, i, 1)
					break
				}
				f.HasCorrelate = true
				end, serr = stringField(b, i, "correlate", escCorrelate, &f.Correlate, &f.escaped, &fieldErr)
			case "ts":
				bit = seenTS
				end, serr = value(b, i, 1)
				if serr == nil {
					if b[i] == '-' || (b[i] >= '0' && b[i] <= '9') {
						f.TS = parseNumber(b[i:end])
					} else if fieldErr == nil {
						fieldErr = errField("ts", RuleWrongType, "must be a JSON number of Unix seconds, got a %s", kind(b[i]))
					}
				}
			case "data":
				bit = seenData
				end, serr = value(b, i, 1)
				if serr == nil {
					if b[i] == '{' {
						f.Data = b[i:end]
					} else if fieldErr == nil {
						fieldErr = errField("data", RuleWrongType, "must be a JSON object, got a %s", kind(b[i]))
					}
				}
			default:
				end, serr = value(b, i, 1)
				if serr == nil {
					if string(key) == "timestamp" {
						timestamp = true
					}
					if extra != nil {
						extra(key, b[i:end])
					}
				}
			}
			if serr != nil {
				return f, serr
			}
			if bit != 0 {
				if seen&bit != 0 && fieldErr == nil {
					fieldErr = errField(string(key), RuleDuplicate, "appears more than once")
				}
				seen |= bit
			}
			i = ws(b, end)
			if i < len(b) && b[i] == ',' {
				i = ws(b, i+1)
				continue
			}
			if i < len(b) && b[i] == '}' {
				i++
				break
			}
			return f, errSyntax(b, i, "expected ',' or '}' in the envelope")
		}
	}
	if j := ws(b, i); j != len(b) {
		return f, errSyntax(b, j, "unexpected data after the envelope")
	}
	if fieldErr != nil {
		return f, fieldErr
	}
	for _, req := range [...]struct {
		bit  uint8
		name string
	}{{seenID, "id"}, {seenType, "type"}, {seenTS, "ts"}, {seenSource, "source"}, {seenData, "data"}} {
		if seen&req.bit == 0 {
			if req.bit == seenTS && timestamp {
				return f, errField("ts", RuleTimestamp, `is missing, and "timestamp" is present: the envelope's time field is named "ts"`)
			}
			return f, errField(req.name, RuleMissing, "is missing")
		}
	}
	if err := checkValues(&f); err != nil {
		return f, err
	}
	return f, nil
}

// stringField reads a JSON string value for an anchor field; another JSON
// type is recorded in fieldErr and skipped.
func stringField(b []byte, i int, name string, bit uint8, dst *[]byte, escaped *uint8, fieldErr **Error) (int, *Error) {
	if b[i] != '"' {
		end, serr := value(b, i, 1)
		if serr == nil && *fieldErr == nil {
			*fieldErr = errField(name, RuleWrongType, "must be a JSON string, got a %s", kind(b[i]))
		}
		return end, serr
	}
	end, esc, serr := str(b, i)
	if serr != nil {
		return end, serr
	}
	*dst = b[i+1 : end-1]
	if esc {
		*escaped |= bit
	}
	return end, nil
}

// checkValues applies each anchor field's rule.
func checkValues(f *Fields) error {
	if e := checkText("id", f.ID, f.escaped&escID != 0, MaxIDLen); e != nil {
		return e
	}
	if f.escaped&escType != 0 {
		if e := checkType(unescape(nil, f.Type)); e != nil {
			return e
		}
	} else if e := checkType(f.Type); e != nil {
		return e
	}
	if e := checkTS(f.TS); e != nil {
		return e
	}
	if e := checkText("source", f.Source, f.escaped&escSource != 0, MaxSourceLen); e != nil {
		return e
	}
	if f.HasCorrelate {
		if e := checkText("correlate", f.Correlate, f.escaped&escCorrelate != 0, MaxCorrelateLen); e != nil {
			return e
		}
	}
	return nil
}

// checkText requires a non-empty string of at most max bytes without
// control characters. (str has refused raw ones below 0x20 already.)
func checkText[S ~string | ~[]byte](name string, s S, escaped bool, max int) *Error {
	if escaped {
		s = S(unescape(nil, []byte(s)))
	}
	if len(s) == 0 {
		return errField(name, RuleInvalid, "must not be empty")
	}
	if len(s) > max {
		return errField(name, RuleInvalid, "is %d bytes; at most %d are allowed", len(s), max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return errField(name, RuleInvalid, "contains a control character")
		}
	}
	return nil
}

// checkType requires a dotted lower-case name such as "stt.final": segments
// of a-z, 0-9, '_' and '-', separated by single dots, starting with a letter.
func checkType[S ~string | ~[]byte](s S) *Error {
	if len(s) == 0 {
		return errField("type", RuleInvalid, "must not be empty")
	}
	if len(s) > MaxTypeLen {
		return errField("type", RuleInvalid, "is %d bytes; at most %d are allowed", len(s), MaxTypeLen)
	}
	if s[0] < 'a' || s[0] > 'z' {
		return errField("type", RuleInvalid, "%q must start with a lower-case letter, like stt.final", string(s))
	}
	prevDot := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if prevDot || i == len(s)-1 {
				return errField("type", RuleInvalid, "%q has an empty segment; write dotted names like stt.final", string(s))
			}
			prevDot = true
			continue
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return errField("type", RuleInvalid, "%q must be dotted lower-case (a-z, 0-9, _ and -), like stt.final", string(s))
		}
		prevDot = false
	}
	return nil
}

// pow10 holds the powers of ten a float64 represents exactly.
var pow10 = [...]float64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// parseNumber reads a checked JSON number. The usual ts (digits below 2^53,
// no exponent) is computed directly: both the digits and the power of ten
// are exact in a float64, so one division rounds correctly, as strconv
// would (Clinger's fast path). Anything else goes to strconv.
func parseNumber(b []byte) float64 {
	var m uint64
	digits, frac, neg := 0, -1, false
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9':
			m = m*10 + uint64(c-'0')
			digits++
			if frac >= 0 {
				frac++
			}
		case c == '.':
			frac = 0
		case c == '-' && i == 0:
			neg = true
		default: // an exponent
			digits = 99
		}
	}
	if digits > 19 || m >= 1<<53 || frac >= len(pow10) {
		f, _ := strconv.ParseFloat(string(b), 64) // overflow gives ±Inf, which checkTS refuses
		return f
	}
	f := float64(m)
	if frac > 0 {
		f /= pow10[frac]
	}
	if neg {
		f = -f
	}
	return f
}

func checkTS(ts float64) *Error {
	switch {
	case math.IsNaN(ts) || math.IsInf(ts, 0):
		return errField("ts", RuleInvalid, "must be a finite number of Unix seconds")
	case ts <= 0:
		return errField("ts", RuleInvalid, "%v is not a Unix time in seconds", ts)
	case ts >= maxTS:
		return errField("ts", RuleInvalid, "%v is too large for Unix seconds (milliseconds? divide by 1000)", ts)
	}
	return nil
}

// kind names the JSON type of a value starting with c.
func kind(c byte) string {
	switch c {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

func ws(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

// value skips the JSON value at b[i], checking its syntax, and returns the
// index after it. depth is the nesting of the value's container.
func value(b []byte, i, depth int) (int, *Error) {
	if i >= len(b) {
		return i, errSyntax(b, i, "expected a value")
	}
	switch c := b[i]; {
	case c == '"':
		end, _, err := str(b, i)
		return end, err
	case c == '{', c == '[':
		if depth+1 > MaxDepth {
			return i, &Error{Rule: RuleTooDeep, Detail: fmt.Sprintf("payload nests objects and arrays more than %d deep", MaxDepth)}
		}
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		i = ws(b, i+1)
		if i < len(b) && b[i] == closer {
			return i + 1, nil
		}
		for {
			if c == '{' {
				if i >= len(b) || b[i] != '"' {
					return i, errSyntax(b, i, "expected a field name")
				}
				end, _, err := str(b, i)
				if err != nil {
					return end, err
				}
				i = ws(b, end)
				if i >= len(b) || b[i] != ':' {
					return i, errSyntax(b, i, "expected ':' after a field name")
				}
				i = ws(b, i+1)
			}
			end, err := value(b, i, depth+1)
			if err != nil {
				return end, err
			}
			i = ws(b, end)
			if i < len(b) && b[i] == ',' {
				i = ws(b, i+1)
				continue
			}
			if i < len(b) && b[i] == closer {
				return i + 1, nil
			}
			return i, errSyntax(b, i, fmt.Sprintf("expected ',' or '%c'", closer))
		}
	case c == '-' || (c >= '0' && c <= '9'):
		return number(b, i)
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	}
	return i, errSyntax(b, i, "expected a value")
}

func literal(b []byte, i int, word string) (int, *Error) {
	if len(b)-i < len(word) || string(b[i:i+len(word)]) != word {
		return i, errSyntax(b, i, "expected "+word)
	}
	return i + len(word), nil
}

// number skips a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func number(b []byte, i int) (int, *Error) {
	start := i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return i, errSyntax(b, start, "malformed number")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return i, errSyntax(b, start, "malformed number")
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return i, errSyntax(b, start, "malformed number")
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	return i, nil
}

// plain marks the bytes a JSON string holds as they are: printable ASCII but
// '"' and '\\'.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// special reports whether any of the 8 bytes in w is not plain: below 0x20,
// 0x80 or above, '"' or '\\'. (A false positive only costs the slow path.)
func special(w uint64) bool {
	q, bs := w^('"'*lsb), w^('\\'*lsb) // zero bytes where w has '"' or '\\'
	return ((w-0x20*lsb)&^w|(q-lsb)&^q|(bs-lsb)&^bs|w)&msb != 0
}

// str skips the JSON string starting at the quote b[i]: valid escapes, valid
// UTF-8, no raw control characters. It returns the index after the closing
// quote and whether the string holds escapes.
func str(b []byte, i int) (end int, escaped bool, err *Error) {
	j := i + 1
	for {
		for j+8 <= len(b) && !special(binary.LittleEndian.Uint64(b[j:])) {
			j += 8
		}
		for j < len(b) && plain[b[j]] {
			j++
		}
		if j >= len(b) {
			return len(b), escaped, errSyntax(b, len(b), "unterminated string")
		}
		switch c := b[j]; {
		case c == '"':
			return j + 1, escaped, nil
		case c == '\\':
			escaped = true
			if j+1 >= len(b) {
				return j, escaped, errSyntax(b, j, "unterminated escape")
			}
			switch b[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j += 2
			case 'u':
				if j+6 > len(b) || !isHex(b[j+2]) || !isHex(b[j+3]) || !isHex(b[j+4]) || !isHex(b[j+5]) {
					return j, escaped, errSyntax(b, j, `malformed \u escape`)
				}
				j += 6
			default:
				return j, escaped, errSyntax(b, j+1, "invalid escape")
			}
		case c < 0x20:
			return j, escaped, errSyntax(b, j, "control character in a string")
		default:
			r, size := utf8.DecodeRune(b[j:])
			if r == utf8.RuneError && size == 1 {
				return j, escaped, &Error{Rule: RuleNotJSON, Detail: fmt.Sprintf("payload is not valid UTF-8 at byte %d", j)}
			}
			j += size
		}
	}
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// unescape appends the decoded contents of a checked JSON string to dst.
// Invalid surrogates become U+FFFD, as encoding/json decodes them.
func unescape(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		switch s[i+1] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := rune(hex4(s[i+2:]))
			i += 6
			if r >= 0xd800 && r < 0xdc00 { // high surrogate: a low one must follow
				if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
					if lo := rune(hex4(s[i+2:])); lo >= 0xdc00 && lo < 0xe000 {
						dst = utf8.AppendRune(dst, 0x10000+(r-0xd800)<<10+(lo-0xdc00))
						i += 6
						continue
					}
				}
				r = utf8.RuneError
			} else if r >= 0xdc00 && r < 0xe000 {
				r = utf8.RuneError
			}
			dst = utf8.AppendRune(dst, r)
			continue
		default: // '"', '\\', '/'
			dst = append(dst, s[i+1])
		}
		i += 2
	}
	return dst
}

func hex4(b []byte) uint16 {
	var n uint16
	for _, c := range b[:4] {
		n <<= 4
		switch {
		case c >= '0' && c <= '9':
			n |= uint16(c - '0')
		case c >= 'a' && c <= 'f':
			n |= uint16(c - 'a' + 10)
		default:
			n |= uint16(c - 'A' + 10)
		}
	}
	return n
}
