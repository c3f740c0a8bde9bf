// Package acl decides what each client of the broker may publish, receive
// and subscribe to, from the rules of the auth.acl configuration section.
// It is pure logic with no broker dependency.
//
// For a client, the rules that apply are those for its identity, those for
// "*", and, if it has no identity, those for "anonymous". A topic is denied
// if a deny filter of an applying rule matches it, else allowed if an
// allow filter matches, else the default applies.
package acl

import (
	"strings"

	"github.com/tarsmq/tarsmq/internal/topic"
)

// Who is the client a check is about.
type Who struct {
	Identity string // authenticated identity; "" for anonymous
	ClientID string
}

// ACL is a compiled Config. It is immutable and safe for concurrent use.
type ACL struct {
	allow bool               // the default
	star  *policy            // identities no rule names
	anon  *policy            // clients without an identity
	named map[string]*policy // identities rules name
}

// policy is every filter of the rules that apply to one kind of client.
type policy struct {
	denyRead, read, denyWrite, write []filter
}

// filter is a rule filter ready to match.
type filter struct {
	f    string
	u, c bool // uses %u, %c
	lead byte // 'u' or 'c' when f starts with that placeholder, else 0
}

// New validates c and compiles it.
func New(c Config) (*ACL, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var star, anon []Rule
	named := map[string][]Rule{}
	for _, r := range c.Rules {
		switch r.Who {
		case Everyone:
			star = append(star, r)
		case Anonymous:
			anon = append(anon, r)
		default:
			named[r.Who] = append(named[r.Who], r)
		}
	}
	a := &ACL{
		allow: c.Default == Allow,
		star:  compile(star),
		anon:  compile(star, anon),
		named: make(map[string]*policy, len(named)),
	}
	for who, rules := range named {
		a.named[who] = compile(star, rules)
	}
	return a, nil
}

func compile(groups ...[]Rule) *policy {
	p := &policy{}
	for _, rules := range groups {
		for _, r := range rules {
			p.denyRead = appendFilters(p.denyRead, r.DenyRead)
			p.read = appendFilters(p.read, r.Read)
			p.denyWrite = appendFilters(p.denyWrite, r.DenyWrite)
			p.write = appendFilters(p.write, r.Write)
		}
	}
	return p
}

func appendFilters(dst []filter, fs []string) []filter {
	for _, f := range fs {
		cf := filter{f: f, u: strings.Contains(f, "%u"), c: strings.Contains(f, "%c")}
		if strings.HasPrefix(f, "%u") || strings.HasPrefix(f, "%c") {
			cf.lead = f[1]
		}
		dst = append(dst, cf)
	}
	return dst
}

// policy returns the filters that apply to w. An identity spelt "*" or
// "anonymous" gets only the rules for "*": those names are reserved.
func (a *ACL) policy(w Who) *policy {
	if w.Identity == "" {
		return a.anon
	}
	if p, ok := a.named[w.Identity]; ok {
		return p
	}
	return a.star
}

// CanWrite reports whether w may publish to the topic name. A topic name
// that is empty or holds "+", "#" or NUL is never allowed.
func (a *ACL) CanWrite(w Who, topic string) bool {
	p := a.policy(w)
	return a.check(w, topic, p.denyWrite, p.write)
}

// CanRead reports whether w may receive a message published to the topic
// name. A topic name that is empty or holds "+", "#" or NUL is never
// allowed.
func (a *ACL) CanRead(w Who, topic string) bool {
	p := a.policy(w)
	return a.check(w, topic, p.denyRead, p.read)
}

func (a *ACL) check(w Who, topic string, deny, allow []filter) bool {
	if !validTopic(topic) {
		return false
	}
	v := values{u: w.Identity, c: w.ClientID}
	for i := range deny {
		if v.poisoned(&deny[i]) || v.match(&deny[i], topic) {
			return false
		}
	}
	for i := range allow {
		if v.match(&allow[i], topic) {
			return true
		}
	}
	return a.allow
}

// CanSubscribe reports whether w may subscribe to filter: whether it could
// match a topic w may read. That is, with default deny, whether it
// intersects an allowed read filter in a part no single deny_read filter
// covers; with default allow, whether no deny_read filter covers it
// entirely. A subscription allowed here may still match topics w may not
// read, so each delivery must be checked with CanRead. A shared
// subscription ($share/{group}/{filter}) is judged by its filter.
func (a *ACL) CanSubscribe(w Who, filter string) bool {
	f, ok := stripShare(filter)
	if !ok || !validFilter(f) {
		return false
	}
	p := a.policy(w)
	v := values{u: w.Identity, c: w.ClientID}
	deny := make([]string, 0, len(p.denyRead))
	for i := range p.denyRead {
		if v.poisoned(&p.denyRead[i]) {
			return false
		}
		if d, ok := v.substitute(&p.denyRead[i]); ok {
			deny = append(deny, d)
		}
	}
	if a.allow {
		return !coveredByAny(deny, f)
	}
	for i := range p.read {
		r, ok := v.substitute(&p.read[i])
		if !ok {
			continue
		}
		if m, ok := meet(f, r); ok && !coveredByAny(deny, m) {
			return true
		}
	}
	return false
}

// values are a client's substitutes for %u and %c, checked lazily.
type values struct {
	u, c           string
	uState, cState int8 // 0 unchecked, 1 usable, -1 unusable
}

// usable reports whether s may be put in for a placeholder: it must be
// non-empty and hold nothing that could change a filter's levels or widen
// it. The verdict is memoised in *state.
func usable(s string, state *int8) bool {
	if *state == 0 {
		*state = 1
		if s == "" || strings.ContainsAny(s, "/+#\x00") {
			*state = -1
		}
	}
	return *state > 0
}

// ok reports whether f can match at all for these values. A value that
// starts with "$" may not start a filter, so client id "$SYS" gets nothing
// from %c/#.
func (v *values) ok(f *filter) bool {
	if f.u && !usable(v.u, &v.uState) || f.c && !usable(v.c, &v.cState) {
		return false
	}
	switch f.lead {
	case 'u':
		return v.u[0] != '$'
	case 'c':
		return v.c[0] != '$'
	}
	return true
}

// poisoned reports whether a deny filter cannot be applied because a
// non-empty value for its placeholder is unusable (a client id such as
// "a/#" or "$SYS"). Such a deny denies everything: a client must not lift a
// deny rule by choosing an odd client id. An empty identity (anonymous)
// only means a %u deny is not about this client.
func (v *values) poisoned(f *filter) bool {
	if !f.u && !f.c {
		return false
	}
	if f.u && v.u == "" {
		return false
	}
	return !v.ok(f)
}

// match reports whether topic matches f with the values put in. It does
// not allocate.
func (v *values) match(f *filter, t string) bool {
	if !f.u && !f.c {
		return topic.Match(f.f, t)
	}
	if !v.ok(f) {
		return false
	}
	filter := f.f
	if strings.HasPrefix(t, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(t, "/")
		if fl != "+" && !v.levelEq(fl, tl) {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			return frest == "#"
		case !fmore:
			return false
		}
		filter, t = frest, trest
	}
}

// levelEq reports whether the filter level fl, with the values put in, is
// the topic level tl. Values hold no "/", so levels map one to one.
func (v *values) levelEq(fl, tl string) bool {
	for fl != "" {
		if fl[0] == '%' && len(fl) > 1 && (fl[1] == 'u' || fl[1] == 'c') {
			s := v.u
			if fl[1] == 'c' {
				s = v.c
			}
			if !strings.HasPrefix(tl, s) {
				return false
			}
			fl, tl = fl[2:], tl[len(s):]
			continue
		}
		if tl == "" || tl[0] != fl[0] {
			return false
		}
		fl, tl = fl[1:], tl[1:]
	}
	return tl == ""
}

// substitute returns f with the values put in, false if it cannot match.
func (v *values) substitute(f *filter) (string, bool) {
	if !f.u && !f.c {
		return f.f, true
	}
	if !v.ok(f) {
		return "", false
	}
	return strings.NewReplacer("%u", v.u, "%c", v.c).Replace(f.f), true
}

// validTopic reports whether t is a topic name a message can be sent to.
func validTopic(t string) bool {
	return t != "" && !strings.ContainsAny(t, "+#\x00")
}

// validFilter reports whether f is a topic filter a client may subscribe
// to: "#" only as the whole last level, "+" only as whole levels.
func validFilter(f string) bool {
	if f == "" || strings.IndexByte(f, 0) >= 0 {
		return false
	}
	for {
		l, rest, more := strings.Cut(f, "/")
		if l == "#" {
			return !more
		}
		if l != "+" && strings.ContainsAny(l, "+#") {
			return false
		}
		if !more {
			return true
		}
		f = rest
	}
}

// stripShare returns the filter of a shared subscription
// ($share/{group}/{filter}, any case) or f itself if it is not one; false
// if it is malformed.
func stripShare(f string) (string, bool) {
	first, rest, more := strings.Cut(f, "/")
	if !strings.EqualFold(first, "$share") {
		return f, true
	}
	group, filter, more2 := strings.Cut(rest, "/")
	if !more || !more2 || group == "" || strings.ContainsAny(group, "+#") {
		return "", false
	}
	return filter, true
}

// meet returns the filter matching exactly the topics both a and b match,
// false if there are none.
func meet(a, b string) (string, bool) {
	if !topic.Intersects(a, b) {
		return "", false
	}
	var out strings.Builder
	for {
		al, arest, amore := strings.Cut(a, "/")
		bl, brest, bmore := strings.Cut(b, "/")
		switch {
		case al == "#":
			out.WriteString(b)
			return out.String(), true
		case bl == "#":
			out.WriteString(a)
			return out.String(), true
		case al == "+":
			out.WriteString(bl)
		default:
			out.WriteString(al)
		}
		// Intersects holds, so if one ends the other goes on only with "/#".
		if !amore || !bmore {
			return out.String(), true
		}
		out.WriteByte('/')
		a, b = arest, brest
	}
}

// covers reports whether every topic m matches also matches d.
func covers(d, m string) bool {
	if strings.HasPrefix(m, "$") && (strings.HasPrefix(d, "+") || strings.HasPrefix(d, "#")) {
		return false
	}
	for top := true; ; top = false {
		dl, drest, dmore := strings.Cut(d, "/")
		ml, mrest, mmore := strings.Cut(m, "/")
		switch {
		case dl == "#":
			return true
		case ml == "#":
			// Every topic has a first level, so # is inside +/# at the top;
			// below it, m's # also stands for no level at all, which +/# lacks.
			return top && dl == "+" && dmore && drest == "#"
		case dl != "+" && dl != ml:
			return false
		}
		switch {
		case !dmore && !mmore:
			return true
		case !mmore:
			return drest == "#"
		case !dmore:
			return false
		}
		d, m = drest, mrest
	}
}

func coveredByAny(ds []string, m string) bool {
	for _, d := range ds {
		if covers(d, m) {
			return true
		}
	}
	return false
}
